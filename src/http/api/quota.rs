//! `GET /v1/quota`: Pictory's own `GET /v1/quota`, relayed verbatim and cached for a minute
//! (see [`crate::quota`]), so a client sees the credits left without holding the API key.

use crate::http::error::{ApiError, ErrorBody};
use crate::pictory::QuotaFailure;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// Wait suggested to a client when Pictory gave no `Retry-After`.
const RETRY_AFTER_SECS: u32 = 5;

/// The account's quota as Pictory reports it (used and limit of video minutes and AI credits).
#[utoipa::path(get, path = "/v1/quota", tag = "usage",
    responses(
        (status = 200, description = "Pictory's GET /v1/quota answer, verbatim, at most 60 s old \
            (`Age` says how old; `Cache-Control: max-age` how long it is kept)", body = Object),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "Receive-only mode: no pictory.api_key to ask with", body = ErrorBody),
        (status = 502, description = "Pictory refused the key (upstream_unauthorized) or answered with an \
            error (upstream_error)", body = ErrorBody),
        (status = 503, description = "Pictory could not be reached or asked to wait (upstream_unavailable); \
            see Retry-After", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_quota(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(poller) = &state.poller else {
        return Err(ApiError::Conflict(
            "jobhook runs receive-only (no pictory.api_key), so it cannot ask Pictory for the quota"
                .into(),
        ));
    };
    let fetched = state
        .quota
        .get(poller.client(), &*state.clock)
        .await
        .map_err(upstream_error)?;
    let now = state.now_ms();
    let age = ((now - fetched.fetched_at).max(0)) / 1000;
    let max_age = state.quota.fresh_for_secs(&fetched, now);
    let mut response = ([(header::CONTENT_TYPE, "application/json")], fetched.body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::AGE, HeaderValue::from(age));
    if let Ok(cache) = HeaderValue::from_str(&format!("private, max-age={max_age}")) {
        headers.insert(header::CACHE_CONTROL, cache);
    }
    Ok(response)
}

fn upstream_error(failure: QuotaFailure) -> ApiError {
    match failure {
        QuotaFailure::Unauthorized { detail, .. } => {
            tracing::error!(%detail, "Pictory refused GET /v1/quota");
            ApiError::BadGateway {
                code: "upstream_unauthorized",
                message: format!("Pictory refused the quota request: {detail}"),
            }
        }
        QuotaFailure::Failed { reason } => ApiError::BadGateway {
            code: "upstream_error",
            message: format!("Pictory's GET /v1/quota failed: {reason}"),
        },
        QuotaFailure::Unavailable {
            reason,
            retry_after,
        } => ApiError::UpstreamUnavailable {
            message: format!("Pictory's GET /v1/quota is unavailable ({reason}); retry later"),
            retry_after_secs: retry_after
                .and_then(|wait| u32::try_from(wait.as_secs()).ok())
                .map_or(RETRY_AFTER_SECS, |secs| secs.max(1)),
        },
    }
}
