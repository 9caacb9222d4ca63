//! The output archive's tasks and records (SPEC §10), on the writer thread.

use super::history::{append_event, job_by_pk};
use super::outbox::enqueue_held_completion;
use super::writer::{execute, query_all, query_optional};
use super::{corrupt, Tx};
use crate::domain::archive::{files_to_copy, Archive, ArchivePolicy};
use crate::domain::{Job, JobStatus};
use crate::store::common::{archive_entry, ArchiveColumns};
use crate::store::{ArchiveResult, ArchiveTask, StoreError};
use rusqlite::params;

/// The files a job that is completing now will have copied, and whether its `job.completed`
/// waits for them; None when archiving is off or the job has no file to copy.
pub(super) struct Planned {
    pub(super) files: Vec<(String, String)>,
    pub(super) hold_completed: bool,
}

/// Reads the policy and plans the archive of `job`, which is moving to `completed`. The caller
/// sets `job.archive` from it before the job's snapshot is taken, then calls [`start`] once the
/// change has its id.
pub(super) fn plan(tx: &Tx, job: &Job) -> Result<Option<Planned>, StoreError> {
    if job.status != JobStatus::Completed {
        return Ok(None);
    }
    let Some(policy) = policy(tx)? else {
        return Ok(None);
    };
    let files = files_to_copy(job.output.as_ref(), &policy.files);
    Ok((!files.is_empty()).then_some(Planned {
        files,
        hold_completed: policy.hold_completed,
    }))
}

impl Planned {
    pub(super) fn archive(&self) -> Archive {
        Archive::pending(&self.files)
    }
}

/// Writes the archive task planned by [`plan`], in the transaction of the completion.
pub(super) fn start(
    tx: &Tx,
    job_pk: i64,
    planned: &Planned,
    change_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    insert_files(tx, job_pk, &planned.files, now)?;
    if planned.hold_completed {
        execute(
            tx,
            "INSERT INTO archive_holds (job_pk, change_id) VALUES (?1, ?2) \
             ON CONFLICT DO NOTHING",
            params![job_pk, change_id],
        )?;
    }
    Ok(())
}

fn insert_files(
    tx: &Tx,
    job_pk: i64,
    files: &[(String, String)],
    now: i64,
) -> Result<(), StoreError> {
    for (name, url) in files {
        execute(
            tx,
            "INSERT INTO archive_files (job_pk, name, source_url, status, due_at, updated_at) \
             VALUES (?1, ?2, ?3, 'pending', ?4, ?4)",
            params![job_pk, name, url, now],
        )?;
    }
    Ok(())
}

fn policy(tx: &Tx) -> Result<Option<ArchivePolicy>, StoreError> {
    query_optional(
        tx,
        "SELECT files, hold_completed FROM archive_policy WHERE id = 1",
        [],
        |row| {
            let files: String = row.get("files")?;
            Ok(ArchivePolicy {
                files: serde_json::from_str(&files).map_err(corrupt)?,
                hold_completed: row.get("hold_completed")?,
            })
        },
    )
}

pub(super) fn set_policy(
    tx: &Tx,
    policy: Option<&ArchivePolicy>,
    notify: bool,
    now: i64,
) -> Result<(), StoreError> {
    if !policy.is_some_and(|p| p.hold_completed) {
        let held = query_all(
            tx,
            "DELETE FROM archive_holds RETURNING job_pk, change_id",
            [],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
        )?;
        for (job_pk, change_id) in held.into_iter().filter(|_| notify) {
            enqueue_held_completion(tx, change_id, &job_by_pk(tx, job_pk)?, now)?;
        }
    }
    execute(tx, "DELETE FROM archive_policy", [])?;
    if let Some(policy) = policy {
        execute(
            tx,
            "INSERT INTO archive_policy (id, files, hold_completed) VALUES (1, ?1, ?2)",
            params![
                serde_json::to_string(&policy.files).map_err(corrupt)?,
                policy.hold_completed
            ],
        )?;
    }
    Ok(())
}

