//! `POST /v1/jobs/{id}/continue` and `GET /v1/jobs/{id}/chain`: longer videos made of clips,
//! each starting from the last frame of the one before (SPEC §12).
//!
//! A continuation is an ordinary submission (the path of `POST /v1/videos`, with its
//! validation, Idempotency-Key and one Generate call at most) whose `firstFrameImageUrl` is the
//! parent's `lastFrameImageUrl` as Pictory reported it. Never a URL of jobhook's: Pictory
//! fetches the image itself and cannot reach jobhook's private listener (nor, later, an
//! archived copy behind it).

use super::jobs::find_job;
use super::videos::{body_object, submit, take_metadata, GenerateRequest};
use crate::domain::job::JobView;
use crate::domain::{Job, JobStatus};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath};
use crate::pictory::rules;
use crate::state::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Most jobs `GET /v1/jobs/{id}/chain` lists.
pub const CHAIN_LIMIT: u32 = 1000;

/// Fields jobhook sets for a continuation: the first frame is the parent's last one, and the
/// sources are mutually exclusive with it.
const SET_BY_JOBHOOK: [&str; 4] = [
    "firstFrameImageUrl",
    "extendVideoUrl",
    "referenceImageUrls",
    "webhook",
];

/// Submit the next clip of a chain.
#[utoipa::path(post, path = "/v1/jobs/{id}/continue", tag = "videos",
    params(("id" = String, Path, description = "Pictory job id or submission id of a completed job"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe key, as for POST /v1/videos")),
    request_body(content = Object, description = "The next clip's Generate Video fields: prompt (required), model, \
        duration, aspectRatio, plus optional metadata. `firstFrameImageUrl` is set to the parent's \
        lastFrameImageUrl as Pictory reported it. `model` defaults to the parent's, and so does \
        `aspectRatio` when the model is the parent's."),
    responses(
        (status = 201, description = "Pictory created the next clip; its `parent` is the job continued", body = JobView),
        (status = 202, description = "Outcome unknown (submit_unknown); never retried automatically", body = JobView),
        (status = 400, description = "Malformed JSON, or an Idempotency-Key that is not 1 to 255 visible characters", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "The job is not tracked", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 409, description = "The job is not completed or has no last frame; receive-only mode; \
            or the key's first request is still running", body = ErrorBody),
        (status = 422, description = "Invalid request, upstream_rejected, or the key was used with another body", body = ErrorBody),
        (status = 503, description = "Pictory unavailable; nothing was created", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn continue_job(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let parent = find_job(&state, &id).await?;
    let mut fields = body_object(&body)?;
    let metadata = take_metadata(&mut fields)?;
    for field in SET_BY_JOBHOOK {
        if fields.contains_key(field) {
            return Err(ApiError::invalid_field(
                field,
                "is set by jobhook: a continuation starts from the last frame of the job it continues",
            ));
        }
    }
    let first_frame = last_frame(&parent, &id)?;
    inherit_from_parent(&mut fields, &parent);
    fields.insert("firstFrameImageUrl".into(), Value::String(first_frame));
    // The key covers the parent as well as the body: the same body continuing another job is
    // another request.
    let keyed_body = json!({"continue": parent.pk, "body": body});
    let request = GenerateRequest {
        fields,
        metadata,
        parent_pk: Some(parent.pk),
    };
    submit(state, &headers, &keyed_body, request).await
}

/// Pictory's `lastFrameImageUrl` of a completed job, or why the job cannot be continued.
fn last_frame(parent: &Job, id: &str) -> Result<String, ApiError> {
    if parent.status != JobStatus::Completed {
        return Err(ApiError::Conflict(format!(
            "job {id} is {}; only a completed job can be continued",
            parent.status
        )));
    }
    let frame = parent
        .output
        .as_ref()
        .and_then(|output| output.last_frame_image_url.clone())
        .filter(|url| !url.is_empty())
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "job {id} has no last frame (Pictory reported no lastFrameImageUrl), so it cannot be continued"
            ))
        })?;
    if !rules::is_web_url(&frame) {
        return Err(ApiError::Conflict(format!(
            "job {id}'s last frame is not an http(s) URL Pictory could fetch, so it cannot be continued"
        )));
    }
    Ok(frame)
}

/// The next clip looks like the last one unless the client says otherwise: the parent's model
/// when none is given, and its aspect ratio when the model stays the same (another model may
/// not offer it, and then Pictory's default for that model is the safer guess).
fn inherit_from_parent(fields: &mut Map<String, Value>, parent: &Job) {
    let Some(Value::Object(asked)) = &parent.request else {
        return;
    };
    if !fields.contains_key("model") {
        if let Some(model) = asked.get("model").filter(|m| m.is_string()) {
            fields.insert("model".into(), model.clone());
        }
    }
    let same_model =
        fields.get("model").and_then(Value::as_str) == asked.get("model").and_then(Value::as_str);
    if same_model && !fields.contains_key("aspectRatio") {
        if let Some(ratio) = asked.get("aspectRatio").filter(|r| r.is_string()) {
            fields.insert("aspectRatio".into(), ratio.clone());
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Chain {
    /// Every clip of the chain: the first one, then depth first, each job's continuations
    /// oldest first (without branches: the clips in playback order).
    pub data: Vec<JobView>,
    /// True when the chain has more than 1,000 clips and only the first 1,000 are listed.
    pub truncated: bool,
}

/// The whole chain a job belongs to, first clip first.
#[utoipa::path(get, path = "/v1/jobs/{id}/chain", tag = "jobs",
    params(("id" = String, Path, description = "Pictory job id or submission id of any clip of the chain")),
    responses((status = 200, body = Chain), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_chain(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Chain>, ApiError> {
    let job = find_job(&state, &id).await?;
    let mut jobs = state.store.chain(job.pk, CHAIN_LIMIT + 1).await?;
    let truncated = jobs.len() > CHAIN_LIMIT as usize;
    jobs.truncate(CHAIN_LIMIT as usize);
    Ok(Json(Chain {
        data: jobs.iter().map(Job::view).collect(),
        truncated,
    }))
}
