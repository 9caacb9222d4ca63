//! The change stream and the notification outbox.

use super::writer::execute;
use super::Tx;
use crate::domain::time::rfc3339;
use crate::domain::Job;
use crate::store::common::{message_id, specific_event};
use crate::store::StoreError;
use rusqlite::params;
use serde_json::json;

/// One notification per endpoint that wants this change, in the outbox.
pub(super) fn enqueue_notifications(
    tx: &Tx,
    change_id: i64,
    job: &Job,
    now: i64,
) -> Result<(), StoreError> {
    let view = job.view();
    let types = std::iter::once("job.updated").chain(specific_event(job.status));
    for event_type in types {
        let payload = json!({"type": event_type, "timestamp": rfc3339(now), "data": view});
        let message_id = message_id(change_id, event_type);
        execute(
            tx,
            "INSERT INTO notifications (endpoint, event_type, job_pk, change_id, message_id, \
             payload, state, next_attempt_at, created_at) \
             SELECT url, event_type, ?1, ?2, ?3, ?4, 'pending', ?5, ?5 FROM notify_routes \
             WHERE event_type = ?6 ON CONFLICT DO NOTHING",
            params![
                job.pk,
                change_id,
                message_id,
                payload.to_string(),
                now,
                event_type
            ],
        )?;
    }
    Ok(())
}
