//! A batch of webhook deliveries stored in a handful of statements, whatever its size.
//!
//! # Why
//! Stored one by one ([`super::webhooks::ingest_one`]), a delivery costs about nine round trips
//! to PostgreSQL (find the job, insert it, read it back, insert the delivery, the history, the
//! job's update, the usage...), all under the history lock: a batch of 64 is some 600 round
//! trips, and the lock is held for all of them. Here each step is one statement for the whole
//! batch, its rows bound as arrays (`UNNEST`), and what each delivery does to its job is worked
//! out in memory by the same planner the one-by-one path uses ([`plan_webhook`]): the rows
//! written are the same (a test holds both paths to that), only the round trips differ.
//!
//! # When it steps aside
//! A batch in which two deliveries concern the same job, or where a delivery would give a
//! submission its Pictory id, is stored one by one instead ([`ingest`] answers None before it
//! writes anything): the second delivery must see what the first did, and the id needs a
//! guarded update of its own. Both are rare (a duplicate sent at once, an ambiguous Generate).

use super::archive::{self, Planned};
use super::corrupt;
use super::history::{plan_webhook, WebhookOnJob, WebhookWrite};
use super::rows::{job_from_row, JOB_COLUMNS};
use super::write::Tx;
use crate::domain::usage::UsageFacts;
use crate::domain::{Job, JobStatus};
use crate::store::common::{announced_events, json_text, message_id};
use crate::store::{DeliveryOutcome, DeliveryTarget, Ingested, NewDelivery, StoreError};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

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

/// Stores `deliveries` in `tx` (which holds the history lock), in order; None when the batch
/// must be stored one by one (see the module's comment), in which case nothing was written.
pub(super) async fn ingest(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
    notify: bool,
) -> Result<Option<Vec<Ingested>>, StoreError> {
    let Some((mut jobs, goes)) = resolve(tx, deliveries).await? else {
        return Ok(None);
    };
    let shas: Vec<[u8; 32]> = deliveries
        .iter()
        .map(|d| Sha256::digest(&d.body).into())
        .collect();
    let originals = accepted_copies(tx, &jobs, &goes, &shas).await?;

    // Each delivery's row: accepted, duplicate of an earlier accepted copy, or rejected.
    let mut outcomes = Vec::with_capacity(deliveries.len());
    for (goes, sha) in goes.iter().zip(&shas) {
        outcomes.push(match goes {
            Goes::Rejected(reason) => (DeliveryOutcome::Rejected, Some(reason.as_str()), None),
            Goes::Job(index) => match originals.get(&(jobs[*index].0.pk, *sha)) {
                Some(original) => (DeliveryOutcome::Duplicate, Some(DUPLICATE), Some(*original)),
                None => (DeliveryOutcome::Accepted, None, None),
            },
        });
    }
    let delivery_ids = insert_deliveries(tx, deliveries, &goes, &jobs, &shas, &outcomes).await?;

    // What each delivery does to its job, in memory.
    let mut writes: Vec<(usize, WebhookWrite)> = Vec::new();
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
        let (job, created) = &jobs[*job];
        let webhook = WebhookOnJob {
            job: job.clone(),
            created: *created,
            delivery_id: delivery_ids[index],
            duplicate: outcomes[index].0 == DeliveryOutcome::Duplicate,
            replay: false,
            report: report.as_ref(),
            look_now: *look_now,
            body_delivery_id: delivery_ids[index],
            notify,
        };
        writes.push((index, plan_webhook(webhook, delivery.received_at)));
    }
    if writes.iter().any(|(_, write)| write.completes()) {
        let policy = archive::policy(tx).await?;
        for (_, write) in &mut writes {
            write.plan_archive(policy.as_ref());
        }
    }

    let marks = insert_entries(tx, deliveries, &writes).await?;
    for (_, write) in &mut writes {
        let mark = marks
            .get(&write.job.pk)
            .ok_or_else(|| corrupt("a job of the batch got no history entry"))?;
        write.job.seq = mark.seq;
        tx.touched(write.job.pk);
    }
    update_jobs(tx, deliveries, &writes).await?;
    record_usage(tx, &writes).await?;
    start_archives(tx, deliveries, &writes, &marks).await?;
    if notify {
        enqueue_notifications(tx, deliveries, &writes, &marks).await?;
    }

    for (_, write) in writes {
        let index = jobs
            .iter()
            .position(|(job, _)| job.pk == write.job.pk)
            .ok_or_else(|| corrupt("a planned job that is not the batch's"))?;
        jobs[index].0 = write.job;
    }
    Ok(Some(
        goes.iter()
            .zip(outcomes)
            .zip(delivery_ids)
            .map(|((goes, (outcome, _, _)), delivery_id)| Ingested {
                delivery_id,
                outcome,
                job: match goes {
                    Goes::Job(index) => Some(jobs[*index].0.clone()),
                    Goes::Rejected(_) => None,
                },
            })
            .collect(),
    ))
}

