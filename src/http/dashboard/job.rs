//! `/jobs/{id}`: one job, everything jobhook knows of it: the video (the archived copy first),
//! its images, request and metadata, the history as a timeline, Pictory's last answer, the
//! deliveries and notifications, and the buttons that act on them.

use super::page::{render, Chrome, PageError};
use super::session::Visitor;
use super::view::{ago, excerpt, file_link, job_json, pretty, segment, FileLink, JobRow, When};
use crate::domain::time::rfc3339;
use crate::domain::JobStatus;
use crate::http::api::deliveries::{list_deliveries, DeliveryView, ListDeliveriesQuery};
use crate::http::api::jobs::find_job;
use crate::http::api::notifications::{get_notification, NotificationView};
use crate::http::error::ApiError;
use crate::http::extract::{ApiPath, ApiQuery};
use crate::pictory::rules;
use crate::state::AppState;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Deliveries listed on a job's page (the newest).
const DELIVERIES_SHOWN: u32 = 20;
/// Notifications listed on a job's page.
const NOTIFICATIONS_SHOWN: usize = 20;

#[derive(Deserialize)]
pub struct JobQuery {
    done: Option<String>,
}

/// What an action that just finished reports, by a fixed word in the address (never text
/// from the address itself, which anyone can write).
fn notice(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "refreshed" => "Asked Pictory: what it said is below.",
        "replayed" => "The delivery was processed again.",
        "retried" => "The notification is queued to be sent again.",
        "continued" => {
            "The next clip was submitted, starting from the last frame of the one before."
        }
        "archived" => "The files are being copied to the archive again.",
        _ => return None,
    })
}

/// One entry of the history, for people.
struct Moment {
    when: When,
    kind: String,
    title: String,
    summary: String,
    detail: String,
}

struct Link {
    id: String,
    href: String,
}

fn link(id: &str) -> Link {
    Link {
        id: id.to_owned(),
        href: format!("/jobs/{}", segment(id)),
    }
}

struct Image {
    label: &'static str,
    file: FileLink,
}

struct DeliveryRow {
    id: i64,
    received: Option<When>,
    outcome: String,
    reason: Option<String>,
    size: i64,
    duplicate_of: Option<i64>,
    body: String,
}

/// The job's archive block, for people: where each file's kept copy stands.
struct Kept {
    status: String,
    files: Vec<KeptFile>,
}

struct KeptFile {
    name: String,
    status: String,
    size: Option<String>,
    error: Option<String>,
}

fn kept(archive: &Value) -> Option<Kept> {
    let files = archive["files"].as_object()?;
    Some(Kept {
        status: archive["status"].as_str().unwrap_or("").to_owned(),
        files: files
            .iter()
            .map(|(name, file)| KeptFile {
                name: name.replace('_', " "),
                status: file["status"].as_str().unwrap_or("").replace('_', " "),
                size: file["size"].as_i64().map(bytes),
                error: file["error"].as_str().map(|e| excerpt(e, 160)),
            })
            .collect(),
    })
}

