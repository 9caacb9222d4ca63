//! `GET /v1/events`: every status change as a Server-Sent Event, resumable with `Last-Event-ID`.
//!
//! The stream reads the changes table, not an in-memory buffer: ids are the history ids of the
//! changes, so a client that reconnects (even across a restart) gets exactly what it missed, in
//! order. The in-process broadcast only wakes the stream. A slow client costs nothing but its own
//! cursor: the stream is pulled as the client reads, at most one page of changes at a time.

use crate::domain::JobStatus;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::ApiQuery;
use crate::state::AppState;
use crate::store::Change;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::Stream;
use serde::Deserialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;

/// Changes read from the database at a time, per client.
const PAGE: u32 = 100;
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only changes to these statuses (comma-separated).
    pub status: Option<String>,
    /// Only changes of this job (Pictory id or submission id).
    pub job_id: Option<String>,
}

struct Filter {
    statuses: Vec<JobStatus>,
    job: Option<String>,
}

impl Filter {
    fn admits(&self, change: &Change) -> bool {
        if self.statuses.is_empty() && self.job.is_none() {
            return true;
        }
        let Ok(job) = serde_json::from_str::<Value>(&change.snapshot) else {
            return false;
        };
        let status_ok = self.statuses.is_empty()
            || job["status"]
                .as_str()
                .and_then(|s| s.parse::<JobStatus>().ok())
                .is_some_and(|s| self.statuses.contains(&s));
        let job_ok = self.job.as_deref().is_none_or(|wanted| {
            job["job_id"].as_str() == Some(wanted) || job["submission_id"].as_str() == Some(wanted)
        });
        status_ok && job_ok
    }
}

struct Cursor {
    state: AppState,
    after: i64,
    buffered: VecDeque<Change>,
    wake: broadcast::Receiver<crate::changes::JobChange>,
    filter: Filter,
}

/// The live stream of job changes.
#[utoipa::path(get, path = "/v1/events", tag = "jobs", params(EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "text/event-stream of `job.updated` events, data = job JSON", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let statuses = super::jobs::parse_statuses(query.status.as_deref())?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be an event id this stream sent",
                    )
                })?,
        ),
    };
    // Subscribe first, so a change between reading the position and waiting is not missed.
    let wake = state.changes.subscribe();
    let after = match last_event_id {
        Some(id) => id,
        None => state.store.latest_change_id().await?,
    };
    let cursor = Cursor {
        state,
        after,
        buffered: VecDeque::new(),
        wake,
        filter: Filter {
            statuses,
            job: query.job_id.filter(|j| !j.is_empty()),
        },
    };
    let stream = futures::stream::unfold(cursor, next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

async fn next_event(mut cursor: Cursor) -> Option<(Result<Event, Infallible>, Cursor)> {
    loop {
        while let Some(change) = cursor.buffered.pop_front() {
            cursor.after = change.id;
            if cursor.filter.admits(&change) {
                let event = Event::default()
                    .id(change.id.to_string())
                    .event("job.updated")
                    .data(change.snapshot);
                return Some((Ok(event), cursor));
            }
        }
        match cursor.state.store.changes_after(cursor.after, PAGE).await {
            Ok(changes) if !changes.is_empty() => {
                cursor.buffered.extend(changes);
                continue;
            }
            Ok(_) => {}
            Err(err) => {
                // The client reconnects with Last-Event-ID and loses nothing.
                tracing::warn!(error = %err, "event stream cannot read changes; closing it");
                return None;
            }
        }
        tokio::select! {
            woken = cursor.wake.recv() => {
                if let Err(broadcast::error::RecvError::Closed) = woken {
                    return None;
                }
            }
            _ = cursor.state.stopping.cancelled() => return None,
        }
    }
}
