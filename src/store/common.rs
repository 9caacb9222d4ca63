//! Pure pieces both stores use the same way: what a move is called in the history, which
//! notification a move announces, how an optional value is kept as JSON text. Shared so the two
//! stores cannot drift apart on what they write.

use super::{ArchiveResult, ArchiveTask, StoreError};
use crate::domain::archive::FileStatus;
use crate::domain::{JobStatus, ReportPlan};
use serde_json::{json, Value};

/// A move with nothing but the new status (not found, timed out).
pub(crate) fn moved_to(to: JobStatus) -> ReportPlan {
    ReportPlan::Move {
        to,
        output: None,
        error: None,
        resolved_by: None,
    }
}

/// How a webhook's plan is noted in its history entry.
pub(crate) fn plan_note(plan: &ReportPlan) -> Value {
    match plan {
        ReportPlan::Move { to, .. } => json!(format!("moved to {to}")),
        ReportPlan::Keep { reason } => json!(reason),
    }
}

/// The event type a move to `to` announces besides `job.updated`.
pub(crate) fn specific_event(to: JobStatus) -> Option<&'static str> {
    match to {
        JobStatus::Completed => Some("job.completed"),
        JobStatus::Failed => Some("job.failed"),
        JobStatus::TimedOut => Some("job.timed_out"),
        _ => None,
    }
}

/// The event types a move to `to` announces: `job.updated`, and the specific one unless it
/// is a `job.completed` held until the job's files are archived (`notify.after_archive`).
pub(crate) fn announced_events(to: JobStatus, completion_held: bool) -> Vec<&'static str> {
    std::iter::once("job.updated")
        .chain(specific_event(to))
        .filter(|event| !(completion_held && *event == "job.completed"))
        .collect()
}

/// The columns an archive attempt's result writes to its file's row.
pub(crate) struct ArchiveColumns<'a> {
    pub(crate) status: FileStatus,
    /// The next attempt, while the file stays pending.
    pub(crate) due_at: Option<i64>,
    pub(crate) error: Option<&'a str>,
    pub(crate) key: Option<&'a str>,
    pub(crate) size: Option<i64>,
    pub(crate) sha256: Option<&'a str>,
    pub(crate) content_type: Option<&'a str>,
}

impl<'a> ArchiveColumns<'a> {
    pub(crate) fn of(result: &'a ArchiveResult) -> Self {
        let empty = ArchiveColumns {
            status: FileStatus::Pending,
            due_at: None,
            error: None,
            key: None,
            size: None,
            sha256: None,
            content_type: None,
        };
        match result {
            ArchiveResult::Done {
                key,
                size,
                sha256,
                content_type,
            } => ArchiveColumns {
                status: FileStatus::Done,
                key: Some(key),
                size: Some(*size),
                sha256: Some(sha256),
                content_type: Some(content_type),
                ..empty
            },
            ArchiveResult::RetryAt { at, error } => ArchiveColumns {
                due_at: Some(*at),
                error: Some(error),
                ..empty
            },
            ArchiveResult::GaveUp { status, error } => ArchiveColumns {
                status: *status,
                error: Some(error),
                ..empty
            },
        }
    }
}

/// The history entry of one archive attempt (kind `archived`).
pub(crate) fn archive_entry(task: &ArchiveTask, result: &ArchiveResult) -> Value {
    let mut entry = json!({"file": task.name, "attempt": task.attempt});
    match result {
        ArchiveResult::Done { size, .. } => {
            entry["outcome"] = json!("done");
            entry["size"] = json!(size);
        }
        ArchiveResult::RetryAt { error, .. } => {
            entry["outcome"] = json!("retrying");
            entry["error"] = json!(error);
        }
        ArchiveResult::GaveUp { status, error } => {
            entry["outcome"] = json!(status.as_str());
            entry["error"] = json!(error);
        }
    }
    entry
}

/// The Standard Webhooks id of the notification of one change (ids may not contain a full stop).
pub(crate) fn message_id(change_id: i64, event_type: &str) -> String {
    format!("msg_{change_id}_{}", event_type.trim_start_matches("job."))
}

/// An optional value as JSON text for a TEXT column.
pub(crate) fn json_text<T: serde::Serialize>(
    value: &Option<T>,
) -> Result<Option<String>, StoreError> {
    value
        .as_ref()
        .map(|v| serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}
