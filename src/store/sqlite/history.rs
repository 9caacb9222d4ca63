//! Writes shared by every path that changes a job: history entries, status moves, matching
//! deliveries to jobs, finishing submissions. Each takes the caller's transaction.

use super::outbox::{enqueue_notifications, record_change};
use super::rows::{job_from_row, JOB_COLUMNS};
use super::{corrupt, Tx};
use crate::domain::{plan_report, Cause, Job, JobStatus, ReportPlan};
use crate::pictory::ReportedState;
use crate::store::{DeliveryOutcome, NewDelivery, RenderResponse, StoreError, SubmitOutcome};
use serde_json::{json, Value};

pub(super) async fn job_by_pk(tx: &mut Tx<'_>, pk: i64) -> Result<Job, StoreError> {
    let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(pk)
        .fetch_one(&mut **tx)
        .await?;
    job_from_row(&row)
}

/// Appends a history entry; a trigger makes it the job's newest change (`seq`, `updated_at`).
pub(super) async fn append_event(
    tx: &mut Tx<'_>,
    job_pk: i64,
    kind: &str,
    detail: Value,
    now: i64,
) -> Result<i64, StoreError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO job_events (job_pk, at, kind, detail) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(job_pk)
    .bind(now)
    .bind(kind)
    .bind(detail.to_string())
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

/// Inserts a job known only by Pictory's id, or finds the one that exists, in one statement
/// (the no-op update makes RETURNING give the existing row back). A job that exists has history,
/// so `seq` > 0; a new one has none yet, and its `registered` entry is the caller's to write.
pub(super) async fn upsert_job(
    tx: &mut Tx<'_>,
    job_id: &str,
    metadata: Option<&Value>,
    first_poll_at: Option<i64>,
    now: i64,
) -> Result<(Job, bool), StoreError> {
    let row = sqlx::query(&format!(
        "INSERT INTO jobs (job_id, status, metadata, created_at, updated_at, next_poll_at) \
         VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (job_id) DO UPDATE SET job_id = excluded.job_id \
         RETURNING {JOB_COLUMNS}"
    ))
    .bind(job_id)
    .bind(JobStatus::Pending.as_str())
    .bind(metadata.map(Value::to_string))
    .bind(now)
    .bind(first_poll_at)
    .fetch_one(&mut **tx)
    .await?;
    let job = job_from_row(&row)?;
    let created = job.seq == 0;
    Ok((job, created))
}

/// Starts tracking a job (registration): [`upsert_job`] plus its `registered` entry.
pub(super) async fn ensure_job(
    tx: &mut Tx<'_>,
    job_id: &str,
    metadata: Option<&Value>,
    cause: Cause,
    first_poll_at: Option<i64>,
    now: i64,
) -> Result<(i64, bool), StoreError> {
    let (job, created) = upsert_job(tx, job_id, metadata, first_poll_at, now).await?;
    if created {
        append_event(
            tx,
            job.pk,
            "registered",
            json!({"cause": cause.as_str()}),
            now,
        )
        .await?;
    }
    Ok((job.pk, created))
}

/// Finds the job a delivery belongs to: the submission its key names first, else the body's job
/// id, which starts tracking a job jobhook did not know. Returns the job and whether it is new
/// (its `registered` entry is then the caller's to write).
pub(super) async fn resolve_job(
    tx: &mut Tx<'_>,
    job_id: Option<&str>,
    submission_id: Option<&str>,
    first_poll_at: Option<i64>,
    now: i64,
) -> Result<Option<(Job, bool)>, StoreError> {
    if let Some(submission_id) = submission_id {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE submission_id = $1"
        ))
        .bind(submission_id)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = row {
            let mut job = job_from_row(&row)?;
            if let (None, Some(job_id)) = (&job.job_id, job_id) {
                // The submission's Generate call ended ambiguously; the webhook tells us the id.
                // Only one row may hold a Pictory id, so a clash keeps the id where it is.
                let set = sqlx::query(
                    "UPDATE jobs SET job_id = $1 WHERE id = $2 AND job_id IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM jobs WHERE job_id = $1)",
                )
                .bind(job_id)
                .bind(job.pk)
                .execute(&mut **tx)
                .await?;
                if set.rows_affected() == 1 {
                    job.job_id = Some(job_id.to_owned());
                }
            }
            return Ok(Some((job, false)));
        }
    }
    let Some(job_id) = job_id else {
        return Ok(None);
    };
    let (job, created) = upsert_job(tx, job_id, None, first_poll_at, now).await?;
    Ok(Some((job, created)))
}

