//! The change stream and the notification outbox.

use super::{corrupt, Tx};
use crate::domain::time::rfc3339;
use crate::domain::{Job, JobStatus};
use crate::store::{Notification, StoreError};
use serde_json::json;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

pub(super) const NOTIFICATION_COLUMNS: &str = "id, endpoint, event_type, job_pk, message_id, \
    payload, state, attempts, round_attempts, next_attempt_at, last_status, last_error, \
    created_at, delivered_at";

pub(super) fn notification_from_row(row: &SqliteRow) -> Result<Notification, StoreError> {
    Ok(Notification {
        id: row.try_get("id")?,
        endpoint: row.try_get("endpoint")?,
        event_type: row.try_get("event_type")?,
        job_pk: row.try_get("job_pk")?,
        message_id: row.try_get("message_id")?,
        payload: row.try_get("payload")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        round_attempts: row.try_get("round_attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

/// The event type a move to `to` announces besides `job.updated`.
fn specific_event(to: JobStatus) -> Option<&'static str> {
    match to {
        JobStatus::Completed => Some("job.completed"),
        JobStatus::Failed => Some("job.failed"),
        JobStatus::TimedOut => Some("job.timed_out"),
        _ => None,
    }
}

/// Keeps the job as it is right after a status change with the change, and puts one
/// notification per interested endpoint in the outbox, all in the change's transaction.
pub(super) async fn record_change(
    tx: &mut Tx<'_>,
    change_id: i64,
    job: &Job,
    now: i64,
) -> Result<(), StoreError> {
    let view = job.view();
    let snapshot = serde_json::to_string(&view).map_err(corrupt)?;
    sqlx::query("UPDATE job_events SET snapshot = $1 WHERE id = $2")
        .bind(&snapshot)
        .bind(change_id)
        .execute(&mut **tx)
        .await?;
    enqueue_notifications(tx, change_id, job, now).await
}

/// One notification per endpoint that wants this change, in the outbox.
pub(super) async fn enqueue_notifications(
    tx: &mut Tx<'_>,
    change_id: i64,
    job: &Job,
    now: i64,
) -> Result<(), StoreError> {
    let view = job.view();
    let types = std::iter::once("job.updated").chain(specific_event(job.status));
    for event_type in types {
        let payload = json!({"type": event_type, "timestamp": rfc3339(now), "data": view});
        // Standard Webhooks ids may not contain a full stop.
        let message_id = format!("msg_{change_id}_{}", event_type.trim_start_matches("job."));
        sqlx::query(
            "INSERT INTO notifications (endpoint, event_type, job_pk, change_id, message_id, \
             payload, state, next_attempt_at, created_at) \
             SELECT url, event_type, $1, $2, $3, $4, 'pending', $5, $5 FROM notify_routes \
             WHERE event_type = $6 ON CONFLICT DO NOTHING",
        )
        .bind(job.pk)
        .bind(change_id)
        .bind(&message_id)
        .bind(payload.to_string())
        .bind(now)
        .bind(event_type)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
