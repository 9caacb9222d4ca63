//! The output archive's tasks and records (SPEC §10): the same steps as `sqlite/archive.rs`,
//! in PostgreSQL's dialect, with claims that several replicas can make at once.

use super::corrupt;
use super::history::{append_event, job_by_pk};
use super::leases;
use super::outbox::enqueue_held_completion;
use super::write::Tx;
use crate::domain::archive::{files_to_copy, Archive, ArchivePolicy};
use crate::domain::{Job, JobStatus};
use crate::store::common::{archive_entry, ArchiveColumns};
use crate::store::{ArchiveResult, ArchiveTask, StoreError};
use sqlx::{PgPool, Row};

/// The files a job that is completing now will have copied (see `sqlite/archive.rs`).
pub(super) struct Planned {
    pub(super) files: Vec<(String, String)>,
    pub(super) hold_completed: bool,
}

impl Planned {
    pub(super) fn archive(&self) -> Archive {
        Archive::pending(&self.files)
    }
}

/// Reads the policy and plans the archive of `job`, which is moving to `completed`.
pub(super) async fn plan(tx: &mut Tx, job: &Job) -> Result<Option<Planned>, StoreError> {
    if job.status != JobStatus::Completed {
        return Ok(None);
    }
    Ok(planned(job, policy(tx).await?.as_ref()))
}

/// The files of `job`, which is moving to `completed`, that `policy` (None: archiving is off)
/// has copied. Pure: a batch reads the policy once for all its jobs.
pub(super) fn planned(job: &Job, policy: Option<&ArchivePolicy>) -> Option<Planned> {
    let policy = policy.filter(|_| job.status == JobStatus::Completed)?;
    let files = files_to_copy(job.output.as_ref(), &policy.files);
    (!files.is_empty()).then_some(Planned {
        files,
        hold_completed: policy.hold_completed,
    })
}

/// Writes the archive task planned by [`plan`], in the transaction of the completion.
pub(super) async fn start(
    tx: &mut Tx,
    job_pk: i64,
    planned: &Planned,
    change_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    insert_files(tx, job_pk, &planned.files, now).await?;
    if planned.hold_completed {
        sqlx::query(
            "INSERT INTO archive_holds (job_pk, change_id) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(job_pk)
        .bind(change_id)
        .execute(tx.db())
        .await?;
    }
    Ok(())
}

async fn insert_files(
    tx: &mut Tx,
    job_pk: i64,
    files: &[(String, String)],
    now: i64,
) -> Result<(), StoreError> {
    let (names, urls): (Vec<&str>, Vec<&str>) = files
        .iter()
        .map(|(name, url)| (name.as_str(), url.as_str()))
        .unzip();
    sqlx::query(
        "INSERT INTO archive_files (job_pk, name, source_url, status, due_at, updated_at) \
         SELECT $1, name, url, 'pending', $4, $4 FROM UNNEST($2::text[], $3::text[]) AS f(name, url)",
    )
    .bind(job_pk)
    .bind(names)
    .bind(urls)
    .bind(now)
    .execute(tx.db())
    .await?;
    Ok(())
}

pub(super) async fn policy(tx: &mut Tx) -> Result<Option<ArchivePolicy>, StoreError> {
    let row: Option<(String, bool)> =
        sqlx::query_as("SELECT files, hold_completed FROM archive_policy WHERE id = 1")
            .fetch_optional(tx.db())
            .await?;
    row.map(|(files, hold_completed)| {
        Ok(ArchivePolicy {
            files: serde_json::from_str(&files).map_err(corrupt)?,
            hold_completed,
        })
    })
    .transpose()
}

pub(super) async fn set_policy(
    tx: &mut Tx,
    policy: Option<&ArchivePolicy>,
    notify: bool,
    now: i64,
) -> Result<(), StoreError> {
    if !policy.is_some_and(|p| p.hold_completed) {
        let held: Vec<(i64, i64)> =
            sqlx::query_as("DELETE FROM archive_holds RETURNING job_pk, change_id")
                .fetch_all(tx.db())
                .await?;
        for (job_pk, change_id) in held.into_iter().filter(|_| notify) {
            let job = job_by_pk(tx, job_pk).await?;
            tx.touched(job_pk);
            enqueue_held_completion(tx, change_id, &job, now).await?;
        }
    }
    sqlx::query("DELETE FROM archive_policy")
        .execute(tx.db())
        .await?;
    if let Some(policy) = policy {
        sqlx::query("INSERT INTO archive_policy (id, files, hold_completed) VALUES (1, $1, $2)")
            .bind(serde_json::to_string(&policy.files).map_err(corrupt)?)
            .bind(policy.hold_completed)
            .execute(tx.db())
            .await?;
    }
    Ok(())
}

/// Leases up to `limit` files due at `now`: `FOR UPDATE SKIP LOCKED` inside the CTE, so two
/// replicas never take the same file, and a lease that ran out is due like any other file.
pub(super) async fn claim(
    pool: &PgPool,
    owner: i64,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> Result<Vec<ArchiveTask>, StoreError> {
    let rows = sqlx::query(
        "WITH due AS (SELECT job_pk AS due_pk, name AS due_name FROM archive_files \
         WHERE status = 'pending' AND due_at <= $1 ORDER BY due_at LIMIT $2 \
         FOR UPDATE SKIP LOCKED) \
         UPDATE archive_files a SET attempts = a.attempts + 1, due_at = $3, \
         claim = gen_random_uuid()::text, lease_owner = $4 FROM due \
         WHERE a.job_pk = due.due_pk AND a.name = due.due_name \
         RETURNING a.job_pk, a.name, a.source_url, a.attempts, a.claim, \
         (SELECT COALESCE(j.job_id, j.submission_id) FROM jobs j WHERE j.id = a.job_pk) AS job_ref",
    )
    .bind(now)
    .bind(i64::from(limit))
    .bind(lease_until)
    .bind(owner)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ArchiveTask {
                job_pk: row.try_get("job_pk")?,
                job_ref: row
                    .try_get::<Option<String>, _>("job_ref")?
                    .unwrap_or_default(),
                name: row.try_get("name")?,
                source_url: row.try_get("source_url")?,
                attempt: row.try_get("attempts")?,
                claim: row.try_get("claim")?,
            })
        })
        .collect()
}

