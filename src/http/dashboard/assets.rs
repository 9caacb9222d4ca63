//! The dashboard's stylesheet and script, compiled into the binary (no CDN, no front-end build:
//! the dashboard works offline). Each is served at a name that carries a hash of its bytes, so
//! browsers may keep it for a year and still get a new one the moment it changes.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

const CSS: &[u8] = include_bytes!("assets/dashboard.css");
const JS: &[u8] = include_bytes!("assets/dashboard.js");

struct Asset {
    href: String,
    bytes: &'static [u8],
    content_type: &'static str,
}

fn asset(stem: &str, ext: &str, bytes: &'static [u8], content_type: &'static str) -> Asset {
    let hash: String = Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    Asset {
        href: format!("/assets/{stem}-{hash}.{ext}"),
        bytes,
        content_type,
    }
}

static ASSETS: LazyLock<[Asset; 2]> = LazyLock::new(|| {
    [
        asset("dashboard", "css", CSS, "text/css; charset=utf-8"),
        asset("dashboard", "js", JS, "text/javascript; charset=utf-8"),
    ]
});

pub fn css_href() -> &'static str {
    &ASSETS[0].href
}

pub fn js_href() -> &'static str {
    &ASSETS[1].href
}

/// `GET /assets/{file}`: only the current names; anything else is 404.
pub async fn serve(Path(file): Path<String>) -> Response {
    let wanted = format!("/assets/{file}");
    match ASSETS.iter().find(|a| a.href == wanted) {
        Some(asset) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(asset.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            asset.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
