//! Recording what a Get Job call said, and what the job does next (as `sqlite/polls.rs`).

use super::history::{append_event, apply_plan, job_by_pk};
use super::write::Tx;
use crate::domain::{plan_report, Cause, Job, JobStatus, ReportPlan};
use crate::pictory::ReportedState;
use crate::store::common::moved_to;
use crate::store::{PollOutcome, PollRecord, StoreError, NOT_FOUND_AFTER};
use serde_json::json;

pub(super) async fn record_poll(
    tx: &mut Tx,
    job_pk: i64,
    poll: &PollRecord,
    now: i64,
) -> Result<Job, StoreError> {
    // A webhook's "look now" that arrived while a scheduled poll was in flight survives it:
    // only the poll made for a webhook clears the mark.
    let looked_for_webhook = poll.cause == Cause::Webhook;
    let still_wanted: bool = sqlx::query_scalar(
        "UPDATE jobs SET poll_count = poll_count + 1, last_polled_at = $1, leased = FALSE, \
         poll_priority = CASE WHEN $2 THEN 0 ELSE poll_priority END WHERE id = $3 \
         RETURNING poll_priority = 1",
    )
    .bind(now)
    .bind(looked_for_webhook)
    .bind(job_pk)
    .fetch_one(tx.db())
    .await?;
    let mut detail = json!({"outcome": poll.label, "cause": poll.cause.as_str()});
    detail["http_status"] = json!(poll.http_status);
    append_event(tx, job_pk, "polled", detail, now).await?;

    let job = job_by_pk(tx, job_pk).await?;
    let status_before = job.status;
    let not_found = match &poll.outcome {
        PollOutcome::NotFound
        | PollOutcome::Report {
            state: ReportedState::NotFound,
            ..
        } => true,
        PollOutcome::Report { .. } | PollOutcome::NoAnswer => false,
    };
    if let PollOutcome::Report { state, raw } = &poll.outcome {
        let plan = plan_report(job.status, state, poll.cause);
        // `/raw` keeps the last answer that still says something about the job.
        if matches!(plan, ReportPlan::Move { .. }) || !job.status.is_final() {
            sqlx::query("UPDATE jobs SET raw_response = $1, raw_delivery = NULL WHERE id = $2")
                .bind(raw)
                .bind(job_pk)
                .execute(tx.db())
                .await?;
        }
        apply_plan(tx, &job, &plan, poll.cause, now).await?;
    }
    if not_found {
        let streak: i64 = sqlx::query_scalar(
            "UPDATE jobs SET not_found_streak = not_found_streak + 1 WHERE id = $1 \
             RETURNING not_found_streak",
        )
        .bind(job_pk)
        .fetch_one(tx.db())
        .await?;
        let job = job_by_pk(tx, job_pk).await?;
        if streak >= NOT_FOUND_AFTER && job.status.can_move_to(JobStatus::NotFound) {
            apply_plan(tx, &job, &moved_to(JobStatus::NotFound), poll.cause, now).await?;
        }
    } else if matches!(poll.outcome, PollOutcome::Report { .. }) {
        sqlx::query("UPDATE jobs SET not_found_streak = 0 WHERE id = $1")
            .bind(job_pk)
            .execute(tx.db())
            .await?;
    }

    let job = job_by_pk(tx, job_pk).await?;
    if poll.deadline_passed && job.status.can_move_to(JobStatus::TimedOut) {
        apply_plan(
            tx,
            &job,
            &moved_to(JobStatus::TimedOut),
            Cause::Deadline,
            now,
        )
        .await?;
    }
    let job = job_by_pk(tx, job_pk).await?;
    // Polling stops for final statuses, for the ones only new evidence can move on, once
    // the deadline has passed whatever the status, and for a job that new evidence brought
    // back from `timed_out`/`not_found` (see `sqlite/polls.rs`).
    let revived = matches!(status_before, JobStatus::TimedOut | JobStatus::NotFound)
        && job.status != status_before;
    let keep_polling = !job.status.is_final()
        && (still_wanted
            || (!matches!(job.status, JobStatus::TimedOut | JobStatus::NotFound)
                && !poll.deadline_passed
                && !revived));
    let next_poll_at = match (keep_polling, still_wanted) {
        (false, _) => None,
        // A "look now" is still pending: due now.
        (true, true) => Some(now),
        (true, false) => Some(poll.next_poll_at),
    };
    sqlx::query("UPDATE jobs SET next_poll_at = $1 WHERE id = $2")
        .bind(next_poll_at)
        .bind(job_pk)
        .execute(tx.db())
        .await?;
    job_by_pk(tx, job_pk).await
}
