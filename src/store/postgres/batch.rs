//! A batch of webhook deliveries stored in five round trips, whatever its size.
//!
//! # Why
//! Stored one by one ([`super::webhooks::ingest_one`]), a delivery costs about nine round trips
//! to PostgreSQL (find the job, insert it, read it back, insert the delivery, the history, the
//! job's update, the usage...), all under the history lock, which serialises every write: a
//! batch of 64 is some 600 round trips, and on a busy machine each one waits for the database
//! process to be scheduled. Here a batch is:
//!
//! 1. `BEGIN` and the history lock, one simple query ([`super::write::Tx::begin`]);
//! 2. one read: the batch's jobs, the accepted deliveries their bodies would duplicate, and
//!    the archive policy;
//! 3. the ids of the deliveries, new jobs and history entries, as many as the plan needs (ids are drawn
//!    from their sequences under the lock, so they still commit in order, and without gaps);
//! 4. one write: every row, each table's rows bound as arrays (`UNNEST`) in one data-modifying
//!    `WITH` statement, and the announcement to the other replicas;
//! 5. `COMMIT`.
//!
//! What each delivery does to its job is worked out in memory between 2 and 3 by the planner
//! the one-by-one path uses ([`plan_webhook`]): the rows are the same (a test holds both paths
//! to the same rows and ids), only the round trips differ.
//!
//! # When it steps aside
//! A batch in which two deliveries concern the same job, or where a delivery would give a
//! submission its Pictory id, is stored one by one instead ([`ingest`] answers None before it
//! writes anything): the second delivery must see what the first did, and the id needs a
//! guarded update of its own. Both are rare (a duplicate sent at once, an ambiguous Generate).

use super::corrupt;
use super::history::{plan_webhook, WebhookOnJob, WebhookWrite};
use super::rows::{job_from_row, JOB_COLUMNS};
use super::write::{payloads, Tx, CHANNEL};
use crate::domain::archive::ArchivePolicy;
use crate::domain::time::rfc3339;
use crate::domain::usage::UsageFacts;
use crate::domain::Job;
use crate::store::common::{announced_events, json_text, message_id};
use crate::store::{DeliveryOutcome, DeliveryTarget, Ingested, NewDelivery, StoreError};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::collections::HashMap;

/// The reason a delivery naming neither a tracked submission nor a job id is archived with.
pub(super) const NOT_TRACKED: &str =
    "the submission this URL names is not tracked and the body has no job id";

/// The reason a duplicate delivery is archived with.
pub(super) const DUPLICATE: &str = "same job and body as an earlier delivery";

/// Where a delivery goes, once the batch's jobs are known.
enum Goes {
    Rejected(String),
    /// The job at this index of the batch's jobs.
    Job(usize),
}

/// A job of the batch, and whether this batch creates it.
struct BatchJob {
    job: Job,
    created: bool,
}

/// What the read (round trip 2) found.
struct Found {
    jobs: Vec<Job>,
    /// `(job pk, body SHA-256)` of the accepted deliveries the batch's bodies would duplicate,
    /// to the accepted copy's id.
    accepted: HashMap<(i64, [u8; 32]), i64>,
    policy: Option<ArchivePolicy>,
}

