//! Pure pieces both stores use the same way: what a move is called in the history, which
//! notification a move announces, how an optional value is kept as JSON text. Shared so the two
//! stores cannot drift apart on what they write.

use super::StoreError;
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
