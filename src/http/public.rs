//! The public listener: Pictory's webhooks and `/healthz`, nothing else.

use super::api::jobs::validate_job_id;
use super::error::ApiError;
use crate::pictory::JobReport;
use crate::signature;
use crate::state::AppState;
use crate::store::{DeliveryOutcome, DeliveryTarget, Ingested, NewDelivery};
use crate::webhook_key::KeyScope;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/pictory/{key}", post(receive_webhook))
        .route("/healthz", get(healthz))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Largest total size of a delivery's headers; they are archived with it.
const HEADER_LIMIT: usize = 32 * 1024;

/// Headers whose values are credentials and are not archived.
const REDACTED_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// `POST /webhooks/pictory/{key}`: store first, answer after the commit.
async fn receive_webhook(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // A wrong key (even one that is not UTF-8) learns nothing and costs nothing: no body read,
    // nothing stored.
    let scope = key
        .ok()
        .and_then(|Path(key)| state.webhook_keys.check(&key))
        .ok_or_else(|| ApiError::NotFound("no such webhook endpoint".into()))?;
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > HEADER_LIMIT {
        return Err(ApiError::HeadersTooLarge(format!(
            "request headers are larger than {HEADER_LIMIT} bytes"
        )));
    }
    let body = read_limited(&state, &headers, body).await?;
    let received_at = state.now_ms();
    let archive = |target| NewDelivery {
        received_at,
        remote_addr: Some(remote.to_string()),
        headers: headers_json(&headers),
        body: body.to_vec(),
        target,
    };

    if !state.signing_keys.is_empty() {
        let now_secs = received_at.div_euclid(1000);
        if let Err(why) = signature::verify(&state.signing_keys, &headers, &body, now_secs) {
            let reason = format!("signature: {why}");
            store_rejected(&state, archive(DeliveryTarget::Rejected { reason })).await?;
            return Err(ApiError::InvalidSignature(why.to_string()));
        }
    }

    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        let reason = "body is not JSON".to_owned();
        store_rejected(&state, archive(DeliveryTarget::Rejected { reason })).await?;
        return Err(ApiError::bad_request(
            "malformed_body",
            "the body is not valid JSON",
        ));
    };
    let report = JobReport::from_json(&parsed);
    if let Some(id) = report.job_id.as_deref() {
        if let Err(why) = validate_job_id("job_id", id) {
            let reason = format!("unusable job id: {why}");
            store_rejected(&state, archive(DeliveryTarget::Rejected { reason })).await?;
            return Err(ApiError::bad_request(
                "invalid_job_id",
                "the body's job id is longer than 128 characters or holds spaces, control characters or `/`",
            ));
        }
    }
    let submission_id = match scope {
        KeyScope::Submission(id) => Some(id.to_string()),
        KeyScope::Generic => None,
    };
    if report.job_id.is_none() && submission_id.is_none() {
        let reason = "no job id in the body".to_owned();
        store_rejected(&state, archive(DeliveryTarget::Rejected { reason })).await?;
        return Err(ApiError::bad_request(
            "no_job_id",
            "the body names no job (`job_id` or `jobId`)",
        ));
    }

    let verify = state.verify_webhooks();
    let target = DeliveryTarget::Job {
        job_id: report.job_id,
        submission_id,
        // In verify mode the body is only a hint: a forged "completed" never reaches a client.
        report: (!verify).then_some(report.state),
        look_now: verify,
        first_poll_at: state.first_poll_at(received_at),
    };
    let ingested = store(&state, archive(target)).await?;
    match ingested.outcome {
        DeliveryOutcome::Rejected => Err(ApiError::bad_request(
            "unknown_job",
            "the body names no job and the submission is not tracked",
        )),
        outcome => {
            let job = ingested.job.as_ref().map(|job| job.display_id().to_owned());
            tracing::info!(
                delivery_id = ingested.delivery_id,
                outcome = outcome.as_str(),
                job = job.as_deref().unwrap_or("-"),
                "webhook stored"
            );
            Ok((
                StatusCode::OK,
                Json(json!({
                    "status": outcome.as_str(),
                    "delivery_id": ingested.delivery_id,
                    "job_id": job,
                })),
            )
                .into_response())
        }
    }
}

async fn store_rejected(state: &AppState, delivery: NewDelivery) -> Result<(), ApiError> {
    let ingested = store(state, delivery).await?;
    tracing::info!(
        delivery_id = ingested.delivery_id,
        "webhook rejected and archived"
    );
    Ok(())
}

/// Longest wait for the group commit; past it Pictory is told to retry (the delivery may still
/// be stored, and the retry is then a duplicate, acknowledged and stored once).
const STORE_WAIT: Duration = Duration::from_secs(20);
/// Longest a sender may take to send its body.
const BODY_WAIT: Duration = Duration::from_secs(20);

async fn store(state: &AppState, delivery: NewDelivery) -> Result<Ingested, ApiError> {
    match tokio::time::timeout(STORE_WAIT, state.ingestor.ingest(delivery)).await {
        Ok(stored) => Ok(stored?),
        Err(_) => {
            tracing::warn!("a delivery waited too long for its commit; asking the sender to retry");
            Err(ApiError::Unavailable {
                retry_after_secs: 5,
            })
        }
    }
}

/// Reads the body, refusing it as soon as it passes `server.body_limit`.
async fn read_limited(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = state.config.server.body_limit.as_u64();
    let too_large = || ApiError::TooLarge(format!("the body is larger than {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let read = tokio::time::timeout(BODY_WAIT, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| ApiError::RequestTimeout("the body took too long to arrive".into()))?;
    read.map_err(|err| {
        let over_limit =
            std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        if over_limit {
            too_large()
        } else {
            ApiError::bad_request("unreadable_body", "the request body could not be read")
        }
    })
}

/// Header names and values as a JSON object; credentials are masked.
fn headers_json(headers: &HeaderMap) -> String {
    let mut map = Map::new();
    for (name, value) in headers {
        let name = name.as_str();
        let text = if REDACTED_HEADERS.contains(&name) {
            "[redacted]".to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        match map.get_mut(name) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&text);
            }
            _ => {
                map.insert(name.to_owned(), Value::String(text));
            }
        }
    }
    Value::Object(map).to_string()
}