/// Extends a running attempt's lease; false when the attempt no longer holds it.
pub(super) async fn extend(
    pool: &PgPool,
    task: &ArchiveTask,
    until: i64,
) -> Result<bool, StoreError> {
    let extended = sqlx::query(
        "UPDATE archive_files SET due_at = $1 WHERE job_pk = $2 AND name = $3 \
         AND claim = $4 AND status = 'pending'",
    )
    .bind(until)
    .bind(task.job_pk)
    .bind(&task.name)
    .bind(&task.claim)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(extended == 1)
}

/// Records how an attempt ended (see `sqlite/archive.rs`).
pub(super) async fn record(
    tx: &mut Tx,
    task: &ArchiveTask,
    result: &ArchiveResult,
    notify: bool,
    now: i64,
) -> Result<Option<Job>, StoreError> {
    let c = ArchiveColumns::of(result);
    let recorded = sqlx::query(
        "UPDATE archive_files SET status = $1, due_at = $2, claim = NULL, lease_owner = NULL, \
         error = $3, object_key = $4, size = $5, sha256 = $6, content_type = $7, \
         updated_at = $8 WHERE job_pk = $9 AND name = $10 AND claim = $11 \
         AND status = 'pending'",
    )
    .bind(c.status.as_str())
    .bind(c.due_at)
    .bind(c.error)
    .bind(c.key)
    .bind(c.size)
    .bind(c.sha256)
    .bind(c.content_type)
    .bind(now)
    .bind(task.job_pk)
    .bind(&task.name)
    .bind(&task.claim)
    .execute(tx.db())
    .await?
    .rows_affected();
    if recorded == 0 {
        return Ok(None);
    }
    append_event(
        tx,
        task.job_pk,
        "archived",
        archive_entry(task, result),
        now,
    )
    .await?;
    let job = job_by_pk(tx, task.job_pk).await?;
    if job.archive.as_ref().is_some_and(Archive::settled) {
        let held: Option<i64> =
            sqlx::query_scalar("DELETE FROM archive_holds WHERE job_pk = $1 RETURNING change_id")
                .bind(task.job_pk)
                .fetch_optional(tx.db())
                .await?;
        if let (Some(change_id), true) = (held, notify) {
            enqueue_held_completion(tx, change_id, &job, now).await?;
        }
    }
    Ok(Some(job))
}

/// Copies a completed job's files again (see `sqlite/archive.rs`).
pub(super) async fn again(tx: &mut Tx, job_pk: i64, now: i64) -> Result<Option<Job>, StoreError> {
    let job = job_by_pk(tx, job_pk).await?;
    if job.status != JobStatus::Completed {
        return Ok(None);
    }
    let Some(policy) = policy(tx).await? else {
        return Ok(None);
    };
    let files = files_to_copy(job.output.as_ref(), &policy.files);
    sqlx::query("DELETE FROM archive_files WHERE job_pk = $1")
        .bind(job_pk)
        .execute(tx.db())
        .await?;
    insert_files(tx, job_pk, &files, now).await?;
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    append_event(
        tx,
        job_pk,
        "archive_requested",
        serde_json::json!({"files": names}),
        now,
    )
    .await?;
    job_by_pk(tx, job_pk).await.map(Some)
}

/// Frees the attempts of replicas that are gone (due again now: the file is copied again from
/// its start); a live replica's attempt keeps its lease.
pub(super) async fn release_gone(tx: &mut Tx, now: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query(&format!(
        "UPDATE archive_files SET due_at = LEAST(due_at, $1), claim = NULL, lease_owner = NULL \
         WHERE status = 'pending' AND claim IS NOT NULL AND {}",
        leases::owner_gone("lease_owner", "$2")
    ))
    .bind(now)
    .bind(i64::from(leases::LEASE_CLASS))
    .execute(tx.db())
    .await?
    .rows_affected())
}
