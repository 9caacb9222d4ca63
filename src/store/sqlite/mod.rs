//! The SQLite store. Writes run on one connection owned by a thread of its own (see
//! [`writer`]): SQLite has one writer anyway, and queueing closures for it is cheaper than
//! busy-waiting on the file lock. Reads come from a pool of read-only connections that never
//! wait behind the writer (WAL).

use super::{
    ArchiveResult, ArchiveTask, Attempt, AttemptOutcome, BatchFuture, Begun, Change, Claimed,
    Cursor, Delivery, DeliveryFilter, EndpointState, Ingested, JobFilter, KeyState, NewDelivery,
    NewSubmission, Notification, NotifyRoute, Page, PollRecord, Registered, RenderResponse,
    ReplayInput, Replayed, Store, StoreError, StoreOptions, SubmitOutcome, UsageQuery, UsageRow,
};
use crate::domain::archive::ArchivePolicy;
use crate::domain::search::MAX_VALUE_MATCHES;
use crate::domain::{Cause, Job, JobEvent, JobStatus};
use async_trait::async_trait;
use rusqlite::params;
use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod archive;
mod history;
mod outbox;
mod polls;
mod rows;
mod usage;
mod webhooks;
mod writer;

use history::{
    append_event, ensure_job, finish_one, index_metadata, job_by_pk, record_webhook, resolve_job,
    WebhookOnJob,
};
use polls::record_poll;
use rows::{
    delivery_from_row, job_from_row, notification_from_row, notification_from_written,
    DELIVERY_COLUMNS, DELIVERY_FROM, JOB_COLUMNS, NOTIFICATION_COLUMNS,
};
use webhooks::ingest_one;
use writer::{execute, query_all, query_one, query_optional, Writer};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Arc<Writer>,
    reader: SqlitePool,
    /// Whether any notification route exists (saves the outbox statements when none does).
    notify: Arc<AtomicBool>,
    /// Runs the migrations, and moves the WAL into the database file off the commit path.
    upkeep: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating when missing) the database at a `sqlite://PATH` URL.
    pub async fn open(url: &str, store_options: &StoreOptions) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged delivery survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let path = options.get_filename().to_path_buf();
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|err| StoreError::Database(sqlx::Error::Io(err)))?;
            }
        }
        // Opened first: it creates the file and puts it in WAL mode.
        let upkeep = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        // A start after a crash finds whatever the log held then: copy it into the database
        // now, so crashes in a row cannot grow it without end.
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&upkeep)
            .await?;
        if busy != 0 {
            tracing::warn!(
                "another process kept the write-ahead log from being checkpointed at start-up"
            );
        }
        let writer = Arc::new(Writer::open(&path, store_options.wal_limit)?);
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore {
            writer,
            reader,
            upkeep,
            notify: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// A write transaction on the writer thread (a `rusqlite::Transaction` derefs to it).
pub(super) type Tx = rusqlite::Connection;

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}
#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.upkeep).await?;
        Ok(())
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
        self.upkeep.close().await;
    }

    async fn maintain(&self, _now: i64) -> Result<(), StoreError> {
        // PASSIVE: copies what it can without waiting for (or blocking) the writer or readers.
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.upkeep)
            .await?;
        Ok(())
    }

    async fn replicas_alive(&self) -> Result<i64, StoreError> {
        Ok(1)
    }

    async fn ready(&self, now: i64) -> Result<(), StoreError> {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.reader)
                .await?;
        let latest = MIGRATOR.iter().map(|m| m.version).max();
        if applied != latest {
            return Err(StoreError::Corrupt(format!(
                "schema version {applied:?}, this build needs {latest:?}"
            )));
        }
        self.writer
            .write(move |tx| {
                execute(
                    tx,
                    "INSERT INTO heartbeat (id, at) VALUES (1, ?1) \
                     ON CONFLICT (id) DO UPDATE SET at = ?1",
                    [now],
                )
            })
            .await?;
        Ok(())
    }

    async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError> {
        let notify = self.notify.load(Ordering::Relaxed);
        self.writer
            .write(move |tx| ingest_one(tx, &delivery, notify))
            .await
    }

    fn ingest_batch(&self, deliveries: Vec<NewDelivery>) -> BatchFuture {
        // One transaction for the whole batch. If it fails, each delivery is stored on its
        // own, so one bad delivery is answered alone while the others commit.
        let notify = self.notify.load(Ordering::Relaxed);
        let deliveries = Arc::new(deliveries);
        let batch = deliveries.clone();
        let stored = self.writer.submit(move |tx| {
            batch
                .iter()
                .map(|delivery| ingest_one(tx, delivery, notify))
                .collect::<Result<Vec<_>, _>>()
        });
        let store = self.clone();
        Box::pin(async move {
            match stored.await {
                Ok(results) => Ok(results.into_iter().map(Ok).collect()),
                // Committed or refused: storing them one by one could not do better.
                Err(err @ StoreError::NotDurable(_)) => Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "a delivery batch failed; storing one by one");
                    let deliveries =
                        Arc::try_unwrap(deliveries).unwrap_or_else(|all| (*all).clone());
                    let mut alone = Vec::with_capacity(deliveries.len());
                    for delivery in deliveries {
                        alone.push(store.ingest(delivery).await);
                    }
                    Ok(alone)
                }
            }
        })
    }

    async fn replay(
        &self,
        delivery_id: i64,
        again: ReplayInput,
        now: i64,
    ) -> Result<Option<Replayed>, StoreError> {
        let notify = self.notify.load(Ordering::Relaxed);
        self.writer
            .write(move |tx| {
                type Row = (Option<i64>, Option<Vec<u8>>, i64);
                let row: Option<Row> = query_optional(
                    tx,
                    "SELECT d.job_pk, COALESCE(d.body, o.body), \
                     CASE WHEN d.body IS NULL AND o.id IS NOT NULL THEN o.id ELSE d.id END \
                     FROM deliveries d \
                     LEFT JOIN deliveries o ON o.id = d.duplicate_of WHERE d.id = ?1",
                    [delivery_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )?;
                let Some((job_pk, body, body_delivery_id)) = row else {
                    return Ok(None);
                };
                if body.is_none() {
                    return Ok(Some(Replayed::NotApplicable(
                        "the delivery's body was pruned by retention".into(),
                    )));
                }
                let (job, created) = match (job_pk, again.job_id.as_deref()) {
                    (Some(pk), _) => (job_by_pk(tx, pk)?, false),
                    (None, Some(job_id)) => {
                        resolve_job(tx, Some(job_id), None, again.first_poll_at, now)?
                            .ok_or_else(|| corrupt("a job id that resolves to no job"))?
                    }
                    (None, None) => {
                        return Ok(Some(Replayed::NotApplicable(
                            "the delivery names no job".into(),
                        )))
                    }
                };
                let webhook = WebhookOnJob {
                    job,
                    created,
                    delivery_id,
                    duplicate: false,
                    replay: true,
                    report: again.report.as_ref(),
                    look_now: again.look_now,
                    body_delivery_id,
                    notify,
                };
                let job = record_webhook(tx, webhook, now)?;
                Ok(Some(Replayed::Applied(Box::new(job))))
            })
            .await
    }

    async fn register(
        &self,
        job_id: &str,
        metadata: Option<Value>,
        first_poll_at: Option<i64>,
        now: i64,
    ) -> Result<Registered, StoreError> {
        let job_id = job_id.to_owned();
        self.writer
            .write(move |tx| {
                let (pk, created) = ensure_job(
                    tx,
                    &job_id,
                    metadata.as_ref(),
                    Cause::Api,
                    first_poll_at,
                    now,
                )?;
                let job = job_by_pk(tx, pk)?;
                Ok(Registered { job, created })
            })
            .await
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1 \
             UNION ALL SELECT {JOB_COLUMNS} FROM jobs WHERE submission_id = $1 LIMIT 1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn job_by_pk(&self, pk: i64) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(pk)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn raw_response(&self, job_pk: i64) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT j.raw_response, d.body FROM jobs j \
             LEFT JOIN deliveries d ON d.id = j.raw_delivery WHERE j.id = $1",
        )
        .bind(job_pk)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.and_then(|(text, body)| {
            text.or_else(|| body.and_then(|body| String::from_utf8(body).ok()))
        }))
    }

    async fn job_events(&self, job_pk: i64) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, detail FROM job_events WHERE job_pk = $1 ORDER BY id",
        )
        .bind(job_pk)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let detail: String = row.try_get("detail")?;
                let detail = match serde_json::from_str(&detail).map_err(corrupt)? {
                    Value::Object(map) => map,
                    other => return Err(corrupt(format!("event detail {other}"))),
                };
                Ok(JobEvent {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    kind: row.try_get("kind")?,
                    detail,
                })
            })
            .collect()
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Job>, StoreError> {
        // One read transaction: the snapshot id and the rows come from the same moment.
        let mut tx = self.reader.begin().await?;
        let snapshot = match cursor {
            Some(cursor) => cursor.snapshot,
            None => sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(id) FROM job_events")
                .fetch_one(&mut *tx)
                .await?
                .unwrap_or(0),
        };
        let before = cursor.map_or(snapshot + 1, |c| c.position);
        let fetch = i64::from(limit) + 1;

        // Rows unchanged since the snapshot: their place is their newest change.
        let mut unchanged =
            QueryBuilder::<Sqlite>::new(format!("SELECT {JOB_COLUMNS}, seq AS position FROM "));
        push_job_source(&mut unchanged, filter);
        unchanged.push(" WHERE seq < ").push_bind(before);
        push_job_filter(&mut unchanged, filter);
        unchanged.push(" ORDER BY seq DESC LIMIT ").push_bind(fetch);
        let mut rows = unchanged.build().fetch_all(&mut *tx).await?;

        // Rows changed since the snapshot keep the place they had in it, so a client paging
        // through neither misses them nor sees them twice.
        if cursor.is_some() {
            let mut moved = QueryBuilder::<Sqlite>::new(format!(
                "SELECT * FROM (SELECT {JOB_COLUMNS}, (SELECT MAX(e.id) FROM job_events e \
                 WHERE e.job_pk = jobs.id AND e.id <= "
            ));
            moved.push_bind(snapshot);
            moved.push(") AS position FROM ");
            push_job_source(&mut moved, filter);
            moved.push(" WHERE seq > ").push_bind(snapshot);
            push_job_filter(&mut moved, filter);
            moved.push(") WHERE position IS NOT NULL AND position < ");
            moved.push_bind(before);
            moved
                .push(" ORDER BY position DESC LIMIT ")
                .push_bind(fetch);
            rows.extend(moved.build().fetch_all(&mut *tx).await?);
        }
        tx.commit().await?;

        let mut placed = rows
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>("position")?, job_from_row(row)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        placed.sort_by_key(|(position, _)| std::cmp::Reverse(*position));
        let more = placed.len() > limit as usize;
        placed.truncate(limit as usize);
        let next = match placed.last() {
            Some((position, _)) if more => Some(Cursor {
                snapshot,
                position: *position,
            }),
            _ => None,
        };
        Ok(Page {
            items: placed.into_iter().map(|(_, job)| job).collect(),
            next,
        })
    }

    async fn chain(&self, job_pk: i64, limit: u32) -> Result<Vec<Job>, StoreError> {
        // Up to the first clip, then down again, each job ordered by the path of row ids
        // that leads to it (a parent's id is always smaller than its children's, so the walk
        // up ends and the paths sort depth first, oldest child first).
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE \
               up(id, parent_pk) AS ( \
                 SELECT id, parent_pk FROM jobs WHERE id = $1 \
                 UNION ALL SELECT j.id, j.parent_pk FROM jobs j JOIN up ON j.id = up.parent_pk), \
               down(id, path) AS ( \
                 SELECT id, printf('%020d', id) FROM up WHERE parent_pk IS NULL \
                 UNION ALL SELECT c.id, down.path || '/' || printf('%020d', c.id) \
                 FROM jobs c JOIN down ON c.parent_pk = down.id) \
             SELECT {JOB_COLUMNS}, (SELECT path FROM down WHERE down.id = jobs.id) AS path \
             FROM jobs WHERE id IN (SELECT id FROM down) ORDER BY path LIMIT $2"
        ))
        .bind(job_pk)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn delivery(&self, id: i64) -> Result<Option<Delivery>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Delivery>, StoreError> {
        // Deliveries never move, so their id alone is a stable order.
        let mut query = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE 1 = 1"
        ));
        if let Some(cursor) = cursor {
            query.push(" AND d.id < ").push_bind(cursor.position);
        }
        if let Some(job) = &filter.job {
            query
                .push(" AND d.job_pk = (SELECT id FROM jobs WHERE job_id = ")
                .push_bind(job.clone())
                .push(" UNION ALL SELECT id FROM jobs WHERE submission_id = ")
                .push_bind(job.clone())
                .push(" LIMIT 1)");
        }
        if let Some(outcome) = filter.outcome {
            query.push(" AND d.outcome = ").push_bind(outcome.as_str());
        }
        query
            .push(" ORDER BY d.id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = query.build().fetch_all(&self.reader).await?;
        let items = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(id_page(items, limit, |d| d.id))
    }

    async fn prune_delivery_bodies(&self, before: i64, batch: u32) -> Result<u64, StoreError> {
        self.writer
            .write(move |tx| {
                execute(
                    tx,
                    "UPDATE deliveries SET body = NULL, pruned_at = ?1 WHERE id IN \
                     (SELECT id FROM deliveries WHERE body IS NOT NULL AND received_at < ?1 \
                      AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = deliveries.job_pk \
                                      AND jobs.raw_delivery = deliveries.id) \
                      ORDER BY received_at LIMIT ?2)",
                    params![before, i64::from(batch)],
                )
            })
            .await
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        usage::usage(&self.reader, query).await
    }

    async fn set_archive_policy(
        &self,
        policy: Option<&ArchivePolicy>,
        now: i64,
    ) -> Result<(), StoreError> {
        let policy = policy.cloned();
        let notify = self.notify.load(Ordering::Relaxed);
        self.writer
            .write(move |tx| archive::set_policy(tx, policy.as_ref(), notify, now))
            .await
    }

    async fn claim_archive_files(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<ArchiveTask>, StoreError> {
        self.writer
            .write(move |tx| archive::claim(tx, now, lease_until, limit))
            .await
    }

    async fn extend_archive_lease(
        &self,
        task: &ArchiveTask,
        until: i64,
    ) -> Result<bool, StoreError> {
        let task = task.clone();
        self.writer
            .write(move |tx| archive::extend(tx, &task, until))
            .await
    }

    async fn record_archive_file(
        &self,
        task: &ArchiveTask,
        result: ArchiveResult,
        now: i64,
    ) -> Result<Option<Job>, StoreError> {
        let task = task.clone();
        let notify = self.notify.load(Ordering::Relaxed);
        self.writer
            .write(move |tx| archive::record(tx, &task, &result, notify, now))
            .await
    }

    async fn next_archive_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT due_at FROM archive_files WHERE status = 'pending' \
             ORDER BY due_at LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?
        .flatten())
    }

    async fn archive_again(&self, job_pk: i64, now: i64) -> Result<Option<Job>, StoreError> {
        self.writer
            .write(move |tx| archive::again(tx, job_pk, now))
            .await
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                .fetch_all(&self.reader)
                .await?;
        rows.into_iter()
            .map(|(status, count)| Ok((status.parse().map_err(corrupt)?, count)))
            .collect()
    }

    async fn begin_submission(
        &self,
        submission: NewSubmission,
        now: i64,
    ) -> Result<Begun, StoreError> {
        self.writer
            .write(move |tx| {
                // The writer holds the write lock for the whole transaction, so the key cannot
                // be claimed by anyone else between this look and the insert below.
                if let Some(idempotency) = &submission.idempotency {
                    let existing: Option<(Vec<u8>, Option<i64>, Option<String>)> = query_optional(
                        tx,
                        "SELECT fingerprint, status_code, response FROM idempotency_keys \
                         WHERE key = ?1",
                        [&idempotency.key],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )?;
                    match existing {
                        None => {}
                        Some((fingerprint, _, _)) if fingerprint != idempotency.fingerprint => {
                            return Ok(Begun::KeyReused)
                        }
                        Some((_, Some(status), Some(body))) => {
                            return Ok(Begun::Replay {
                                status: u16::try_from(status).map_err(corrupt)?,
                                body,
                            })
                        }
                        Some(_) => return Ok(Begun::InFlight),
                    }
                }
                let pk: i64 = query_one(
                    tx,
                    "INSERT INTO jobs (submission_id, status, request, metadata, created_at, \
                     updated_at, parent_pk) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) RETURNING id",
                    params![
                        submission.submission_id,
                        JobStatus::Submitting.as_str(),
                        submission.request.to_string(),
                        submission.metadata.as_ref().map(Value::to_string),
                        now,
                        submission.parent_pk
                    ],
                    |row| Ok(row.get(0)?),
                )?;
                index_metadata(tx, pk, submission.metadata.as_ref())?;
                let mut detail = json!({"cause": "api"});
                if let Some(parent_pk) = submission.parent_pk {
                    let parent = job_by_pk(tx, parent_pk)?;
                    detail["continues"] = json!(parent.display_id());
                }
                if let Some(idempotency) = &submission.idempotency {
                    // The primary key on `key` is the last word should two processes share
                    // the file: the loser's transaction fails and nothing of it is kept.
                    execute(
                        tx,
                        "INSERT INTO idempotency_keys (key, fingerprint, job_pk, created_at) \
                         VALUES (?1, ?2, ?3, ?4)",
                        params![idempotency.key, idempotency.fingerprint, pk, now],
                    )?;
                    detail["idempotency_key"] = json!(idempotency.key);
                }
                append_event(tx, pk, "submitted", detail, now)?;
                Ok(Begun::Started(Box::new(job_by_pk(tx, pk)?)))
            })
            .await
    }

    async fn idempotency_key(&self, key: &str) -> Result<KeyState, StoreError> {
        let row: Option<(Option<i64>, Option<String>)> =
            sqlx::query_as("SELECT status_code, response FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.reader)
                .await?;
        match row {
            Some((Some(status), Some(body))) => Ok(KeyState::Answered {
                status: u16::try_from(status).map_err(corrupt)?,
                body,
            }),
            Some(_) => Ok(KeyState::InFlight),
            None => Ok(KeyState::Missing),
        }
    }

    async fn finish_submission(
        &self,
        submission_id: &str,
        outcome: SubmitOutcome,
        first_poll_at: Option<i64>,
        render: Arc<RenderResponse>,
        now: i64,
    ) -> Result<Job, StoreError> {
        let submission_id = submission_id.to_owned();
        self.writer
            .write(move |tx| {
                let pk: i64 = query_one(
                    tx,
                    "SELECT id FROM jobs WHERE submission_id = ?1",
                    [&submission_id],
                    |row| Ok(row.get(0)?),
                )?;
                finish_one(tx, pk, outcome, first_poll_at, &*render, now)
            })
            .await
    }

    async fn recover_submissions(
        &self,
        render: Arc<RenderResponse>,
        created_before: i64,
        now: i64,
    ) -> Result<Vec<Job>, StoreError> {
        self.writer
            .write(move |tx| {
                let stuck: Vec<i64> = query_all(
                    tx,
                    "SELECT id FROM jobs WHERE status = ?1 AND created_at < ?2",
                    params![JobStatus::Submitting.as_str(), created_before],
                    |row| Ok(row.get(0)?),
                )?;
                let mut recovered = Vec::with_capacity(stuck.len());
                for pk in stuck {
                    let outcome = SubmitOutcome::Unknown {
                        reason: "jobhook stopped while the Generate call was in flight".into(),
                    };
                    recovered.push(finish_one(tx, pk, outcome, None, &*render, now)?);
                }
                Ok(recovered)
            })
            .await
    }

    async fn prune_idempotency_keys(&self, before: i64) -> Result<u64, StoreError> {
        self.writer
            .write(move |tx| {
                execute(
                    tx,
                    "DELETE FROM idempotency_keys WHERE created_at < ?1",
                    [before],
                )
            })
            .await
    }

    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
        scheduled_first: bool,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.writer
            .write(move |tx| {
                let mut claimed = Vec::new();
                // Webhook "look now" first, then the regular schedule; each oldest first.
                let order = if scheduled_first { [0, 1] } else { [1, 0] };
                for priority in order {
                    let left = i64::from(limit) - claimed.len() as i64;
                    if left <= 0 {
                        break;
                    }
                    claimed.extend(query_all(
                        tx,
                        "UPDATE jobs SET next_poll_at = ?1, leased = 1 WHERE id IN \
                         (SELECT id FROM jobs WHERE poll_priority = ?2 AND next_poll_at <= ?3 \
                         AND job_id IS NOT NULL ORDER BY next_poll_at LIMIT ?4) \
                         RETURNING id, job_id, poll_priority, created_at, poll_count",
                        params![lease_until, priority, now, left],
                        |row| {
                            let priority: i64 = row.get("poll_priority")?;
                            Ok(Claimed {
                                pk: row.get("id")?,
                                job_id: row.get("job_id")?,
                                cause: if priority > 0 {
                                    Cause::Webhook
                                } else {
                                    Cause::Poll
                                },
                                created_at: row.get("created_at")?,
                                poll_count: row.get("poll_count")?,
                            })
                        },
                    )?);
                }
                Ok(claimed)
            })
            .await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let mut earliest: Option<i64> = None;
        for priority in [1, 0] {
            let due: Option<i64> = sqlx::query_scalar(
                "SELECT next_poll_at FROM jobs WHERE poll_priority = $1 \
                 AND next_poll_at IS NOT NULL AND job_id IS NOT NULL \
                 ORDER BY next_poll_at LIMIT 1",
            )
            .bind(priority)
            .fetch_optional(&self.reader)
            .await?;
            earliest = match (earliest, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(earliest)
    }

    async fn record_poll(
        &self,
        job_pk: i64,
        poll: PollRecord,
        now: i64,
    ) -> Result<Job, StoreError> {
        self.writer
            .write(move |tx| record_poll(tx, job_pk, &poll, now))
            .await
    }

    async fn overdue(&self, now: i64) -> Result<(i64, Option<i64>), StoreError> {
        let row: (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(next_poll_at) FROM jobs WHERE next_poll_at < $1 \
                 AND job_id IS NOT NULL",
        )
        .bind(now)
        .fetch_one(&self.reader)
        .await?;
        Ok(row)
    }

    async fn release_leases(&self, now: i64) -> Result<u64, StoreError> {
        self.writer
            .write(move |tx| {
                let jobs = execute(
                    tx,
                    "UPDATE jobs SET leased = 0, \
                     next_poll_at = CASE WHEN next_poll_at IS NULL THEN NULL ELSE ?1 END \
                     WHERE leased = 1",
                    [now],
                )?;
                let notifications = execute(
                    tx,
                    "UPDATE notifications SET next_attempt_at = ?1, leased = 0 WHERE leased = 1",
                    [now],
                )?;
                let files = archive::release(tx, now)?;
                Ok(jobs + notifications + files)
            })
            .await
    }

    async fn release_claims(&self, pks: &[i64], now: i64) -> Result<(), StoreError> {
        let pks = pks.to_vec();
        self.writer
            .write(move |tx| {
                let mut release = tx.prepare_cached(
                    "UPDATE jobs SET leased = 0, \
                     next_poll_at = CASE WHEN next_poll_at IS NULL THEN NULL ELSE ?1 END \
                     WHERE id = ?2 AND leased = 1",
                )?;
                for pk in pks {
                    release.execute(params![now, pk])?;
                }
                Ok(())
            })
            .await
    }

    async fn watch_others(&self) -> Result<Option<super::OthersChanges>, StoreError> {
        // One process owns the file (the writer thread): nothing changes behind its back.
        Ok(None)
    }

    fn shared_pace(&self) -> Option<Arc<dyn super::SharedPace>> {
        // One process polls: its limiter stays in memory.
        None
    }

    async fn latest_change_id(&self) -> Result<i64, StoreError> {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT MAX(id) FROM job_events WHERE kind = 'status_changed'")
                .fetch_one(&self.reader)
                .await?;
        Ok(id.unwrap_or(0))
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, job_pk, snapshot FROM job_events \
             WHERE kind = 'status_changed' AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Change {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    job_pk: row.try_get("job_pk")?,
                    snapshot: row
                        .try_get::<Option<String>, _>("snapshot")?
                        .ok_or_else(|| corrupt("a status change without its snapshot"))?,
                })
            })
            .collect()
    }

    async fn set_notify_routes(&self, routes: &[NotifyRoute]) -> Result<(), StoreError> {
        self.notify.store(
            routes.iter().any(|r| !r.events.is_empty()),
            Ordering::Relaxed,
        );
        let routes = routes.to_vec();
        self.writer
            .write(move |tx| {
                execute(tx, "DELETE FROM notify_routes", [])?;
                for route in &routes {
                    // A changed configuration for an endpoint re-enables it after a 410.
                    execute(
                        tx,
                        "INSERT INTO notify_endpoints (url, fingerprint) VALUES (?1, ?2) \
                         ON CONFLICT (url) DO UPDATE SET fingerprint = ?2, \
                         disabled_at = CASE WHEN notify_endpoints.fingerprint IS ?2 \
                             THEN notify_endpoints.disabled_at END, \
                         disabled_reason = CASE WHEN notify_endpoints.fingerprint IS ?2 \
                             THEN notify_endpoints.disabled_reason END",
                        params![route.url, route.fingerprint],
                    )?;
                    for event_type in &route.events {
                        execute(
                            tx,
                            "INSERT INTO notify_routes (url, event_type) VALUES (?1, ?2) \
                             ON CONFLICT DO NOTHING",
                            params![route.url, event_type],
                        )?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn claim_notifications(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        self.writer
            .write(move |tx| {
                query_all(
                    tx,
                    &format!(
                        "UPDATE notifications SET next_attempt_at = ?1, leased = 1 WHERE id IN \
                         (SELECT n.id FROM notifications n WHERE n.state = 'pending' \
                         AND n.next_attempt_at <= ?2 AND NOT EXISTS (SELECT 1 FROM \
                         notify_endpoints e WHERE e.url = n.endpoint AND e.disabled_at IS NOT NULL) \
                         ORDER BY n.next_attempt_at LIMIT ?3) RETURNING {NOTIFICATION_COLUMNS}"
                    ),
                    params![lease_until, now, i64::from(limit)],
                    notification_from_written,
                )
            })
            .await
    }

    async fn next_notification_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT n.next_attempt_at FROM notifications n WHERE n.state = 'pending' \
             AND n.next_attempt_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM notify_endpoints e \
             WHERE e.url = n.endpoint AND e.disabled_at IS NOT NULL) \
             ORDER BY n.next_attempt_at LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?)
    }

    async fn record_attempt(
        &self,
        id: i64,
        attempt: Attempt,
        now: i64,
    ) -> Result<Notification, StoreError> {
        self.writer
            .write(move |tx| {
                let (state, next_attempt_at, delivered_at, label) = match &attempt.outcome {
                    AttemptOutcome::Delivered => ("delivered", None, Some(now), "delivered"),
                    AttemptOutcome::RetryAt(at) => ("pending", Some(*at), None, "failed"),
                    AttemptOutcome::Exhausted => ("exhausted", None, None, "exhausted"),
                    AttemptOutcome::Gone => ("pending", Some(now), None, "gone"),
                };
                let notification = query_one(
                    tx,
                    &format!(
                        "UPDATE notifications SET state = ?1, next_attempt_at = ?2, \
                         delivered_at = ?3, leased = 0, attempts = attempts + 1, \
                         round_attempts = round_attempts + 1, last_status = ?4, last_error = ?5 \
                         WHERE id = ?6 RETURNING {NOTIFICATION_COLUMNS}"
                    ),
                    params![
                        state,
                        next_attempt_at,
                        delivered_at,
                        attempt.http_status.map(i64::from),
                        attempt.error.as_deref(),
                        id
                    ],
                    notification_from_written,
                )?;
                if attempt.outcome == AttemptOutcome::Gone {
                    execute(
                        tx,
                        "INSERT INTO notify_endpoints (url, disabled_at, disabled_reason) \
                         VALUES (?1, ?2, ?3) ON CONFLICT (url) DO UPDATE \
                         SET disabled_at = ?2, disabled_reason = ?3",
                        params![notification.endpoint, now, "answered 410 Gone"],
                    )?;
                }
                let mut detail = json!({
                    "endpoint": notification.endpoint, "attempt": notification.attempts,
                    "outcome": label, "notification_id": id, "type": notification.event_type,
                });
                detail["http_status"] = json!(attempt.http_status);
                if let Some(error) = &attempt.error {
                    detail["error"] = json!(error);
                }
                append_event(tx, notification.job_pk, "notification", detail, now)?;
                Ok(notification)
            })
            .await
    }

    async fn notification(&self, id: i64) -> Result<Option<Notification>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(notification_from_row).transpose()
    }

    async fn list_notifications(
        &self,
        state: Option<&str>,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Notification>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE 1 = 1"
        ));
        if let Some(cursor) = cursor {
            query.push(" AND id < ").push_bind(cursor.position);
        }
        if let Some(state) = state {
            query.push(" AND state = ").push_bind(state.to_owned());
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = query.build().fetch_all(&self.reader).await?;
        let items = rows
            .iter()
            .map(notification_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(id_page(items, limit, |n| n.id))
    }

    async fn retry_notification(
        &self,
        id: i64,
        now: i64,
    ) -> Result<Option<Notification>, StoreError> {
        let retried = self
            .writer
            .write(move |tx| {
                query_optional(
                    tx,
                    &format!(
                        "UPDATE notifications SET state = 'pending', round_attempts = 0, \
                         next_attempt_at = ?1 WHERE id = ?2 AND state = 'exhausted' \
                         RETURNING {NOTIFICATION_COLUMNS}"
                    ),
                    params![now, id],
                    notification_from_written,
                )
            })
            .await?;
        match retried {
            Some(notification) => Ok(Some(notification)),
            None => self.notification(id).await,
        }
    }

    async fn endpoint_states(&self) -> Result<Vec<EndpointState>, StoreError> {
        let rows: Vec<(String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT r.url, e.disabled_at, e.disabled_reason FROM \
             (SELECT DISTINCT url FROM notify_routes) r \
             LEFT JOIN notify_endpoints e ON e.url = r.url ORDER BY r.url",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(url, disabled_at, disabled_reason)| EndpointState {
                url,
                disabled_at,
                disabled_reason,
            })
            .collect())
    }

    async fn enable_endpoint(&self, url: &str, _now: i64) -> Result<bool, StoreError> {
        let url = url.to_owned();
        let changed = self
            .writer
            .write(move |tx| {
                execute(
                    tx,
                    "UPDATE notify_endpoints SET disabled_at = NULL, disabled_reason = NULL \
                     WHERE url = ?1 AND disabled_at IS NOT NULL",
                    [&url],
                )
            })
            .await?;
        Ok(changed > 0)
    }
}

