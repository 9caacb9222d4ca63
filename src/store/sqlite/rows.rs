//! Column lists and row decoding. Reads go through sqlx's pool and writes through the writer
//! thread's rusqlite connection; both decode the same columns with the same macro, so the two
//! cannot drift apart.

use super::corrupt;
use crate::domain::archive::Archive;
use crate::domain::Job;
use crate::store::{Delivery, DeliveryOutcome, Notification, StoreError};

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// Every column of a job, the ids of its parent and children (continuations), and its files'
/// records in the output archive (which only a `completed` job has). Only ever
/// selected `FROM jobs` unaliased: the subqueries refer to the outer row as `jobs`.
///
/// The writer reads jobs on the hot path of ingest, so the links cost nothing for the jobs
/// that cannot have them: only a continuation has a parent to look up, and only a `completed`
/// job can have been continued (and it stays `completed`). Measured on 100,000 jobs, the
/// unguarded subqueries added 3 to 8 µs to every read of a job; guarded, a read of a job that
/// is not `completed` costs what it did before.
pub(super) const JOB_COLUMNS: &str =
    "id, job_id, submission_id, status, output, error, metadata, request, \
    resolved_by, poll_count, created_at, updated_at, completed_at, webhook_received_at, \
    last_polled_at, next_poll_at, seq, parent_pk, \
    CASE WHEN parent_pk IS NULL THEN NULL ELSE (SELECT COALESCE(p.job_id, p.submission_id) \
        FROM jobs p WHERE p.id = jobs.parent_pk) END AS parent_ref, \
    CASE WHEN status <> 'completed' THEN NULL ELSE \
        (SELECT json_group_array(COALESCE(c.job_id, c.submission_id) ORDER BY c.id) \
        FROM jobs c WHERE c.parent_pk = jobs.id) END AS children, \
    CASE WHEN status <> 'completed' THEN NULL ELSE \
        (SELECT json_group_array(json_object('name', a.name, 'status', a.status, 'size', a.size, \
        'sha256', a.sha256, 'content_type', a.content_type, 'key', a.object_key, \
        'error', a.error)) FROM archive_files a WHERE a.job_pk = jobs.id) END AS archive";

pub(super) const NOTIFICATION_COLUMNS: &str = "id, endpoint, event_type, job_pk, message_id, \
    payload, state, attempts, round_attempts, next_attempt_at, last_status, last_error, \
    created_at, delivered_at";

pub(super) const DELIVERY_COLUMNS: &str = "d.id, COALESCE(j.job_id, j.submission_id) AS job_ref, \
    d.received_at, d.outcome, d.reason, d.remote_addr, d.headers, \
    COALESCE(d.body, o.body) AS body, d.duplicate_of, d.body_size";

pub(super) const DELIVERY_FROM: &str = "deliveries d LEFT JOIN jobs j ON j.id = d.job_pk \
    LEFT JOIN deliveries o ON o.id = d.duplicate_of";

/// A JSON value kept as TEXT.
fn json_value<T: serde::de::DeserializeOwned>(
    text: Option<String>,
    column: &str,
) -> Result<Option<T>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(format!("{column}: {e}"))))
        .transpose()
}

/// `$get` reads a column by name: `try_get` on a sqlx row, `get` on a rusqlite one.
macro_rules! decode_job {
    ($row:expr, $get:ident) => {{
        let row = $row;
        let status: String = row.$get("status")?;
        Ok(Job {
            pk: row.$get("id")?,
            job_id: row.$get("job_id")?,
            submission_id: row.$get("submission_id")?,
            status: status.parse().map_err(corrupt)?,
            output: json_value(row.$get("output")?, "output")?,
            error: json_value(row.$get("error")?, "error")?,
            metadata: json_value(row.$get("metadata")?, "metadata")?,
            request: json_value(row.$get("request")?, "request")?,
            resolved_by: row.$get("resolved_by")?,
            poll_count: row.$get("poll_count")?,
            created_at: row.$get("created_at")?,
            updated_at: row.$get("updated_at")?,
            completed_at: row.$get("completed_at")?,
            webhook_received_at: row.$get("webhook_received_at")?,
            last_polled_at: row.$get("last_polled_at")?,
            next_poll_at: row.$get("next_poll_at")?,
            seq: row.$get("seq")?,
            parent_pk: row.$get("parent_pk")?,
            parent: row.$get("parent_ref")?,
            children: json_value(row.$get("children")?, "children")?.unwrap_or_default(),
            archive: Archive::from_records(
                json_value(row.$get("archive")?, "archive")?.unwrap_or_default(),
            ),
        })
    }};
}

macro_rules! decode_notification {
    ($row:expr, $get:ident) => {{
        let row = $row;
        Ok(Notification {
            id: row.$get("id")?,
            endpoint: row.$get("endpoint")?,
            event_type: row.$get("event_type")?,
            job_pk: row.$get("job_pk")?,
            message_id: row.$get("message_id")?,
            payload: row.$get("payload")?,
            state: row.$get("state")?,
            attempts: row.$get("attempts")?,
            round_attempts: row.$get("round_attempts")?,
            next_attempt_at: row.$get("next_attempt_at")?,
            last_status: row.$get("last_status")?,
            last_error: row.$get("last_error")?,
            created_at: row.$get("created_at")?,
            delivered_at: row.$get("delivered_at")?,
        })
    }};
}

pub(super) fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    decode_job!(row, try_get)
}

pub(super) fn job_from_written(row: &rusqlite::Row<'_>) -> Result<Job, StoreError> {
    decode_job!(row, get)
}

pub(super) fn notification_from_row(row: &SqliteRow) -> Result<Notification, StoreError> {
    decode_notification!(row, try_get)
}

pub(super) fn notification_from_written(
    row: &rusqlite::Row<'_>,
) -> Result<Notification, StoreError> {
    decode_notification!(row, get)
}

pub(super) fn delivery_from_row(row: &SqliteRow) -> Result<Delivery, StoreError> {
    let outcome: String = row.try_get("outcome")?;
    let headers: String = row.try_get("headers")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        job_id: row.try_get("job_ref")?,
        received_at: row.try_get("received_at")?,
        outcome: DeliveryOutcome::parse(&outcome).ok_or_else(|| corrupt(&outcome))?,
        reason: row.try_get("reason")?,
        remote_addr: row.try_get("remote_addr")?,
        headers: serde_json::from_str(&headers).map_err(corrupt)?,
        body: row.try_get("body")?,
        duplicate_of: row.try_get("duplicate_of")?,
        body_size: row.try_get("body_size")?,
    })
}
