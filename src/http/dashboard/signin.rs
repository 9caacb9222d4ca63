//! `/login` and `/logout`: a token asked for once, a signed session kept instead of it.

use super::form::ActionForm;
use super::page::{local_path, render, render_with, see_other, Chrome, PageError};
use super::session::{over_https, Visitor};
use crate::state::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;

#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage {
    chrome: Chrome,
    next: String,
    refused: bool,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Where to go after signing in: a path on this site, else the jobs.
fn next_path(next: Option<&str>) -> String {
    next.and_then(local_path).unwrap_or("/").to_owned()
}

pub async fn login_page(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<NextQuery>,
) -> Result<Response, PageError> {
    let next = next_path(query.next.as_deref());
    if visitor.signed_in || !state.sessions.sign_in_required() {
        return Ok(see_other(&next));
    }
    render(&LoginPage {
        chrome: Chrome::new(&state, &visitor, ""),
        next,
        refused: false,
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Signs in with one of `api.tokens`: a new session (never the one the sign-in form was
/// served under, so a session planted before sign-in is worth nothing after it).
pub async fn login(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    headers: HeaderMap,
    ActionForm(form): ActionForm<LoginForm>,
) -> Result<Response, PageError> {
    let next = next_path(form.next.as_deref());
    if !state.sessions.sign_in_required() {
        return Ok(see_other(&next));
    }
    match state.sessions.sign_in(&form.token, state.now_ms()) {
        Some(session) => {
            let mut response = see_other(&next);
            let cookie = state.sessions.set_cookie(&session, over_https(&headers));
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            Ok(response)
        }
        None => {
            tracing::warn!("dashboard sign-in refused: not one of api.tokens");
            render_with(
                StatusCode::UNAUTHORIZED,
                &LoginPage {
                    chrome: Chrome::new(&state, &visitor, ""),
                    next,
                    refused: true,
                },
            )
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/logout.html")]
struct LogoutPage {
    chrome: Chrome,
}

/// A link to `/logout` lands here: signing out is a POST like every action, so another site
/// cannot sign a person out behind their back.
pub async fn logout_page(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
) -> Result<Response, PageError> {
    render(&LogoutPage {
        chrome: Chrome::new(&state, &visitor, ""),
    })
}

#[derive(Deserialize)]
pub struct LogoutForm {}

/// Ends the session: the cookie is cleared, and the next page asks for a token again.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    ActionForm(_): ActionForm<LogoutForm>,
) -> Response {
    let target = if state.sessions.sign_in_required() {
        "/login"
    } else {
        "/"
    };
    let mut response = see_other(target);
    response.headers_mut().insert(
        header::SET_COOKIE,
        state.sessions.clear_cookie(over_https(&headers)),
    );
    response
}
