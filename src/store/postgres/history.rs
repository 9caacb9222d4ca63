//! Writes shared by every path that changes a job: history entries, status moves, matching
//! deliveries to jobs, finishing submissions. Each runs inside the caller's [`Tx`], which holds
//! the history lock. The same steps as `sqlite/history.rs`, in PostgreSQL's dialect.

use super::archive;
use super::corrupt;
use super::outbox::enqueue_notifications;
use super::rows::{job_from_row, JOB_COLUMNS};
use super::usage::record_usage;
use super::write::Tx;
use crate::domain::archive::ArchivePolicy;
use crate::domain::search::metadata_values;
use crate::domain::usage::counts_for_usage;
use crate::domain::{plan_report, Cause, Job, JobStatus, ReportPlan};
use crate::pictory::ReportedState;
use crate::store::common::{json_text, plan_note};
use crate::store::{DeliveryOutcome, NewDelivery, RenderResponse, StoreError, SubmitOutcome};
use serde_json::{json, Value};
use sqlx::{Postgres, QueryBuilder, Row};

pub(super) async fn job_by_pk(tx: &mut Tx, pk: i64) -> Result<Job, StoreError> {
    let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(pk)
        .fetch_one(tx.db())
        .await?;
    job_from_row(&row)
}

/// Indexes a new job's metadata values for search (see `domain::search`), in the transaction
/// that records the job.
pub(super) async fn index_metadata(
    tx: &mut Tx,
    job_pk: i64,
    metadata: Option<&Value>,
) -> Result<(), StoreError> {
    let values = metadata_values(metadata);
    if values.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO job_metadata_values (value, job_pk) SELECT v, $2 FROM unnest($1::text[]) AS v \
         ON CONFLICT DO NOTHING",
    )
    .bind(values)
    .bind(job_pk)
    .execute(tx.db())
    .await?;
    Ok(())
}

async fn job_where(tx: &mut Tx, column: &str, value: &str) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE {column} = $1"
    ))
    .bind(value)
    .fetch_optional(tx.db())
    .await?;
    row.as_ref().map(job_from_row).transpose()
}

/// Appends a history entry and makes it the job's newest change (`seq`, `updated_at`).
pub(super) async fn append_event(
    tx: &mut Tx,
    job_pk: i64,
    kind: &str,
    detail: Value,
    now: i64,
) -> Result<i64, StoreError> {
    let id = append_entries(tx, job_pk, vec![(kind, detail, None)], now).await?;
    sqlx::query("UPDATE jobs SET seq = $1, updated_at = $2 WHERE id = $3")
        .bind(id)
        .bind(now)
        .bind(job_pk)
        .execute(tx.db())
        .await?;
    Ok(id)
}

/// A history entry: its kind, its detail, and for a status change the job as it is right
/// after it.
pub(super) type Entry<'a> = (&'a str, Value, Option<String>);

/// Appends history entries in one statement, in order, without touching the job (the caller
/// sets its `seq` and `updated_at`). Returns the id of the last one.
async fn append_entries(
    tx: &mut Tx,
    job_pk: i64,
    entries: Vec<Entry<'_>>,
    now: i64,
) -> Result<i64, StoreError> {
    tx.touched(job_pk);
    let mut insert = QueryBuilder::<Postgres>::new(
        "INSERT INTO job_events (job_pk, at, kind, detail, snapshot) ",
    );
    insert.push_values(entries, |mut row, (kind, detail, snapshot)| {
        row.push_bind(job_pk)
            .push_bind(now)
            .push_bind(kind.to_owned())
            .push_bind(detail.to_string())
            .push_bind(snapshot);
    });
    insert.push(" RETURNING id");
    let ids: Vec<i64> = insert.build_query_scalar().fetch_all(tx.db()).await?;
    // Rows take their ids in the order of VALUES: the last entry has the largest.
    ids.into_iter()
        .max()
        .ok_or_else(|| corrupt("no history entry was inserted"))
}

