//! The notification outbox: written in the transaction of the change it announces.

use super::write::Tx;
use crate::domain::time::rfc3339;
use crate::domain::Job;
use crate::store::common::{message_id, specific_event};
use crate::store::StoreError;
use serde_json::json;

/// One notification per endpoint that wants this change, in the outbox.
pub(super) async fn enqueue_notifications(
    tx: &mut Tx,
    change_id: i64,
    job: &Job,
    now: i64,
) -> Result<(), StoreError> {
    let view = job.view();
    let types = std::iter::once("job.updated").chain(specific_event(job.status));
    for event_type in types {
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