/// Finds (or creates) the job of every delivery, with one SELECT and at most one INSERT.
/// Returns the jobs (and whether this batch created each) and where each delivery goes; None
/// when the batch must be stored one by one.
#[allow(clippy::type_complexity)]
async fn resolve(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
) -> Result<Option<(Vec<(Job, bool)>, Vec<Goes>)>, StoreError> {
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
    let mut jobs: Vec<(Job, bool)> = Vec::new();
    if !job_ids.is_empty() || !submission_ids.is_empty() {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ANY($1) OR submission_id = ANY($2)"
        ))
        .bind(&job_ids)
        .bind(&submission_ids)
        .fetch_all(tx.db())
        .await?;
        for row in &rows {
            jobs.push((job_from_row(row)?, false));
        }
    }
    let by_job_id: HashMap<&str, usize> = index_by(&jobs, |job| job.job_id.as_deref());
    let by_submission: HashMap<&str, usize> = index_by(&jobs, |job| job.submission_id.as_deref());

    // Where each delivery goes: a known job, a job to create (by its id), or nowhere.
    enum Found<'a> {
        Rejected(String),
        Known(usize),
        New(&'a str, Option<i64>, i64),
    }
    let mut found = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        found.push(match &delivery.target {
            DeliveryTarget::Rejected { reason } => Found::Rejected(reason.clone()),
            DeliveryTarget::Job {
                job_id,
                submission_id,
                first_poll_at,
                ..
            } => {
                let by_submission = submission_id
                    .as_deref()
                    .and_then(|id| by_submission.get(id).copied());
                match (by_submission, job_id.as_deref()) {
                    // The webhook would tell a submission its Pictory id: a guarded update,
                    // made one by one.
                    (Some(index), Some(_)) if jobs[index].0.job_id.is_none() => return Ok(None),
                    (Some(index), _) => Found::Known(index),
                    (None, Some(job_id)) => match by_job_id.get(job_id) {
                        Some(&index) => Found::Known(index),
                        None => Found::New(job_id, *first_poll_at, delivery.received_at),
                    },
                    (None, None) => Found::Rejected(NOT_TRACKED.to_owned()),
                }
            }
        });
    }
    // One delivery per job: a second must see what the first did.
    let mut known = vec![false; jobs.len()];
    let mut new: Vec<(&str, Option<i64>, i64)> = Vec::new();
    for goes in &found {
        match goes {
            Found::Known(index) if std::mem::replace(&mut known[*index], true) => return Ok(None),
            Found::New(job_id, ..) if new.iter().any(|(id, ..)| id == job_id) => return Ok(None),
            Found::New(job_id, first_poll_at, now) => new.push((job_id, *first_poll_at, *now)),
            _ => {}
        }
    }

    let first_new = jobs.len();
    if !new.is_empty() {
        let (ids, polls, nows) = unzip3(&new);
        // The history lock is held by every writer of jobs, so none of these ids can have
        // appeared since the SELECT; a conflict would be a bug, and fails the batch.
        let rows = sqlx::query(&format!(
            "INSERT INTO jobs (job_id, status, created_at, updated_at, next_poll_at) \
             SELECT job_id, $4, at, at, first_poll FROM UNNEST($1::text[], $2::bigint[], \
             $3::bigint[]) WITH ORDINALITY AS n(job_id, first_poll, at, ord) ORDER BY ord \
             ON CONFLICT (job_id) DO NOTHING RETURNING {JOB_COLUMNS}"
        ))
        .bind(ids)
        .bind(polls)
        .bind(nows)
        .bind(JobStatus::Pending.as_str())
        .fetch_all(tx.db())
        .await?;
        if rows.len() != new.len() {
            return Err(corrupt("a job of the batch was inserted by another writer"));
        }
        for row in &rows {
            jobs.push((job_from_row(row)?, true));
        }
    }
    let created: HashMap<&str, usize> = jobs[first_new..]
        .iter()
        .enumerate()
        .filter_map(|(i, (job, _))| Some((job.job_id.as_deref()?, first_new + i)))
        .collect();
    let goes = found
        .into_iter()
        .map(|found| match found {
            Found::Rejected(reason) => Ok(Goes::Rejected(reason)),
            Found::Known(index) => Ok(Goes::Job(index)),
            Found::New(job_id, ..) => created
                .get(job_id)
                .map(|&index| Goes::Job(index))
                .ok_or_else(|| corrupt("an inserted job did not come back")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((jobs, goes)))
}

fn index_by<'a>(
    jobs: &'a [(Job, bool)],
    key: impl Fn(&'a Job) -> Option<&'a str>,
) -> HashMap<&'a str, usize> {
    jobs.iter()
        .enumerate()
        .filter_map(|(i, (job, _))| Some((key(job)?, i)))
        .collect()
}

