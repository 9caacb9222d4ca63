//! Recording what a Get Job call said, and what the job does next.

use super::history::{append_event, apply_plan, job_by_pk, moved_to};
use super::writer::{execute, query_one};
use super::Tx;
use crate::domain::{plan_report, Cause, Job, JobStatus, ReportPlan};
use crate::pictory::ReportedState;
use crate::store::{PollOutcome, PollRecord, StoreError, NOT_FOUND_AFTER};
use rusqlite::params;
use serde_json::json;

pub(super) fn record_poll(
    tx: &Tx,
    job_pk: i64,
    poll: &PollRecord,
    now: i64,
) -> Result<Job, StoreError> {
    // A webhook's "look now" that arrived while a scheduled poll was in flight survives it:
    // only the poll made for a webhook clears the mark.
    let looked_for_webhook = poll.cause == Cause::Webhook;
    let still_wanted: bool = query_one(
        tx,
        "UPDATE jobs SET poll_count = poll_count + 1, last_polled_at = ?1, leased = 0, \
         poll_priority = CASE WHEN ?2 THEN 0 ELSE poll_priority END WHERE id = ?3 \
         RETURNING poll_priority = 1",
        params![now, looked_for_webhook, job_pk],
        |row| Ok(row.get(0)?),
    )?;
    let mut detail = json!({"outcome": poll.label, "cause": poll.cause.as_str()});
    detail["http_status"] = json!(poll.http_status);
    append_event(tx, job_pk, "polled", detail, now)?;

    let job = job_by_pk(tx, job_pk)?;
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
            execute(
                tx,
                "UPDATE jobs SET raw_response = ?1, raw_delivery = NULL WHERE id = ?2",
                params![raw, job_pk],
            )?;
        }
        apply_plan(tx, &job, &plan, poll.cause, now)?;
    }
    if not_found {
        let streak: i64 = query_one(
            tx,
            "UPDATE jobs SET not_found_streak = not_found_streak + 1 WHERE id = ?1 \
             RETURNING not_found_streak",
            [job_pk],
            |row| Ok(row.get(0)?),
        )?;
        let job = job_by_pk(tx, job_pk)?;
        if streak >= NOT_FOUND_AFTER && job.status.can_move_to(JobStatus::NotFound) {
            apply_plan(tx, &job, &moved_to(JobStatus::NotFound), poll.cause, now)?;
        }
    } else if matches!(poll.outcome, PollOutcome::Report { .. }) {
        execute(
            tx,
            "UPDATE jobs SET not_found_streak = 0 WHERE id = ?1",
            [job_pk],
        )?;
    }

    let job = job_by_pk(tx, job_pk)?;
    if poll.deadline_passed && job.status.can_move_to(JobStatus::TimedOut) {
        apply_plan(
            tx,
            &job,
            &moved_to(JobStatus::TimedOut),
            Cause::Deadline,
            now,
        )?;
    }
    let job = job_by_pk(tx, job_pk)?;
    // Polling stops for final statuses, for the ones only new evidence can move on, once
    // the deadline has passed whatever the status, and for a job that new evidence brought
    // back from `timed_out`/`not_found` (its deadline is long gone; webhooks and refreshes
    // keep it moving).
    let revived = matches!(status_before, JobStatus::TimedOut | JobStatus::NotFound)
        && job.status != status_before;
    // A webhook that asked for a look while this poll ran is new evidence even for a job
    // this poll just timed out or found missing.
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
    execute(
        tx,
        "UPDATE jobs SET next_poll_at = ?1 WHERE id = ?2",
        params![next_poll_at, job_pk],
    )?;
    job_by_pk(tx, job_pk)
}
