//! The private listener: REST API under `/v1`, plus `/readyz`, `/metrics` and `/openapi.json`.

pub mod continuations;
pub mod deliveries;
pub mod events;
pub mod files;
pub mod jobs;
pub mod notifications;
pub mod ops;
pub mod quota;
pub mod usage;
pub mod videos;

use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;

pub fn router(state: &AppState) -> Router<AppState> {
    let v1 = Router::new()
        .route("/v1/jobs", post(jobs::register_job).get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/raw", get(jobs::get_raw))
        .route("/v1/jobs/{id}/events", get(jobs::get_events))
        .route("/v1/jobs/{id}/refresh", post(jobs::refresh_job))
        .route("/v1/jobs/{id}/continue", post(continuations::continue_job))
        .route("/v1/jobs/{id}/chain", get(continuations::get_chain))
        .route("/v1/jobs/{id}/files/{name}", get(files::get_file))
        .route("/v1/jobs/{id}/archive", post(files::archive_job))
        .route("/v1/webhook-url", get(jobs::webhook_url))
        .route("/v1/videos", post(videos::submit_video))
        .route("/v1/usage", get(usage::get_usage))
        .route("/v1/quota", get(quota::get_quota))
        .route("/v1/events", get(events::events))
        .route("/v1/notifications", get(notifications::list_notifications))
        .route(
            "/v1/notifications/{id}",
            get(notifications::get_notification),
        )
        .route(
            "/v1/notifications/{id}/retry",
            post(notifications::retry_notification),
        )
        .route("/v1/notify/endpoints", get(notifications::list_endpoints))
        .route(
            "/v1/notify/endpoints/enable",
            post(notifications::enable_endpoint),
        )
        .route("/v1/deliveries", get(deliveries::list_deliveries))
        .route("/v1/deliveries/{id}", get(deliveries::get_delivery))
        .route(
            "/v1/deliveries/{id}/replay",
            post(deliveries::replay_delivery),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(v1)
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
}

/// `Authorization: Bearer <token>` on every `/v1` route when `api.tokens` is set.
///
/// A GET or HEAD may instead carry the dashboard's signed-in session cookie: what a browser
/// fetches by itself for a dashboard page (the `<video>`'s source, images, the live event
/// stream, which `EventSource` opens without any way to add a header) cannot carry a bearer
/// token. Reads only: a cookie never authorises a change through `/v1`, so the cookie needs no
/// CSRF token here (the dashboard's own actions check theirs).
async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.api_requires_token() {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let authorised = match presented {
            Some(token) => state.api_token_matches(token),
            None => {
                let reads = matches!(*request.method(), Method::GET | Method::HEAD);
                reads
                    && state
                        .sessions
                        .read(request.headers(), state.now_ms())
                        .is_some_and(|visitor| visitor.signed_in)
            }
        };
        if !authorised {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(next.run(request).await)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "jobhook private API", description = "Jobs, deliveries and operations of a jobhook instance."),
    paths(
        jobs::register_job, jobs::list_jobs, jobs::get_job, jobs::get_raw, jobs::get_events,
        jobs::refresh_job, jobs::webhook_url, videos::submit_video,
        continuations::continue_job, continuations::get_chain, files::get_file,
        files::archive_job, usage::get_usage,
        quota::get_quota,
        events::events, notifications::list_notifications, notifications::get_notification,
        notifications::retry_notification, notifications::list_endpoints,
        notifications::enable_endpoint, deliveries::list_deliveries, deliveries::get_delivery,
        deliveries::replay_delivery, ops::readyz, ops::metrics,
    ),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