/// A page of rows fetched newest first with one row more than `limit`: the extra row only says
/// there is a next page, which starts below the last id shown. (Rows that never move need no
/// snapshot.)
fn id_page<T>(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> i64) -> Page<T> {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = match items.last() {
        Some(last) if more => Some(Cursor {
            snapshot: 0,
            position: id(last),
        }),
        _ => None,
    };
    Page { items, next }
}

/// The rows a job list reads: every job, or for a search only the jobs it finds (by id, by
/// submission id, or the newest [`MAX_VALUE_MATCHES`] with the metadata value), looked up
/// through their indexes. `CROSS JOIN` makes SQLite start from the few jobs found rather than
/// walk every job in list order testing each one (its planner has no statistics to know).
fn push_job_source(query: &mut QueryBuilder<'_, Sqlite>, filter: &JobFilter) {
    let Some(search) = &filter.search else {
        query.push("jobs");
        return;
    };
    query
        .push("(SELECT id AS pk FROM jobs WHERE job_id = ")
        .push_bind(search.id.clone())
        .push(" UNION SELECT id FROM jobs WHERE submission_id = ")
        .push_bind(search.id.clone())
        .push(" UNION SELECT job_pk FROM (SELECT job_pk FROM job_metadata_values WHERE value = ")
        .push_bind(search.value.clone())
        .push(" ORDER BY job_pk DESC LIMIT ")
        .push_bind(i64::from(MAX_VALUE_MATCHES))
        .push(") AS by_value) AS hit CROSS JOIN jobs ON jobs.id = hit.pk");
}

fn push_job_filter(query: &mut QueryBuilder<'_, Sqlite>, filter: &JobFilter) {
    if !filter.statuses.is_empty() {
        query.push(" AND status IN (");
        let mut list = query.separated(", ");
        for status in &filter.statuses {
            list.push_bind(status.as_str());
        }
        list.push_unseparated(")");
    }
    if let Some(after) = filter.updated_after {
        query.push(" AND updated_at > ").push_bind(after);
    }
    if let Some(before) = filter.updated_before {
        query.push(" AND updated_at < ").push_bind(before);
    }
}