/// Leases up to `limit` files due at `now` until `lease_until`, oldest due first.
pub(super) fn claim(
    tx: &Tx,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> Result<Vec<ArchiveTask>, StoreError> {
    let due = query_all(
        tx,
        "SELECT a.job_pk, a.name, a.source_url, a.attempts, \
         COALESCE(j.job_id, j.submission_id) AS job_ref FROM archive_files a \
         JOIN jobs j ON j.id = a.job_pk \
         WHERE a.status = 'pending' AND a.due_at <= ?1 ORDER BY a.due_at LIMIT ?2",
        params![now, i64::from(limit)],
        |row| {
            Ok(ArchiveTask {
                job_pk: row.get("job_pk")?,
                job_ref: row.get::<_, Option<String>>("job_ref")?.unwrap_or_default(),
                name: row.get("name")?,
                source_url: row.get("source_url")?,
                attempt: row.get::<_, i64>("attempts")? + 1,
                claim: uuid::Uuid::now_v7().to_string(),
            })
        },
    )?;
    for task in &due {
        execute(
            tx,
            "UPDATE archive_files SET attempts = ?1, due_at = ?2, claim = ?3 \
             WHERE job_pk = ?4 AND name = ?5",
            params![
                task.attempt,
                lease_until,
                task.claim,
                task.job_pk,
                task.name
            ],
        )?;
    }
    Ok(due)
}

/// Extends a running attempt's lease; false when the attempt no longer holds it.
pub(super) fn extend(tx: &Tx, task: &ArchiveTask, until: i64) -> Result<bool, StoreError> {
    Ok(execute(
        tx,
        "UPDATE archive_files SET due_at = ?1 WHERE job_pk = ?2 AND name = ?3 \
         AND claim = ?4 AND status = 'pending'",
        params![until, task.job_pk, task.name, task.claim],
    )? == 1)
}

/// Records how an attempt ended, in the file's row and the job's history; once no file of the
/// job is left pending, sends the `job.completed` notifications that waited for them. None
/// when the attempt no longer held the file (its lease ran out, or it was archived again).
pub(super) fn record(
    tx: &Tx,
    task: &ArchiveTask,
    result: &ArchiveResult,
    notify: bool,
    now: i64,
) -> Result<Option<Job>, StoreError> {
    let c = ArchiveColumns::of(result);
    let recorded = execute(
        tx,
        "UPDATE archive_files SET status = ?1, due_at = ?2, claim = NULL, error = ?3, \
         object_key = ?4, size = ?5, sha256 = ?6, content_type = ?7, updated_at = ?8 \
         WHERE job_pk = ?9 AND name = ?10 AND claim = ?11 AND status = 'pending'",
        params![
            c.status.as_str(),
            c.due_at,
            c.error,
            c.key,
            c.size,
            c.sha256,
            c.content_type,
            now,
            task.job_pk,
            task.name,
            task.claim
        ],
    )?;
    if recorded == 0 {
        return Ok(None);
    }
    append_event(
        tx,
        task.job_pk,
        "archived",
        archive_entry(task, result),
        now,
    )?;
    let job = job_by_pk(tx, task.job_pk)?;
    if job.archive.as_ref().is_some_and(Archive::settled) {
        let held: Option<i64> = query_optional(
            tx,
            "DELETE FROM archive_holds WHERE job_pk = ?1 RETURNING change_id",
            [task.job_pk],
            |row| Ok(row.get(0)?),
        )?;
        if let (Some(change_id), true) = (held, notify) {
            enqueue_held_completion(tx, change_id, &job, now)?;
        }
    }
    Ok(Some(job))
}

/// Copies a completed job's files again, from the URLs of its outputs, under the current
/// policy (attempts in flight lose their claim). None when the job is not completed or
/// archiving is off.
pub(super) fn again(tx: &Tx, job_pk: i64, now: i64) -> Result<Option<Job>, StoreError> {
    let job = job_by_pk(tx, job_pk)?;
    if job.status != JobStatus::Completed {
        return Ok(None);
    }
    let Some(policy) = policy(tx)? else {
        return Ok(None);
    };
    let files = files_to_copy(job.output.as_ref(), &policy.files);
    execute(tx, "DELETE FROM archive_files WHERE job_pk = ?1", [job_pk])?;
    insert_files(tx, job_pk, &files, now)?;
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    append_event(
        tx,
        job_pk,
        "archive_requested",
        serde_json::json!({"files": names}),
        now,
    )?;
    job_by_pk(tx, job_pk).map(Some)
}

/// At start-up, on a database only this process uses: attempts a stopped process left running
/// are due again now (the file is copied again from its start).
pub(super) fn release(tx: &Tx, now: i64) -> Result<u64, StoreError> {
    execute(
        tx,
        "UPDATE archive_files SET due_at = ?1, claim = NULL \
         WHERE status = 'pending' AND claim IS NOT NULL",
        [now],
    )
}
