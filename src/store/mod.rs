//! Durable storage behind one small trait, so handlers never see which database is underneath.

use crate::domain::archive::{ArchivePolicy, FileStatus};
use crate::domain::search::JobSearch;
use crate::domain::{Cause, Job, JobEvent, JobStatus};
use crate::pictory::{JobError, ReportedState};
use async_trait::async_trait;
use serde_json::Value;

pub(crate) mod common;
mod cursor;
pub mod pace;
pub mod postgres;
pub mod sqlite;
mod usage;

/// How a store is opened, from `[database]`.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// SQLite: the write-ahead log is checkpointed and truncated past this many bytes.
    pub wal_limit: u64,
    /// PostgreSQL: most connections this process opens (the change listener has one more).
    pub pool_size: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            wal_limit: 64 * 1024 * 1024,
            pool_size: 10,
        }
    }
}

/// Which database a `database.url` names, by its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// Opens the store a `database.url` names, with the default options.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    open_with(url, &StoreOptions::default()).await
}

/// Opens the store a `database.url` names.
pub async fn open_with(
    url: &str,
    options: &StoreOptions,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match Backend::of_url(url) {
        Some(Backend::Sqlite) => Ok(std::sync::Arc::new(
            sqlite::SqliteStore::open(url, options).await?,
        )),
        Some(Backend::Postgres) => Ok(std::sync::Arc::new(
            postgres::PgStore::open(url, options).await?,
        )),
        None => Err(StoreError::Corrupt(format!(
            "database.url must start with sqlite://, postgres:// or postgresql://, not {:?}",
            url.split(':').next().unwrap_or_default()
        ))),
    }
}

pub use cursor::Cursor;
pub use pace::{PaceChange, PaceOutcome, PaceState, PauseState, SharedPace};
pub use usage::{UsageGroup, UsageGroupBy, UsageQuery, UsageRow};

/// What [`Store::watch_others`] gives: batches of pks of jobs other processes changed.
pub type OthersChanges = tokio::sync::mpsc::Receiver<Vec<i64>>;

/// What [`Store::ingest_batch`] answers: one result per delivery, once the batch is durable.
pub type BatchFuture =
    futures::future::BoxFuture<'static, Result<Vec<Result<Ingested, StoreError>>, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("not committed: {0}")]
    Batch(String),
    /// Committed, but flushing it to disk failed: whether it would survive a power cut is
    /// unknown, so it is not acknowledged (a sender that retries is caught as a duplicate).
    #[error("the write may not be durable: {0}")]
    NotDurable(String),
}

/// A webhook delivery, as received, with what the receiver made of it.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub received_at: i64,
    pub remote_addr: Option<String>,
    /// Header names and values as JSON object text.
    pub headers: String,
    pub body: Vec<u8>,
    pub target: DeliveryTarget,
}

#[derive(Debug, Clone)]
pub enum DeliveryTarget {
    /// Archived, not applied to any job.
    Rejected { reason: String },
    /// Matched to a job by the id in its body and/or the submission its key names.
    Job {
        job_id: Option<String>,
        submission_id: Option<String>,
        /// When set, the body's report is applied to the job (receive-only mode).
        report: Option<ReportedState>,
        /// Verify mode: ask Get Job about the job right away instead of trusting the body.
        look_now: bool,
        /// First poll of a job this delivery makes jobhook start tracking (None: no polling).
        first_poll_at: Option<i64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Accepted,
    Duplicate,
    Rejected,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Accepted => "accepted",
            DeliveryOutcome::Duplicate => "duplicate",
            DeliveryOutcome::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "accepted" => Some(DeliveryOutcome::Accepted),
            "duplicate" => Some(DeliveryOutcome::Duplicate),
            "rejected" => Some(DeliveryOutcome::Rejected),
            _ => None,
        }
    }
}

/// What storing a delivery did.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub delivery_id: i64,
    pub outcome: DeliveryOutcome,
    /// The job it was matched to, after any change it caused.
    pub job: Option<Job>,
}

/// An archived delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub job_id: Option<String>,
    pub received_at: i64,
    pub outcome: DeliveryOutcome,
    pub reason: Option<String>,
    pub remote_addr: Option<String>,
    pub headers: Value,
    /// None once pruned by retention; duplicates point at the copy they duplicate.
    pub body: Option<Vec<u8>>,
    pub duplicate_of: Option<i64>,
    pub body_size: i64,
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub statuses: Vec<JobStatus>,
    pub updated_after: Option<i64>,
    pub updated_before: Option<i64>,
    /// Only the jobs a search finds (see `domain::search`), in the same order and pages.
    pub search: Option<JobSearch>,
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Pictory job id or submission id.
    pub job: Option<String>,
    pub outcome: Option<DeliveryOutcome>,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// The result of registering a job submitted elsewhere.
