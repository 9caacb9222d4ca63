//! Writes shared by every path that changes a job: history entries, status moves, matching
//! deliveries to jobs, finishing submissions. Each runs on the writer thread, inside the
//! caller's transaction.

use super::archive;
use super::outbox::enqueue_notifications;
use super::rows::{job_from_written, JOB_COLUMNS};
use super::usage::record_usage;
use super::writer::{execute, query_one, query_optional};
use super::{corrupt, Tx};
use crate::domain::search::metadata_values;
use crate::domain::usage::counts_for_usage;
use crate::domain::{plan_report, Cause, Job, JobStatus, ReportPlan};
use crate::pictory::ReportedState;
use crate::store::common::json_text;
use crate::store::{DeliveryOutcome, NewDelivery, RenderResponse, StoreError, SubmitOutcome};
use rusqlite::{params, params_from_iter, ToSql};
use serde_json::{json, Value};

pub(super) fn job_by_pk(tx: &Tx, pk: i64) -> Result<Job, StoreError> {
    query_one(
        tx,
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
        [pk],
        job_from_written,
    )
}

/// Indexes a new job's metadata values for search (see `domain::search`), in the transaction
/// that records the job.
pub(super) fn index_metadata(
    tx: &Tx,
    job_pk: i64,
    metadata: Option<&Value>,
) -> Result<(), StoreError> {
    for value in metadata_values(metadata) {
        execute(
            tx,
            "INSERT OR IGNORE INTO job_metadata_values (value, job_pk) VALUES (?1, ?2)",
            params![value, job_pk],
        )?;
    }
    Ok(())
}

/// Appends a history entry and makes it the job's newest change (`seq`, `updated_at`).
pub(super) fn append_event(
    tx: &Tx,
    job_pk: i64,
    kind: &str,
    detail: Value,
    now: i64,
) -> Result<i64, StoreError> {
    let id = append_entries(tx, job_pk, &[(kind, detail, None)], now)?;
    execute(
        tx,
        "UPDATE jobs SET seq = ?1, updated_at = ?2 WHERE id = ?3",
        params![id, now, job_pk],
    )?;
    Ok(id)
}

/// A history entry: its kind, its detail, and for a status change the job as it is right
/// after it.
type Entry<'a> = (&'a str, Value, Option<String>);