/// A delivery's row: its outcome, the reason kept with it, the accepted copy it duplicates.
type Outcome = (DeliveryOutcome, Option<&'static str>, Option<i64>);

/// Stores `deliveries` in `tx` (which holds the history lock), in order, announcing the
/// changed jobs as `origin`; None when the batch must be stored one by one (see the module's
/// comment), in which case nothing was written.
pub(super) async fn ingest(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
    notify: bool,
    origin: &str,
) -> Result<Option<Vec<Ingested>>, StoreError> {
    let shas: Vec<[u8; 32]> = deliveries
        .iter()
        .map(|d| Sha256::digest(&d.body).into())
        .collect();
    let found = read(tx, deliveries, &shas).await?;
    let Some((mut jobs, goes)) = resolve(deliveries, found.jobs) else {
        return Ok(None);
    };
    let outcomes: Vec<Outcome> = goes
        .iter()
        .zip(&shas)
        .map(|(goes, sha)| match goes {
            Goes::Rejected(_) => (DeliveryOutcome::Rejected, None, None),
            Goes::Job(index) => match found.accepted.get(&(jobs[*index].job.pk, *sha)) {
                Some(&original) if !jobs[*index].created => {
                    (DeliveryOutcome::Duplicate, Some(DUPLICATE), Some(original))
                }
                _ => (DeliveryOutcome::Accepted, None, None),
            },
        })
        .collect();

    // What each delivery does to its job, in memory (one delivery per job: see `resolve`),
    // planned once to count the history entries, then again with the ids drawn.
    let plan = |jobs: &[BatchJob], delivery_ids: &[i64]| -> Vec<(usize, WebhookWrite)> {
        let mut writes = Vec::new();
        for (index, delivery) in deliveries.iter().enumerate() {
            let (
                Goes::Job(job),
                DeliveryTarget::Job {
                    report, look_now, ..
                },
            ) = (&goes[index], &delivery.target)
            else {
                continue;
            };
            let BatchJob { job, created } = &jobs[*job];
            let id = delivery_ids.get(index).copied().unwrap_or_default();
            let webhook = WebhookOnJob {
                job: job.clone(),
                created: *created,
                delivery_id: id,
                duplicate: outcomes[index].0 == DeliveryOutcome::Duplicate,
                replay: false,
                report: report.as_ref(),
                look_now: *look_now,
                body_delivery_id: id,
                notify,
            };
            let mut write = plan_webhook(webhook, delivery.received_at);
            write.plan_archive(found.policy.as_ref());
            writes.push((index, write));
        }
        writes
    };
    let entry_count = plan(&jobs, &[])
        .iter()
        .map(|(_, w)| w.leading.len() + usize::from(w.status_change.is_some()))
        .sum();
    let new_jobs = jobs.iter().filter(|j| j.created).count();
    let ids = draw_ids(tx, deliveries.len(), new_jobs, entry_count).await?;
    let mut job_pks = ids.jobs.into_iter();
    for batch_job in jobs.iter_mut().filter(|j| j.created) {
        batch_job.job.pk = job_pks
            .next()
            .ok_or_else(|| corrupt("fewer job ids than new jobs"))?;
    }
    let delivery_ids = ids.deliveries;
    let mut writes = plan(&jobs, &delivery_ids);
    let entries: Vec<_> = writes
        .iter()
        .map(|(_, write)| write.entries())
        .collect::<Result<_, _>>()?;
    let mut event_ids = ids.events;
    event_ids.reverse();
    let mut rows = Rows::default();
    for ((index, write), entries) in writes.iter_mut().zip(entries) {
        let Goes::Job(job) = goes[*index] else {
            continue;
        };
        let mut change = None;
        for (kind, detail, snapshot) in entries {
            let id = event_ids
                .pop()
                .ok_or_else(|| corrupt("fewer history ids than entries"))?;
            if kind == "status_changed" {
                change = Some(id);
            }
            write.job.seq = id;
            rows.event(
                id,
                write.job.pk,
                deliveries[*index].received_at,
                kind,
                detail,
                snapshot,
            );
        }
        rows.job(write, jobs[job].created, deliveries[*index].received_at)?;
        if let Some(change) = change {
            rows.consequences(write, change, notify, deliveries[*index].received_at);
        }
        jobs[job].job = write.job.clone();
    }
    for (index, delivery) in deliveries.iter().enumerate() {
        let job_pk = match goes[index] {
            Goes::Job(job) => Some(jobs[job].job.pk),
            Goes::Rejected(_) => None,
        };
        let reason = match &goes[index] {
            Goes::Rejected(reason) => Some(reason.as_str()),
            Goes::Job(_) => outcomes[index].1,
        };
        rows.delivery(
            delivery_ids[index],
            delivery,
            job_pk,
            outcomes[index],
            reason,
            &shas[index],
        );
    }
    let mut touched: Vec<i64> = writes.iter().map(|(_, write)| write.job.pk).collect();
    touched.sort_unstable();
    touched.dedup();
    rows.write(tx, payloads(origin, &touched)).await?;

    Ok(Some(
        goes.iter()
            .zip(outcomes)
            .zip(delivery_ids)
            .map(|((goes, (outcome, _, _)), delivery_id)| Ingested {
                delivery_id,
                outcome,
                job: match goes {
                    Goes::Job(index) => Some(jobs[*index].job.clone()),
                    Goes::Rejected(_) => None,
                },
            })
            .collect(),
    ))
}

/// Round trip 2: the batch's jobs (by Pictory id or submission), the accepted deliveries with
/// the batch's bodies on them, and the archive policy.
async fn read(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
    shas: &[[u8; 32]],
) -> Result<Found, StoreError> {
    let mut job_ids = Vec::new();
    let mut submission_ids = Vec::new();
    for delivery in deliveries {
        if let DeliveryTarget::Job {
            job_id,
            submission_id,
            ..
        } = &delivery.target
        {
            job_ids.extend(job_id.as_deref());
            submission_ids.extend(submission_id.as_deref());
        }
    }
    let bodies: Vec<&[u8]> = shas.iter().map(|sha| &sha[..]).collect();
    // The one row of `r` carries the policy; each job of the batch comes with it, or one row
    // of NULLs when there is none.
    let rows = sqlx::query(&format!(
        "WITH r AS (SELECT \
           (SELECT files FROM archive_policy WHERE id = 1) AS policy_files, \
           (SELECT hold_completed FROM archive_policy WHERE id = 1) AS policy_hold) \
         SELECT r.*, j.* FROM r LEFT JOIN (SELECT {JOB_COLUMNS}, \
           ARRAY(SELECT d.id FROM deliveries d WHERE d.job_pk = jobs.id \
             AND d.outcome = 'accepted' AND d.body_sha256 = ANY($3) ORDER BY d.id) \
             AS accepted_ids, \
           ARRAY(SELECT d.body_sha256 FROM deliveries d WHERE d.job_pk = jobs.id \
             AND d.outcome = 'accepted' AND d.body_sha256 = ANY($3) ORDER BY d.id) \
             AS accepted_shas \
           FROM jobs WHERE job_id = ANY($1) OR submission_id = ANY($2)) j ON TRUE"
    ))
    .bind(&job_ids)
    .bind(&submission_ids)
    .bind(bodies)
    .fetch_all(tx.db())
    .await?;
    let first = rows
        .first()
        .ok_or_else(|| corrupt("the batch read no row"))?;
    let files: Option<String> = first.try_get("policy_files")?;
    let hold: Option<bool> = first.try_get("policy_hold")?;
    let policy = files
        .map(|files| {
            Ok::<_, StoreError>(ArchivePolicy {
                files: serde_json::from_str(&files).map_err(corrupt)?,
                hold_completed: hold.unwrap_or(false),
            })
        })
        .transpose()?;
    let mut jobs = Vec::new();
    let mut accepted = HashMap::new();
    for row in &rows {
        if row.try_get::<Option<i64>, _>("id")?.is_none() {
            continue;
        }
        let job = job_from_row(row)?;
        let ids: Vec<i64> = row.try_get("accepted_ids")?;
        let shas: Vec<Vec<u8>> = row.try_get("accepted_shas")?;
        for (id, sha) in ids.into_iter().zip(shas) {
            let sha: [u8; 32] = sha
                .try_into()
                .map_err(|_| corrupt("a body SHA-256 that is not 32 bytes"))?;
            accepted.insert((job.pk, sha), id);
        }
        jobs.push(job);
    }
    Ok(Found {
        jobs,
        accepted,
        policy,
    })
}

/// Finds the job of every delivery among `known`, or makes it (its id drawn later). Returns
/// the jobs and where each delivery goes; None when the batch must be stored one by one.
fn resolve(deliveries: &[NewDelivery], known: Vec<Job>) -> Option<(Vec<BatchJob>, Vec<Goes>)> {
    let mut jobs: Vec<BatchJob> = known
        .into_iter()
        .map(|job| BatchJob {
            job,
            created: false,
        })
        .collect();
    let mut goes = Vec::with_capacity(deliveries.len());
    let mut used = vec![false; jobs.len()];
    for delivery in deliveries {
        let (job_id, submission_id, first_poll_at) = match &delivery.target {
            DeliveryTarget::Rejected { reason } => {
                goes.push(Goes::Rejected(reason.clone()));
                continue;
            }
            DeliveryTarget::Job {
                job_id,
                submission_id,
                first_poll_at,
                ..
            } => (job_id, submission_id, first_poll_at),
        };
        let by_submission = submission_id.as_deref().and_then(|id| {
            jobs.iter()
                .position(|j| !j.created && j.job.submission_id.as_deref() == Some(id))
        });
        let index = match (by_submission, job_id.as_deref()) {
            // The webhook would tell a submission its Pictory id: a guarded update, made one
            // by one.
            (Some(index), Some(_)) if jobs[index].job.job_id.is_none() => return None,
            (Some(index), _) => index,
            (None, Some(id)) => match jobs
                .iter()
                .position(|j| j.job.job_id.as_deref() == Some(id))
            {
                Some(index) => index,
                None => {
                    jobs.push(BatchJob {
                        job: Job::tracked(id.to_owned(), *first_poll_at, delivery.received_at),
                        created: true,
                    });
                    used.push(false);
                    jobs.len() - 1
                }
            },
            (None, None) => {
                goes.push(Goes::Rejected(NOT_TRACKED.to_owned()));
                continue;
            }
        };
        // One delivery per job: a second must see what the first did.
        if std::mem::replace(&mut used[index], true) {
            return None;
        }
        goes.push(Goes::Job(index));
    }
    Some((jobs, goes))
}

/// The ids the batch's new rows take, each list rising.
struct Ids {
    deliveries: Vec<i64>,
    jobs: Vec<i64>,
    events: Vec<i64>,
}

/// Round trip 3: as many ids as the batch's deliveries, new jobs and history entries need.
///
/// Each run is taken in one step, `setval(s, nextval(s) + n - 1)`, rather than one `nextval`
/// per row (some 5 µs each, a fifth of what a delivery costs the database). `setval` is not
/// atomic with the `nextval` before it, but every writer of these three tables holds the
/// history lock, as this transaction does; were one ever not to, its id could fall inside a
/// run and its insert would fail on the primary key, never overwrite a row.
async fn draw_ids(
    tx: &mut Tx,
    deliveries: usize,
    jobs: usize,
    events: usize,
) -> Result<Ids, StoreError> {
    let count = |n: usize| i64::try_from(n).map_err(corrupt);
    let run = |table: &str, param: u8| {
        format!(
            "CASE WHEN ${param} > 0 THEN setval(pg_get_serial_sequence('{table}', 'id'), \
             nextval(pg_get_serial_sequence('{table}', 'id')) + ${param} - 1) - ${param} + 1 END"
        )
    };
    let (first_delivery, first_job, first_event): (Option<i64>, Option<i64>, Option<i64>) =
        sqlx::query_as(&format!(
            "SELECT {}, {}, {}",
            run("deliveries", 1),
            run("jobs", 2),
            run("job_events", 3)
        ))
        .bind(count(deliveries)?)
        .bind(count(jobs)?)
        .bind(count(events)?)
        .fetch_one(tx.db())
        .await?;
    let ids = |first: Option<i64>, n: usize| -> Result<Vec<i64>, StoreError> {
        match first {
            Some(first) => Ok((first..first + count(n)?).collect()),
            None if n == 0 => Ok(Vec::new()),
            None => Err(corrupt("a run of ids was not drawn")),
        }
    };
    Ok(Ids {
        deliveries: ids(first_delivery, deliveries)?,
        jobs: ids(first_job, jobs)?,
        events: ids(first_event, events)?,
    })
}

/// Every row the batch writes, column by column (each column is bound as one array).
#[derive(Default)]
struct Rows {
    new_jobs: NewJobs,
    known_jobs: KnownJobs,
    deliveries: DeliveryRows,
    events: EventRows,
    usage: UsageRows,
    files: FileRows,
    holds: (Vec<i64>, Vec<i64>),
    outbox: OutboxRows,
}

#[derive(Default)]
struct NewJobs {
    pk: Vec<i64>,
    job_id: Vec<Option<String>>,
    status: Vec<&'static str>,
    output: Vec<Option<String>>,
    error: Vec<Option<String>>,
    resolved_by: Vec<Option<String>>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    completed_at: Vec<Option<i64>>,
    received_at: Vec<Option<i64>>,
    next_poll_at: Vec<Option<i64>>,
    priority: Vec<i64>,
    raw_delivery: Vec<Option<i64>>,
    seq: Vec<i64>,
}

#[derive(Default)]
struct KnownJobs {
    pk: Vec<i64>,
    status: Vec<&'static str>,
    output: Vec<Option<String>>,
    error: Vec<Option<String>>,
    resolved_by: Vec<Option<String>>,
    completed_at: Vec<Option<i64>>,
    received_at: Vec<Option<i64>>,
    next_poll_at: Vec<Option<i64>>,
    look_now: Vec<bool>,
    raw_delivery: Vec<Option<i64>>,
    seq: Vec<i64>,
    updated_at: Vec<i64>,
}

#[derive(Default)]
struct DeliveryRows {
    id: Vec<i64>,
    received_at: Vec<i64>,
    job_pk: Vec<Option<i64>>,
    outcome: Vec<&'static str>,
    reason: Vec<Option<String>>,
    remote_addr: Vec<Option<String>>,
    headers: Vec<String>,
    body: Vec<Option<Vec<u8>>>,
    sha: Vec<Vec<u8>>,
    size: Vec<i64>,
    original: Vec<Option<i64>>,
}

#[derive(Default)]
struct EventRows {
    id: Vec<i64>,
    job_pk: Vec<i64>,
    at: Vec<i64>,
    kind: Vec<&'static str>,
    detail: Vec<String>,
    snapshot: Vec<Option<String>>,
}

#[derive(Default)]
struct UsageRows {
    job_pk: Vec<i64>,
    at: Vec<i64>,
    model: Vec<String>,
    status: Vec<&'static str>,
    credits_milli: Vec<i64>,
    video_ms: Vec<i64>,
    metadata: Vec<Option<String>>,
    day: Vec<i64>,
}

#[derive(Default)]
struct FileRows {
    job_pk: Vec<i64>,
    name: Vec<String>,
    url: Vec<String>,
    at: Vec<i64>,
}

#[derive(Default)]
struct OutboxRows {
    job_pk: Vec<i64>,
    change: Vec<i64>,
    message_id: Vec<String>,
    payload: Vec<String>,
    at: Vec<i64>,
    event_type: Vec<&'static str>,
}

impl Rows {
    fn event(
        &mut self,
        id: i64,
        job_pk: i64,
        at: i64,
        kind: &'static str,
        detail: serde_json::Value,
        snapshot: Option<String>,
    ) {
        let e = &mut self.events;
        e.id.push(id);
        e.job_pk.push(job_pk);
        e.at.push(at);
        e.kind.push(kind);
        e.detail.push(detail.to_string());
        e.snapshot.push(snapshot);
    }

    /// The job's row: inserted whole when the batch creates it, else updated as
    /// `history::record_webhook` updates it.
    fn job(&mut self, write: &WebhookWrite, created: bool, now: i64) -> Result<(), StoreError> {
        let job = &write.job;
        if created {
            let n = &mut self.new_jobs;
            n.pk.push(job.pk);
            n.job_id.push(job.job_id.clone());
            n.status.push(job.status.as_str());
            n.output.push(json_text(&job.output)?);
            n.error.push(json_text(&job.error)?);
            n.resolved_by.push(job.resolved_by.clone());
            n.created_at.push(job.created_at);
            n.updated_at.push(now);
            n.completed_at.push(job.completed_at);
            n.received_at.push(job.webhook_received_at);
            // A new job is leased by nobody: its schedule is the plan's.
            n.next_poll_at.push(job.next_poll_at);
            n.priority.push(i64::from(write.look_now));
            n.raw_delivery.push(write.raw_delivery);
            n.seq.push(job.seq);
        } else {
            let k = &mut self.known_jobs;
            k.pk.push(job.pk);
            k.status.push(job.status.as_str());
            k.output.push(json_text(&job.output)?);
            k.error.push(json_text(&job.error)?);
            k.resolved_by.push(job.resolved_by.clone());
            k.completed_at.push(job.completed_at);
            k.received_at.push(job.webhook_received_at);
            k.next_poll_at.push(job.next_poll_at);
            k.look_now.push(write.look_now);
            k.raw_delivery.push(write.raw_delivery);
            k.seq.push(job.seq);
            k.updated_at.push(now);
        }
        Ok(())
    }

    /// What a status change brings: usage, archive tasks, notifications (as
    /// `history::record_webhook` writes them one job at a time).
    fn consequences(&mut self, write: &WebhookWrite, change: i64, notify: bool, now: i64) {
        let job = &write.job;
        if write.counts_usage() {
            if let Some(facts) = UsageFacts::of(job) {
                let u = &mut self.usage;
                u.job_pk.push(job.pk);
                u.at.push(facts.at);
                u.day.push(facts.day());
                u.model.push(facts.model);
                u.status.push(facts.status.as_str());
                u.credits_milli.push(facts.credits_milli);
                u.video_ms.push(facts.video_ms);
                u.metadata
                    .push(job.metadata.as_ref().map(ToString::to_string));
            }
        }
        if let Some(planned) = &write.archive {
            for (name, url) in &planned.files {
                let f = &mut self.files;
                f.job_pk.push(job.pk);
                f.name.push(name.clone());
                f.url.push(url.clone());
                f.at.push(now);
            }
            if planned.hold_completed {
                self.holds.0.push(job.pk);
                self.holds.1.push(change);
            }
        }
        if notify {
            let view = job.view();
            for event_type in announced_events(job.status, write.holds_completion()) {
                let payload = json!({"type": event_type, "timestamp": rfc3339(now), "data": view});
                let o = &mut self.outbox;
                o.job_pk.push(job.pk);
                o.change.push(change);
                o.message_id.push(message_id(change, event_type));
                o.payload.push(payload.to_string());
                o.at.push(now);
                o.event_type.push(event_type);
            }
        }
    }

    fn delivery(
        &mut self,
        id: i64,
        delivery: &NewDelivery,
        job_pk: Option<i64>,
        (outcome, _, original): Outcome,
        reason: Option<&str>,
        sha: &[u8; 32],
    ) {
        let d = &mut self.deliveries;
        d.id.push(id);
        d.received_at.push(delivery.received_at);
        d.job_pk.push(job_pk);
        d.outcome.push(outcome.as_str());
        d.reason.push(reason.map(str::to_owned));
        d.remote_addr.push(delivery.remote_addr.clone());
        d.headers.push(delivery.headers.clone());
        // A duplicate's body lives in its original.
        d.body
            .push((outcome != DeliveryOutcome::Duplicate).then(|| delivery.body.clone()));
        d.sha.push(sha.to_vec());
        d.size.push(delivery.body.len() as i64);
        d.original.push(original);
    }

    /// Round trip 4: every row in one statement, and the announcement of the changed jobs
    /// (`payloads`), delivered to the other replicas when the transaction commits.
    async fn write(self, tx: &mut Tx, payloads: Vec<String>) -> Result<(), StoreError> {
        let Rows {
            new_jobs: n,
            known_jobs: k,
            deliveries: d,
            events: e,
            usage: u,
            files: f,
            holds,
            outbox: o,
        } = self;
        // Sub-statements see none of each other's rows, so none reads what another writes;
        // foreign keys are checked at the end of the statement, when every row is in.
        sqlx::query(
            "WITH new_jobs AS (INSERT INTO jobs (id, job_id, status, output, error, resolved_by, \
               created_at, updated_at, completed_at, webhook_received_at, next_poll_at, \
               poll_priority, raw_delivery, seq) OVERRIDING SYSTEM VALUE \
               SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], \
               $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], \
               $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[])), \
             known_jobs AS (UPDATE jobs SET status = u.status, output = u.output, \
               error = u.error, resolved_by = u.resolved_by, completed_at = u.completed_at, \
               webhook_received_at = u.received, \
               next_poll_at = CASE WHEN u.look_now AND jobs.leased THEN jobs.next_poll_at \
                 ELSE u.next_poll END, \
               poll_priority = CASE WHEN u.look_now THEN 1 ELSE jobs.poll_priority END, \
               raw_response = CASE WHEN u.raw IS NULL THEN jobs.raw_response END, \
               raw_delivery = COALESCE(u.raw, jobs.raw_delivery), seq = u.seq, \
               updated_at = u.at \
               FROM UNNEST($15::bigint[], $16::text[], $17::text[], $18::text[], $19::text[], \
               $20::bigint[], $21::bigint[], $22::bigint[], $23::boolean[], $24::bigint[], \
               $25::bigint[], $26::bigint[]) AS u(pk, status, output, error, resolved_by, \
               completed_at, received, next_poll, look_now, raw, seq, at) WHERE jobs.id = u.pk), \
             new_deliveries AS (INSERT INTO deliveries (id, received_at, job_pk, outcome, \
               reason, remote_addr, headers, body, body_sha256, body_size, duplicate_of) \
               OVERRIDING SYSTEM VALUE SELECT * FROM UNNEST($27::bigint[], $28::bigint[], \
               $29::bigint[], $30::text[], $31::text[], $32::text[], $33::text[], $34::bytea[], \
               $35::bytea[], $36::bigint[], $37::bigint[])), \
             new_events AS (INSERT INTO job_events (id, job_pk, at, kind, detail, snapshot) \
               OVERRIDING SYSTEM VALUE SELECT * FROM UNNEST($38::bigint[], $39::bigint[], \
               $40::bigint[], $41::text[], $42::text[], $43::text[])), \
             counted AS (INSERT INTO job_usage (job_pk, at, model, status, credits_milli, \
               video_ms, metadata) SELECT * FROM UNNEST($44::bigint[], $45::bigint[], \
               $46::text[], $47::text[], $48::bigint[], $49::bigint[], $50::text[]) \
               ON CONFLICT (job_pk) DO NOTHING \
               RETURNING job_pk, model, status, credits_milli, video_ms), \
             daily AS (INSERT INTO usage_daily (day, model, status, jobs, credits_milli, \
               video_ms) SELECT d.day, c.model, c.status, COUNT(*), \
               SUM(c.credits_milli)::bigint, SUM(c.video_ms)::bigint FROM counted c \
               JOIN UNNEST($44::bigint[], $51::bigint[]) AS d(pk, day) ON d.pk = c.job_pk \
               GROUP BY d.day, c.model, c.status \
               ON CONFLICT (day, model, status) DO UPDATE SET \
               jobs = usage_daily.jobs + excluded.jobs, \
               credits_milli = usage_daily.credits_milli + excluded.credits_milli, \
               video_ms = usage_daily.video_ms + excluded.video_ms), \
             files AS (INSERT INTO archive_files (job_pk, name, source_url, status, due_at, \
               updated_at) SELECT pk, name, url, 'pending', at, at FROM UNNEST($52::bigint[], \
               $53::text[], $54::text[], $55::bigint[]) AS f(pk, name, url, at)), \
             holds AS (INSERT INTO archive_holds (job_pk, change_id) \
               SELECT * FROM UNNEST($56::bigint[], $57::bigint[]) ON CONFLICT DO NOTHING), \
             outbox AS (INSERT INTO notifications (endpoint, event_type, job_pk, change_id, \
               message_id, payload, state, next_attempt_at, created_at) \
               SELECT r.url, n.event_type, n.pk, n.change, n.message_id, n.payload, 'pending', \
               n.at, n.at FROM UNNEST($58::bigint[], $59::bigint[], $60::text[], $61::text[], \
               $62::bigint[], $63::text[]) WITH ORDINALITY \
               AS n(pk, change, message_id, payload, at, event_type, ord) \
               JOIN notify_routes r ON r.event_type = n.event_type ORDER BY n.ord, r.url \
               ON CONFLICT DO NOTHING) \
             SELECT pg_notify($64, p) FROM UNNEST($65::text[]) AS p",
        )
        .bind(n.pk)
        .bind(n.job_id)
        .bind(n.status)
        .bind(n.output)
        .bind(n.error)
        .bind(n.resolved_by)
        .bind(n.created_at)
        .bind(n.updated_at)
        .bind(n.completed_at)
        .bind(n.received_at)
        .bind(n.next_poll_at)
        .bind(n.priority)
        .bind(n.raw_delivery)
        .bind(n.seq)
        .bind(k.pk)
        .bind(k.status)
        .bind(k.output)
        .bind(k.error)
        .bind(k.resolved_by)
        .bind(k.completed_at)
        .bind(k.received_at)
        .bind(k.next_poll_at)
        .bind(k.look_now)
        .bind(k.raw_delivery)
        .bind(k.seq)
        .bind(k.updated_at)
        .bind(d.id)
        .bind(d.received_at)
        .bind(d.job_pk)
        .bind(d.outcome)
        .bind(d.reason)
        .bind(d.remote_addr)
        .bind(d.headers)
        .bind(d.body)
        .bind(d.sha)
        .bind(d.size)
        .bind(d.original)
        .bind(e.id)
        .bind(e.job_pk)
        .bind(e.at)
        .bind(e.kind)
        .bind(e.detail)
        .bind(e.snapshot)
        .bind(u.job_pk)
        .bind(u.at)
        .bind(u.model)
        .bind(u.status)
        .bind(u.credits_milli)
        .bind(u.video_ms)
        .bind(u.metadata)
        .bind(u.day)
        .bind(f.job_pk)
        .bind(f.name)
        .bind(f.url)
        .bind(f.at)
        .bind(holds.0)
        .bind(holds.1)
        .bind(o.job_pk)
        .bind(o.change)
        .bind(o.message_id)
        .bind(o.payload)
        .bind(o.at)
        .bind(o.event_type)
        .bind(CHANNEL)
        .bind(payloads)
        .fetch_all(tx.db())
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::domain::JobStatus;

    fn to(job_id: Option<&str>, submission_id: Option<&str>) -> NewDelivery {
        NewDelivery {
            received_at: 1_000,
            remote_addr: None,
            headers: "{}".into(),
            body: b"{}".to_vec(),
            target: DeliveryTarget::Job {
                job_id: job_id.map(str::to_owned),
                submission_id: submission_id.map(str::to_owned),
                report: None,
                look_now: false,
                first_poll_at: Some(31_000),
            },
        }
    }

    fn known(pk: i64, job_id: Option<&str>, submission_id: Option<&str>) -> Job {
        let mut job = Job::tracked(job_id.unwrap_or_default().to_owned(), None, 0);
        job.pk = pk;
        job.job_id = job_id.map(str::to_owned);
        job.submission_id = submission_id.map(str::to_owned);
        job
    }

    #[test]
    fn one_delivery_per_job_is_batched_and_new_jobs_are_made_once_each() {
        let rejected = NewDelivery {
            target: DeliveryTarget::Rejected {
                reason: "not json".into(),
            },
            ..to(None, None)
        };
        let deliveries = [
            to(Some("new-a"), None),
            to(Some("known"), None),
            rejected,
            to(Some("from-sub"), Some("sub-1")),
            to(None, Some("sub-unknown")),
            to(Some("new-b"), None),
        ];
        let jobs = vec![
            known(7, Some("known"), None),
            known(9, Some("from-sub"), Some("sub-1")),
        ];
        let (jobs, goes) = resolve(&deliveries, jobs).unwrap();
        let summary: Vec<String> = goes
            .iter()
            .map(|goes| match goes {
                Goes::Rejected(reason) => format!("rejected: {reason}"),
                Goes::Job(index) => {
                    let BatchJob { job, created } = &jobs[*index];
                    format!("{} {}", job.job_id.as_deref().unwrap(), created)
                }
            })
            .collect();
        assert_eq!(
            summary,
            [
                "new-a true".to_owned(),
                "known false".to_owned(),
                "rejected: not json".to_owned(),
                "from-sub false".to_owned(),
                format!("rejected: {NOT_TRACKED}"),
                "new-b true".to_owned(),
            ]
        );
        let new = &jobs.iter().find(|j| j.created).unwrap().job;
        assert_eq!(
            (new.status, new.next_poll_at, new.created_at),
            (JobStatus::Pending, Some(31_000), 1_000)
        );
    }

    #[test]
    fn a_job_twice_or_an_id_for_a_submission_sends_the_batch_one_by_one() {
        let twice_new = [to(Some("a"), None), to(Some("a"), None)];
        assert!(resolve(&twice_new, Vec::new()).is_none());
        let twice_known = [to(Some("k"), None), to(None, Some("sub-k"))];
        assert!(resolve(&twice_known, vec![known(3, Some("k"), Some("sub-k"))]).is_none());
        // The submission's Generate call ended ambiguously: the webhook brings its id.
        let id_for_submission = [to(Some("p-1"), Some("sub-2"))];
        assert!(resolve(&id_for_submission, vec![known(4, None, Some("sub-2"))]).is_none());
    }
}