#[derive(Debug, Clone)]
pub struct Registered {
    pub job: Job,
    pub created: bool,
}

/// Storage: jobs, their history, deliveries, the notification outbox, idempotency keys.
///
/// Usage bookkeeping (SPEC §12): every path that moves a job to `completed` or `failed` also
/// records its [`UsageFacts`](crate::domain::usage::UsageFacts), in the same transaction and
/// once per job, so that [`Store::usage`] never misses or double-counts a job and never has to
/// read every job to answer. A write that leaves a job's status alone pays nothing for it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Closes every connection (checkpointing what the database needs to).
    async fn close(&self);
    /// Periodic upkeep the database needs (for SQLite: checkpointing the WAL; for PostgreSQL:
    /// marking this replica alive and freeing the leases of replicas that are gone). Called
    /// about once a second.
    async fn maintain(&self, now: i64) -> Result<(), StoreError>;
    /// Replicas seen alive in the last 30 s (`jobhook_replicas`); 1 on SQLite, which one
    /// process owns.
    async fn replicas_alive(&self) -> Result<i64, StoreError>;
    /// True when the database takes a write and no migration is pending.
    async fn ready(&self, now: i64) -> Result<(), StoreError>;

    /// Stores a delivery durably and applies it; commits before returning.
    async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError>;
    /// Stores many deliveries in one transaction (group commit). The batch is queued for the
    /// database when this is called, so batches are stored in the order of the calls and a
    /// caller may start the next one while this one is flushed; the future resolves once it is
    /// durable. The outer error means nothing was committed; an inner one, that only that
    /// delivery was not.
    fn ingest_batch(&self, deliveries: Vec<NewDelivery>) -> BatchFuture;
    /// How many batches the group committer keeps under way at once: two where the store
    /// writes one while the disk flushes the other (SQLite); many where the store itself
    /// gathers every batch waiting into its next transaction (PostgreSQL).
    fn batches_in_flight(&self) -> usize {
        2
    }
    /// Applies an archived delivery again. None when there is no such delivery.
    async fn replay(
        &self,
        delivery_id: i64,
        again: ReplayInput,
        now: i64,
    ) -> Result<Option<Replayed>, StoreError>;
    /// Starts tracking a job submitted outside jobhook (idempotent). `first_poll_at` schedules
    /// the reconciler's first look (None: receive-only, no polling).
    async fn register(
        &self,
        job_id: &str,
        metadata: Option<Value>,
        first_poll_at: Option<i64>,
        now: i64,
    ) -> Result<Registered, StoreError>;

    /// Records a submission (and claims its idempotency key) before Pictory is called.
    async fn begin_submission(
        &self,
        submission: NewSubmission,
        now: i64,
    ) -> Result<Begun, StoreError>;
    /// Where an idempotency key stands.
    async fn idempotency_key(&self, key: &str) -> Result<KeyState, StoreError>;
    /// Records how the Generate call ended and saves the key's response, in one transaction.
    async fn finish_submission(
        &self,
        submission_id: &str,
        outcome: SubmitOutcome,
        first_poll_at: Option<i64>,
        render: std::sync::Arc<RenderResponse>,
        now: i64,
    ) -> Result<Job, StoreError>;
    /// Submissions left `submitting` (made before `created_before`) may or may not have reached
    /// Pictory, so they become `submit_unknown` (never retried). Returns them. On a shared
    /// database (PostgreSQL) only the submissions of processes that are gone: a live replica's
    /// call is still in flight.
    async fn recover_submissions(
        &self,
        render: std::sync::Arc<RenderResponse>,
        created_before: i64,
        now: i64,
    ) -> Result<Vec<Job>, StoreError>;
    /// Forgets idempotency keys made before `before`.
    async fn prune_idempotency_keys(&self, before: i64) -> Result<u64, StoreError>;

    /// At start-up: frees the leases (polls and notification attempts) a process that died
    /// left behind. Returns how many. On a database only this process uses (SQLite) that is
    /// every lease, due again now instead of when it would have run out. On a shared database
    /// (PostgreSQL) a lease may belong to a live replica, which keeps it: only the leases of
    /// processes that are gone (due again now) and those already expired at `now` are freed.
    /// (A claim takes a job whose lease has expired in any case, so a killed replica's polls
    /// are made by the others.)
    async fn release_leases(&self, now: i64) -> Result<u64, StoreError>;
    /// Gives back jobs claimed by [`Store::claim_due`] that no call was made for: due at `now`.
    async fn release_claims(&self, pks: &[i64], now: i64) -> Result<(), StoreError>;
    /// Jobs that other processes sharing the database change, as they commit: batches of job
    /// pks, coalesced over bursts. Listening has begun when this returns, and the stream ends
    /// when the store is closed. None when no other process writes the database (SQLite).
    /// (No default: a wrapper that forgot to forward it would silently deafen a replica.)
    async fn watch_others(&self) -> Result<Option<OthersChanges>, StoreError>;
    /// The Get Job pace all replicas share (PostgreSQL), or None when this process is the
    /// only one polling (SQLite: the limiter stays in memory). (No default, as for
    /// `watch_others`: a wrapper that forgot it would let every replica poll at the full rate.)
    fn shared_pace(&self) -> Option<std::sync::Arc<dyn SharedPace>>;
    /// The id of the newest status change (0 when there is none).
    async fn latest_change_id(&self) -> Result<i64, StoreError>;
    /// Status changes after `after`, oldest first.
    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError>;

    /// Replaces the routing of notifications (from the configuration, at start-up).
    async fn set_notify_routes(&self, routes: &[NotifyRoute]) -> Result<(), StoreError>;
    /// Leases up to `limit` notifications due at `now` (endpoints not disabled) until `lease_until`.
    async fn claim_notifications(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;
    /// The earliest pending attempt, if any.
    async fn next_notification_due(&self) -> Result<Option<i64>, StoreError>;
    /// Records an attempt, in the outbox and in the job's history.
    async fn record_attempt(
        &self,
        id: i64,
        attempt: Attempt,
        now: i64,
    ) -> Result<Notification, StoreError>;
    async fn notification(&self, id: i64) -> Result<Option<Notification>, StoreError>;
    async fn list_notifications(
        &self,
        state: Option<&str>,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Notification>, StoreError>;
    /// Puts an exhausted notification back in the queue, with a fresh schedule.
    async fn retry_notification(
        &self,
        id: i64,
        now: i64,
    ) -> Result<Option<Notification>, StoreError>;
    async fn endpoint_states(&self) -> Result<Vec<EndpointState>, StoreError>;
    /// Re-enables an endpoint disabled by a 410. False when it was not disabled.
    async fn enable_endpoint(&self, url: &str, now: i64) -> Result<bool, StoreError>;

    /// Leases up to `limit` jobs whose poll is due at `now` until `lease_until`, so no other
    /// poller takes them meanwhile: webhook "look now" requests first, or the regular schedule
    /// first when `scheduled_first` (so neither can starve the other).
    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
        scheduled_first: bool,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// The earliest scheduled poll, if any.
    async fn next_due(&self) -> Result<Option<i64>, StoreError>;
    /// Records a Get Job call and applies what it said; commits before returning.
    async fn record_poll(&self, job_pk: i64, poll: PollRecord, now: i64)
        -> Result<Job, StoreError>;

    /// A job by Pictory id or submission id.
    ///
    /// Every job a store returns carries its continuation links: `parent_pk` and `parent`
    /// (the parent's Pictory id, else its submission id) and `children` (the ids of the jobs
    /// recorded with this one as their parent, oldest first), read when the job is read.
    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError>;
    /// A job by its internal row id.
    async fn job_by_pk(&self, pk: i64) -> Result<Option<Job>, StoreError>;
    /// The last Pictory response kept for a job.
    async fn raw_response(&self, job_pk: i64) -> Result<Option<String>, StoreError>;
    async fn job_events(&self, job_pk: i64) -> Result<Vec<JobEvent>, StoreError>;
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Job>, StoreError>;
    /// The continuation tree `job_pk` belongs to: its first clip (reached by following
    /// `parent_pk` up from `job_pk`), then depth first, the children of each job in the order
    /// they were created (for a chain without branches: the clips in playback order). At most
    /// `limit` jobs, from the first clip on. Empty when there is no such job.
    async fn chain(&self, job_pk: i64, limit: u32) -> Result<Vec<Job>, StoreError>;

    async fn delivery(&self, id: i64) -> Result<Option<Delivery>, StoreError>;
    async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Delivery>, StoreError>;

    /// Drops raw bodies received before `before`, at most `batch` of them. Returns how many.
    async fn prune_delivery_bodies(&self, before: i64, batch: u32) -> Result<u64, StoreError>;
    /// Jobs, credits and video time of the jobs that became `completed` or `failed` in
    /// `[query.from, query.to)`, per group, ordered by group (days and names ascending;
    /// metadata values in the database's order, absent first). Sums are exact integers of the
    /// recorded [`UsageFacts`](crate::domain::usage::UsageFacts); groups with no job are left
    /// out. Must stay fast for a year of a million jobs (a summary kept per day, not a scan of
    /// every job), except grouped by a metadata key, which may read each job of the range.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;
    /// Sets what the archive copies of jobs that complete from now on (None: archiving off),
    /// from the configuration, at start-up. When completions are no longer held for the archive
    /// (archiving off, or `notify.after_archive` off), the `job.completed` notifications still
    /// held are sent now: nothing would release them otherwise.
    async fn set_archive_policy(
        &self,
        policy: Option<&ArchivePolicy>,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Leases up to `limit` archive files due at `now` until `lease_until`, so no other
    /// archiver copies them meanwhile (a lease that runs out makes the file due again).
    async fn claim_archive_files(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<ArchiveTask>, StoreError>;
    /// Extends a running attempt's lease; false when it no longer holds the file.
    async fn extend_archive_lease(
        &self,
        task: &ArchiveTask,
        until: i64,
    ) -> Result<bool, StoreError>;
    /// Records how an attempt ended (and, once the job's files are settled, sends the
    /// `job.completed` notifications held for them). Returns the job after it, or None when
    /// the attempt had lost its claim (nothing is written then).
    async fn record_archive_file(
        &self,
        task: &ArchiveTask,
        result: ArchiveResult,
        now: i64,
    ) -> Result<Option<Job>, StoreError>;
    /// The earliest pending archive attempt, if any.
    async fn next_archive_due(&self) -> Result<Option<i64>, StoreError>;
    /// Copies a completed job's files again (`POST /v1/jobs/{id}/archive`). None when the job
    /// is not `completed` or archiving is off.
    async fn archive_again(&self, job_pk: i64, now: i64) -> Result<Option<Job>, StoreError>;

    /// Job counts by status, for metrics.
    async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError>;
    /// Jobs whose next poll is past due: how many, and the due time of the oldest.
    async fn overdue(&self, now: i64) -> Result<(i64, Option<i64>), StoreError>;
}

/// An archive file leased for one download.
#[derive(Debug, Clone)]
pub struct ArchiveTask {
    pub job_pk: i64,
    /// The job's id (Pictory's, else the submission's): the object's folder.
    pub job_ref: String,
    /// `video`, `thumbnail`, `last_frame` or `preview`.
    pub name: String,
    pub source_url: String,
    /// This attempt's number, from 1.
    pub attempt: i64,
    /// This attempt's token: only the holder of the current one may record a result.
    pub claim: String,
}

/// How one archive attempt ended.
#[derive(Debug, Clone)]
pub enum ArchiveResult {
    Done {
        key: String,
        size: i64,
        sha256: String,
        content_type: String,
    },
    /// A failure worth another attempt, at `at`.
    RetryAt { at: i64, error: String },
    /// No more attempts: `gone`, `too_large` or `failed`.
    GaveUp { status: FileStatus, error: String },
}

/// A job leased for one Get Job call.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub pk: i64,
    pub job_id: String,
    /// `Webhook` for a delivery's "look now", else `Poll`.
    pub cause: Cause,
    pub created_at: i64,
    /// Get Job calls made for this job so far (drives the backoff).
    pub poll_count: i64,
}

/// What one Get Job call found, ready to store.
#[derive(Debug, Clone)]
pub struct PollRecord {
    pub cause: Cause,
    pub http_status: Option<u16>,
    /// Short outcome for the history (`completed`, `throttled`, ...).
    pub label: String,
    pub outcome: PollOutcome,
    /// When to ask again while the job is not final.
    pub next_poll_at: i64,
    /// The deadline has passed: a job still not final becomes `timed_out`.
    pub deadline_passed: bool,
}

#[derive(Debug, Clone)]
pub enum PollOutcome {
    /// Pictory answered with a readable job body.
    Report { state: ReportedState, raw: String },
    /// 404 (counts towards `not_found`).
    NotFound,
    /// Nothing usable: throttled, server error, network, auth.
    NoAnswer,
}

/// A submission, recorded before Pictory is called.
#[derive(Debug, Clone)]
pub struct NewSubmission {
    pub submission_id: String,
    /// The Generate Video fields, without jobhook's webhook URL.
    pub request: Value,
    pub metadata: Option<Value>,
    pub idempotency: Option<IdempotencyKey>,
    /// A continuation (`POST /v1/jobs/{id}/continue`): the row id of the `completed` job
    /// whose last frame the request starts from. Recorded with the submission, never changed;
    /// the parent then lists the new job among its `children`.
    pub parent_pk: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 of the canonical request body.
    pub fingerprint: Vec<u8>,
}

/// What recording a submission found.
#[derive(Debug, Clone)]
pub enum Begun {
    /// New: recorded as `submitting`; go and call Pictory.
    Started(Box<Job>),
    /// The key was answered before: answer exactly this again.
    Replay { status: u16, body: String },
    /// The key's first request is still in flight.
    InFlight,
    /// The key was used with another body.
    KeyReused,
}

/// Where an idempotency key stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    Answered {
        status: u16,
        body: String,
    },
    InFlight,
    /// Never used, expired, or released after a failure that created nothing.
    Missing,
}

