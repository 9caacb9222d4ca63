//! `POST /v1/videos`: submit a Generate Video request through jobhook, never paying twice.
//!
//! The submission is recorded (and its Idempotency-Key claimed) before Pictory is called, with a
//! webhook URL that names it. The call is retried only when it certainly created nothing
//! (connection refused, 429, 503); any ambiguous end leaves the job `submit_unknown`, answered
//! `202`, for the webhook or a person to settle. Continuations (`continuations.rs`) go through
//! the same path.

use super::jobs::validate_metadata;
use crate::domain::job::JobView;
use crate::domain::Job;
use crate::http::error::{ApiError, ErrorBody, FieldError};
use crate::http::extract::ApiJson;
use crate::pictory::{rules, Generate, JobError};
use crate::state::AppState;
use crate::store::{Begun, IdempotencyKey, KeyState, NewSubmission, RenderResponse, SubmitOutcome};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

/// Attempts at a Generate call that certainly created nothing, before giving up.
const ATTEMPTS: u32 = 3;
/// Attempts at recording the outcome of a Generate call.
const RECORD_ATTEMPTS: u32 = 3;
/// Longest wait between attempts, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between attempts is [`MAX_BACKOFF`]; a twin waits for every attempt the first
/// request may make, and a margin for recording it.
pub fn twin_wait(timeout: Duration) -> Duration {
    (timeout + MAX_BACKOFF) * ATTEMPTS + Duration::from_secs(10)
}
const KEY_LIMIT: usize = 255;
/// How often a twin reads its key again while it waits without hearing a change.
const KEY_RECHECK: Duration = Duration::from_millis(250);

/// Submit a Generate Video request.
#[utoipa::path(post, path = "/v1/videos", tag = "videos",
    request_body(content = Object, description = "Pictory's Generate Video fields (prompt, model, aspectRatio, duration, firstFrameImageUrl, extendVideoUrl, referenceImageUrls) plus optional metadata"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key: the same key and body answer the first result")),
    responses(
        (status = 201, description = "Pictory created the job", body = JobView),
        (status = 202, description = "Outcome unknown (submit_unknown); never retried automatically", body = JobView),
        (status = 422, description = "Invalid request, upstream_rejected, or the key was used with another body", body = ErrorBody),
        (status = 409, description = "Receive-only mode, or the key's first request is still running", body = ErrorBody),
        (status = 503, description = "Pictory unavailable; nothing was created", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn submit_video(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let mut fields = body_object(&body)?;
    let metadata = take_metadata(&mut fields)?;
    if fields.contains_key("webhook") {
        return Err(ApiError::invalid_field(
            "webhook",
            "is set by jobhook; use GET /v1/webhook-url for jobs submitted elsewhere",
        ));
    }
    let request = GenerateRequest {
        fields,
        metadata,
        parent_pk: None,
    };
    submit(state, &headers, &body, request).await
}

/// A Generate Video request on its way through jobhook.
pub(super) struct GenerateRequest {
    /// The fields as they go to Pictory, but for jobhook's webhook URL.
    pub fields: Map<String, Value>,
    /// The client's `metadata`, already checked.
    pub metadata: Option<Value>,
    /// For a continuation, the row id of the job it continues.
    pub parent_pk: Option<i64>,
}

/// A request body that must be a JSON object.
pub(super) fn body_object(body: &Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(fields) => Ok(fields.clone()),
        _ => Err(ApiError::invalid_field("body", "must be a JSON object")),
    }
}

/// Takes `metadata` out of a request body and checks it.
pub(super) fn take_metadata(fields: &mut Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let metadata = fields.remove("metadata").filter(|m| !m.is_null());
    validate_metadata(&metadata)?;
    Ok(metadata)
}

/// The submission path `POST /v1/videos` and `POST /v1/jobs/{id}/continue` share: Pictory's
/// rules (`422` naming each field), receive-only (`409`), the `Idempotency-Key` (fingerprinted
/// over `keyed_body`, what the client sent, so a repeat is recognised before anything is
/// derived from it), the record, then the one Generate call, made in a task of its own.
pub(super) async fn submit(
    state: AppState,
    headers: &HeaderMap,
    keyed_body: &Value,
    request: GenerateRequest,
) -> Result<Response, ApiError> {
    let GenerateRequest {
        fields,
        metadata,
        parent_pk,
    } = request;
    check_rules(&fields)?;
    let Some(poller) = state.poller.clone() else {
        return Err(ApiError::Conflict(
            "jobhook runs receive-only (no pictory.api_key), so it cannot submit".into(),
        ));
    };
    let idempotency = idempotency_key(headers, keyed_body)?;

    let submission = NewSubmission {
        submission_id: Uuid::now_v7().to_string(),
        request: Value::Object(fields.clone()),
        metadata,
        idempotency: idempotency.clone(),
        parent_pk,
    };
    let job = match begin(&state, submission, idempotency.as_ref()).await? {
        Started::New(job) => job,
        Started::Replay { status, body } => return Ok(replay(status, body)),
    };
    if job.parent_pk.is_some() {
        // The parent now lists this continuation: its cached rendering goes.
        state.changes.publish(&job);
    }
    // From here on the work must not stop half-way because the client went away: it runs in
    // its own task, and the request only waits for it.
    let task = tokio::spawn(call_and_record(state, *job, fields, poller));
    task.await
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("submission task failed: {err}")))?
}

