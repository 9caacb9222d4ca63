//! Column lists and row decoding, the same columns as SQLite's (see `sqlite/rows.rs`).

use super::corrupt;
use crate::domain::archive::Archive;
use crate::domain::Job;
use crate::store::{Change, Delivery, DeliveryOutcome, Notification, StoreError};
use sqlx::postgres::PgRow;
use sqlx::Row;

/// Every column of a job, the ids of its parent and children (continuations) and its archived
/// files, as on
/// SQLite (see `sqlite/rows.rs`, also for why the lookups are guarded). Only ever selected
/// `FROM jobs` unaliased: the subqueries refer to the outer row as `jobs`.
pub(super) const JOB_COLUMNS: &str =
    "id, job_id, submission_id, status, output, error, metadata, request, \
    resolved_by, poll_count, created_at, updated_at, completed_at, webhook_received_at, \
    last_polled_at, next_poll_at, seq, parent_pk, \
    CASE WHEN parent_pk IS NULL THEN NULL ELSE (SELECT COALESCE(p.job_id, p.submission_id) \
        FROM jobs p WHERE p.id = jobs.parent_pk) END AS parent_ref, \
    CASE WHEN status <> 'completed' THEN NULL ELSE \
        (SELECT COALESCE(json_agg(COALESCE(c.job_id, c.submission_id) ORDER BY c.id), '[]')::text \
        FROM jobs c WHERE c.parent_pk = jobs.id) END AS children, \
    CASE WHEN status <> 'completed' THEN NULL ELSE \
        (SELECT json_agg(json_build_object('name', a.name, 'status', a.status, 'size', a.size, \
        'sha256', a.sha256, 'content_type', a.content_type, 'key', a.object_key, \
        'error', a.error))::text FROM archive_files a WHERE a.job_pk = jobs.id) END AS archive";

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

pub(super) fn job_from_row(row: &PgRow) -> Result<Job, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Job {
        pk: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        submission_id: row.try_get("submission_id")?,
        status: status.parse().map_err(corrupt)?,
        output: json_value(row.try_get("output")?, "output")?,
        error: json_value(row.try_get("error")?, "error")?,
        metadata: json_value(row.try_get("metadata")?, "metadata")?,
        request: json_value(row.try_get("request")?, "request")?,
        resolved_by: row.try_get("resolved_by")?,
        poll_count: row.try_get("poll_count")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
        webhook_received_at: row.try_get("webhook_received_at")?,
        last_polled_at: row.try_get("last_polled_at")?,
        next_poll_at: row.try_get("next_poll_at")?,
        seq: row.try_get("seq")?,
        parent_pk: row.try_get("parent_pk")?,
        parent: row.try_get("parent_ref")?,
        children: json_value(row.try_get("children")?, "children")?.unwrap_or_default(),
        archive: Archive::from_records(
            json_value(row.try_get("archive")?, "archive")?.unwrap_or_default(),
        ),
    })
}

pub(super) fn notification_from_row(row: &PgRow) -> Result<Notification, StoreError> {
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

pub(super) fn delivery_from_row(row: &PgRow) -> Result<Delivery, StoreError> {
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

pub(super) fn change_from_row(row: &PgRow) -> Result<Change, StoreError> {
    Ok(Change {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        job_pk: row.try_get("job_pk")?,
        snapshot: row
            .try_get::<Option<String>, _>("snapshot")?
            .ok_or_else(|| corrupt("a status change without its snapshot"))?,
    })
}
