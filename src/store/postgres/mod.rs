//! The PostgreSQL store, for several replicas sharing one database (SPEC §9).
//!
//! The same behaviour as the SQLite store, in PostgreSQL's dialect, with what sharing needs:
//! - history ids commit in id order (the history lock, see [`write`]), so the event stream and
//!   the job list's cursor can never pass over a change that commits a moment later;
//! - claims take due rows with `FOR UPDATE SKIP LOCKED` inside a CTE, so a poll or a
//!   notification attempt is made by one replica at a time, and a lease that has run out (its
//!   replica died) is simply due again for every replica; a replica starting up frees at once
//!   the leases of processes that are gone, never a live one's (see [`leases`]);
//! - every commit announces the jobs it changed with `NOTIFY`, and [`listen`] hands other
//!   replicas' changes to this process (see [`Store::watch_others`]).

use super::{
    ArchiveResult, ArchiveTask, Attempt, AttemptOutcome, BatchFuture, Begun, Change, Claimed,
    Cursor, Delivery, DeliveryFilter, EndpointState, Ingested, JobFilter, KeyState, NewDelivery,
    NewSubmission, Notification, NotifyRoute, OthersChanges, Page, PollRecord, Registered,
    RenderResponse, ReplayInput, Replayed, Store, StoreError, StoreOptions, SubmitOutcome,
    UsageQuery, UsageRow,
};
use crate::domain::archive::ArchivePolicy;
use crate::domain::search::MAX_VALUE_MATCHES;
use crate::domain::{Cause, Job, JobEvent, JobStatus};
use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod archive;
mod batch;
mod history;
mod leases;
mod listen;
mod outbox;
mod pace;
mod polls;
mod rows;
mod usage;
mod webhooks;
mod write;

use history::WebhookOnJob;
use history::{append_event, ensure_job, finish_one, job_by_pk, record_webhook, resolve_job};
use polls::record_poll;
use rows::{
    change_from_row, delivery_from_row, job_from_row, notification_from_row, DELIVERY_COLUMNS,
    DELIVERY_FROM, JOB_COLUMNS, NOTIFICATION_COLUMNS,
};
use webhooks::ingest_one;
use write::Tx;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The `application_name` of each replica's listening connection (as `pg_stat_activity` shows).
pub const LISTENER_NAME: &str = "jobhook-listener";
/// Longest wait for a pooled connection before a request fails (and answers 503): while the
/// database is unreachable, a webhook is told to retry within seconds rather than held. (A
/// healthy pool hands out a connection in microseconds; three seconds of waiting means the
/// database is away or overwhelmed.)
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a replica marks itself alive and looks for leases left by replicas that are gone.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// The origin of the announcement of rescued leases: no replica's own, so every replica's
/// loops hear it, this one's too.
const RESCUE_ORIGIN: &str = "rescue";

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Holds the one `LISTEN` connection (kept out of `pool`, so it never counts against it).
    listen_pool: PgPool,
    /// Names this process in its change announcements, so it skips its own.
    origin: String,
    /// Whether any notification route exists (saves the outbox statements when none does).
    notify: Arc<AtomicBool>,
    /// Stops the listener when the store is closed.
    closing: CancellationToken,
    /// This process's lease-owner lock (see [`leases`]); None once closed.
    owner: Arc<tokio::sync::Mutex<Option<leases::Owner>>>,
    /// Written into the leases this process takes.
    owner_number: i64,
    /// Delivery batches, stored one after the other in the order they were handed in.
    batches: mpsc::UnboundedSender<QueuedBatch>,
    /// Ticked by the listener when another replica changes the shared Get Job pace.
    pace_heard: Arc<tokio::sync::watch::Sender<u64>>,
    /// How this process connects (the lease-owner connection is opened again after a loss).
    connect: PgConnectOptions,
    /// When [`Store::maintain`] last did its work.
    upkept_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// A batch waiting for [`store_batches`], and who to tell once it is stored.
type QueuedBatch = (Vec<NewDelivery>, BatchReply);
type BatchReply = oneshot::Sender<Result<Vec<Result<Ingested, StoreError>>, StoreError>>;