/// Pictory's documented rules for a Generate request: `422` naming every broken one.
fn check_rules(fields: &Map<String, Value>) -> Result<(), ApiError> {
    let violations = rules::check(fields);
    if violations.is_empty() {
        return Ok(());
    }
    let fields: Vec<FieldError> = violations
        .into_iter()
        .map(|v| FieldError {
            field: v.field,
            message: v.message,
        })
        .collect();
    let message = fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ");
    Err(ApiError::Unprocessable {
        code: "invalid_request",
        message,
        fields,
    })
}

/// Calls Generate for a recorded submission and records how it ended.
async fn call_and_record(
    state: AppState,
    job: Job,
    mut fields: Map<String, Value>,
    poller: std::sync::Arc<crate::reconcile::Poller>,
) -> Result<Response, ApiError> {
    let submission_id = job
        .submission_id
        .clone()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a submission without its id")))?;

    // The webhook URL names the submission, so a webhook is matched even before (or without)
    // the job id Pictory answers with.
    let key = Uuid::try_parse(&submission_id)
        .map(|id| state.webhook_keys.submission_key(id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    fields.insert("webhook".into(), Value::String(state.webhook_url(&key)));
    let request = Value::Object(fields);

    let (outcome, pictory_fields) = call_generate(poller.client(), &request).await;
    let released = matches!(outcome, SubmitOutcome::NothingCreated { .. });
    let job = record_outcome(&state, &submission_id, outcome, &pictory_fields).await?;
    state.changes.publish(&job);
    if released {
        let message = job.error.as_ref().map_or_else(
            || "Pictory is unavailable".to_owned(),
            |e| e.message.clone(),
        );
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": {"code": "upstream_unavailable",
                "message": format!("{message}; nothing was created, retry later"),
                "submission_id": submission_id}})),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(5));
        return Ok(response);
    }
    let (status, body) = render_response(&job, &pictory_fields);
    Ok(replay(status, body))
}

/// Records a Generate outcome, trying a few times: Pictory may already have created (and
/// charged for) the job, so giving up early would lose it. If it still cannot be recorded, the
/// submission stays `submitting` and the periodic sweep settles it as `submit_unknown`.
async fn record_outcome(
    state: &AppState,
    submission_id: &str,
    outcome: SubmitOutcome,
    pictory_fields: &[FieldError],
) -> Result<Job, ApiError> {
    // The store takes a `'static` renderer, so it owns its copy of the fields.
    let owned_fields = pictory_fields.to_vec();
    let render: Arc<RenderResponse> =
        Arc::new(move |job: &Job| render_response(job, &owned_fields));
    let mut pause = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let now = state.now_ms();
        let first_poll = state.first_poll_at(now);
        let recorded = state
            .store
            .finish_submission(
                submission_id,
                outcome.clone(),
                first_poll,
                render.clone(),
                now,
            )
            .await;
        match recorded {
            Ok(job) => return Ok(job),
            Err(err) if attempt < RECORD_ATTEMPTS => {
                tracing::warn!(error = %err, attempt, submission_id, "cannot record a Generate outcome yet; retrying");
                tokio::time::sleep(pause).await;
                pause *= 4;
                attempt += 1;
            }
            Err(err) => {
                tracing::error!(error = %err, submission_id, ?outcome, "cannot record a Generate outcome; the submission will be settled as submit_unknown");
                return Err(ApiError::Unavailable {
                    retry_after_secs: 30,
                });
            }
        }
    }
}

enum Started {
    New(Box<Job>),
    Replay { status: u16, body: String },
}

