//! The body of a dashboard action: a url-encoded form, bounded in size, whose CSRF token must
//! belong to the visitor's session before anything in it is looked at.

use super::page::PageError;
use super::session::Visitor;
use crate::state::AppState;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

/// Largest form accepted: a continuation's prompt (5,000 characters, each up to 12 bytes once
/// percent-encoded) with room to spare; far below the API's 1 MiB.
pub const FORM_LIMIT: usize = 64 * 1024;

/// A checked form: `T` is read from the fields other than `csrf`.
pub struct ActionForm<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ActionForm<T> {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, PageError> {
        let visitor = request
            .extensions()
            .get::<Visitor>()
            .cloned()
            .ok_or_else(PageError::forbidden)?;
        let form_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form_type {
            return Err(PageError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a form (application/x-www-form-urlencoded)",
            ));
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > FORM_LIMIT) {
            return Err(too_large());
        }
        // Without a length (chunked), the limit cuts the body off as it arrives.
        let body = axum::body::to_bytes(request.into_body(), FORM_LIMIT)
            .await
            .map_err(|_| too_large())?;
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
            .map_err(|_| PageError::new(StatusCode::BAD_REQUEST, "this form is malformed"))?;
        let csrf = fields
            .iter()
            .find(|(name, _)| name == "csrf")
            .map(|(_, value)| value.as_str())
            .unwrap_or_default();
        if !state.sessions.csrf_matches(&visitor, csrf) {
            return Err(PageError::forbidden());
        }
        let form = serde_urlencoded::from_bytes(&body).map_err(|err| {
            PageError::new(
                StatusCode::BAD_REQUEST,
                format!("this form is malformed: {err}"),
            )
        })?;
        Ok(ActionForm(form))
    }
}

fn too_large() -> PageError {
    PageError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("this form is larger than {} KiB", FORM_LIMIT / 1024),
    )
}