/// How the Generate call ended.
#[derive(Debug, Clone)]
pub enum SubmitOutcome {
    Created {
        job_id: String,
    },
    /// Pictory refused it (4xx): `submit_failed`.
    Rejected {
        error: JobError,
    },
    /// Maybe created: `submit_unknown`, never retried automatically.
    Unknown {
        reason: String,
    },
    /// Certainly not created, retries exhausted: `submit_failed`, and the key is released so
    /// the client may try again with it.
    NothingCreated {
        error: JobError,
    },
}

/// Renders the response an idempotency key replays: status code and body.
pub type RenderResponse = dyn Fn(&Job) -> (u16, String) + Send + Sync;

/// One entry of the change stream: a status change and the job as it was right after it.
#[derive(Debug, Clone)]
pub struct Change {
    pub id: i64,
    pub at: i64,
    pub job_pk: i64,
    /// The job JSON right after the change.
    pub snapshot: String,
}

/// An endpoint and the event types it wants (`[[notify.endpoints]]`).
#[derive(Debug, Clone)]
pub struct NotifyRoute {
    pub url: String,
    pub events: Vec<String>,
    /// Changes whenever the endpoint's configuration does (url, secret, events).
    pub fingerprint: String,
}

/// A signed notification in the outbox.
#[derive(Debug, Clone)]
pub struct Notification {
    pub id: i64,
    pub endpoint: String,
    pub event_type: String,
    pub job_pk: i64,
    pub message_id: String,
    pub payload: String,
    /// `pending`, `delivered` or `exhausted`.
    pub state: String,
    pub attempts: i64,
    /// Attempts since the last manual retry: the position in the retry schedule.
    pub round_attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// What one delivery attempt did.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; try again at this time.
    RetryAt(i64),
    /// Failed, and the schedule is used up.
    Exhausted,
    /// 410: the endpoint is disabled until re-enabled.
    Gone,
}

/// An endpoint's state as the outbox sees it.
#[derive(Debug, Clone)]
pub struct EndpointState {
    pub url: String,
    pub disabled_at: Option<i64>,
    pub disabled_reason: Option<String>,
}

/// How many 404s in a row make a job `not_found`.
pub const NOT_FOUND_AFTER: i64 = 3;

/// What a fresh reading of an archived body says.
#[derive(Debug, Clone, Default)]
pub struct ReplayInput {
    /// The job id in the body, used when the delivery was never matched to a job.
    pub job_id: Option<String>,
    /// Applied to the job when set (receive-only mode).
    pub report: Option<ReportedState>,
    /// Verify mode: ask Get Job right away instead.
    pub look_now: bool,
    /// First poll of a job the replay makes jobhook start tracking.
    pub first_poll_at: Option<i64>,
}

/// What replaying a delivery did.
#[derive(Debug, Clone)]
pub enum Replayed {
    Applied(Box<Job>),
    /// It cannot be applied: rejected with no job, or its body was pruned.
    NotApplicable(String),
}