/// A size for people: `812 B`, `1.4 MB`.
fn bytes(n: i64) -> String {
    match n {
        ..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} KB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

struct NotificationRow {
    id: i64,
    event_type: String,
    endpoint: String,
    state: String,
    attempts: i64,
    last: String,
    retryable: bool,
}

#[derive(Template)]
#[template(path = "dashboard/job.html")]
struct JobPage {
    chrome: Chrome,
    row: JobRow,
    notice: Option<&'static str>,
    video: Option<FileLink>,
    images: Vec<Image>,
    facts: Vec<(&'static str, String)>,
    times: Vec<(&'static str, When)>,
    error: Option<(String, String)>,
    request: Option<String>,
    metadata: Option<String>,
    parent: Option<Link>,
    children: Vec<Link>,
    timeline: Vec<Moment>,
    raw: Option<String>,
    deliveries: Vec<DeliveryRow>,
    notifications: Vec<NotificationRow>,
    /// Why "Refresh now" is not offered, when it is not.
    refresh_blocked: Option<&'static str>,
    /// The output archive's copies; None when archiving is off.
    kept: Option<Kept>,
    /// "Archive again": archiving is on and the job has files to copy.
    can_archive: bool,
    can_continue: bool,
    models: Vec<(&'static str, bool)>,
    durations: Vec<&'static str>,
    ratios: Vec<&'static str>,
    /// A fresh Idempotency-Key for the continue form: a double submit makes one clip.
    continue_key: String,
    /// `/jobs/{id}` of this page, for forms that come back here.
    here: String,
}

pub async fn job_page(
    State(state): State<AppState>,
    Extension(visitor): Extension<Visitor>,
    Path(id): Path<String>,
    Query(query): Query<JobQuery>,
) -> Result<Response, PageError> {
    let job = find_job(&state, &id).await?;
    let now = state.now_ms();
    let json = job_json(&job);
    let row = JobRow::of(&job, now);
    let events = state.store.job_events(job.pk).await?;
    let raw = state.store.raw_response(job.pk).await?;
    let deliveries = list_deliveries(
        State(state.clone()),
        ApiQuery(ListDeliveriesQuery {
            job_id: Some(row.id.clone()),
            outcome: None,
            limit: Some(DELIVERIES_SHOWN),
            cursor: None,
        }),
    )
    .await?
    .0
    .data;
    let notifications = notifications_of(&state, &events).await?;

    let output = &json["output"];
    let mut facts = Vec::new();
    if let Some(duration) = output["duration"].as_str() {
        facts.push(("Duration", duration.to_owned()));
    }
    if let (Some(w), Some(h)) = (output["width"].as_u64(), output["height"].as_u64()) {
        facts.push(("Size", format!("{w} × {h}")));
    }
    if let Some(credits) = &row.credits {
        facts.push(("AI credits", credits.clone()));
    }
    facts.push(("Model", row.model.clone()));
    if let Some(by) = &row.resolved_by {
        facts.push(("Resolved by", by.clone()));
    }
    facts.push(("Get Job calls", row.poll_count.to_string()));
    let times = [
        ("Created", "created_at"),
        ("Last change", "updated_at"),
        ("Final", "completed_at"),
        ("Webhook received", "webhook_received_at"),
        ("Last polled", "last_polled_at"),
        ("Next poll", "next_poll_at"),
    ]
    .into_iter()
    .filter_map(|(label, field)| When::of(&json[field], now).map(|w| (label, w)))
    .collect();
    let images = [
        ("Thumbnail", "thumbnail"),
        ("Last frame", "last_frame"),
        ("Preview", "preview"),
    ]
    .into_iter()
    .filter_map(|(label, name)| file_link(&json, name).map(|file| Image { label, file }))
    .collect();
    let refresh_blocked = if state.poller.is_none() {
        Some("jobhook runs receive-only (no pictory.api_key), so it cannot ask Pictory.")
    } else if job.job_id.is_none() {
        Some("Pictory has not given this job an id yet, so it cannot be asked about it.")
    } else {
        None
    };
    let can_continue = job.status == JobStatus::Completed
        && output["last_frame_image_url"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
        && state.poller.is_some();
    let page = JobPage {
        chrome: Chrome::new(&state, &visitor, "jobs"),
        notice: notice(query.done.as_deref()),
        video: file_link(&json, "video"),
        images,
        facts,
        times,
        error: json["error"]["code"].as_str().map(|code| {
            (
                code.to_owned(),
                json["error"]["message"].as_str().unwrap_or("").to_owned(),
            )
        }),
        request: job.request.as_ref().map(pretty),
        metadata: job.metadata.as_ref().map(pretty),
        parent: json["parent"].as_str().map(link),
        children: json["children"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(link)
            .collect(),
        timeline: events
            .iter()
            .map(|event| moment(&event.to_json(), now))
            .collect(),
        raw: raw.map(|text| match serde_json::from_str::<Value>(&text) {
            Ok(value) => pretty(&value),
            Err(_) => text,
        }),
        deliveries: deliveries.iter().map(|d| delivery_row(d, now)).collect(),
        notifications,
        refresh_blocked,
        kept: kept(&json["archive"]),
        can_archive: state.archive.is_some() && job.status == JobStatus::Completed,
        can_continue,
        models: rules::MODELS
            .iter()
            .map(|m| (m.name, m.name == row.model))
            .collect(),
        durations: union(rules::MODELS.iter().map(|m| m.durations)),
        ratios: union(rules::MODELS.iter().map(|m| m.aspect_ratios)),
        continue_key: uuid::Uuid::now_v7().to_string(),
        here: row.href.clone(),
        row,
    };
    render(&page)
}

/// Every value of the lists, once, in the order first seen.
fn union<'a>(lists: impl Iterator<Item = &'a [&'static str]>) -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Vec::new();
    for value in lists.flatten() {
        if !all.contains(value) {
            all.push(value);
        }
    }
    all
}

/// The notifications the history names, as `GET /v1/notifications/{id}` shows them.
async fn notifications_of(
    state: &AppState,
    events: &[crate::domain::JobEvent],
) -> Result<Vec<NotificationRow>, PageError> {
    let mut ids: Vec<i64> = events
        .iter()
        .filter(|e| e.kind == "notification")
        .filter_map(|e| e.detail.get("notification_id").and_then(Value::as_i64))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut rows = Vec::new();
    for id in ids.into_iter().rev().take(NOTIFICATIONS_SHOWN) {
        match get_notification(State(state.clone()), ApiPath(id.to_string())).await {
            Ok(view) => rows.push(notification_row(&view.0)),
            Err(ApiError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(rows)
}

fn notification_row(n: &NotificationView) -> NotificationRow {
    let last = match (n.last_status, &n.last_error) {
        (Some(status), _) => format!("HTTP {status}"),
        (None, Some(error)) => excerpt(error, 120),
        (None, None) => String::new(),
    };
    NotificationRow {
        id: n.id,
        event_type: n.r#type.clone(),
        endpoint: n.endpoint.clone(),
        state: n.state.clone(),
        attempts: n.attempts,
        last,
        retryable: n.state == "exhausted",
    }
}

fn delivery_row(d: &DeliveryView, now: i64) -> DeliveryRow {
    let body = match (&d.body, &d.body_base64) {
        (Some(text), _) => match serde_json::from_str::<Value>(text) {
            Ok(json) => pretty(&json),
            Err(_) => text.clone(),
        },
        (None, Some(_)) => "(not UTF-8: see GET /v1/deliveries/{id})".to_owned(),
        (None, None) => "(pruned by retention)".to_owned(),
    };
    DeliveryRow {
        id: d.id,
        received: When::of(&Value::String(d.received_at.clone()), now),
        outcome: d.outcome.clone(),
        reason: d.reason.clone(),
        size: d.body_size,
        duplicate_of: d.duplicate_of,
        body,
    }
}

/// A history entry as a line of the timeline: what happened, in words, and its raw fields.
fn moment(entry: &Value, now: i64) -> Moment {
    let text = |key: &str| match &entry[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let kind = text("kind");
    let (title, summary) = match kind.as_str() {
        "submitted" => (
            "Submitted".to_owned(),
            match entry["continues"].as_str() {
                Some(parent) => format!("through jobhook, continuing {parent}"),
                None => "through jobhook".to_owned(),
            },
        ),
        "registered" => (
            "Tracking started".to_owned(),
            format!("by {}", text("cause")),
        ),
        "webhook_received" => {
            let mut summary = format!("delivery #{}", text("delivery_id"));
            if entry["duplicate"] == true {
                summary.push_str(", a duplicate");
            }
            if entry["replay"] == true {
                summary.push_str(", replayed");
            }
            if !text("outcome").is_empty() {
                summary.push_str(&format!(": {}", text("outcome")));
            }
            ("Webhook".to_owned(), summary)
        }
        "polled" => {
            let status = match text("http_status").as_str() {
                "" => "no answer".to_owned(),
                code => format!("HTTP {code}"),
            };
            (
                "Get Job".to_owned(),
                format!("{status}, {} ({})", text("outcome"), text("cause")),
            )
        }
        "status_changed" => (
            "Status".to_owned(),
            format!(
                "{} → {} ({})",
                text("from").replace('_', " "),
                text("to").replace('_', " "),
                text("cause")
            ),
        ),
        "notification" => {
            let mut summary = format!(
                "{} to {}: attempt {} {}",
                text("type"),
                text("endpoint"),
                text("attempt"),
                text("outcome")
            );
            if !text("http_status").is_empty() {
                summary.push_str(&format!(" (HTTP {})", text("http_status")));
            }
            ("Notification".to_owned(), summary)
        }
        other => (other.replace('_', " "), String::new()),
    };
    let detail: Map<String, Value> = entry
        .as_object()
        .map(|fields| {
            fields
                .iter()
                .filter(|(key, _)| !["id", "at", "kind"].contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    Moment {
        when: When::of(&entry["at"], now).unwrap_or_else(|| When {
            iso: rfc3339(now),
            ago: ago(0),
        }),
        kind,
        title,
        summary,
        detail: Value::Object(detail).to_string(),
    }
}
