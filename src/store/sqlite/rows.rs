//! Column lists and row decoding.

use super::corrupt;
use crate::domain::Job;
use crate::store::{Delivery, DeliveryOutcome, StoreError};

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

pub(super) const JOB_COLUMNS: &str =
    "id, job_id, submission_id, status, output, error, metadata, request, \
    resolved_by, poll_count, created_at, updated_at, completed_at, webhook_received_at, \
    last_polled_at, next_poll_at, seq";

pub(super) const DELIVERY_COLUMNS: &str = "d.id, COALESCE(j.job_id, j.submission_id) AS job_ref, \
    d.received_at, d.outcome, d.reason, d.remote_addr, d.headers, \
    COALESCE(d.body, o.body) AS body, d.duplicate_of, d.body_size";

pub(super) const DELIVERY_FROM: &str = "deliveries d LEFT JOIN jobs j ON j.id = d.job_pk \
    LEFT JOIN deliveries o ON o.id = d.duplicate_of";

pub(super) fn json_column<T: serde::de::DeserializeOwned>(
    row: &SqliteRow,
    column: &str,
) -> Result<Option<T>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(format!("{column}: {e}"))))
        .transpose()
}

pub(super) fn job_from_row(row: &SqliteRow) -> Result<Job, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Job {
        pk: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        submission_id: row.try_get("submission_id")?,
        status: status.parse().map_err(corrupt)?,
        output: json_column(row, "output")?,
        error: json_column(row, "error")?,
        metadata: json_column(row, "metadata")?,
        request: json_column(row, "request")?,
        resolved_by: row.try_get("resolved_by")?,
        poll_count: row.try_get("poll_count")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
        webhook_received_at: row.try_get("webhook_received_at")?,
        last_polled_at: row.try_get("last_polled_at")?,
        next_poll_at: row.try_get("next_poll_at")?,
        seq: row.try_get("seq")?,
    })
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