fn unzip3<A: Clone, B: Clone, C: Clone>(items: &[(A, B, C)]) -> (Vec<A>, Vec<B>, Vec<C>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (a, b, c) in items {
        out.0.push(a.clone());
        out.1.push(b.clone());
        out.2.push(c.clone());
    }
    out
}

/// The accepted deliveries already stored for the batch's known jobs with the same bodies:
/// `(job pk, body SHA-256)` to the accepted copy's id.
async fn accepted_copies(
    tx: &mut Tx,
    jobs: &[(Job, bool)],
    goes: &[Goes],
    shas: &[[u8; 32]],
) -> Result<HashMap<(i64, [u8; 32]), i64>, StoreError> {
    let (pks, bodies): (Vec<i64>, Vec<Vec<u8>>) = goes
        .iter()
        .zip(shas)
        .filter_map(|(goes, sha)| match goes {
            Goes::Job(index) if !jobs[*index].1 => Some((jobs[*index].0.pk, sha.to_vec())),
            _ => None,
        })
        .unzip();
    if pks.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT d.job_pk, d.body_sha256, d.id FROM deliveries d \
         JOIN UNNEST($1::bigint[], $2::bytea[]) AS b(job_pk, sha) \
         ON d.job_pk = b.job_pk AND d.body_sha256 = b.sha WHERE d.outcome = 'accepted'",
    )
    .bind(pks)
    .bind(bodies)
    .fetch_all(tx.db())
    .await?;
    rows.into_iter()
        .map(|(pk, sha, id)| {
            let sha: [u8; 32] = sha
                .try_into()
                .map_err(|_| corrupt("a body SHA-256 that is not 32 bytes"))?;
            Ok(((pk, sha), id))
        })
        .collect()
}