/// Finds the job with Pictory's id `job_id`, or inserts it. Returns whether it is new (its
/// `registered` entry is then the caller's to write).
pub(super) async fn upsert_job(
    tx: &mut Tx,
    job_id: &str,
    metadata: Option<&Value>,
    first_poll_at: Option<i64>,
    now: i64,
) -> Result<(Job, bool), StoreError> {
    if let Some(job) = job_where(tx, "job_id", job_id).await? {
        return Ok((job, false));
    }
    // The unique constraint is the last word, whoever inserts the same id first.
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (job_id, status, metadata, created_at, updated_at, next_poll_at) \
         VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT (job_id) DO NOTHING RETURNING id",
    )
    .bind(job_id)
    .bind(JobStatus::Pending.as_str())
    .bind(metadata.map(Value::to_string))
    .bind(now)
    .bind(first_poll_at)
    .fetch_optional(tx.db())
    .await?;
    match inserted {
        Some(pk) => {
            index_metadata(tx, pk, metadata).await?;
            Ok((job_by_pk(tx, pk).await?, true))
        }
        None => {
            let job = job_where(tx, "job_id", job_id)
                .await?
                .ok_or_else(|| corrupt("a job id that conflicts with no job"))?;
            Ok((job, false))
        }
    }
}

/// Starts tracking a job (registration): [`upsert_job`] plus its `registered` entry.
pub(super) async fn ensure_job(
    tx: &mut Tx,
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
    tx: &mut Tx,
    job_id: Option<&str>,
    submission_id: Option<&str>,
    first_poll_at: Option<i64>,
    now: i64,
) -> Result<Option<(Job, bool)>, StoreError> {
    if let Some(submission_id) = submission_id {
        if let Some(mut job) = job_where(tx, "submission_id", submission_id).await? {
            if let (None, Some(job_id)) = (&job.job_id, job_id) {
                // The submission's Generate call ended ambiguously; the webhook tells us the id.
                // Only one row may hold a Pictory id, so a clash keeps the id where it is.
                let set = sqlx::query(
                    "UPDATE jobs SET job_id = $1 WHERE id = $2 AND job_id IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM jobs WHERE job_id = $1)",
                )
                .bind(job_id)
                .bind(job.pk)
                .execute(tx.db())
                .await?
                .rows_affected();
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
    let (job, created) = upsert_job(tx, job_id, None, first_poll_at, now).await?;
    Ok(Some((job, created)))
}

/// Applies a report's plan; the caller has already recorded what brought the report.
pub(super) async fn apply_plan(
    tx: &mut Tx,
    job: &Job,
    plan: &ReportPlan,
    cause: Cause,
    now: i64,
) -> Result<(), StoreError> {
    apply_plan_noting(tx, job, plan, cause, None, now).await
}

/// [`apply_plan`], with a reason written next to the move in the history.
pub(super) async fn apply_plan_noting(
    tx: &mut Tx,
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
    let to = moved.status;
    let mut detail = json!({"from": from.as_str(), "to": to.as_str(), "cause": cause.as_str()});
    if let Some(reason) = reason {
        detail["reason"] = json!(reason);
    }
    let archive = archive::plan(tx, &moved).await?;
    moved.archive = archive.as_ref().map(archive::Planned::archive);
    // The change keeps the job as it is right after it (the event stream serves that), and
    // the job is written once, with the change as its newest entry.
    moved.updated_at = now;
    let snapshot = serde_json::to_string(&moved.view()).map_err(corrupt)?;
    let change_id = append_entries(
        tx,
        job.pk,
        vec![("status_changed", detail, Some(snapshot))],
        now,
    )
    .await?;
    sqlx::query(
        "UPDATE jobs SET status = $1, output = $2, error = $3, resolved_by = $4, \
         completed_at = $5, next_poll_at = $6, seq = $7, updated_at = $8 WHERE id = $9",
    )
    .bind(moved.status.as_str())
    .bind(json_text(&moved.output)?)
    .bind(json_text(&moved.error)?)
    .bind(moved.resolved_by.as_deref())
    .bind(moved.completed_at)
    .bind(moved.next_poll_at)
    .bind(change_id)
    .bind(now)
    .bind(job.pk)
    .execute(tx.db())
    .await?;
    if counts_for_usage(moved.status) {
        record_usage(tx, &moved).await?;
    }
    if let Some(planned) = &archive {
        archive::start(tx, job.pk, planned, change_id, now).await?;
    }
    let held = archive.as_ref().is_some_and(|a| a.hold_completed);
    enqueue_notifications(tx, change_id, &moved, held, now).await
}

/// Records how a submission's Generate call ended, and the response its key replays.
pub(super) async fn finish_one(
    tx: &mut Tx,
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
            .execute(tx.db())
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
                .execute(tx.db())
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
        .execute(tx.db())
        .await?;
    }
    // The job changed even when no move was made (its id, its schedule).
    tx.touched(pk);
    Ok(job)
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
    /// The delivery whose row holds the body (a replayed duplicate's original).
    pub(super) body_delivery_id: i64,
    /// Whether any notification endpoint is configured.
    pub(super) notify: bool,
}

/// What recording a webhook on its job writes, worked out in memory by [`plan_webhook`]: the
/// job as it will be, its new history entries, and the marks the job's UPDATE needs. Written
/// one webhook at a time by [`record_webhook`], or a batch at once (see `batch.rs`).
pub(super) struct WebhookWrite {
    /// The job as it is after the webhook (its `seq` is set once the entries have ids).
    pub(super) job: Job,
    /// `registered` (for a job this delivery created) and `webhook_received`; the status
    /// change, when there is one, comes last (see [`WebhookWrite::entries`]).
    pub(super) leading: Vec<(&'static str, Value)>,
    /// The detail of the status change, when the report moved the job.
    pub(super) status_change: Option<Value>,
    /// Verify mode: ask Get Job now (kept off a job a poll has leased, which asks anyway).
    pub(super) look_now: bool,
    /// The delivery that now holds the job's `/raw`, when this one replaced it.
    pub(super) raw_delivery: Option<i64>,
    /// The files a completion has copied, once [`WebhookWrite::plan_archive`] read the policy.
    pub(super) archive: Option<archive::Planned>,
}

impl WebhookWrite {
    /// Whether the webhook completes its job (its archive then depends on the policy).
    pub(super) fn completes(&self) -> bool {
        self.status_change.is_some() && self.job.status == JobStatus::Completed
    }

    /// Plans the archive of a completion under `policy` (None: archiving is off).
    pub(super) fn plan_archive(&mut self, policy: Option<&ArchivePolicy>) {
        if self.completes() {
            self.archive = archive::planned(&self.job, policy);
            self.job.archive = self.archive.as_ref().map(archive::Planned::archive);
        }
    }

    /// The history entries, in order; a status change keeps the job as it is right after it
    /// (the event stream serves that snapshot).
    pub(super) fn entries(&self) -> Result<Vec<Entry<'static>>, StoreError> {
        let mut entries: Vec<Entry<'static>> = self
            .leading
            .iter()
            .map(|(kind, detail)| (*kind, detail.clone(), None))
            .collect();
        if let Some(detail) = &self.status_change {
            let snapshot = serde_json::to_string(&self.job.view()).map_err(corrupt)?;
            entries.push(("status_changed", detail.clone(), Some(snapshot)));
        }
        Ok(entries)
    }

    /// Whether the job moved to a status whose usage is counted (`completed`, `failed`).
    pub(super) fn counts_usage(&self) -> bool {
        self.status_change.is_some() && counts_for_usage(self.job.status)
    }

    /// Whether the archive holds the job's `job.completed` notifications.
    pub(super) fn holds_completion(&self) -> bool {
        self.archive.as_ref().is_some_and(|a| a.hold_completed)
    }
}

/// Works out what a webhook does to its job (see [`WebhookWrite`]), without the database.
pub(super) fn plan_webhook(webhook: WebhookOnJob<'_>, now: i64) -> WebhookWrite {
    let WebhookOnJob {
        mut job,
        created,
        delivery_id,
        duplicate,
        replay,
        report,
        look_now,
        body_delivery_id,
        notify: _,
    } = webhook;
    let mut leading = Vec::with_capacity(2);
    if created {
        leading.push(("registered", json!({"cause": Cause::Webhook.as_str()})));
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
    leading.push(("webhook_received", detail));

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
    let raw_delivery = plan
        .as_ref()
        .filter(|plan| matches!(plan, ReportPlan::Move { .. }) || !job.status.is_final())
        .map(|_| body_delivery_id);
    let status_change = plan
        .as_ref()
        .and_then(|plan| job.apply(plan, now))
        .map(|from| {
            json!({"from": from.as_str(), "to": job.status.as_str(),
                "cause": Cause::Webhook.as_str()})
        });
    WebhookWrite {
        job,
        leading,
        status_change,
        look_now,
        raw_delivery,
        archive: None,
    }
}

/// The job UPDATE of a recorded webhook; `$1`..`$12` as [`record_webhook`] binds them. A look
/// now leaves a leased job's schedule alone (the poll under way asks anyway) but raises its
/// priority.
const WEBHOOK_JOB_UPDATE: &str = "UPDATE jobs SET status = $1, output = $2, error = $3, \
     resolved_by = $4, completed_at = $5, webhook_received_at = $6, \
     next_poll_at = CASE WHEN $8 AND leased THEN next_poll_at ELSE $7 END, \
     poll_priority = CASE WHEN $8 THEN 1 ELSE poll_priority END, \
     raw_response = CASE WHEN $9 IS NULL THEN raw_response END, \
     raw_delivery = COALESCE($9, raw_delivery), seq = $10, updated_at = $11 WHERE id = $12";

/// Records a webhook on its job and applies its report when there is one: the new state is
/// worked out in memory ([`plan_webhook`]) and written with one INSERT of its history entries
/// and one UPDATE of the job.
pub(super) async fn record_webhook(
    tx: &mut Tx,
    webhook: WebhookOnJob<'_>,
    now: i64,
) -> Result<Job, StoreError> {
    let notify = webhook.notify;
    let mut write = plan_webhook(webhook, now);
    if write.completes() {
        let policy = archive::policy(tx).await?;
        write.plan_archive(policy.as_ref());
    }
    let entries = write.entries()?;
    let mut job = write.job.clone();
    // The status change, when there is one, is the last entry.
    job.seq = append_entries(tx, job.pk, entries, now).await?;
    sqlx::query(WEBHOOK_JOB_UPDATE)
        .bind(job.status.as_str())
        .bind(json_text(&job.output)?)
        .bind(json_text(&job.error)?)
        .bind(job.resolved_by.as_deref())
        .bind(job.completed_at)
        .bind(job.webhook_received_at)
        .bind(job.next_poll_at)
        .bind(write.look_now)
        .bind(write.raw_delivery)
        .bind(job.seq)
        .bind(now)
        .bind(job.pk)
        .execute(tx.db())
        .await?;
    // Only a webhook that makes its job final pays for the usage bookkeeping.
    if write.counts_usage() {
        record_usage(tx, &job).await?;
    }
    if let Some(planned) = &write.archive {
        archive::start(tx, job.pk, planned, job.seq, now).await?;
    }
    if write.status_change.is_some() && notify {
        enqueue_notifications(tx, job.seq, &job, write.holds_completion(), now).await?;
    }
    Ok(job)
}

/// Archives a delivery; None when it duplicates the accepted copy of the same job and body (the
/// partial unique index is the last word, whatever a caller looked at first).
pub(super) async fn insert_delivery(
    tx: &mut Tx,
    delivery: &NewDelivery,
    sha: &[u8],
    job_pk: Option<i64>,
    outcome: DeliveryOutcome,
    reason: Option<&str>,
    duplicate_of: Option<i64>,
) -> Result<Option<i64>, StoreError> {
    let body = (outcome != DeliveryOutcome::Duplicate).then_some(&delivery.body[..]);
    let row = sqlx::query(
        "INSERT INTO deliveries (received_at, job_pk, outcome, reason, remote_addr, \
         headers, body, body_sha256, body_size, duplicate_of) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
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
    .fetch_optional(tx.db())
    .await?;
    row.map(|row| row.try_get::<i64, _>("id").map_err(StoreError::from))
        .transpose()
}
