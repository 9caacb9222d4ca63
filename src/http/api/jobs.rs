//! `/v1/jobs` and `/v1/webhook-url`.

use crate::domain::job::JobView;
use crate::domain::search::JobSearch;
use crate::domain::time::parse_rfc3339;
use crate::domain::{Job, JobStatus};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::reconcile::RefreshError;
use crate::state::AppState;
use crate::store::{Cursor, JobFilter};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Largest accepted `metadata`, serialized.
pub const METADATA_LIMIT: usize = 16 * 1024;
/// Longest accepted Pictory job id.
const JOB_ID_LIMIT: usize = 128;
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterJob {
    /// Pictory's job id, as Pictory gave it.
    pub job_id: String,
    /// Any JSON object; returned with the job.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub data: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventList {
    /// History entries, oldest first: `{"id", "at", "kind", ...}`.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookUrl {
    pub url: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListJobsQuery {
    /// Comma-separated statuses.
    pub status: Option<String>,
    /// RFC 3339; only jobs changed after this.
    pub updated_after: Option<String>,
    /// RFC 3339; only jobs changed before this.
    pub updated_before: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// Search: a job id or submission id (exact), or a value anywhere in a job's metadata
    /// (exact, ASCII case ignored; a value shared by more than 1,000 jobs finds the 1,000 most
    /// recently created). Combines with the other filters and pages the same way.
    pub q: Option<String>,
}

/// Checks a Pictory job id given by a client.
pub fn validate_job_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid_field(field, "must not be empty"));
    }
    if id.chars().count() > JOB_ID_LIMIT {
        return Err(ApiError::invalid_field(
            field,
            format!("must be at most {JOB_ID_LIMIT} characters"),
        ));
    }
    if id
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '/')
    {
        return Err(ApiError::invalid_field(
            field,
            "must not contain spaces, control characters or `/`",
        ));
    }
    Ok(())
}

/// Checks client `metadata`: a JSON object of bounded size.
pub fn validate_metadata(metadata: &Option<Value>) -> Result<(), ApiError> {
    match metadata {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(map))
            if Value::Object(map.clone()).to_string().len() <= METADATA_LIMIT =>
        {
            Ok(())
        }
        Some(Value::Object(_)) => Err(ApiError::invalid_field(
            "metadata",
            format!("must be at most {METADATA_LIMIT} bytes of JSON"),
        )),
        Some(_) => Err(ApiError::invalid_field("metadata", "must be a JSON object")),
    }
}

/// Finds a job by Pictory id or submission id, or answers 404.
pub async fn find_job(state: &AppState, id: &str) -> Result<Job, ApiError> {
    let not_found = || ApiError::NotFound(format!("job {id} is not tracked"));
    if id.is_empty() || id.chars().count() > JOB_ID_LIMIT {
        return Err(not_found());
    }
    state.store.job(id).await?.ok_or_else(not_found)
}

/// Start tracking a job submitted outside jobhook.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = RegisterJob,
    responses(
        (status = 201, description = "Now tracked", body = JobView),
        (status = 200, description = "Already tracked", body = JobView),
        (status = 422, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn register_job(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterJob>,
) -> Result<Response, ApiError> {
    let job_id = body.job_id.trim();
    validate_job_id("job_id", job_id)?;
    validate_metadata(&body.metadata)?;
    let metadata = body.metadata.filter(|m| !m.is_null());
    let now = state.now_ms();
    let registered = state
        .store
        .register(job_id, metadata, state.first_poll_at(now), now)
        .await?;
    state.changes.publish(&registered.job);
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(registered.job.view())).into_response())
}

/// The URL to put in Generate requests made outside jobhook.
#[utoipa::path(get, path = "/v1/webhook-url", tag = "jobs",
    responses((status = 200, body = WebhookUrl)), security(("bearer" = [])))]