/// Inserts every delivery's row in one statement; returns their ids, in the batch's order.
async fn insert_deliveries(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
    goes: &[Goes],
    jobs: &[(Job, bool)],
    shas: &[[u8; 32]],
    outcomes: &[(DeliveryOutcome, Option<&str>, Option<i64>)],
) -> Result<Vec<i64>, StoreError> {
    let n = deliveries.len();
    let mut received = Vec::with_capacity(n);
    let mut job_pks = Vec::with_capacity(n);
    let mut outcome_names = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut remotes = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut body_shas = Vec::with_capacity(n);
    let mut sizes = Vec::with_capacity(n);
    let mut originals = Vec::with_capacity(n);
    for (((delivery, goes), sha), (outcome, reason, original)) in
        deliveries.iter().zip(goes).zip(shas).zip(outcomes)
    {
        received.push(delivery.received_at);
        job_pks.push(match goes {
            Goes::Job(index) => Some(jobs[*index].0.pk),
            Goes::Rejected(_) => None,
        });
        outcome_names.push(outcome.as_str());
        reasons.push(*reason);
        remotes.push(delivery.remote_addr.as_deref());
        headers.push(delivery.headers.as_str());
        // A duplicate's body lives in its original.
        bodies.push((*outcome != DeliveryOutcome::Duplicate).then_some(&delivery.body[..]));
        body_shas.push(&sha[..]);
        sizes.push(delivery.body.len() as i64);
        originals.push(*original);
    }
    // The rows are inserted in the order of `ord`, so their ids (drawn as each row is
    // inserted) rise in the batch's order: sorted, the returned ids are the batch's.
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO deliveries (received_at, job_pk, outcome, reason, remote_addr, headers, \
         body, body_sha256, body_size, duplicate_of) \
         SELECT received_at, job_pk, outcome, reason, remote_addr, headers, body, sha, size, \
         original FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::bytea[], $8::bytea[], $9::bigint[], $10::bigint[]) WITH ORDINALITY \
         AS d(received_at, job_pk, outcome, reason, remote_addr, headers, body, sha, size, \
         original, ord) ORDER BY ord RETURNING id",
    )
    .bind(received)
    .bind(job_pks)
    .bind(outcome_names)
    .bind(reasons)
    .bind(remotes)
    .bind(headers)
    .bind(bodies)
    .bind(body_shas)
    .bind(sizes)
    .bind(originals)
    .fetch_all(tx.db())
    .await?;
    if ids.len() != n {
        return Err(corrupt("a delivery of the batch was not stored"));
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The ids a job's new history entries took: the newest (the job's `seq`) and its status
/// change's, when it has one.
struct Marks {
    seq: i64,
    change: Option<i64>,
}

/// Inserts every new history entry in one statement, in the batch's order.
async fn insert_entries(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
    writes: &[(usize, WebhookWrite)],
) -> Result<HashMap<i64, Marks>, StoreError> {
    let mut pks = Vec::new();
    let mut ats = Vec::new();
    let mut kinds = Vec::new();
    let mut details = Vec::new();
    let mut snapshots = Vec::new();
    for (index, write) in writes {
        for (kind, detail, snapshot) in write.entries()? {
            pks.push(write.job.pk);
            ats.push(deliveries[*index].received_at);
            kinds.push(kind);
            details.push(detail.to_string());
            snapshots.push(snapshot);
        }
    }
    // Ids are drawn in the order of `ord`, so a job's entries keep their order.
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "INSERT INTO job_events (job_pk, at, kind, detail, snapshot) \
         SELECT job_pk, at, kind, detail, snapshot FROM UNNEST($1::bigint[], $2::bigint[], \
         $3::text[], $4::text[], $5::text[]) WITH ORDINALITY \
         AS e(job_pk, at, kind, detail, snapshot, ord) ORDER BY ord \
         RETURNING id, job_pk, kind",
    )
    .bind(pks)
    .bind(ats)
    .bind(kinds)
    .bind(details)
    .bind(snapshots)
    .fetch_all(tx.db())
    .await?;
    let mut marks: HashMap<i64, Marks> = HashMap::new();
    for (id, pk, kind) in rows {
        let mark = marks.entry(pk).or_insert(Marks {
            seq: id,
            change: None,
        });
        mark.seq = mark.seq.max(id);
        if kind == "status_changed" {
            mark.change = Some(id);
        }
    }
    Ok(marks)
}

