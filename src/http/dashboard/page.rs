//! Rendering pages: the frame every page shares, HTML error pages, and the headers that keep
//! pages private (no caching, no framing, scripts and styles only from jobhook itself).

use super::assets;
use super::session::Visitor;
use crate::http::error::ApiError;
use crate::state::AppState;
use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};

/// What the frame around every page needs.
pub struct Chrome {
    pub csrf: String,
    /// Show "Sign out": a token was asked for.
    pub signed_in: bool,
    /// Which tab is current: `jobs` or `ops` (or empty).
    pub tab: &'static str,
    pub css: &'static str,
    pub js: &'static str,
}

impl Chrome {
    pub fn new(state: &AppState, visitor: &Visitor, tab: &'static str) -> Chrome {
        Chrome {
            csrf: state.sessions.csrf(visitor),
            signed_in: visitor.signed_in,
            tab,
            css: assets::css_href(),
            js: assets::js_href(),
        }
    }
}

/// A page that could not be shown: its status and what to tell the person.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }

    pub fn forbidden() -> PageError {
        PageError::new(
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this dashboard (its CSRF token is \
             missing or wrong). Go back, reload the page and try again.",
        )
    }
}

impl From<ApiError> for PageError {
    fn from(err: ApiError) -> PageError {
        let status = err.status();
        if let ApiError::Internal(cause) = &err {
            // The cause chain goes to the log, never to the page (as for the API).
            tracing::error!(error = format!("{cause:#}"), "dashboard request failed");
        }
        PageError::new(status, err.to_string())
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(err: crate::store::StoreError) -> PageError {
        ApiError::from(err).into()
    }
}

#[derive(Template)]
#[template(path = "dashboard/error.html")]
struct ErrorPage<'a> {
    title: String,
    message: &'a str,
    css: &'static str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            title: format!(
                "{} {}",
                self.status.as_u16(),
                self.status.canonical_reason().unwrap_or("Error")
            ),
            message: &self.message,
            css: assets::css_href(),
        };
        let mut response = match page.render() {
            Ok(html) => (self.status, Html(html)).into_response(),
            Err(err) => {
                tracing::error!(error = %err, "cannot render the error page");
                (self.status, self.message).into_response()
            }
        };
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        response
    }
}

/// Renders `template` as a `200` page.
pub fn render(template: &impl Template) -> Result<Response, PageError> {
    render_with(StatusCode::OK, template)
}

pub fn render_with(status: StatusCode, template: &impl Template) -> Result<Response, PageError> {
    let html = template.render().map_err(|err| {
        tracing::error!(error = %err, "cannot render a dashboard page");
        PageError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })?;
    Ok((status, Html(html)).into_response())
}

/// After an action: back to a page of the dashboard (303, so a reload does not repeat it).
pub fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// `path` when it is a path on this site (`/jobs/x?y`), never another origin (`//evil`,
/// `/\evil`, `https://…`): where a form may send the browser back to.
pub fn local_path(path: &str) -> Option<&str> {
    let safe = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.chars().any(|c| c.is_control() || c == '\\');
    safe.then_some(path)
}

/// What every dashboard answer carries: never cached (pages hold CSRF tokens and private
/// data), never framed, and only jobhook's own script and style (thumbnails and videos may
/// come from Pictory's CDN until archived, so images and media may be any http(s) origin).
pub fn protect(response: &mut Response) {
    let headers = response.headers_mut();
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' https: http: data:; media-src 'self' https: http:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_on_this_site_are_followed() {
        for ok in ["/", "/jobs/a%2Fb?x=1", "/ops"] {
            assert_eq!(local_path(ok), Some(ok));
        }
        for bad in [
            "//evil.example",
            "/\\evil",
            "https://evil.example",
            "",
            "jobs",
            "/a\nb",
        ] {
            assert_eq!(local_path(bad), None, "{bad}");
        }
    }
}