/// Applies a report's plan; the caller has already recorded what brought the report.
pub(super) async fn apply_plan(
    tx: &mut Tx<'_>,
    job: &Job,
    plan: &ReportPlan,
    cause: Cause,
    now: i64,
) -> Result<(), StoreError> {
    apply_plan_noting(tx, job, plan, cause, None, now).await
}

/// [`apply_plan`], with a reason written next to the move in the history.
pub(super) async fn apply_plan_noting(
    tx: &mut Tx<'_>,
    job: &Job,
    plan: &ReportPlan,
    cause: Cause,
    reason: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    // Read the row as it is now: the caller may have changed it (a job id, a schedule) since
    // it read the job the plan was made for.
    let mut moved = job_by_pk(tx, job.pk).await?;
    let Some(from) = moved.apply(plan, now) else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE jobs SET status = $1, output = $2, error = $3, resolved_by = $4, \
         completed_at = $5, next_poll_at = $6 WHERE id = $7",
    )
    .bind(moved.status.as_str())
    .bind(json_text(&moved.output)?)
    .bind(json_text(&moved.error)?)
    .bind(moved.resolved_by.as_deref())
    .bind(moved.completed_at)
    .bind(moved.next_poll_at)
    .bind(job.pk)
    .execute(&mut **tx)
    .await?;
    let to = moved.status;
    let mut detail = json!({"from": from.as_str(), "to": to.as_str(), "cause": cause.as_str()});
    if let Some(reason) = reason {
        detail["reason"] = json!(reason);
    }
    let change_id = append_event(tx, job.pk, "status_changed", detail, now).await?;
    moved.updated_at = now;
    record_change(tx, change_id, &moved, now).await?;
    Ok(())
}

/// Records how a submission's Generate call ended, and the response its key replays.
pub(super) async fn finish_one(
    tx: &mut Tx<'_>,
    pk: i64,
    outcome: SubmitOutcome,
    first_poll_at: Option<i64>,
    render: &RenderResponse,
    now: i64,
) -> Result<Job, StoreError> {
    let job = job_by_pk(tx, pk).await?;
    let (to, error, reason) = match &outcome {
        SubmitOutcome::Created { job_id } => {
            // A Pictory id held by another row (a webhook that beat us with the generic URL)
            // stays there; this record then cannot be polled and says why.
            // A webhook that arrived before this answer may already have set the id, and asked
            // for a look now; both are kept.
            let taken = sqlx::query(
                "UPDATE jobs SET job_id = $1, \
                 next_poll_at = CASE WHEN poll_priority = 1 THEN $4 ELSE $2 END \
                 WHERE id = $3 AND NOT EXISTS (SELECT 1 FROM jobs WHERE job_id = $1 AND id <> $3)",
            )
            .bind(job_id)
            .bind(first_poll_at)
            .bind(pk)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 0;
            if taken {
                (
                    JobStatus::SubmitUnknown,
                    None,
                    Some(format!(
                        "job id {job_id} is already tracked by another record"
                    )),
                )
            } else {
                (JobStatus::Pending, None, None)
            }
        }
        SubmitOutcome::Rejected { error } => (JobStatus::SubmitFailed, Some(error.clone()), None),
        SubmitOutcome::NothingCreated { error } => {
            sqlx::query("DELETE FROM idempotency_keys WHERE job_pk = $1")
                .bind(pk)
                .execute(&mut **tx)
                .await?;
            (JobStatus::SubmitFailed, Some(error.clone()), None)
        }
        SubmitOutcome::Unknown { reason } => (JobStatus::SubmitUnknown, None, Some(reason.clone())),
    };
    if job.status.can_move_to(to) {
        let plan = ReportPlan::Move {
            to,
            output: None,
            error,
            resolved_by: None,
        };
        apply_plan_noting(tx, &job, &plan, Cause::Api, reason.as_deref(), now).await?;
    }
    let job = job_by_pk(tx, pk).await?;
    if !matches!(outcome, SubmitOutcome::NothingCreated { .. }) {
        let (status, body) = render(&job);
        sqlx::query(
            "UPDATE idempotency_keys SET status_code = $1, response = $2 WHERE job_pk = $3",
        )
        .bind(i64::from(status))
        .bind(body)
        .bind(pk)
        .execute(&mut **tx)
        .await?;
    }
    Ok(job)
}

