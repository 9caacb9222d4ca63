//! The notification outbox: written in the transaction of the change it announces.

use super::write::Tx;
use crate::domain::time::rfc3339;
use crate::domain::Job;
use crate::store::common::{announced_events, message_id};
use crate::store::StoreError;
use serde_json::json;

/// One notification per endpoint that wants this change, in the outbox (`job.completed` left
/// out while `completion_held`: it is sent when the job's files are archived).
pub(super) async fn enqueue_notifications(
    tx: &mut Tx,
    change_id: i64,
    job: &Job,
    completion_held: bool,
    now: i64,
) -> Result<(), StoreError> {
    let types = announced_events(job.status, completion_held);
    enqueue(tx, change_id, job, &types, now).await
}

/// The `job.completed` notifications held for a job's archive, now that it is settled: named
/// after the completion's change, with the job as it is now (its `archive` block included).
pub(super) async fn enqueue_held_completion(
    tx: &mut Tx,
    change_id: i64,
    job: &Job,
    now: i64,
) -> Result<(), StoreError> {
    enqueue(tx, change_id, job, &["job.completed"], now).await
}

async fn enqueue(
    tx: &mut Tx,
    change_id: i64,
    job: &Job,
    types: &[&str],
    now: i64,
) -> Result<(), StoreError> {
    let view = job.view();
    for &event_type in types {
        let payload = json!({"type": event_type, "timestamp": rfc3339(now), "data": view});
        sqlx::query(
            "INSERT INTO notifications (endpoint, event_type, job_pk, change_id, message_id, \
             payload, state, next_attempt_at, created_at) \
             SELECT url, event_type, $1, $2, $3, $4, 'pending', $5, $5 FROM notify_routes \
             WHERE event_type = $6 ON CONFLICT DO NOTHING",
        )
        .bind(job.pk)
        .bind(change_id)
        .bind(message_id(change_id, event_type))
        .bind(payload.to_string())
        .bind(now)
        .bind(event_type)
        .execute(tx.db())
        .await?;
    }
    Ok(())
}