/// Records the submission, or finds what an earlier request with the same key did (waiting
/// for it while it is still in flight).
async fn begin(
    state: &AppState,
    submission: NewSubmission,
    key: Option<&IdempotencyKey>,
) -> Result<Started, ApiError> {
    let mut changes = state.changes.subscribe();
    let give_up = tokio::time::sleep(twin_wait(state.config.pictory.timeout));
    tokio::pin!(give_up);
    loop {
        match state
            .store
            .begin_submission(submission.clone(), state.now_ms())
            .await?
        {
            Begun::Started(job) => return Ok(Started::New(job)),
            Begun::Replay { status, body } => return Ok(Started::Replay { status, body }),
            Begun::KeyReused => {
                return Err(ApiError::Unprocessable {
                    code: "idempotency_key_reused",
                    message: "this Idempotency-Key was used with a different request body".into(),
                    fields: Vec::new(),
                })
            }
            Begun::InFlight => {}
        }
        let Some(key) = key else {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "in flight without a key"
            )));
        };
        // Wait for the twin to be answered; re-read the key whenever any job changes.
        loop {
            match state.store.idempotency_key(&key.key).await? {
                KeyState::Answered { status, body } => return Ok(Started::Replay { status, body }),
                // Released (nothing was created): start afresh.
                KeyState::Missing => break,
                KeyState::InFlight => {}
            }
            tokio::select! {
                change = changes.recv() => {
                    if let Err(RecvError::Closed) = change {
                        return Err(ApiError::Unavailable { retry_after_secs: 1 });
                    }
                }
                // The first request may be on another replica, whose change reaches this one
                // through the database's notifications; the key row is read again now and
                // then all the same, so a lost notification costs a moment, not the wait.
                _ = tokio::time::sleep(KEY_RECHECK) => {}
                _ = &mut give_up => {
                    return Err(ApiError::Conflict(
                        "a request with this Idempotency-Key is still being processed; retry later"
                            .into(),
                    ))
                }
            }
        }
    }
}

fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The answer a submission gives, and its key replays.
pub fn render_response(job: &Job, pictory_fields: &[FieldError]) -> (u16, String) {
    use crate::domain::JobStatus;
    match job.status {
        JobStatus::SubmitFailed => {
            let error = job.error.clone().unwrap_or(JobError {
                code: "UNKNOWN".into(),
                message: "Pictory refused the request".into(),
            });
            let body = json!({"error": {
                "code": "upstream_rejected",
                "message": error.message,
                "upstream_code": error.code,
                "fields": pictory_fields,
                "submission_id": job.submission_id,
            }});
            (422, body.to_string())
        }
        JobStatus::SubmitUnknown => (202, json!(job.view()).to_string()),
        _ => (201, json!(job.view()).to_string()),
    }
}

fn idempotency_key(headers: &HeaderMap, body: &Value) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= KEY_LIMIT)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {KEY_LIMIT} visible ASCII characters"),
            )
        })?;
    Ok(Some(IdempotencyKey {
        key: key.to_owned(),
        fingerprint: fingerprint(body),
    }))
}

/// SHA-256 of the body with object keys sorted, so `{"a":1,"b":2}` and `{"b":2,"a":1}` match.
pub fn fingerprint(body: &Value) -> Vec<u8> {
    fn canonical(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), canonical(v)))
                        .collect::<Map<String, Value>>(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    Sha256::digest(canonical(body).to_string().as_bytes()).to_vec()
}

/// Calls Generate, retrying only what certainly created nothing.
async fn call_generate(
    client: &crate::pictory::PictoryClient,
    request: &Value,
) -> (SubmitOutcome, Vec<FieldError>) {
    let mut attempt = 1;
    loop {
        match client.generate(request).await {
            Generate::Created { job_id } => return (SubmitOutcome::Created { job_id }, Vec::new()),
            Generate::Rejected {
                http_status,
                code,
                message,
                fields,
            } => {
                let error = JobError {
                    code: code.unwrap_or_else(|| format!("HTTP_{http_status}")),
                    message,
                };
                let fields = fields
                    .into_iter()
                    .map(|(field, message)| FieldError { field, message })
                    .collect();
                return (SubmitOutcome::Rejected { error }, fields);
            }
            Generate::Ambiguous { reason } => {
                tracing::warn!(%reason, "Generate call ended ambiguously; the job is submit_unknown");
                return (SubmitOutcome::Unknown { reason }, Vec::new());
            }
            Generate::NothingCreated {
                reason,
                retry_after,
            } => {
                if attempt >= ATTEMPTS {
                    let error = JobError {
                        code: "UPSTREAM_UNAVAILABLE".into(),
                        message: format!(
                            "Pictory did not take the request after {ATTEMPTS} attempts ({reason})"
                        ),
                    };
                    return (SubmitOutcome::NothingCreated { error }, Vec::new());
                }
                let backoff = Duration::from_millis(500 * 2u64.pow(attempt - 1));
                let wait = retry_after.unwrap_or(backoff).min(MAX_BACKOFF);
                tracing::info!(%reason, attempt, wait_ms = wait.as_millis() as u64, "Generate call created nothing; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}
