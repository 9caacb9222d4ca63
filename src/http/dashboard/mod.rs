//! The dashboard (SPEC §11): server-rendered pages at `/` on the private listener, for the
//! people who run jobhook. Every page reads through the code the API's handlers use (the same
//! functions, the same store calls), and every action runs the API's own handler, so the
//! dashboard can never show or do something the API would not.
//!
//! - [`session`]: who is looking (a signed cookie) and the CSRF tokens bound to it;
//! - [`signin`]: `/login` and `/logout`;
//! - [`jobs`], [`job`], [`ops`]: the pages; [`actions`]: the buttons on them;
//! - [`page`], [`form`], [`view`], [`assets`]: rendering, forms, what a job shows, CSS and JS.

mod actions;
mod assets;
mod form;
mod job;
mod jobs;
mod ops;
mod page;
pub mod session;
mod signin;
mod view;

use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use page::{local_path, see_other, PageError};
use session::over_https;

/// The dashboard's routes (empty when `dashboard.enabled` is off).
pub fn router(state: &AppState) -> Router<AppState> {
    if !state.config.dashboard.enabled {
        return Router::new();
    }
    Router::new()
        .route("/", get(jobs::jobs_page))
        .route("/live/rows", get(jobs::live_rows))
        .route("/jobs/{id}", get(job::job_page))
        .route("/jobs/{id}/refresh", post(actions::refresh))
        .route("/jobs/{id}/continue", post(actions::continue_job))
        .route("/jobs/{id}/archive", post(actions::archive))
        .route("/deliveries/{id}/replay", post(actions::replay))
        .route(
            "/notifications/{id}/retry",
            post(actions::retry_notification),
        )
        .route("/endpoints/enable", post(actions::enable_endpoint))
        .route("/ops", get(ops::ops_page))
        .route("/login", get(signin::login_page).post(signin::login))
        .route("/logout", get(signin::logout_page).post(signin::logout))
        .route_layer(middleware::from_fn_with_state(state.clone(), identify))
        .route("/assets/{file}", get(assets::serve))
}

/// Pages anyone may see: signing in, and out.
fn open_to_all(path: &str) -> bool {
    matches!(path, "/login" | "/logout")
}

/// Reads the visitor's session (or gives a new visitor one), keeps out whoever must sign in
/// first, and protects every answer (see [`page::protect`]).
async fn identify(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let now = state.now_ms();
    let secure = over_https(request.headers());
    let (visitor, issued) = match state.sessions.read(request.headers(), now) {
        Some(visitor) => (visitor, false),
        None => (state.sessions.anonymous(now), true),
    };
    let path = request.uri().path();
    let mut response =
        if state.sessions.sign_in_required() && !visitor.signed_in && !open_to_all(path) {
            if request.method() == Method::GET && path != "/live/rows" {
                let back = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .and_then(local_path)
                    .unwrap_or("/");
                let query = serde_urlencoded::to_string([("next", back)]).unwrap_or_default();
                see_other(&format!("/login?{query}"))
            } else {
                PageError::new(
                    StatusCode::UNAUTHORIZED,
                    "Sign in first: this dashboard asks for one of the API tokens (api.tokens).",
                )
                .into_response()
            }
        } else {
            request.extensions_mut().insert(visitor.clone());
            next.run(request).await
        };
    // A new visitor keeps the session its forms' CSRF tokens were made for; a handler that
    // set the cookie itself (sign-in, sign-out) has the last word.
    if issued && !response.headers().contains_key(header::SET_COOKIE) {
        let cookie = state.sessions.set_cookie(&visitor, secure);
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    page::protect(&mut response);
    response
}