/// Appends history entries in one statement, in order, without touching the job (the caller
/// sets its `seq` and `updated_at`). Returns the id of the last one.
fn append_entries(
    tx: &Tx,
    job_pk: i64,
    entries: &[Entry<'_>],
    now: i64,
) -> Result<i64, StoreError> {
    let details: Vec<String> = entries
        .iter()
        .map(|(_, detail, _)| detail.to_string())
        .collect();
    let mut values: Vec<&dyn ToSql> = Vec::with_capacity(entries.len() * 5);
    for ((kind, _, snapshot), detail) in entries.iter().zip(&details) {
        values.extend([&job_pk as &dyn ToSql, &now, kind, detail, snapshot]);
    }
    let rows = vec!["(?, ?, ?, ?, ?)"; entries.len()].join(", ");
    execute(
        tx,
        &format!("INSERT INTO job_events (job_pk, at, kind, detail, snapshot) VALUES {rows}"),
        params_from_iter(values),
    )?;
    Ok(tx.last_insert_rowid())
}

/// Finds the job with Pictory's id `job_id`, or inserts it. Returns whether it is new (its
/// `registered` entry is then the caller's to write).
pub(super) fn upsert_job(
    tx: &Tx,
    job_id: &str,
    metadata: Option<&Value>,
    first_poll_at: Option<i64>,
    now: i64,
) -> Result<(Job, bool), StoreError> {
    let known = query_optional(
        tx,
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1"),
        [job_id],
        job_from_written,
    )?;
    if let Some(job) = known {
        return Ok((job, false));
    }
    // The writer is the only one writing, so nothing can insert the same id in between.
    execute(
        tx,
        "INSERT INTO jobs (job_id, status, metadata, created_at, updated_at, \
         next_poll_at) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
        params![
            job_id,
            JobStatus::Pending.as_str(),
            metadata.map(Value::to_string),
            now,
            first_poll_at
        ],
    )?;
    let pk = tx.last_insert_rowid();
    index_metadata(tx, pk, metadata)?;
    Ok((job_by_pk(tx, pk)?, true))
}

/// Starts tracking a job (registration): [`upsert_job`] plus its `registered` entry.
pub(super) fn ensure_job(
    tx: &Tx,
    job_id: &str,
    metadata: Option<&Value>,
    cause: Cause,
    first_poll_at: Option<i64>,
    now: i64,
) -> Result<(i64, bool), StoreError> {
    let (job, created) = upsert_job(tx, job_id, metadata, first_poll_at, now)?;
    if created {
        append_event(
            tx,
            job.pk,
            "registered",
            json!({"cause": cause.as_str()}),
            now,
        )?;
    }
    Ok((job.pk, created))
}

/// Finds the job a delivery belongs to: the submission its key names first, else the body's job
/// id, which starts tracking a job jobhook did not know. Returns the job and whether it is new
/// (its `registered` entry is then the caller's to write).
pub(super) fn resolve_job(
    tx: &Tx,
    job_id: Option<&str>,
    submission_id: Option<&str>,
    first_poll_at: Option<i64>,
    now: i64,
) -> Result<Option<(Job, bool)>, StoreError> {
    if let Some(submission_id) = submission_id {
        let found = query_optional(
            tx,
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE submission_id = ?1"),
            [submission_id],
            job_from_written,
        )?;
        if let Some(mut job) = found {
            if let (None, Some(job_id)) = (&job.job_id, job_id) {
                // The submission's Generate call ended ambiguously; the webhook tells us the id.
                // Only one row may hold a Pictory id, so a clash keeps the id where it is.
                let set = execute(
                    tx,
                    "UPDATE jobs SET job_id = ?1 WHERE id = ?2 AND job_id IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM jobs WHERE job_id = ?1)",
                    params![job_id, job.pk],
                )?;
                if set == 1 {
                    job.job_id = Some(job_id.to_owned());
                }
            }
            return Ok(Some((job, false)));
        }
    }
    let Some(job_id) = job_id else {
        return Ok(None);
    };
    let (job, created) = upsert_job(tx, job_id, None, first_poll_at, now)?;
    Ok(Some((job, created)))
}

/// Applies a report's plan; the caller has already recorded what brought the report.
pub(super) fn apply_plan(
    tx: &Tx,
    job: &Job,
    plan: &ReportPlan,
    cause: Cause,
    now: i64,
) -> Result<(), StoreError> {
    apply_plan_noting(tx, job, plan, cause, None, now)
}

/// [`apply_plan`], with a reason written next to the move in the history.
pub(super) fn apply_plan_noting(
    tx: &Tx,
    job: &Job,
    plan: &ReportPlan,
    cause: Cause,
    reason: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    // Read the row as it is now: the caller may have changed it (a job id, a schedule) since
    // it read the job the plan was made for.
    let mut moved = job_by_pk(tx, job.pk)?;
    let Some(from) = moved.apply(plan, now) else {
        return Ok(());
    };
    let to = moved.status;
    let mut detail = json!({"from": from.as_str(), "to": to.as_str(), "cause": cause.as_str()});
    if let Some(reason) = reason {
        detail["reason"] = json!(reason);
    }
    let archive = archive::plan(tx, &moved)?;
    moved.archive = archive.as_ref().map(archive::Planned::archive);
    // The change keeps the job as it is right after it (the event stream serves that), and
    // the job is written once, with the change as its newest entry.
    moved.updated_at = now;
    let snapshot = serde_json::to_string(&moved.view()).map_err(corrupt)?;
    let change_id = append_entries(
        tx,
        job.pk,
        &[("status_changed", detail, Some(snapshot))],
        now,
    )?;
    execute(
        tx,
        "UPDATE jobs SET status = ?1, output = ?2, error = ?3, resolved_by = ?4, \
         completed_at = ?5, next_poll_at = ?6, seq = ?7, updated_at = ?8 WHERE id = ?9",
        params![
            moved.status.as_str(),
            json_text(&moved.output)?,
            json_text(&moved.error)?,
            moved.resolved_by.as_deref(),
            moved.completed_at,
            moved.next_poll_at,
            change_id,
            now,
            job.pk
        ],
    )?;
    if counts_for_usage(moved.status) {
        record_usage(tx, &moved)?;
    }
    if let Some(planned) = &archive {
        archive::start(tx, job.pk, planned, change_id, now)?;
    }
    let held = archive.as_ref().is_some_and(|a| a.hold_completed);
    enqueue_notifications(tx, change_id, &moved, held, now)
}

/// Records how a submission's Generate call ended, and the response its key replays.
pub(super) fn finish_one(
    tx: &Tx,
    pk: i64,
    outcome: SubmitOutcome,
    first_poll_at: Option<i64>,
    render: &RenderResponse,
    now: i64,
) -> Result<Job, StoreError> {
    let job = job_by_pk(tx, pk)?;
    let (to, error, reason) = match &outcome {
        SubmitOutcome::Created { job_id } => {
            // A Pictory id held by another row (a webhook that beat us with the generic URL)
            // stays there; this record then cannot be polled and says why.
            // A webhook that arrived before this answer may already have set the id, and asked
            // for a look now; both are kept.
            let taken = execute(
                tx,
                "UPDATE jobs SET job_id = ?1, \
                 next_poll_at = CASE WHEN poll_priority = 1 THEN ?4 ELSE ?2 END \
                 WHERE id = ?3 AND NOT EXISTS (SELECT 1 FROM jobs WHERE job_id = ?1 AND id <> ?3)",
                params![job_id, first_poll_at, pk, now],
            )? == 0;
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
            execute(tx, "DELETE FROM idempotency_keys WHERE job_pk = ?1", [pk])?;
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
        apply_plan_noting(tx, &job, &plan, Cause::Api, reason.as_deref(), now)?;
    }
    let job = job_by_pk(tx, pk)?;
    if !matches!(outcome, SubmitOutcome::NothingCreated { .. }) {
        let (status, body) = render(&job);
        execute(
            tx,
            "UPDATE idempotency_keys SET status_code = ?1, response = ?2 WHERE job_pk = ?3",
            params![i64::from(status), body, pk],
        )?;
    }
    Ok(job)
}

pub(super) use crate::store::common::{moved_to, plan_note};

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
    /// The delivery whose row holds the body (a replayed duplicate's original).
    pub(super) body_delivery_id: i64,
    /// Whether any notification endpoint is configured.
    pub(super) notify: bool,
}

/// Records a webhook on its job and applies its report when there is one. The hot path of
/// ingest, so the new state is worked out in memory and written with one INSERT per history
/// entry it makes and then one UPDATE of the job (a job row holds the last raw answer, so each
/// rewrite of it costs).
pub(super) fn record_webhook(
    tx: &Tx,
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
        body_delivery_id,
        notify,
    } = webhook;
    let mut entries: Vec<Entry<'_>> = Vec::with_capacity(3);
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
    // Pictory; it replaces `/raw` unless it is a stale one about a job already final. The job
    // refers to the delivery rather than keeping a second copy of its body.
    let mut archive = None;
    let raw_delivery = plan
        .as_ref()
        .filter(|plan| matches!(plan, ReportPlan::Move { .. }) || !job.status.is_final())
        .map(|_| body_delivery_id);
    let moved = match plan.as_ref().and_then(|plan| job.apply(plan, now)) {
        Some(from) => {
            archive = archive::plan(tx, &job)?;
            job.archive = archive.as_ref().map(archive::Planned::archive);
            let detail = json!({"from": from.as_str(), "to": job.status.as_str(),
                "cause": Cause::Webhook.as_str()});
            let snapshot = serde_json::to_string(&job.view()).map_err(corrupt)?;
            entries.push(("status_changed", detail, Some(snapshot)));
            true
        }
        None => false,
    };

    // The status change, when there is one, is the last entry.
    job.seq = append_entries(tx, job.pk, &entries, now)?;
    execute(
        tx,
        "UPDATE jobs SET status = ?1, output = ?2, error = ?3, resolved_by = ?4, \
         completed_at = ?5, webhook_received_at = ?6, \
         next_poll_at = CASE WHEN ?8 AND leased = 1 THEN next_poll_at ELSE ?7 END, \
         poll_priority = CASE WHEN ?8 THEN 1 ELSE poll_priority END, \
         raw_response = CASE WHEN ?9 IS NULL THEN raw_response END, \
         raw_delivery = COALESCE(?9, raw_delivery), seq = ?10, updated_at = ?11 WHERE id = ?12",
        params![
            job.status.as_str(),
            json_text(&job.output)?,
            json_text(&job.error)?,
            job.resolved_by.as_deref(),
            job.completed_at,
            job.webhook_received_at,
            job.next_poll_at,
            look_now,
            raw_delivery,
            job.seq,
            now,
            job.pk
        ],
    )?;
    // Only a webhook that makes its job final pays for the usage bookkeeping.
    if moved && counts_for_usage(job.status) {
        record_usage(tx, &job)?;
    }
    if let Some(planned) = &archive {
        archive::start(tx, job.pk, planned, job.seq, now)?;
    }
    if moved && notify {
        let held = archive.as_ref().is_some_and(|a| a.hold_completed);
        enqueue_notifications(tx, job.seq, &job, held, now)?;
    }
    Ok(job)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn insert_delivery(
    tx: &Tx,
    delivery: &NewDelivery,
    sha: &[u8],
    job_pk: Option<i64>,
    outcome: DeliveryOutcome,
    reason: Option<&str>,
    duplicate_of: Option<i64>,
) -> Result<Option<i64>, StoreError> {
    let body = (outcome != DeliveryOutcome::Duplicate).then_some(&delivery.body[..]);
    let stored = execute(
        tx,
        "INSERT INTO deliveries (received_at, job_pk, outcome, reason, remote_addr, \
         headers, body, body_sha256, body_size, duplicate_of) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (job_pk, body_sha256) WHERE outcome = 'accepted' DO NOTHING",
        params![
            delivery.received_at,
            job_pk,
            outcome.as_str(),
            reason,
            delivery.remote_addr.as_deref(),
            &delivery.headers,
            body,
            sha,
            delivery.body.len() as i64,
            duplicate_of
        ],
    )?;
    Ok((stored == 1).then(|| tx.last_insert_rowid()))
}
