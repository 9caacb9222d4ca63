//! `/`: the jobs, newest change first, with the filters, search and cursor pages of
//! `GET /v1/jobs` (through its very handler), and `/live/rows`: rows for jobs that just
//! changed, which the page's script moves to the top as the event stream announces them.

use super::page::{render, render_with, Chrome, PageError};
use super::session::Visitor;
use super::view::JobRow;
use crate::domain::JobStatus;
use crate::http::api::jobs::{find_job, list_jobs, ListJobsQuery};
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::state::AppState;
use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;

/// The status filters offered: the API's comma lists, named for people.
const STATUS_CHOICES: [(&str, &str); 7] = [
    ("", "Any status"),
    (
        "submitting,pending,in_progress,submit_unknown",
        "Not final yet",
    ),
    ("completed", "Completed"),
    ("failed,submit_failed", "Failed"),
    ("timed_out,not_found", "Timed out or not found"),
    ("in_progress", "In progress"),
    ("pending", "Pending"),
];

/// The page's query: what `GET /v1/jobs` takes, as a form sends it (empty fields included,
/// and times from `<input type="datetime-local">`).
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    updated_after: String,
    #[serde(default)]
    updated_before: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    q: String,
}

fn filled(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// A browser's `datetime-local` value (`2025-11-29T10:30`, no zone) is taken as UTC, as the
/// page says; anything else goes to the API as written (RFC 3339 works too).
fn as_rfc3339(text: &str) -> Option<String> {
    let text = filled(text)?;
    let local = text.len() == 16 && text.as_bytes().get(10) == Some(&b'T') && !text.contains('Z');
    Some(if local { format!("{text}:00Z") } else { text })
}

struct StatusChoice {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

#[derive(Template)]
#[template(path = "dashboard/jobs.html")]
struct JobsPage {
    chrome: Chrome,
    rows: Vec<JobRow>,
    statuses: Vec<StatusChoice>,
    status: String,
    updated_after: String,
    updated_before: String,
    q: String,
    /// The link to the next (older) page, with the same filters.
    older: Option<String>,
    /// Not the first page: a link back to it.
    paged: bool,
    first: String,
    /// New rows may be put on top: the first page, with no upper time bound and no search.
    live_inserts: bool,
    /// What the API said was wrong with the query, if anything.
    problem: Option<String>,
}

pub async fn jobs_page(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let query: JobsQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or_default())
        .map_err(|_| PageError::new(StatusCode::BAD_REQUEST, "this address is malformed"))?;
    let api_query = ListJobsQuery {
        status: filled(&query.status),
        updated_after: as_rfc3339(&query.updated_after),
        updated_before: as_rfc3339(&query.updated_before),
        limit: None,
        cursor: filled(&query.cursor),
        q: filled(&query.q),
    };
    let now = state.now_ms();
    // The API's own handler: the same parsing, filters, search and pages.
    let (rows, next, problem) = match list_jobs(State(state.clone()), ApiQuery(api_query)).await {
        Ok(list) => {
            let rows = list.0.data;
            (rows, list.0.next_cursor, None)
        }
        Err(ApiError::BadRequest { message, .. }) => (Vec::new(), None, Some(message)),
        Err(err) => return Err(err.into()),
    };
    // `list_jobs` answers views; the rows need the request too, which the view carries.
    let rows = rows
        .into_iter()
        .map(|view| JobRow::of_view(&view, now))
        .collect();
    let link = |cursor: &str| {
        let pairs = [
            ("status", query.status.as_str()),
            ("updated_after", query.updated_after.as_str()),
            ("updated_before", query.updated_before.as_str()),
            ("q", query.q.as_str()),
            ("cursor", cursor),
        ];
        let kept: Vec<(&str, &str)> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        format!(
            "/?{}",
            serde_urlencoded::to_string(kept).unwrap_or_default()
        )
    };
    let older = next.as_deref().map(link);
    let first = link("");
    let page = JobsPage {
        chrome: Chrome::new(&state, &visitor, "jobs"),
        rows,
        statuses: STATUS_CHOICES
            .iter()
            .map(|(value, label)| StatusChoice {
                value,
                label,
                selected: *value == query.status,
            })
            .collect(),
        paged: filled(&query.cursor).is_some(),
        first,
        live_inserts: filled(&query.cursor).is_none()
            && filled(&query.updated_before).is_none()
            && filled(&query.q).is_none(),
        status: query.status,
        updated_after: query.updated_after,
        updated_before: query.updated_before,
        q: query.q,
        older,
        problem: problem.clone(),
    };
    if problem.is_some() {
        render_with(StatusCode::BAD_REQUEST, &page)
    } else {
        render(&page)
    }
}

#[derive(Template)]
#[template(path = "dashboard/rows.html")]
struct Rows {
    rows: Vec<JobRow>,
}

/// Most rows one live request asks for (the script batches the changes of a moment).
const LIVE_ROWS: usize = 50;

/// `GET /live/rows?id=a&id=b`: the table rows of these jobs, rendered as on the page. Jobs
/// that are unknown are left out.
pub async fn live_rows(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or_default())
            .map_err(|_| PageError::new(StatusCode::BAD_REQUEST, "this address is malformed"))?;
    let now = state.now_ms();
    let mut rows = Vec::new();
    for (_, id) in pairs
        .iter()
        .filter(|(name, _)| name == "id")
        .take(LIVE_ROWS)
    {
        match find_job(&state, id).await {
            Ok(job) => rows.push(JobRow::of(&job, now)),
            Err(ApiError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    render(&Rows { rows })
}

impl JobsPage {
    /// Statuses of the current filter, for the script deciding whether a changed job belongs.
    fn status_filter(&self) -> String {
        self.status
            .split(',')
            .map(str::trim)
            .filter(|s| s.parse::<JobStatus>().is_ok())
            .collect::<Vec<_>>()
            .join(",")
    }
}
