//! The buttons: each is a POST with the visitor's CSRF token, runs the API handler that does
//! the same thing over `/v1`, and sends the browser back to a page (303, so a reload does not
//! do it again). An error shows the API's own status and message.

use super::form::ActionForm;
use super::page::{local_path, see_other, PageError};
use super::view::segment;
use crate::http::api::continuations;
use crate::http::api::deliveries::replay_delivery;
use crate::http::api::files::archive_job;
use crate::http::api::jobs::refresh_job;
use crate::http::api::notifications::{
    enable_endpoint as enable, retry_notification as retry, EnableEndpoint,
};
use crate::http::extract::{ApiJson, ApiPath};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The page of a job as the API answered it (Pictory's id, else the submission's).
fn job_href(job: &Value, done: &str) -> String {
    let id = job["job_id"]
        .as_str()
        .or_else(|| job["submission_id"].as_str())
        .unwrap_or_default();
    format!("/jobs/{}?done={done}", segment(id))
}

#[derive(Deserialize)]
pub struct NoFields {}

/// "Refresh now": `POST /v1/jobs/{id}/refresh`.
pub async fn refresh(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ActionForm(_): ActionForm<NoFields>,
) -> Result<Response, PageError> {
    let job = refresh_job(State(state), ApiPath(id)).await?;
    let json = serde_json::to_value(&job.0).unwrap_or(Value::Null);
    Ok(see_other(&job_href(&json, "refreshed")))
}

/// "Archive again": `POST /v1/jobs/{id}/archive`.
pub async fn archive(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ActionForm(_): ActionForm<NoFields>,
) -> Result<Response, PageError> {
    let (_, job) = archive_job(State(state), ApiPath(id)).await?;
    let json = serde_json::to_value(&job.0).unwrap_or(Value::Null);
    Ok(see_other(&job_href(&json, "archived")))
}

/// "Replay": `POST /v1/deliveries/{id}/replay`; back to the job it applied to.
pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ActionForm(_): ActionForm<NoFields>,
) -> Result<Response, PageError> {
    let job = replay_delivery(State(state), ApiPath(id)).await?;
    let json = serde_json::to_value(&job.0).unwrap_or(Value::Null);
    Ok(see_other(&job_href(&json, "replayed")))
}

#[derive(Deserialize)]
pub struct BackTo {
    /// The page the button was on.
    back: Option<String>,
}

impl BackTo {
    fn path(&self, done: &str) -> String {
        let back = self.back.as_deref().and_then(local_path).unwrap_or("/ops");
        let (path, _) = back.split_once('?').unwrap_or((back, ""));
        format!("{path}?done={done}")
    }
}

/// "Retry": `POST /v1/notifications/{id}/retry`.
pub async fn retry_notification(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ActionForm(form): ActionForm<BackTo>,
) -> Result<Response, PageError> {
    // The notification as it is now is not shown: the page it came from shows it again.
    let _requeued = retry(State(state), ApiPath(id)).await?;
    Ok(see_other(&form.path("retried")))
}

#[derive(Deserialize)]
pub struct EnableForm {
    url: String,
}

/// "Re-enable": `POST /v1/notify/endpoints/enable`.
pub async fn enable_endpoint(
    State(state): State<AppState>,
    ActionForm(form): ActionForm<EnableForm>,
) -> Result<Response, PageError> {
    let _endpoints = enable(State(state), ApiJson(EnableEndpoint { url: form.url })).await?;
    Ok(see_other("/ops?done=enabled"))
}

#[derive(Deserialize)]
pub struct ContinueForm {
    prompt: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    duration: String,
    #[serde(default, rename = "aspectRatio")]
    aspect_ratio: String,
    /// Made when the form was rendered: submitting it twice makes one clip.
    idempotency_key: String,
}

/// "Continue": `POST /v1/jobs/{id}/continue` with the form's fields; on to the new clip.
pub async fn continue_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ActionForm(form): ActionForm<ContinueForm>,
) -> Result<Response, PageError> {
    let mut body = Map::new();
    body.insert("prompt".into(), Value::String(form.prompt));
    for (field, value) in [
        ("model", form.model),
        ("duration", form.duration),
        ("aspectRatio", form.aspect_ratio),
    ] {
        if !value.trim().is_empty() {
            body.insert(field.into(), Value::String(value.trim().to_owned()));
        }
    }
    let mut headers = HeaderMap::new();
    let key = HeaderValue::from_str(form.idempotency_key.trim()).map_err(|_| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            "this form's idempotency key is malformed",
        )
    })?;
    headers.insert("idempotency-key", key);
    let response = continuations::continue_job(
        State(state),
        ApiPath(id),
        headers,
        ApiJson(Value::Object(body)),
    )
    .await?;
    // The answer may be a stored one (the same key sent twice): read it as a client would.
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1024 * 1024)
        .await
        .map_err(|_| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        Ok(see_other(&job_href(&answer, "continued")))
    } else {
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or("Pictory did not take the request")
            .to_owned();
        Err(PageError::new(status, message))
    }
}