impl PgStore {
    /// Connects to the database a `postgres://` or `postgresql://` URL names (`sslmode` and the
    /// other parameters as libpq reads them).
    pub async fn open(url: &str, options: &StoreOptions) -> Result<PgStore, StoreError> {
        let connect = PgConnectOptions::from_str(url)?.application_name("jobhook");
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect.clone())
            .await?;
        let owner = leases::Owner::take(&connect, ACQUIRE_TIMEOUT).await?;
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(connect.clone().application_name(LISTENER_NAME));
        let (batches, queued) = mpsc::unbounded_channel();
        let store = PgStore {
            batches,
            owner_number: owner.number,
            owner: Arc::new(tokio::sync::Mutex::new(Some(owner))),
            pool,
            listen_pool,
            origin: format!("{:016x}", rand::random::<u64>()),
            notify: Arc::new(AtomicBool::new(false)),
            closing: CancellationToken::new(),
            pace_heard: Arc::new(tokio::sync::watch::channel(0).0),
            connect: connect.clone(),
            upkept_at: Arc::default(),
        };
        // The batch writer runs on a thread and runtime of its own, with its own connections:
        // each batch is a few round trips made under the history lock, and on a runtime busy
        // with HTTP traffic every one of them waited for a worker to come round.
        // The writer's copy of the store holds no sender of its own queue: once every other
        // copy is gone (closed or dropped), the queue ends, and the thread with it.
        let mut writer = store.clone();
        writer.batches = mpsc::unbounded_channel().0;
        let pool_size = options.pool_size.clamp(1, 2);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| StoreError::Batch(format!("cannot start the batch writer: {err}")))?;
        std::thread::Builder::new()
            .name("jobhook-pg-writer".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // No ping before each batch: a connection the database dropped fails
                    // the batch's first statement instead, which is answered as an outage
                    // (the deliveries are told to retry) and the connection replaced.
                    writer.pool = PgPoolOptions::new()
                        .max_connections(pool_size)
                        .test_before_acquire(false)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .connect_lazy_with(writer.connect.clone());
                    let pool = writer.pool.clone();
                    store_batches(writer, queued).await;
                    pool.close().await;
                });
            })
            .map_err(|err| StoreError::Batch(format!("cannot start the batch writer: {err}")))?;
        Ok(store)
    }

    async fn begin(&self) -> Result<Tx, StoreError> {
        Tx::begin(&self.pool).await
    }

    async fn commit(&self, tx: Tx) -> Result<(), StoreError> {
        tx.commit(&self.origin).await
    }

    /// Frees at once the leases (polls and notification attempts) of replicas that are gone
    /// (killed, or cut off for good: their lease-owner lock ended with their connection), so
    /// the others take those jobs now rather than when the leases run out. The rescued jobs are
    /// announced to every replica, this one included, whose loops then look again.
    async fn rescue_leases(&self, now: i64) -> Result<(), StoreError> {
        let class = i64::from(leases::LEASE_CLASS);
        // A cheap look first, without the history lock: almost always there is nothing.
        let any: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE leased AND {jobs}) \
             OR EXISTS (SELECT 1 FROM notifications WHERE leased AND {notifications})",
            jobs = leases::owner_gone("lease_owner", "$1"),
            notifications = leases::owner_gone("lease_owner", "$1"),
        ))
        .bind(class)
        .fetch_one(&self.pool)
        .await?;
        if !any {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        let jobs: Vec<i64> = sqlx::query_scalar(&format!(
            "UPDATE jobs SET leased = FALSE, lease_owner = NULL, \
             next_poll_at = CASE WHEN next_poll_at IS NULL THEN NULL \
                 ELSE LEAST(next_poll_at, $1) END \
             WHERE leased AND {} RETURNING id",
            leases::owner_gone("lease_owner", "$2")
        ))
        .bind(now)
        .bind(class)
        .fetch_all(tx.db())
        .await?;
        let notified: Vec<i64> = sqlx::query_scalar(&format!(
            "UPDATE notifications SET leased = FALSE, lease_owner = NULL, \
             next_attempt_at = LEAST(next_attempt_at, $1) \
             WHERE leased AND {} RETURNING job_pk",
            leases::owner_gone("lease_owner", "$2")
        ))
        .bind(now)
        .bind(class)
        .fetch_all(tx.db())
        .await?;
        for pk in jobs.iter().chain(&notified) {
            tx.touched(*pk);
        }
        tx.commit(RESCUE_ORIGIN).await?;
        tracing::info!(
            polls = jobs.len(),
            notifications = notified.len(),
            "freed the leases of a replica that is gone"
        );
        Ok(())
    }

    /// Stores one delivery in a transaction of its own.
    async fn ingest_alone(&self, delivery: &NewDelivery) -> Result<Ingested, StoreError> {
        let notify = self.notify.load(Ordering::Relaxed);
        let mut tx = self.begin().await?;
        let ingested = ingest_one(&mut tx, delivery, notify).await?;
        self.commit(tx).await?;
        Ok(ingested)
    }

    /// Writes a batch into `tx` (begun by [`Tx::begin_batch`]); the caller commits.
    async fn write_together(
        &self,
        tx: &mut Tx,
        deliveries: &[NewDelivery],
    ) -> Result<Vec<Ingested>, StoreError> {
        let notify = self.notify.load(Ordering::Relaxed);
        if let Some(stored) = batch::ingest(tx, deliveries, notify, &self.origin).await? {
            return Ok(stored);
        }
        // Nothing was written: the same transaction stores them one by one.
        let mut stored = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            stored.push(ingest_one(tx, delivery, notify).await?);
        }
        Ok(stored)
    }
}

/// Most deliveries the writer gathers into one transaction from the batches queued for it.
const MOST_GATHERED: usize = 1024;

/// A transaction begun for the next batch while the current one commits (see [`store_batches`]).
type Ahead = tokio::task::JoinHandle<Result<Tx, StoreError>>;