/// Writes every job's new state in one statement (as `history::WEBHOOK_JOB_UPDATE` does one).
async fn update_jobs(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
    writes: &[(usize, WebhookWrite)],
) -> Result<(), StoreError> {
    let mut pks = Vec::new();
    let mut statuses = Vec::new();
    let mut outputs = Vec::new();
    let mut errors = Vec::new();
    let mut resolved = Vec::new();
    let mut completed = Vec::new();
    let mut received = Vec::new();
    let mut next_polls = Vec::new();
    let mut look_now = Vec::new();
    let mut raw = Vec::new();
    let mut seqs = Vec::new();
    let mut updated = Vec::new();
    for (index, write) in writes {
        let job = &write.job;
        pks.push(job.pk);
        statuses.push(job.status.as_str());
        outputs.push(json_text(&job.output)?);
        errors.push(json_text(&job.error)?);
        resolved.push(job.resolved_by.as_deref());
        completed.push(job.completed_at);
        received.push(job.webhook_received_at);
        next_polls.push(job.next_poll_at);
        look_now.push(write.look_now);
        raw.push(write.raw_delivery);
        seqs.push(job.seq);
        updated.push(deliveries[*index].received_at);
    }
    sqlx::query(
        "UPDATE jobs SET status = u.status, output = u.output, error = u.error, \
         resolved_by = u.resolved_by, completed_at = u.completed_at, \
         webhook_received_at = u.received, \
         next_poll_at = CASE WHEN u.look_now AND jobs.leased THEN jobs.next_poll_at \
             ELSE u.next_poll END, \
         poll_priority = CASE WHEN u.look_now THEN 1 ELSE jobs.poll_priority END, \
         raw_response = CASE WHEN u.raw IS NULL THEN jobs.raw_response END, \
         raw_delivery = COALESCE(u.raw, jobs.raw_delivery), seq = u.seq, updated_at = u.at \
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::bigint[], $7::bigint[], $8::bigint[], $9::boolean[], $10::bigint[], \
         $11::bigint[], $12::bigint[]) AS u(pk, status, output, error, resolved_by, \
         completed_at, received, next_poll, look_now, raw, seq, at) WHERE jobs.id = u.pk",
    )
    .bind(pks)
    .bind(statuses)
    .bind(outputs)
    .bind(errors)
    .bind(resolved)
    .bind(completed)
    .bind(received)
    .bind(next_polls)
    .bind(look_now)
    .bind(raw)
    .bind(seqs)
    .bind(updated)
    .execute(tx.db())
    .await?;
    Ok(())
}

