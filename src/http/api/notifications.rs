//! `/v1/notifications` and `/v1/notify/endpoints`: the outbox, visible and replayable.

use super::jobs::{page_limit, parse_cursor};
use crate::domain::time::rfc3339;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::Notification;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize, utoipa::ToSchema)]
pub struct NotificationView {
    pub id: i64,
    pub endpoint: String,
    /// `job.completed`, `job.failed`, `job.timed_out` or `job.updated`.
    pub r#type: String,
    /// The `webhook-id` header: the same on every attempt.
    pub message_id: String,
    /// `pending`, `delivered` or `exhausted`.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    /// The body sent, `{"type", "timestamp", "data"}`.
    #[schema(value_type = Object)]
    pub payload: Value,
}

impl From<&Notification> for NotificationView {
    fn from(n: &Notification) -> Self {
        NotificationView {
            id: n.id,
            endpoint: n.endpoint.clone(),
            r#type: n.event_type.clone(),
            message_id: n.message_id.clone(),
            state: n.state.clone(),
            attempts: n.attempts,
            next_attempt_at: n
                .next_attempt_at
                .filter(|_| n.state == "pending")
                .map(rfc3339),
            last_status: n.last_status,
            last_error: n.last_error.clone(),
            created_at: rfc3339(n.created_at),
            delivered_at: n.delivered_at.map(rfc3339),
            payload: serde_json::from_str(&n.payload).unwrap_or(Value::Null),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NotificationList {
    pub data: Vec<NotificationView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListNotificationsQuery {
    /// `pending`, `delivered` or `exhausted`.
    pub state: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The outbox, newest first.
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", params(ListNotificationsQuery),
    responses((status = 200, body = NotificationList), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_notifications(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListNotificationsQuery>,
) -> Result<Json<NotificationList>, ApiError> {
    if let Some(s) = query.state.as_deref() {
        if !["pending", "delivered", "exhausted"].contains(&s) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("state: `{s}` is not pending, delivered or exhausted"),
            ));
        }
    }
    let limit = page_limit(query.limit)?;
    let cursor = parse_cursor(query.cursor.as_deref())?;
    let page = state
        .store
        .list_notifications(query.state.as_deref(), cursor, limit)
        .await?;
    Ok(Json(NotificationList {
        data: page.items.iter().map(NotificationView::from).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("notification {id} does not exist")))
}

/// One notification.
#[utoipa::path(get, path = "/v1/notifications/{id}", tag = "notifications", params(("id" = i64, Path)),
    responses((status = 200, body = NotificationView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_notification(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NotificationView>, ApiError> {
    let notification = state
        .store
        .notification(parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("notification {id} does not exist")))?;
    Ok(Json(NotificationView::from(&notification)))
}

/// Sends an exhausted notification again, with a fresh retry schedule.
#[utoipa::path(post, path = "/v1/notifications/{id}/retry", tag = "notifications", params(("id" = i64, Path)),
    responses((status = 200, body = NotificationView), (status = 404, body = ErrorBody),
        (status = 409, description = "Already delivered", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn retry_notification(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NotificationView>, ApiError> {
    let notification = state
        .store
        .retry_notification(parse_id(&id)?, state.now_ms())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("notification {id} does not exist")))?;
    if notification.state == "delivered" {
        return Err(ApiError::Conflict(format!(
            "notification {id} was already delivered"
        )));
    }
    state.outbox_wake.notify_one();
    Ok(Json(NotificationView::from(&notification)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    pub url: String,
    pub enabled: bool,
    pub disabled_at: Option<String>,
    pub disabled_reason: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    pub data: Vec<EndpointView>,
}

/// The configured notification endpoints and whether they are enabled.
#[utoipa::path(get, path = "/v1/notify/endpoints", tag = "notifications",
    responses((status = 200, body = EndpointList)), security(("bearer" = [])))]
pub async fn list_endpoints(State(state): State<AppState>) -> Result<Json<EndpointList>, ApiError> {
    let endpoints = state.store.endpoint_states().await?;
    Ok(Json(EndpointList {
        data: endpoints
            .into_iter()
            .map(|e| EndpointView {
                url: e.url,
                enabled: e.disabled_at.is_none(),
                disabled_at: e.disabled_at.map(rfc3339),
                disabled_reason: e.disabled_reason,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableEndpoint {
    pub url: String,
}

/// Re-enables an endpoint that answered 410 Gone; its pending notifications go out again.
#[utoipa::path(post, path = "/v1/notify/endpoints/enable", tag = "notifications", request_body = EnableEndpoint,
    responses((status = 200, body = EndpointList), (status = 404, description = "Not a configured endpoint", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn enable_endpoint(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EnableEndpoint>,
) -> Result<Json<EndpointList>, ApiError> {
    let known = state.store.endpoint_states().await?;
    if !known.iter().any(|e| e.url == body.url) {
        return Err(ApiError::NotFound(format!(
            "{} is not a configured endpoint",
            body.url
        )));
    }
    state
        .store
        .enable_endpoint(&body.url, state.now_ms())
        .await?;
    state.outbox_wake.notify_one();
    list_endpoints(State(state)).await
}
