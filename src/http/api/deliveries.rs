//! `/v1/deliveries`: the archive of raw webhook deliveries, and replaying one.

use super::jobs::{page_limit, parse_cursor};
use crate::domain::job::JobView;
use crate::domain::time::rfc3339;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiPath, ApiQuery};
use crate::pictory::JobReport;
use crate::state::AppState;
use crate::store::{Delivery, DeliveryFilter, DeliveryOutcome, ReplayInput, Replayed};
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    /// The job it was matched to (Pictory id, or submission id before Pictory gave one).
    pub job_id: Option<String>,
    pub received_at: String,
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: String,
    pub reason: Option<String>,
    pub remote_addr: Option<String>,
    #[schema(value_type = Object)]
    pub headers: Value,
    /// The body as text; null once pruned by retention.
    pub body: Option<String>,
    /// The body in base64 when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    pub body_size: i64,
    /// For duplicates: the delivery whose body this one repeats.
    pub duplicate_of: Option<i64>,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        let (body, body_base64) = match &d.body {
            None => (None, None),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                ),
            },
        };
        DeliveryView {
            id: d.id,
            job_id: d.job_id.clone(),
            received_at: rfc3339(d.received_at),
            outcome: d.outcome.as_str().to_owned(),
            reason: d.reason.clone(),
            remote_addr: d.remote_addr.clone(),
            headers: d.headers.clone(),
            body,
            body_base64,
            body_size: d.body_size,
            duplicate_of: d.duplicate_of,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListDeliveriesQuery {
    /// Pictory job id or submission id.
    pub job_id: Option<String>,
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Archived deliveries, newest first.
#[utoipa::path(get, path = "/v1/deliveries", tag = "deliveries", params(ListDeliveriesQuery),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListDeliveriesQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let outcome = query
        .outcome
        .as_deref()
        .map(|text| {
            DeliveryOutcome::parse(text).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("outcome: `{text}` is not accepted, duplicate or rejected"),
                )
            })
        })
        .transpose()?;
    let filter = DeliveryFilter {
        job: query.job_id.filter(|j| !j.is_empty()),
        outcome,
    };
    let limit = page_limit(query.limit)?;
    let cursor = parse_cursor(query.cursor.as_deref())?;
    let page = state.store.list_deliveries(&filter, cursor, limit).await?;
    Ok(Json(DeliveryList {
        data: page.items.iter().map(DeliveryView::from).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

async fn find_delivery(state: &AppState, id: &str) -> Result<Delivery, ApiError> {
    let not_found = || ApiError::NotFound(format!("delivery {id} does not exist"));
    let id: i64 = id.parse().map_err(|_| not_found())?;
    state.store.delivery(id).await?.ok_or_else(not_found)
}

/// One archived delivery.
#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "deliveries",
    params(("id" = i64, Path)),
    responses((status = 200, body = DeliveryView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_delivery(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeliveryView>, ApiError> {
    Ok(Json(DeliveryView::from(&find_delivery(&state, &id).await?)))
}

/// Processes an archived delivery again and answers the job as it is afterwards.
#[utoipa::path(post, path = "/v1/deliveries/{id}/replay", tag = "deliveries",
    params(("id" = i64, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody),
        (status = 409, description = "Nothing to apply (no job, or the body was pruned)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn replay_delivery(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let delivery = find_delivery(&state, &id).await?;
    let report = delivery
        .body
        .as_deref()
        .and_then(|body| serde_json::from_slice::<Value>(body).ok())
        .map(|json| JobReport::from_json(&json));
    let verify = state.verify_webhooks();
    let now = state.now_ms();
    let again = ReplayInput {
        job_id: report.as_ref().and_then(|r| r.job_id.clone()),
        report: report.map(|r| r.state).filter(|_| !verify),
        look_now: verify,
        first_poll_at: state.first_poll_at(now),
    };
    let replayed = state.store.replay(delivery.id, again, now).await?;
    match replayed {
        None => Err(ApiError::NotFound(format!("delivery {id} does not exist"))),
        Some(Replayed::NotApplicable(why)) => Err(ApiError::Conflict(format!(
            "delivery {id} cannot be replayed: {why}"
        ))),
        Some(Replayed::Applied(job)) => {
            state.changes.publish(&job);
            Ok(Json(job.view()))
        }
    }
}