pub async fn webhook_url(State(state): State<AppState>) -> Json<WebhookUrl> {
    Json(WebhookUrl {
        url: state.generic_webhook_url(),
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetJobQuery {
    /// Hold the request until the job is final or this time passes (`30s`, at most `60s`).
    pub wait: Option<String>,
}

/// Longest a long-poll may hold a request.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A comma-separated list of statuses (`status=completed,failed`).
pub(super) fn parse_statuses(list: Option<&str>) -> Result<Vec<JobStatus>, ApiError> {
    list.into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            name.parse::<JobStatus>().map_err(|_| {
                ApiError::bad_request("invalid_query", format!("status: unknown status `{name}`"))
            })
        })
        .collect()
}

fn parse_wait(wait: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(text) = wait.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    match crate::config::parse_duration(text) {
        Ok(wait) if wait <= MAX_WAIT => Ok(Some(wait)),
        Ok(_) => Err(ApiError::bad_request("invalid_query", "wait: at most 60s")),
        Err(_) => Err(ApiError::bad_request(
            "invalid_query",
            format!("wait: `{text}` is not a duration like 30s"),
        )),
    }
}

/// One job, by Pictory job id or submission id; with `wait`, a long-poll.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Pictory job id or submission id"), GetJobQuery),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_job(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<GetJobQuery>,
) -> Result<Response, ApiError> {
    let wait = parse_wait(query.wait.as_deref())?;
    if wait.is_none() {
        return read_job(&state, &id).await;
    }
    // Subscribe before the first read, so a change between the two is not missed.
    let mut changes = state.changes.subscribe();
    let job = find_job(&state, &id).await?;
    let Some(wait) = wait.filter(|_| !job.status.is_final()) else {
        return Ok(Json(job.view()).into_response());
    };
    let give_up = tokio::time::sleep(wait);
    tokio::pin!(give_up);
    let _waiting = state.metrics.long_poll_waiting();
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) if change.pk != job.pk => continue,
                Ok(change) if !change.status.is_final() => continue,
                // Our job became final, or we fell behind and cannot tell: read it.
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let now = find_job(&state, &id).await?;
                    if now.status.is_final() {
                        return Ok(Json(now.view()).into_response());
                    }
                }
                Err(RecvError::Closed) => break,
            },
            _ = &mut give_up => break,
            _ = state.stopping.cancelled() => break,
        }
    }
    Ok(Json(find_job(&state, &id).await?.view()).into_response())
}

/// A plain read, served from the cache of rendered jobs when nothing changed the job since.
async fn read_job(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let json = match state.changes.cached(id) {
        Some(json) => json,
        None => {
            let generation = state.changes.generation();
            let job = find_job(state, id).await?;
            let json = Bytes::from(
                serde_json::to_vec(&job.view()).map_err(|e| ApiError::Internal(e.into()))?,
            );
            state.changes.remember(id, job.pk, json.clone(), generation);
            json
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// The last Pictory response for the job, verbatim.
#[utoipa::path(get, path = "/v1/jobs/{id}/raw", tag = "jobs",
    params(("id" = String, Path, description = "Pictory job id or submission id")),
    responses((status = 200, description = "Pictory's JSON, verbatim", body = Object),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_raw(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id).await?;
    let raw = state.store.raw_response(job.pk).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no Pictory response has been recorded for job {id} yet"
        ))
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], raw).into_response())
}

/// The job's history, oldest first.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "Pictory job id or submission id")),
    responses((status = 200, body = EventList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EventList>, ApiError> {
    let job = find_job(&state, &id).await?;
    let events = state.store.job_events(job.pk).await?;
    Ok(Json(EventList {
        data: events.iter().map(|e| e.to_json()).collect(),
    }))
}

/// Jobs, newest change first, with cursor pagination.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListJobsQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_jobs(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListJobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    let mut filter = JobFilter {
        statuses: parse_statuses(query.status.as_deref())?,
        ..JobFilter::default()
    };
    filter.updated_after = parse_time("updated_after", query.updated_after.as_deref())?;
    filter.updated_before = parse_time("updated_before", query.updated_before.as_deref())?;
    filter.search = JobSearch::parse(query.q.as_deref().unwrap_or_default())
        .map_err(|why| ApiError::bad_request("invalid_query", format!("q: {why}")))?;
    let limit = page_limit(query.limit)?;
    let cursor = parse_cursor(query.cursor.as_deref())?;
    let page = state.store.list_jobs(&filter, cursor, limit).await?;
    Ok(Json(JobList {
        data: page.items.iter().map(Job::view).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit: must be between 1 and {MAX_PAGE}"),
        )),
    }
}

pub fn parse_cursor(cursor: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    cursor
        .map(|text| {
            Cursor::decode(text).ok_or_else(|| {
                ApiError::bad_request("invalid_query", "cursor: not a cursor this API gave out")
            })
        })
        .transpose()
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|text| {
            parse_rfc3339(text).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("{field}: `{text}` is not an RFC 3339 timestamp"),
                )
            })
        })
        .transpose()
}

/// Asks Pictory about the job now, outside the schedule, and answers the updated job.
#[utoipa::path(post, path = "/v1/jobs/{id}/refresh", tag = "jobs",
    params(("id" = String, Path, description = "Pictory job id or submission id")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody),
        (status = 409, description = "Receive-only mode, or no Pictory id yet", body = ErrorBody),
        (status = 429, description = "No rate-limit slot free", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn refresh_job(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = find_job(&state, &id).await?;
    let Some(poller) = &state.poller else {
        return Err(ApiError::Conflict(
            "jobhook runs receive-only (no pictory.api_key), so it cannot ask Pictory".into(),
        ));
    };
    match poller.refresh(&job).await {
        Ok(job) => Ok(Json(job.view())),
        Err(RefreshError::NoJobId) => Err(ApiError::Conflict(format!(
            "job {id} has no Pictory id yet, so Pictory cannot be asked about it"
        ))),
        Err(RefreshError::RateLimited) => Err(ApiError::RateLimited(
            "the Get Job rate limit (reconcile.rate) has no free slot; retry shortly".into(),
        )),
        Err(RefreshError::Store(err)) => Err(err.into()),
    }
}