/// Stores queued delivery batches until the store closes, in the order of the
/// [`Store::ingest_batch`] calls.
///
/// Every batch queued by the time a transaction holds the history lock is stored in that one
/// transaction. And when batches are already waiting as one commits, the next transaction is
/// begun before that commit: its `BEGIN` waits inside PostgreSQL for the lock and has it the
/// moment the commit lets go, so the round trip that takes the lock is off the path from one
/// commit to the next. (Only then: a transaction begun with nothing to store would sit on the
/// lock that every writer, on every replica, needs.)
async fn store_batches(store: PgStore, mut queued: mpsc::UnboundedReceiver<QueuedBatch>) {
    let mut ahead: Option<Ahead> = None;
    loop {
        let first = tokio::select! {
            _ = store.closing.cancelled() => break,
            next = queued.recv() => match next {
                Some(batch) => batch,
                None => break,
            },
        };
        let begun = match ahead.take() {
            Some(begun) => begun
                .await
                .unwrap_or_else(|err| Err(StoreError::Batch(format!("the writer failed: {err}")))),
            None => Tx::begin_batch(&store.pool).await,
        };
        let (mut deliveries, reply) = first;
        let mut replies = vec![(deliveries.len(), reply)];
        while deliveries.len() < MOST_GATHERED {
            let Ok((more, reply)) = queued.try_recv() else {
                break;
            };
            replies.push((more.len(), reply));
            deliveries.extend(more);
        }
        let written = match begun {
            Ok(mut tx) => match store.write_together(&mut tx, &deliveries).await {
                Ok(stored) => {
                    if !queued.is_empty() {
                        let pool = store.pool.clone();
                        ahead = Some(tokio::spawn(async move { Tx::begin_batch(&pool).await }));
                    }
                    store.commit(tx).await.map(|()| stored)
                }
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        let stored = match written {
            Ok(stored) => Ok(stored.into_iter().map(Ok).collect()),
            // The database is away: one by one would only fail again, each after its own
            // wait. Nothing was committed; every sender is told to retry, and so are the
            // senders of the batches queued meanwhile, which would only wait for the same
            // wall (a webhook gets its 503 within one connection timeout, not several).
            Err(err) if is_outage(&err) => {
                give_back(ahead.take()).await;
                let why = format!("the database is unreachable: {err}");
                while let Ok((_, waiting)) = queued.try_recv() {
                    let _ = waiting.send(Err(StoreError::Batch(why.clone())));
                }
                Err(err)
            }
            Err(err) => {
                // Storing one by one needs the lock a transaction begun ahead would hold.
                give_back(ahead.take()).await;
                // One bad delivery is answered alone while the others commit, as on SQLite.
                tracing::warn!(error = %err, "a delivery batch failed; storing one by one");
                let mut alone = Vec::with_capacity(deliveries.len());
                for delivery in &deliveries {
                    alone.push(store.ingest_alone(delivery).await);
                }
                Ok(alone)
            }
        };
        answer_each(stored, replies);
    }
    give_back(ahead).await;
}

/// Rolls back a transaction begun ahead, so its history lock is free for others.
async fn give_back(ahead: Option<Ahead>) {
    if let Some(Ok(Ok(tx))) = match ahead {
        Some(begun) => Some(begun.await),
        None => None,
    } {
        if let Err(err) = tx.rollback().await {
            tracing::warn!(error = %err, "could not roll back an unused transaction");
        }
    }
}

/// Answers each batch stored together with its share of the results: `replies` holds each
/// batch's size and its reply, in the order the deliveries were stored. (A caller may have
/// gone away; its batch is stored all the same.)
fn answer_each(
    stored: Result<Vec<Result<Ingested, StoreError>>, StoreError>,
    replies: Vec<(usize, BatchReply)>,
) {
    match stored {
        Ok(results) => {
            let mut results = results.into_iter();
            for (size, reply) in replies {
                let _ = reply.send(Ok(results.by_ref().take(size).collect()));
            }
        }
        Err(err) => {
            let why = err.to_string();
            let mut first = Some(err);
            for (_, reply) in replies {
                let err = first
                    .take()
                    .unwrap_or_else(|| StoreError::Batch(why.clone()));
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// Whether an error says the database cannot be reached (rather than that this statement was
/// refused): the connection failed or was lost, or the server is shutting down or starting.
fn is_outage(err: &StoreError) -> bool {
    match err {
        StoreError::Database(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        StoreError::Database(err) => matches!(
            err,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        ),
        _ => false,
    }
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx takes `pg_advisory_lock` (keyed by the database name) on the connection that
        // applies the migrations, before it reads which are applied: replicas starting at once
        // apply each migration once, and the others wait, then find nothing to do.
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.closing.cancel();
        self.listen_pool.close().await;
        self.pool.close().await;
        if let Some(owner) = self.owner.lock().await.take() {
            // A database that does not answer must not hold the shutdown.
            let _ = tokio::time::timeout(ACQUIRE_TIMEOUT, owner.release()).await;
        }
    }

    async fn maintain(&self, now: i64) -> Result<(), StoreError> {
        // PostgreSQL keeps itself (autovacuum, checkpoints); what is left is the replicas'.
        {
            let mut upkept_at = crate::sync::lock(&self.upkept_at);
            if upkept_at.is_some_and(|at| at.elapsed() < UPKEEP_EVERY) {
                return Ok(());
            }
            *upkept_at = Some(std::time::Instant::now());
        }
        let beat = match self.owner.lock().await.as_mut() {
            Some(owner) => owner.beat(&self.connect, ACQUIRE_TIMEOUT).await,
            None => Ok(()),
        };
        let rescued = self.rescue_leases(now).await;
        beat.and(rescued)
    }

    async fn replicas_alive(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM replicas WHERE seen_at > {} - 30000",
            leases::DB_NOW_MS
        ))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn ready(&self, now: i64) -> Result<(), StoreError> {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        let latest = MIGRATOR.iter().map(|m| m.version).max();
        if applied != latest {
            return Err(StoreError::Corrupt(format!(
                "schema version {applied:?}, this build needs {latest:?}"
            )));
        }
        sqlx::query(
            "INSERT INTO heartbeat (id, at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError> {
        self.ingest_alone(&delivery).await
    }

    fn batches_in_flight(&self) -> usize {
        // Batches queue for the writer, which stores all those waiting in one transaction
        // (see `store_batches`): so many that the group committer never holds one back.
        64
    }

    fn ingest_batch(&self, deliveries: Vec<NewDelivery>) -> BatchFuture {
        // Queued now, so batches commit in the order of the calls; each is one transaction
        // (one commit, one flush), see `store_batches`.
        let (reply, stored) = oneshot::channel();
        let queued = self.batches.send((deliveries, reply)).is_ok();
        Box::pin(async move {
            if !queued {
                return Err(StoreError::Batch("the store is closed".into()));
            }
            stored
                .await
                .map_err(|_| StoreError::Batch("the store closed mid-batch".into()))?
        })
    }

    async fn replay(
        &self,
        delivery_id: i64,
        again: ReplayInput,
        now: i64,
    ) -> Result<Option<Replayed>, StoreError> {
        let notify = self.notify.load(Ordering::Relaxed);
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT d.job_pk, COALESCE(d.body, o.body) AS body, \
             CASE WHEN d.body IS NULL AND o.id IS NOT NULL THEN o.id ELSE d.id END AS body_id \
             FROM deliveries d \
             LEFT JOIN deliveries o ON o.id = d.duplicate_of WHERE d.id = $1",
        )
        .bind(delivery_id)
        .fetch_optional(tx.db())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let job_pk: Option<i64> = row.try_get("job_pk")?;
        let body: Option<Vec<u8>> = row.try_get("body")?;
        let body_delivery_id: i64 = row.try_get("body_id")?;
        if body.is_none() {
            return Ok(Some(Replayed::NotApplicable(
                "the delivery's body was pruned by retention".into(),
            )));
        }
        let (job, created) = match (job_pk, again.job_id.as_deref()) {
            (Some(pk), _) => (job_by_pk(&mut tx, pk).await?, false),
            (None, Some(job_id)) => {
                resolve_job(&mut tx, Some(job_id), None, again.first_poll_at, now)
                    .await?
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
        let job = record_webhook(&mut tx, webhook, now).await?;
        self.commit(tx).await?;
        Ok(Some(Replayed::Applied(Box::new(job))))
    }

    async fn register(
        &self,
        job_id: &str,
        metadata: Option<Value>,
        first_poll_at: Option<i64>,
        now: i64,
    ) -> Result<Registered, StoreError> {
        let mut tx = self.begin().await?;
        let (pk, created) = ensure_job(
            &mut tx,
            job_id,
            metadata.as_ref(),
            Cause::Api,
            first_poll_at,
            now,
        )
        .await?;
        let job = job_by_pk(&mut tx, pk).await?;
        self.commit(tx).await?;
        Ok(Registered { job, created })
    }

    async fn begin_submission(
        &self,
        submission: NewSubmission,
        now: i64,
    ) -> Result<Begun, StoreError> {
        let mut tx = self.begin().await?;
        // The history lock is held, so no other replica can claim the key between this look
        // and the insert below; the primary key on `key` stays the last word all the same.
        if let Some(idempotency) = &submission.idempotency {
            let existing: Option<(Vec<u8>, Option<i64>, Option<String>)> = sqlx::query_as(
                "SELECT fingerprint, status_code, response FROM idempotency_keys WHERE key = $1",
            )
            .bind(&idempotency.key)
            .fetch_optional(tx.db())
            .await?;
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
        let pk: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (submission_id, status, request, metadata, created_at, \
             updated_at, submit_owner, parent_pk) VALUES ($1, $2, $3, $4, $5, $5, $6, $7) \
             RETURNING id",
        )
        .bind(&submission.submission_id)
        .bind(JobStatus::Submitting.as_str())
        .bind(submission.request.to_string())
        .bind(submission.metadata.as_ref().map(Value::to_string))
        .bind(now)
        .bind(self.owner_number)
        .bind(submission.parent_pk)
        .fetch_one(tx.db())
        .await?;
        history::index_metadata(&mut tx, pk, submission.metadata.as_ref()).await?;
        let mut detail = json!({"cause": "api"});
        if let Some(parent_pk) = submission.parent_pk {
            let parent = job_by_pk(&mut tx, parent_pk).await?;
            detail["continues"] = json!(parent.display_id());
        }
        if let Some(idempotency) = &submission.idempotency {
            sqlx::query(
                "INSERT INTO idempotency_keys (key, fingerprint, job_pk, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&idempotency.key)
            .bind(&idempotency.fingerprint)
            .bind(pk)
            .bind(now)
            .execute(tx.db())
            .await?;
            detail["idempotency_key"] = json!(idempotency.key);
        }
        append_event(&mut tx, pk, "submitted", detail, now).await?;
        let job = job_by_pk(&mut tx, pk).await?;
        self.commit(tx).await?;
        Ok(Begun::Started(Box::new(job)))
    }

    async fn idempotency_key(&self, key: &str) -> Result<KeyState, StoreError> {
        let row: Option<(Option<i64>, Option<String>)> =
            sqlx::query_as("SELECT status_code, response FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
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
        let mut tx = self.begin().await?;
        let pk: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE submission_id = $1")
            .bind(submission_id)
            .fetch_one(tx.db())
            .await?;
        let job = finish_one(&mut tx, pk, outcome, first_poll_at, &*render, now).await?;
        self.commit(tx).await?;
        Ok(job)
    }

    async fn recover_submissions(
        &self,
        render: Arc<RenderResponse>,
        created_before: i64,
        now: i64,
    ) -> Result<Vec<Job>, StoreError> {
        // Only submissions whose process is gone: a live replica's Generate call is still in
        // flight, and that replica records how it ends.
        let mut tx = self.begin().await?;
        let stuck: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE status = $1 AND created_at < $2 AND {} ORDER BY id",
            leases::owner_gone("submit_owner", "$3")
        ))
        .bind(JobStatus::Submitting.as_str())
        .bind(created_before)
        .bind(i64::from(leases::LEASE_CLASS))
        .fetch_all(tx.db())
        .await?;
        let mut recovered = Vec::with_capacity(stuck.len());
        for pk in stuck {
            let outcome = SubmitOutcome::Unknown {
                reason: "jobhook stopped while the Generate call was in flight".into(),
            };
            recovered.push(finish_one(&mut tx, pk, outcome, None, &*render, now).await?);
        }
        self.commit(tx).await?;
        Ok(recovered)
    }

    async fn prune_idempotency_keys(&self, before: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn release_leases(&self, now: i64) -> Result<u64, StoreError> {
        // Other replicas may be alive and holding leases: only the leases of processes that
        // are gone (see `leases`) are due again now, and those that have run out are freed
        // (they are due already). A live replica's lease is left alone.
        let mut tx = self.begin().await?;
        let jobs = sqlx::query(&format!(
            "UPDATE jobs SET leased = FALSE, lease_owner = NULL, \
             next_poll_at = CASE WHEN next_poll_at IS NULL THEN NULL \
                 ELSE LEAST(next_poll_at, $1) END \
             WHERE leased AND (next_poll_at <= $1 OR {})",
            leases::owner_gone("lease_owner", "$2")
        ))
        .bind(now)
        .bind(i64::from(leases::LEASE_CLASS))
        .execute(tx.db())
        .await?
        .rows_affected();
        let notifications = sqlx::query(&format!(
            "UPDATE notifications SET leased = FALSE, lease_owner = NULL, \
             next_attempt_at = LEAST(next_attempt_at, $1) \
             WHERE leased AND (next_attempt_at <= $1 OR {})",
            leases::owner_gone("lease_owner", "$2")
        ))
        .bind(now)
        .bind(i64::from(leases::LEASE_CLASS))
        .execute(tx.db())
        .await?
        .rows_affected();
        let files = archive::release_gone(&mut tx, now).await?;
        self.commit(tx).await?;
        Ok(jobs + notifications + files)
    }

    async fn release_claims(&self, pks: &[i64], now: i64) -> Result<(), StoreError> {
        // Under the history lock: a transaction that updates several jobs never waits for a
        // row with another job's row held.
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE jobs SET leased = FALSE, lease_owner = NULL, \
             next_poll_at = CASE WHEN next_poll_at IS NULL THEN NULL ELSE $1 END \
             WHERE id = ANY($2) AND leased",
        )
        .bind(now)
        .bind(pks)
        .execute(tx.db())
        .await?;
        self.commit(tx).await
    }

    async fn watch_others(&self) -> Result<Option<OthersChanges>, StoreError> {
        let changes = listen::watch(
            self.pool.clone(),
            self.listen_pool.clone(),
            self.origin.clone(),
            self.pace_heard.clone(),
            self.closing.child_token(),
        )
        .await?;
        Ok(Some(changes))
    }

    fn shared_pace(&self) -> Option<Arc<dyn crate::store::SharedPace>> {
        Some(Arc::new(pace::PgPace {
            pool: self.pool.clone(),
            origin: self.origin.clone(),
            heard: self.pace_heard.clone(),
        }))
    }

    async fn latest_change_id(&self) -> Result<i64, StoreError> {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT MAX(id) FROM job_events WHERE kind = 'status_changed'")
                .fetch_one(&self.pool)
                .await?;
        Ok(id.unwrap_or(0))
    }

    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        // History ids commit in order (see `write`): nothing below an id already visible can
        // still appear, so `id > after` never passes over a change.
        let rows = sqlx::query(
            "SELECT id, at, job_pk, snapshot FROM job_events \
             WHERE kind = 'status_changed' AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_from_row).collect()
    }

    async fn set_notify_routes(&self, routes: &[NotifyRoute]) -> Result<(), StoreError> {
        self.notify.store(
            routes.iter().any(|r| !r.events.is_empty()),
            Ordering::Relaxed,
        );
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM notify_routes")
            .execute(tx.db())
            .await?;
        for route in routes {
            // A changed configuration for an endpoint re-enables it after a 410.
            sqlx::query(
                "INSERT INTO notify_endpoints (url, fingerprint) VALUES ($1, $2) \
                 ON CONFLICT (url) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
                 disabled_at = CASE WHEN notify_endpoints.fingerprint IS NOT DISTINCT FROM \
                     EXCLUDED.fingerprint THEN notify_endpoints.disabled_at END, \
                 disabled_reason = CASE WHEN notify_endpoints.fingerprint IS NOT DISTINCT FROM \
                     EXCLUDED.fingerprint THEN notify_endpoints.disabled_reason END",
            )
            .bind(&route.url)
            .bind(&route.fingerprint)
            .execute(tx.db())
            .await?;
            for event_type in &route.events {
                sqlx::query(
                    "INSERT INTO notify_routes (url, event_type) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&route.url)
                .bind(event_type)
                .execute(tx.db())
                .await?;
            }
        }
        self.commit(tx).await
    }

    async fn claim_notifications(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        // The CTE picks at most `limit` rows once, skipping rows another replica holds; a lease
        // that ran out (next_attempt_at passed) is claimable again like any due attempt.
        let rows = sqlx::query(&format!(
            "WITH due AS (SELECT n.id AS due_id, n.next_attempt_at AS due_at \
             FROM notifications n WHERE n.state = 'pending' AND n.next_attempt_at <= $2 \
             AND NOT EXISTS (SELECT 1 FROM notify_endpoints e WHERE e.url = n.endpoint \
             AND e.disabled_at IS NOT NULL) \
             ORDER BY n.next_attempt_at LIMIT $3 FOR UPDATE OF n SKIP LOCKED) \
             UPDATE notifications SET next_attempt_at = $1, leased = TRUE, lease_owner = $4 \
             FROM due WHERE notifications.id = due.due_id \
             RETURNING {NOTIFICATION_COLUMNS}, due.due_at"
        ))
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(limit))
        .bind(self.owner_number)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>("due_at")?,
                    notification_from_row(row)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        claimed.sort_by_key(|(due_at, n)| (*due_at, n.id));
        Ok(claimed.into_iter().map(|(_, n)| n).collect())
    }

    async fn next_notification_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT n.next_attempt_at FROM notifications n WHERE n.state = 'pending' \
             AND n.next_attempt_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM notify_endpoints e \
             WHERE e.url = n.endpoint AND e.disabled_at IS NOT NULL) \
             ORDER BY n.next_attempt_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn record_attempt(
        &self,
        id: i64,
        attempt: Attempt,
        now: i64,
    ) -> Result<Notification, StoreError> {
        let (state, next_attempt_at, delivered_at, label) = match &attempt.outcome {
            AttemptOutcome::Delivered => ("delivered", None, Some(now), "delivered"),
            AttemptOutcome::RetryAt(at) => ("pending", Some(*at), None, "failed"),
            AttemptOutcome::Exhausted => ("exhausted", None, None, "exhausted"),
            AttemptOutcome::Gone => ("pending", Some(now), None, "gone"),
        };
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE notifications SET state = $1, next_attempt_at = $2, \
             delivered_at = $3, leased = FALSE, attempts = attempts + 1, \
             round_attempts = round_attempts + 1, last_status = $4, last_error = $5 \
             WHERE id = $6 RETURNING {NOTIFICATION_COLUMNS}"
        ))
        .bind(state)
        .bind(next_attempt_at)
        .bind(delivered_at)
        .bind(attempt.http_status.map(i64::from))
        .bind(attempt.error.as_deref())
        .bind(id)
        .fetch_one(tx.db())
        .await?;
        let notification = notification_from_row(&row)?;
        if attempt.outcome == AttemptOutcome::Gone {
            sqlx::query(
                "INSERT INTO notify_endpoints (url, disabled_at, disabled_reason) \
                 VALUES ($1, $2, $3) ON CONFLICT (url) DO UPDATE \
                 SET disabled_at = EXCLUDED.disabled_at, \
                 disabled_reason = EXCLUDED.disabled_reason",
            )
            .bind(&notification.endpoint)
            .bind(now)
            .bind("answered 410 Gone")
            .execute(tx.db())
            .await?;
        }
        let mut detail = json!({
            "endpoint": notification.endpoint, "attempt": notification.attempts,
            "outcome": label, "notification_id": id, "type": notification.event_type,
        });
        detail["http_status"] = json!(attempt.http_status);
        if let Some(error) = &attempt.error {
            detail["error"] = json!(error);
        }
        append_event(&mut tx, notification.job_pk, "notification", detail, now).await?;
        self.commit(tx).await?;
        Ok(notification)
    }

    async fn notification(&self, id: i64) -> Result<Option<Notification>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(notification_from_row).transpose()
    }

    async fn list_notifications(
        &self,
        state: Option<&str>,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Notification>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new(format!(
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
        let rows = query.build().fetch_all(&self.pool).await?;
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
        let row = sqlx::query(&format!(
            "UPDATE notifications SET state = 'pending', round_attempts = 0, \
             next_attempt_at = $1 WHERE id = $2 AND state = 'exhausted' \
             RETURNING {NOTIFICATION_COLUMNS}"
        ))
        .bind(now)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some(notification_from_row(&row)?)),
            None => self.notification(id).await,
        }
    }

    async fn endpoint_states(&self) -> Result<Vec<EndpointState>, StoreError> {
        let rows: Vec<(String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT r.url, e.disabled_at, e.disabled_reason FROM \
             (SELECT DISTINCT url FROM notify_routes) r \
             LEFT JOIN notify_endpoints e ON e.url = r.url ORDER BY r.url",
        )
        .fetch_all(&self.pool)
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
        let changed = sqlx::query(
            "UPDATE notify_endpoints SET disabled_at = NULL, disabled_reason = NULL \
             WHERE url = $1 AND disabled_at IS NOT NULL",
        )
        .bind(url)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
        scheduled_first: bool,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut claimed: Vec<(i64, Claimed)> = Vec::new();
        // Webhook "look now" first, then the regular schedule; each oldest first.
        let order = if scheduled_first { [0, 1] } else { [1, 0] };
        for priority in order {
            let left = i64::from(limit) - claimed.len() as i64;
            if left <= 0 {
                break;
            }
            // `FOR UPDATE SKIP LOCKED` inside the CTE: the rows are picked once, at most
            // `left` of them, and none another replica is claiming (or writing) right now. No
            // `leased` test: a lease whose time has passed is due like any other poll.
            let rows = sqlx::query(
                "WITH due AS (SELECT id AS due_id, next_poll_at AS due_at FROM jobs \
                 WHERE poll_priority = $2 AND next_poll_at <= $3 AND job_id IS NOT NULL \
                 ORDER BY next_poll_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 UPDATE jobs SET next_poll_at = $1, leased = TRUE, lease_owner = $5 FROM due \
                 WHERE jobs.id = due.due_id \
                 RETURNING id, job_id, poll_priority, created_at, poll_count, due.due_at",
            )
            .bind(lease_until)
            .bind(priority)
            .bind(now)
            .bind(left)
            .bind(self.owner_number)
            .fetch_all(&mut *tx)
            .await?;
            let mut batch = rows
                .iter()
                .map(|row| {
                    let priority: i64 = row.try_get("poll_priority")?;
                    let job_id: Option<String> = row.try_get("job_id")?;
                    Ok((
                        row.try_get::<i64, _>("due_at")?,
                        Claimed {
                            pk: row.try_get("id")?,
                            job_id: job_id.ok_or_else(|| corrupt("a claimed job has no id"))?,
                            cause: if priority > 0 {
                                Cause::Webhook
                            } else {
                                Cause::Poll
                            },
                            created_at: row.try_get("created_at")?,
                            poll_count: row.try_get("poll_count")?,
                        },
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            batch.sort_by_key(|(due_at, job)| (*due_at, job.pk));
            claimed.extend(batch);
        }
        tx.commit().await?;
        Ok(claimed.into_iter().map(|(_, job)| job).collect())
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let mut earliest: Option<i64> = None;
        for priority in [1_i64, 0] {
            let due: Option<i64> = sqlx::query_scalar(
                "SELECT next_poll_at FROM jobs WHERE poll_priority = $1 \
                 AND next_poll_at IS NOT NULL AND job_id IS NOT NULL \
                 ORDER BY next_poll_at LIMIT 1",
            )
            .bind(priority)
            .fetch_optional(&self.pool)
            .await?
            .flatten();
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
        let mut tx = self.begin().await?;
        let job = record_poll(&mut tx, job_pk, &poll, now).await?;
        self.commit(tx).await?;
        Ok(job)
    }

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1 \
             UNION ALL SELECT {JOB_COLUMNS} FROM jobs WHERE submission_id = $1 LIMIT 1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn job_by_pk(&self, pk: i64) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(pk)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn chain(&self, job_pk: i64, limit: u32) -> Result<Vec<Job>, StoreError> {
        // As on SQLite: up to the first clip, then down again, each job ordered by the path of
        // row ids that leads to it (a parent's id is always smaller than its children's).
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE \
               up(id, parent_pk) AS ( \
                 SELECT id, parent_pk FROM jobs WHERE id = $1 \
                 UNION ALL SELECT j.id, j.parent_pk FROM jobs j JOIN up ON j.id = up.parent_pk), \
               down(id, path) AS ( \
                 SELECT id, ARRAY[id] FROM up WHERE parent_pk IS NULL \
                 UNION ALL SELECT c.id, down.path || c.id \
                 FROM jobs c JOIN down ON c.parent_pk = down.id) \
             SELECT {JOB_COLUMNS}, (SELECT path FROM down WHERE down.id = jobs.id) AS path \
             FROM jobs WHERE id IN (SELECT id FROM down) ORDER BY path LIMIT $2"
        ))
        .bind(job_pk)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        usage::usage(&self.pool, query).await
    }

    async fn raw_response(&self, job_pk: i64) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT j.raw_response, d.body FROM jobs j \
             LEFT JOIN deliveries d ON d.id = j.raw_delivery WHERE j.id = $1",
        )
        .bind(job_pk)
        .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
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
        // One snapshot for the whole page: the newest id and the rows come from the same moment.
        // History ids commit in order, so a change committed after the first page has an id
        // above its snapshot and is placed where it was then (as on SQLite).
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
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
            QueryBuilder::<Postgres>::new(format!("SELECT {JOB_COLUMNS}, seq AS position FROM "));
        push_job_source(&mut unchanged, filter);
        unchanged.push(" WHERE seq < ").push_bind(before);
        push_job_filter(&mut unchanged, filter);
        unchanged.push(" ORDER BY seq DESC LIMIT ").push_bind(fetch);
        let mut rows = unchanged.build().fetch_all(&mut *tx).await?;

        // Rows changed since the snapshot keep the place they had in it.
        if cursor.is_some() {
            let mut moved = QueryBuilder::<Postgres>::new(format!(
                "SELECT * FROM (SELECT {JOB_COLUMNS}, (SELECT MAX(e.id) FROM job_events e \
                 WHERE e.job_pk = jobs.id AND e.id <= "
            ));
            moved.push_bind(snapshot);
            moved.push(") AS position FROM ");
            push_job_source(&mut moved, filter);
            moved.push(" WHERE seq > ").push_bind(snapshot);
            push_job_filter(&mut moved, filter);
            moved.push(") AS moved WHERE position IS NOT NULL AND position < ");
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

    async fn delivery(&self, id: i64) -> Result<Option<Delivery>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
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
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE 1 = 1"
        ));
        if let Some(cursor) = cursor {
            query.push(" AND d.id < ").push_bind(cursor.position);
        }
        if let Some(job) = &filter.job {
            if !storable(job) {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            }
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
        let rows = query.build().fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(id_page(items, limit, |d| d.id))
    }

    async fn prune_delivery_bodies(&self, before: i64, batch: u32) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "WITH old AS (SELECT id FROM deliveries WHERE body IS NOT NULL AND received_at < $1 \
              AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = deliveries.job_pk \
                              AND jobs.raw_delivery = deliveries.id) \
              ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE deliveries SET body = NULL, pruned_at = $1 FROM old WHERE deliveries.id = old.id",
        )
        .bind(before)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn set_archive_policy(
        &self,
        policy: Option<&ArchivePolicy>,
        now: i64,
    ) -> Result<(), StoreError> {
        let notify = self.notify.load(Ordering::Relaxed);
        let mut tx = self.begin().await?;
        archive::set_policy(&mut tx, policy, notify, now).await?;
        self.commit(tx).await
    }

    async fn claim_archive_files(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<ArchiveTask>, StoreError> {
        archive::claim(&self.pool, self.owner_number, now, lease_until, limit).await
    }

    async fn extend_archive_lease(
        &self,
        task: &ArchiveTask,
        until: i64,
    ) -> Result<bool, StoreError> {
        archive::extend(&self.pool, task, until).await
    }

    async fn record_archive_file(
        &self,
        task: &ArchiveTask,
        result: ArchiveResult,
        now: i64,
    ) -> Result<Option<Job>, StoreError> {
        let notify = self.notify.load(Ordering::Relaxed);
        let mut tx = self.begin().await?;
        let job = archive::record(&mut tx, task, &result, notify, now).await?;
        self.commit(tx).await?;
        Ok(job)
    }

    async fn next_archive_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT due_at FROM archive_files WHERE status = 'pending' \
             ORDER BY due_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    async fn archive_again(&self, job_pk: i64, now: i64) -> Result<Option<Job>, StoreError> {
        let mut tx = self.begin().await?;
        let job = archive::again(&mut tx, job_pk, now).await?;
        self.commit(tx).await?;
        Ok(job)
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(status, count)| Ok((status.parse().map_err(corrupt)?, count)))
            .collect()
    }

    async fn overdue(&self, now: i64) -> Result<(i64, Option<i64>), StoreError> {
        let row: (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(next_poll_at) FROM jobs WHERE next_poll_at < $1 \
                 AND job_id IS NOT NULL",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row)
    }
}

/// Whether PostgreSQL can hold `text` at all: TEXT refuses the NUL character, so an id with one
/// names no stored row (ids written by jobhook are checked for control characters first).
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// A page of rows fetched newest first with one row more than `limit` (see the SQLite store).
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
/// through their indexes.
fn push_job_source(query: &mut QueryBuilder<'_, Postgres>, filter: &JobFilter) {
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
        .push(") AS by_value) AS hit JOIN jobs ON jobs.id = hit.pk");
}

fn push_job_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &JobFilter) {
    if !filter.statuses.is_empty() {
        query.push(" AND status = ANY(");
        query.push_bind(
            filter
                .statuses
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect::<Vec<_>>(),
        );
        query.push(")");
    }
    if let Some(after) = filter.updated_after {
        query.push(" AND updated_at > ").push_bind(after);
    }
    if let Some(before) = filter.updated_before {
        query.push(" AND updated_at < ").push_bind(before);
    }
}
