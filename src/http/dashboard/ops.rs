//! `/ops`: how jobhook is doing: Get Job calls against `reconcile.rate`, whether polling is
//! paused and why, polls due and overdue, the notification outbox and its endpoints, and the
//! deliveries received. The same readings as `/readyz`, `/metrics` and the notification API.

use super::page::{render, Chrome, PageError};
use super::session::Visitor;
use super::view::{ago, excerpt, When};
use crate::domain::time::rfc3339;
use crate::domain::JobStatus;
use crate::http::api::notifications::{
    list_endpoints, list_notifications, ListNotificationsQuery, NotificationView,
};
use crate::http::extract::ApiQuery;
use crate::metrics::OutcomeLabel;
use crate::state::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::Value;

/// Notifications listed per state.
const OUTBOX_SHOWN: u32 = 20;
/// A poll this late is overdue, not merely due (the loop works through due polls at the rate).
const OVERDUE_AFTER_MS: i64 = 60_000;

struct Polling {
    /// `reconcile.rate`.
    rate: u32,
    effective_rate: u32,
    calls_last_minute: u32,
    busiest_second: u32,
    /// Why polling is paused, if it is.
    paused: Option<String>,
    held_until: Option<When>,
}

struct Outboxed {
    id: i64,
    event_type: String,
    endpoint: String,
    attempts: i64,
    next: Option<When>,
    last: String,
    job_href: Option<String>,
}

struct Endpoint {
    url: String,
    enabled: bool,
    why: String,
}

#[derive(Template)]
#[template(path = "dashboard/ops.html")]
struct OpsPage {
    chrome: Chrome,
    notice: Option<&'static str>,
    /// None in receive-only mode.
    polling: Option<Polling>,
    due: i64,
    overdue: i64,
    oldest_overdue: Option<String>,
    next_due: Option<When>,
    statuses: Vec<(String, i64)>,
    replicas: i64,
    deliveries: Vec<(&'static str, u64)>,
    duplicates: u64,
    exhausted: Vec<Outboxed>,
    pending: Vec<Outboxed>,
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
pub struct OpsQuery {
    done: Option<String>,
}

pub async fn ops_page(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<OpsQuery>,
) -> Result<Response, PageError> {
    let now = state.now_ms();
    let polling = match &state.poller {
        None => None,
        Some(poller) => {
            // With replicas: a pause or a hold another one saw (as /readyz does).
            poller.refresh_pace().await;
            let pace = poller.pace(now);
            let recent = state.metrics.get_job_calls_recent.last_minute(now);
            Some(Polling {
                rate: pace.rate,
                effective_rate: pace.effective_rate,
                calls_last_minute: recent.calls,
                busiest_second: recent.busiest_second,
                paused: poller.problem(),
                held_until: pace
                    .held_until
                    .and_then(|at| When::of(&Value::String(rfc3339(at)), now)),
            })
        }
    };
    let (due, _) = state.store.overdue(now).await?;
    let (overdue, oldest) = state.store.overdue(now - OVERDUE_AFTER_MS).await?;
    let next_due = state
        .store
        .next_due()
        .await?
        .and_then(|at| When::of(&Value::String(rfc3339(at)), now));
    let counts = state.store.count_by_status().await?;
    let statuses = JobStatus::ALL
        .iter()
        .map(|status| {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            (status.as_str().replace('_', " "), n)
        })
        .collect();
    let delivered = |outcome: &str| {
        state
            .metrics
            .deliveries
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .get()
    };
    let outbox = |wanted: &'static str| {
        let state = state.clone();
        async move {
            let page = list_notifications(
                State(state),
                ApiQuery(ListNotificationsQuery {
                    state: Some(wanted.to_owned()),
                    limit: Some(OUTBOX_SHOWN),
                    cursor: None,
                }),
            )
            .await?;
            Ok::<_, PageError>(page.0.data.iter().map(|n| outboxed(n, now)).collect())
        }
    };
    let endpoints = list_endpoints(State(state.clone()))
        .await?
        .0
        .data
        .into_iter()
        .map(|e| Endpoint {
            why: match (&e.disabled_reason, &e.disabled_at) {
                (Some(reason), Some(at)) => format!("{reason} ({at})"),
                (Some(reason), None) => reason.clone(),
                _ => String::new(),
            },
            url: e.url,
            enabled: e.enabled,
        })
        .collect();
    let page = OpsPage {
        chrome: Chrome::new(&state, &visitor, "ops"),
        notice: match query.done.as_deref() {
            Some("enabled") => {
                Some("The endpoint is enabled again; its waiting notifications go out.")
            }
            Some("retried") => Some("The notification is queued to be sent again."),
            _ => None,
        },
        polling,
        due,
        overdue,
        oldest_overdue: oldest.map(|at| ago(now - at)),
        next_due,
        statuses,
        replicas: state.store.replicas_alive().await?,
        deliveries: vec![
            ("accepted", delivered("accepted")),
            ("duplicate", delivered("duplicate")),
            ("rejected", delivered("rejected")),
        ],
        duplicates: state.metrics.duplicates.get(),
        exhausted: outbox("exhausted").await?,
        pending: outbox("pending").await?,
        endpoints,
    };
    render(&page)
}

fn outboxed(n: &NotificationView, now: i64) -> Outboxed {
    let last = match (n.last_status, &n.last_error) {
        (Some(status), _) => format!("HTTP {status}"),
        (None, Some(error)) => excerpt(error, 120),
        (None, None) => String::new(),
    };
    let job = &n.payload["data"];
    let job_href = job["job_id"]
        .as_str()
        .or_else(|| job["submission_id"].as_str())
        .map(|id| format!("/jobs/{}", super::view::segment(id)));
    Outboxed {
        id: n.id,
        event_type: n.r#type.clone(),
        endpoint: n.endpoint.clone(),
        attempts: n.attempts,
        next: n
            .next_attempt_at
            .as_ref()
            .and_then(|at| When::of(&Value::String(at.clone()), now)),
        last,
        job_href,
    }
}
