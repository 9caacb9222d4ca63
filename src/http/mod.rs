//! The two HTTP listeners and the middleware they share.

pub mod api;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod public;
pub mod serve;

use crate::metrics::{Listener, RequestLabels};
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use error::ApiError;
use std::time::{Duration, Instant};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Backstop on one public request; the webhook handler bounds its own waits well inside it
/// (body 20 s → 408, commit 20 s → 503 with Retry-After).
const PUBLIC_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request body on the private API.
const API_BODY_LIMIT: usize = 1024 * 1024;

/// The public listener's app: webhooks and `/healthz`.
pub fn public_app(state: AppState) -> Router {
    let router = public::router()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            PUBLIC_REQUEST_TIMEOUT,
        ));
    observe(router, state.clone(), Listener::Public).with_state(state)
}

/// The private listener's app: the REST API, operations and the dashboard.
pub fn api_app(state: AppState) -> Router {
    let router = api::router(&state)
        .merge(dashboard::router(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT));
    observe(router, state.clone(), Listener::Api).with_state(state)
}

/// Request ids (kept from the caller or made), a span per request named by its route, and latency.
fn observe(router: Router<AppState>, state: AppState, listener: Listener) -> Router<AppState> {
    // Layers run outside-in: the id is set first, so the span and the response both carry it.
    router
        .layer(middleware::from_fn_with_state(
            (state, listener),
            record_latency,
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("(unmatched)", MatchedPath::as_str);
                let request_id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %request.method(), route, request_id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

async fn record_latency(
    State((state, listener)): State<(AppState, Listener)>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .request_duration
        .get_or_create(&RequestLabels {
            listener,
            method,
            route,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> Response {
    let mut response =
        ApiError::bad_request("method_not_allowed", "method not allowed").into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