/// The usage of every job the batch made final (as `usage::record_usage` does one): a job is
/// counted once, and the daily summary gains what was counted.
async fn record_usage(tx: &mut Tx, writes: &[(usize, WebhookWrite)]) -> Result<(), StoreError> {
    let counted: Vec<(i64, UsageFacts, Option<String>)> = writes
        .iter()
        .filter(|(_, write)| write.counts_usage())
        .filter_map(|(_, write)| {
            let job = &write.job;
            UsageFacts::of(job).map(|facts| {
                (
                    job.pk,
                    facts,
                    job.metadata.as_ref().map(ToString::to_string),
                )
            })
        })
        .collect();
    if counted.is_empty() {
        return Ok(());
    }
    let inserted: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO job_usage (job_pk, at, model, status, credits_milli, video_ms, metadata) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], \
         $5::bigint[], $6::bigint[], $7::text[]) ON CONFLICT (job_pk) DO NOTHING \
         RETURNING job_pk",
    )
    .bind(counted.iter().map(|(pk, ..)| *pk).collect::<Vec<_>>())
    .bind(counted.iter().map(|(_, f, _)| f.at).collect::<Vec<_>>())
    .bind(
        counted
            .iter()
            .map(|(_, f, _)| f.model.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        counted
            .iter()
            .map(|(_, f, _)| f.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        counted
            .iter()
            .map(|(_, f, _)| f.credits_milli)
            .collect::<Vec<_>>(),
    )
    .bind(
        counted
            .iter()
            .map(|(_, f, _)| f.video_ms)
            .collect::<Vec<_>>(),
    )
    .bind(
        counted
            .iter()
            .map(|(.., m)| m.as_deref())
            .collect::<Vec<_>>(),
    )
    .fetch_all(tx.db())
    .await?;
    // One row per day, model and status: an upsert may not touch a row twice.
    let mut daily: BTreeMap<(i64, &str, &str), (i64, i64, i64)> = BTreeMap::new();
    for (pk, facts, _) in &counted {
        if inserted.contains(pk) {
            let sums = daily
                .entry((facts.day(), facts.model.as_str(), facts.status.as_str()))
                .or_default();
            sums.0 += 1;
            sums.1 += facts.credits_milli;
            sums.2 += facts.video_ms;
        }
    }
    if daily.is_empty() {
        return Ok(());
    }
    let (keys, sums): (Vec<_>, Vec<_>) = daily.into_iter().unzip();
    sqlx::query(
        "INSERT INTO usage_daily (day, model, status, jobs, credits_milli, video_ms) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], \
         $5::bigint[], $6::bigint[]) \
         ON CONFLICT (day, model, status) DO UPDATE SET \
         jobs = usage_daily.jobs + excluded.jobs, \
         credits_milli = usage_daily.credits_milli + excluded.credits_milli, \
         video_ms = usage_daily.video_ms + excluded.video_ms",
    )
    .bind(
        keys.iter()
            .map(|k: &(i64, &str, &str)| k.0)
            .collect::<Vec<_>>(),
    )
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
    .bind(
        sums.iter()
            .map(|s: &(i64, i64, i64)| s.0)
            .collect::<Vec<_>>(),
    )
    .bind(sums.iter().map(|s| s.1).collect::<Vec<_>>())
    .bind(sums.iter().map(|s| s.2).collect::<Vec<_>>())
    .execute(tx.db())
    .await?;
    Ok(())
}

/// The archive tasks of every completion (as `archive::start` does one).
async fn start_archives(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
    writes: &[(usize, WebhookWrite)],
    marks: &HashMap<i64, Marks>,
) -> Result<(), StoreError> {
    let planned: Vec<(usize, i64, &Planned)> = writes
        .iter()
        .filter_map(|(index, write)| Some((*index, write.job.pk, write.archive.as_ref()?)))
        .collect();
    if planned.is_empty() {
        return Ok(());
    }
    let mut pks = Vec::new();
    let mut names = Vec::new();
    let mut urls = Vec::new();
    let mut nows = Vec::new();
    let mut holds = (Vec::new(), Vec::new());
    for &(index, pk, planned) in &planned {
        for (name, url) in &planned.files {
            pks.push(pk);
            names.push(name.as_str());
            urls.push(url.as_str());
            nows.push(deliveries[index].received_at);
        }
        if planned.hold_completed {
            let change = marks
                .get(&pk)
                .and_then(|mark| mark.change)
                .ok_or_else(|| corrupt("a completion without its status change"))?;
            holds.0.push(pk);
            holds.1.push(change);
        }
    }
    sqlx::query(
        "INSERT INTO archive_files (job_pk, name, source_url, status, due_at, updated_at) \
         SELECT pk, name, url, 'pending', at, at \
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[]) AS f(pk, name, url, at)",
    )
    .bind(pks)
    .bind(names)
    .bind(urls)
    .bind(nows)
    .execute(tx.db())
    .await?;
    if !holds.0.is_empty() {
        sqlx::query(
            "INSERT INTO archive_holds (job_pk, change_id) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[]) ON CONFLICT DO NOTHING",
        )
        .bind(holds.0)
        .bind(holds.1)
        .execute(tx.db())
        .await?;
    }
    Ok(())
}

/// The outbox rows of every status change, one per endpoint that wants it (as
/// `outbox::enqueue_notifications` does one).
async fn enqueue_notifications(
    tx: &mut Tx,
    deliveries: &[NewDelivery],
    writes: &[(usize, WebhookWrite)],
    marks: &HashMap<i64, Marks>,
) -> Result<(), StoreError> {
    let mut pks = Vec::new();
    let mut changes = Vec::new();
    let mut ids = Vec::new();
    let mut payloads = Vec::new();
    let mut nows = Vec::new();
    let mut types = Vec::new();
    for (index, write) in writes {
        let Some(change) = marks.get(&write.job.pk).and_then(|mark| mark.change) else {
            continue;
        };
        let now = deliveries[*index].received_at;
        let view = write.job.view();
        for event_type in announced_events(write.job.status, write.holds_completion()) {
            let payload = json!({"type": event_type, "timestamp": crate::domain::time::rfc3339(now), "data": view});
            pks.push(write.job.pk);
            changes.push(change);
            ids.push(message_id(change, event_type));
            payloads.push(payload.to_string());
            nows.push(now);
            types.push(event_type);
        }
    }
    if pks.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO notifications (endpoint, event_type, job_pk, change_id, message_id, \
         payload, state, next_attempt_at, created_at) \
         SELECT r.url, n.event_type, n.pk, n.change, n.message_id, n.payload, 'pending', n.at, \
         n.at FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], \
         $6::text[]) WITH ORDINALITY AS n(pk, change, message_id, payload, at, event_type, ord) \
         JOIN notify_routes r ON r.event_type = n.event_type ORDER BY n.ord \
         ON CONFLICT DO NOTHING",
    )
    .bind(pks)
    .bind(changes)
    .bind(ids)
    .bind(payloads)
    .bind(nows)
    .bind(types)
    .execute(tx.db())
    .await?;
    Ok(())
}