/// A move with nothing but the new status (not found, timed out).
pub(super) fn moved_to(to: JobStatus) -> ReportPlan {
    ReportPlan::Move {
        to,
        output: None,
        error: None,
        resolved_by: None,
    }
}

pub(super) fn plan_note(plan: &ReportPlan) -> Value {
    match plan {
        ReportPlan::Move { to, .. } => json!(format!("moved to {to}")),
        ReportPlan::Keep { reason } => json!(reason),
    }
}

/// A delivery (fresh or replayed) as it is recorded on its job.
pub(super) struct WebhookOnJob<'a> {
    pub(super) job: Job,
    /// The job was created by this delivery: its `registered` entry goes in first.
    pub(super) created: bool,
    pub(super) delivery_id: i64,
    pub(super) duplicate: bool,
    pub(super) replay: bool,
    pub(super) report: Option<&'a ReportedState>,
    pub(super) look_now: bool,
    pub(super) raw_body: &'a [u8],
    /// Whether any notification endpoint is configured.
    pub(super) notify: bool,
}

/// Records a webhook on its job and applies its report when there is one. The hot path of
/// ingest, so the new state is worked out in memory and written with one UPDATE and one INSERT
/// of every history entry it makes.
pub(super) async fn record_webhook(
    tx: &mut Tx<'_>,
    webhook: WebhookOnJob<'_>,
    now: i64,
) -> Result<Job, StoreError> {
    let WebhookOnJob {
        mut job,
        created,
        delivery_id,
        duplicate,
        replay,
        report,
        look_now,
        raw_body,
        notify,
    } = webhook;
    let mut entries: Vec<(&str, Value, Option<String>)> = Vec::with_capacity(3);
    if created {
        entries.push((
            "registered",
            json!({"cause": Cause::Webhook.as_str()}),
            None,
        ));
    }
    // Verify mode: the delivery only says "look now"; the Get Job answer decides.
    let look_now = look_now && !duplicate && !job.status.is_final();
    let plan = match (duplicate, report) {
        (false, Some(report)) => Some(plan_report(job.status, report, Cause::Webhook)),
        _ => None,
    };
    let mut detail = json!({"delivery_id": delivery_id, "duplicate": duplicate});
    if replay {
        detail["replay"] = json!(true);
    }
    if let Some(plan) = &plan {
        detail["outcome"] = plan_note(plan);
    } else if look_now {
        detail["outcome"] = json!("verifying with Get Job");
    }
    entries.push(("webhook_received", detail, None));

    job.webhook_received_at = Some(now);
    job.updated_at = now;
    // Without a Pictory id there is nothing to ask yet: the mark waits for the id
    // (`finish_one` makes the job due at once when it arrives).
    if look_now && job.job_id.is_some() {
        job.next_poll_at = Some(now);
    }
    // When webhook bodies are trusted (verify mode off), the body is jobhook's latest word from
    // Pictory; it replaces `/raw` unless it is a stale one about a job already final.
    let raw = plan
        .as_ref()
        .filter(|plan| matches!(plan, ReportPlan::Move { .. }) || !job.status.is_final())
        .and_then(|_| std::str::from_utf8(raw_body).ok());
    let moved = match plan.as_ref().and_then(|plan| job.apply(plan, now)) {
        Some(from) => {
            let detail = json!({"from": from.as_str(), "to": job.status.as_str(),
                "cause": Cause::Webhook.as_str()});
            let snapshot = serde_json::to_string(&job.view()).map_err(corrupt)?;
            entries.push(("status_changed", detail, Some(snapshot)));
            true
        }
        None => false,
    };

    sqlx::query(
        "UPDATE jobs SET status = $1, output = $2, error = $3, resolved_by = $4, \
         completed_at = $5, webhook_received_at = $6, \
         next_poll_at = CASE WHEN $8 AND leased = 1 THEN next_poll_at ELSE $7 END, \
         poll_priority = CASE WHEN $8 THEN 1 ELSE poll_priority END, \
         raw_response = COALESCE($9, raw_response) WHERE id = $10",
    )
    .bind(job.status.as_str())
    .bind(json_text(&job.output)?)
    .bind(json_text(&job.error)?)
    .bind(job.resolved_by.as_deref())
    .bind(job.completed_at)
    .bind(job.webhook_received_at)
    .bind(job.next_poll_at)
    .bind(look_now)
    .bind(raw)
    .bind(job.pk)
    .execute(&mut **tx)
    .await?;

    let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO job_events (job_pk, at, kind, detail, snapshot) ",
    );
    insert.push_values(&entries, |mut row, (kind, detail, snapshot)| {
        row.push_bind(job.pk)
            .push_bind(now)
            .push_bind(*kind)
            .push_bind(detail.to_string())
            .push_bind(snapshot.clone());
    });
    insert.push(" RETURNING id, kind");
    let ids: Vec<(i64, String)> = insert.build_query_as().fetch_all(&mut **tx).await?;
    job.seq = ids.iter().map(|(id, _)| *id).max().unwrap_or(job.seq);
    if moved && notify {
        if let Some((change_id, _)) = ids.iter().find(|(_, kind)| kind == "status_changed") {
            enqueue_notifications(tx, *change_id, &job, now).await?;
        }
    }
    Ok(job)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_delivery(
    tx: &mut Tx<'_>,
    delivery: &NewDelivery,
    sha: &[u8],
    job_pk: Option<i64>,
    outcome: DeliveryOutcome,
    reason: Option<&str>,
    duplicate_of: Option<i64>,
) -> Result<Option<i64>, StoreError> {
    let body = (outcome != DeliveryOutcome::Duplicate).then_some(&delivery.body[..]);
    let id = sqlx::query_scalar(
        "INSERT INTO deliveries (received_at, job_pk, outcome, reason, remote_addr, headers, body, \
         body_sha256, body_size, duplicate_of) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (job_pk, body_sha256) WHERE outcome = 'accepted' DO NOTHING RETURNING id",
    )
    .bind(delivery.received_at)
    .bind(job_pk)
    .bind(outcome.as_str())
    .bind(reason)
    .bind(delivery.remote_addr.as_deref())
    .bind(&delivery.headers)
    .bind(body)
    .bind(sha)
    .bind(delivery.body.len() as i64)
    .bind(duplicate_of)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(id)
}

/// An optional value as JSON text for a TEXT column.
fn json_text<T: serde::Serialize>(value: &Option<T>) -> Result<Option<String>, StoreError> {
    value
        .as_ref()
        .map(|v| serde_json::to_string(v).map_err(corrupt))
        .transpose()
}
