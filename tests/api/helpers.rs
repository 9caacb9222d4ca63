//! `spawn_app()`: a real jobhook on two loopback ports with a fresh database, and a client for it.
//!
//! The database is a SQLite file in a temporary directory, or, when `JOBHOOK_TEST_POSTGRES`
//! names a PostgreSQL server (`postgres://postgres@127.0.0.1:5432`), a database of its own on
//! that server, created for the test and dropped after it (see [`TestDb`]).

use async_trait::async_trait;
use jobhook::app::{Listeners, Service};
use jobhook::config::Config;
use jobhook::domain::archive::ArchivePolicy;
use jobhook::domain::time::ManualClock;
use jobhook::domain::{Job, JobEvent, JobStatus};
use jobhook::mock::{MockOptions, MockPictory, MockState};
use jobhook::state::AppState;
use jobhook::store::{
    self, ArchiveResult, ArchiveTask, Attempt, BatchFuture, Begun, Change, Claimed, Cursor,
    Delivery, DeliveryFilter, EndpointState, Ingested, JobFilter, KeyState, NewDelivery,
    NewSubmission, Notification, NotifyRoute, OthersChanges, Page, PollRecord, Registered,
    RenderResponse, ReplayInput, Replayed, Store, StoreError, SubmitOutcome, UsageQuery, UsageRow,
};
use reqwest::{Client, Response};
use secrecy::SecretString;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "test-webhook-secret-0123456789-abcdef";
pub const TOKEN: &str = "test-api-token";
/// 2025-11-29T00:00:00Z
pub const START_MS: i64 = 1_764_374_400_000;

pub struct TestApp {
    pub public_url: String,
    pub api_url: String,
    pub client: Client,
    pub clock: ManualClock,
    pub faults: Arc<Faults>,
    /// The database, kept (and for PostgreSQL not dropped) while the app lives.
    pub db: TestDb,
    /// The running service's state (to wake the reconciler, read metrics).
    pub state: AppState,
    /// The fake Pictory, when the app was started with one.
    pub pictory: Option<MockPictory>,
    /// The generic webhook URL (as `GET /v1/webhook-url` gives it).
    pub webhook_url: String,
    token: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Options for [`spawn`].
pub struct Options {
    pub configure: Box<dyn FnOnce(&mut Config) + Send>,
    /// Use this database instead of a fresh one.
    pub db: Option<TestDb>,
    /// Put a fake Pictory upstream (and an API key in the config).
    pub pictory: Option<MockOptions>,
    /// Continue this clock (restarts).
    pub clock: Option<ManualClock>,
}

impl Options {
    pub fn new(configure: impl FnOnce(&mut Config) + Send + 'static) -> Options {
        Options {
            configure: Box::new(configure),
            db: None,
            pictory: None,
            clock: None,
        }
    }
}

pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.api_listen = "127.0.0.1:0".parse().unwrap();
    config.webhook.secret = Some(SecretString::from(SECRET));
    config.api.tokens = vec![SecretString::from(TOKEN)];
    config.database.url = db.url.clone();
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config) + Send + 'static) -> TestApp {
    spawn(Options::new(configure)).await
}

/// An app in verify mode with a fake Pictory upstream that shares the app's clock.
pub async fn spawn_app_with_pictory(
    configure: impl FnOnce(&mut Config) + Send + 'static,
) -> TestApp {
    let mut options = Options::new(configure);
    options.pictory = Some(MockOptions::default());
    spawn(options).await
}

pub async fn spawn(options: Options) -> TestApp {
    let db = match options.db {
        Some(db) => db,
        None => TestDb::fresh().await,
    };
    let mut config = test_config(&db);
    (options.configure)(&mut config);
    config.validate().expect("test config is valid");
    let token = config.api.tokens.first().map(|_| TOKEN.to_owned());
    let public_listener = TcpListener::bind(config.server.listen).await.unwrap();
    let api_listener = TcpListener::bind(config.server.api_listen).await.unwrap();
    let public_url = format!("http://{}", public_listener.local_addr().unwrap());
    let api_url = format!("http://{}", api_listener.local_addr().unwrap());
    config.server.public_url = public_url.clone();

    // With a fake Pictory the reconciler loop runs, and its rate limit needs time to pass.
    let clock = options.clock.unwrap_or_else(|| match options.pictory {
        Some(_) => ManualClock::running(START_MS),
        None => ManualClock::new(START_MS),
    });
    let pictory = match options.pictory {
        None => None,
        Some(mock_options) => {
            let mock = MockPictory::new(mock_options, Arc::new(clock.clone()));
            config.pictory.base_url = mock.spawn().await.unwrap();
            config.pictory.api_key = Some(SecretString::from("pictai_test_key"));
            Some(mock)
        }
    };
    let faults = Arc::new(Faults::default());
    let inner = store::open(&config.database.url).await.unwrap();
    let store: Arc<dyn Store> = Arc::new(FaultyStore {
        inner,
        faults: faults.clone(),
    });
    let service = Service::start(config, store, Arc::new(clock.clone()))
        .await
        .unwrap();
    let state = service.state();
    let (tx, rx) = oneshot::channel();
    let listeners = Listeners {
        public: public_listener,
        api: api_listener,
    };
    let handle = tokio::spawn(service.run(listeners, async {
        let _ = rx.await;
    }));
    let mut app = TestApp {
        public_url,
        api_url,
        client: Client::new(),
        clock,
        faults,
        db,
        state,
        pictory,
        webhook_url: String::new(),
        token,
        shutdown: Some(tx),
        handle: Some(handle),
    };
    let url = app.get("/v1/webhook-url").await;
    assert_eq!(url.status(), 200);
    app.webhook_url = url.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    app
}

impl TestApp {
    /// Stops the service gracefully and waits for it; returns what `run` returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(handle) => handle.await.unwrap(),
            None => Ok(()),
        }
    }

    /// Stops this instance and starts another on the same database.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await.unwrap();
        let db = self.db.take();
        // The same fake Pictory, if there was one, at the same address.
        let upstream = self.pictory.as_ref().map(|_| {
            let config = &self.state.config.pictory;
            (config.base_url.clone(), config.api_key.clone())
        });
        // The same archive, if there was one.
        let archive = &self.state.config.archive;
        let (archive_url, archive_files, max_size) =
            (archive.url.clone(), archive.files.clone(), archive.max_size);
        let after_archive = self.state.config.notify.after_archive;
        let mut app = spawn(Options {
            configure: Box::new(move |config| {
                if let Some((base_url, api_key)) = upstream {
                    config.pictory.base_url = base_url;
                    config.pictory.api_key = api_key;
                }
                config.archive.url = archive_url;
                config.archive.files = archive_files;
                config.archive.max_size = max_size;
                config.notify.after_archive = after_archive;
            }),
            db: Some(db),
            pictory: None,
            clock: Some(self.clock.clone()),
        })
        .await;
        app.pictory = self.pictory.take();
        app
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.authorised(self.client.get(format!("{}{path}", self.api_url)))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.authorised(self.client.post(format!("{}{path}", self.api_url)))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs JSON with an `Idempotency-Key` when one is given.
    pub async fn post_keyed(&self, path: &str, body: &Value, key: Option<&str>) -> Response {
        let mut request = self
            .authorised(self.client.post(format!("{}{path}", self.api_url)))
            .json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.unwrap()
    }

    pub async fn post_empty(&self, path: &str) -> Response {
        self.authorised(self.client.post(format!("{}{path}", self.api_url)))
            .send()
            .await
            .unwrap()
    }

    pub async fn register(&self, job_id: &str) -> Value {
        let response = self.post_json("/v1/jobs", &json!({"job_id": job_id})).await;
        assert!(response.status().is_success());
        response.json().await.unwrap()
    }

    /// POSTs raw bytes to the generic webhook URL.
    pub async fn webhook(&self, body: impl Into<reqwest::Body>) -> Response {
        self.webhook_to(&self.webhook_url, body).await
    }

    pub async fn webhook_to(&self, url: &str, body: impl Into<reqwest::Body>) -> Response {
        self.client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn job(&self, id: &str) -> Value {
        self.get_json(&format!("/v1/jobs/{id}")).await
    }

    /// Long-polls a job until it is final (10 s at most) and returns it.
    pub async fn wait_final(&self, id: &str) -> Value {
        let job = self.get_json(&format!("/v1/jobs/{id}?wait=10s")).await;
        let status = job["status"].as_str().unwrap();
        assert!(
            ["completed", "failed", "submit_failed"].contains(&status),
            "{id} is not final: {job}"
        );
        job
    }

    /// Submits a video and has the fake complete it; returns the completed job.
    pub async fn completed_video(&self, body: &Value) -> Value {
        let response = self.post_json("/v1/videos", body).await;
        assert_eq!(response.status(), 201);
        let job: Value = response.json().await.unwrap();
        self.complete(job["job_id"].as_str().unwrap()).await
    }

    /// Has the fake complete a job it runs and deliver its webhook; returns the final job.
    pub async fn complete(&self, job_id: &str) -> Value {
        self.finish(job_id, MockState::Completed).await
    }

    /// Has the fake end a job it runs (completed or failed) and deliver its webhook, to the
    /// URL jobhook gave it; waits for jobhook to record it and returns the final job.
    pub async fn finish(&self, job_id: &str, state: MockState) -> Value {
        self.mock().set_state(job_id, state);
        let url = self.mock().job(job_id).unwrap().request["webhook"]
            .as_str()
            .unwrap()
            .to_owned();
        let body = self.mock().job_body(job_id).unwrap();
        assert_eq!(self.webhook_to(&url, body.to_string()).await.status(), 200);
        let job = self.wait_final(job_id).await;
        let expected = match state {
            MockState::Completed => "completed",
            _ => "failed",
        };
        assert_eq!(job["status"], expected, "{job}");
        job
    }

    pub fn mock(&self) -> &MockPictory {
        self.pictory
            .as_ref()
            .expect("app started with a fake Pictory")
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let events = self.get_json(&format!("/v1/jobs/{id}/events")).await;
        events["data"].as_array().unwrap().clone()
    }

    /// Every item of a paginated list (`path` with its query, without `cursor`).
    pub async fn all(&self, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page_path = match &cursor {
                Some(c) => format!("{path}&cursor={c}"),
                None => path.to_owned(),
            };
            let page = self.get_json(&page_path).await;
            items.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    pub async fn deliveries(&self, query: &str) -> Vec<Value> {
        let list = self.get_json(&format!("/v1/deliveries{query}")).await;
        list["data"].as_array().unwrap().clone()
    }

    /// Waits (5 s at most) until exactly `n` long-polls are waiting.
    pub async fn wait_for_long_polls(&self, n: usize) {
        let gauge = &self.state.metrics.long_polls_waiting;
        for _ in 0..500 {
            if gauge.get() == n as i64 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{} long-polls waiting, not {n}", gauge.get());
    }

    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The variable that runs the suite against PostgreSQL: the server's URL, without a database.
pub const POSTGRES_VAR: &str = "JOBHOOK_TEST_POSTGRES";
/// Databases made by the suite are named `jobhook_test_<unix seconds>_<random>`.
const PG_PREFIX: &str = "jobhook_test_";
/// A test database older than this was left by a run that died; the next run drops it.
const PG_STALE_SECS: u64 = 3600;

/// The PostgreSQL server this run uses, if any.
pub fn postgres_server() -> Option<String> {
    std::env::var(POSTGRES_VAR)
        .ok()
        .filter(|url| !url.trim().is_empty())
        .map(|url| url.trim().trim_end_matches('/').to_owned())
}

/// True (and says so) when this run is on PostgreSQL and the test checks something only
/// SQLite has; the test then returns early.
pub fn skip_on_postgres(why: &str) -> bool {
    if postgres_server().is_some() {
        say_skipped(&format!("skipped on PostgreSQL: {why}"));
        true
    } else {
        false
    }
}

/// Prints why a test did nothing on this backend, past the test harness's capture of
/// `eprintln!` (which would hide it for a passing test), so the run's log shows it.
pub fn say_skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{why}");
}

/// One test's database: a SQLite file in a temporary directory, or a PostgreSQL database of its
/// own, dropped (with any connection still open to it) when this is dropped.
pub struct TestDb {
    pub url: String,
    kind: DbKind,
}

enum DbKind {
    Sqlite {
        path: PathBuf,
        _dir: Option<TempDir>,
    },
    Postgres {
        server: String,
        name: String,
    },
    /// Moved into a restarted app, or an alias: owns nothing.
    Moved,
}

impl TestDb {
    /// A fresh, empty database of the backend this run tests.
    pub async fn fresh() -> TestDb {
        match postgres_server() {
            Some(server) => TestDb::fresh_postgres(server).await,
            None => {
                let dir = tempfile::tempdir().unwrap();
                TestDb::sqlite_at(&dir.path().join("jobhook.db"), Some(dir))
            }
        }
    }

    /// A fresh PostgreSQL database, whatever backend this run tests; None without a server.
    pub async fn fresh_postgres_if_any() -> Option<TestDb> {
        match postgres_server() {
            Some(server) => Some(TestDb::fresh_postgres(server).await),
            None => None,
        }
    }

    /// A fresh SQLite file, whatever backend this run tests.
    pub fn fresh_sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        TestDb::sqlite_at(&dir.path().join("jobhook.db"), Some(dir))
    }

    /// A SQLite file at `path` (kept with `dir`, when given).
    pub fn sqlite_at(path: &Path, dir: Option<TempDir>) -> TestDb {
        TestDb {
            url: format!("sqlite://{}", path.display()),
            kind: DbKind::Sqlite {
                path: path.to_path_buf(),
                _dir: dir,
            },
        }
    }

    async fn fresh_postgres(server: String) -> TestDb {
        use sqlx::Connection as _;
        static SWEPT: AtomicBool = AtomicBool::new(false);
        let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|err| panic!("{POSTGRES_VAR}={server}: cannot connect: {err}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if !SWEPT.swap(true, Ordering::SeqCst) {
            sweep_stale(&mut admin, now).await;
        }
        let name = format!("{PG_PREFIX}{now}_{:08x}", rand::random::<u32>());
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        TestDb {
            url: format!("{server}/{name}"),
            kind: DbKind::Postgres { server, name },
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.kind, DbKind::Postgres { .. })
    }

    /// The SQLite file, on a SQLite run.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.kind {
            DbKind::Sqlite { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The same database for a second replica: dropping the alias drops nothing.
    pub fn alias(&self) -> TestDb {
        TestDb {
            url: self.url.clone(),
            kind: DbKind::Moved,
        }
    }

    /// Moves the database out, leaving this one empty (dropping it then drops nothing).
    pub fn take(&mut self) -> TestDb {
        TestDb {
            url: self.url.clone(),
            kind: std::mem::replace(&mut self.kind, DbKind::Moved),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let DbKind::Postgres { server, name } = &self.kind else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own
        // with a runtime of its own drops the database (FORCE ends the app's connections).
        let (server, name) = (server.clone(), name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                use sqlx::Connection as _;
                let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("cannot drop test database (the next run drops it): {dropped:?}");
        }
    }
}

/// Drops the test databases a run that died left behind (older than [`PG_STALE_SECS`], so a
/// run going on beside this one keeps its own).
async fn sweep_stale(admin: &mut sqlx::PgConnection, now: u64) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(format!("{PG_PREFIX}%"))
            .fetch_all(&mut *admin)
            .await
            .unwrap();
    for name in names {
        let made: Option<u64> = name
            .strip_prefix(PG_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse().ok());
        if made.is_some_and(|made| made + PG_STALE_SECS < now) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
}

/// `body` as the webhook handler hands it to the store: trusted (its report applied), or with
/// `look_now` only a hint that asks for a Get Job call.
pub fn delivery(body: &Value, received_at: i64, look_now: bool) -> NewDelivery {
    let report = jobhook::pictory::JobReport::from_json(body);
    NewDelivery {
        received_at,
        remote_addr: None,
        headers: "{}".into(),
        body: body.to_string().into_bytes(),
        target: jobhook::store::DeliveryTarget::Job {
            job_id: report.job_id,
            submission_id: None,
            report: (!look_now).then_some(report.state),
            look_now,
            first_poll_at: None,
        },
    }
}

/// A completed Get Job body as Pictory documents it.
pub fn completed_body(job_id: &str) -> Value {
    json!({"job_id": job_id, "success": true, "data": {
        "status": "completed", "url": format!("https://cdn.example/{job_id}.mp4"), "duration": "8s",
        "width": 1280, "height": 720, "thumbnailImageUrl": "https://cdn.example/t.jpg",
        "lastFrameImageUrl": "https://cdn.example/l.png", "previewImageUrl": "https://cdn.example/p.jpg",
        "aiCreditsUsed": 12.8}})
}

pub fn in_progress_body(job_id: &str) -> Value {
    json!({"job_id": job_id, "success": true, "data": {"status": "in-progress"}})
}

pub fn failed_body(job_id: &str) -> Value {
    json!({"job_id": job_id, "success": false, "data": {"status": "failed",
        "error_code": "TEXT_TO_VIDEO_FAILED", "error_message": "the model refused the prompt"}})
}

pub fn metric_value(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| {
            line.starts_with(name_and_labels) && line[name_and_labels.len()..].starts_with(' ')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Switches for making the store fail on purpose.
#[derive(Default)]
pub struct Faults {
    pub fail_writes: AtomicBool,
}

impl Faults {
    pub fn set_fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            Err(StoreError::Database(sqlx::Error::PoolTimedOut))
        } else {
            Ok(())
        }
    }
}

/// The real store, with writes that fail while `faults.fail_writes` is on.
struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Store for FaultyStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn close(&self) {
        self.inner.close().await
    }
    async fn maintain(&self, now: i64) -> Result<(), StoreError> {
        self.inner.maintain(now).await
    }
    async fn replicas_alive(&self) -> Result<i64, StoreError> {
        self.inner.replicas_alive().await
    }
    async fn ready(&self, now: i64) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.ready(now).await
    }
    async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError> {
        self.faults.check()?;
        self.inner.ingest(delivery).await
    }
    fn batches_in_flight(&self) -> usize {
        self.inner.batches_in_flight()
    }
    fn ingest_batch(&self, deliveries: Vec<NewDelivery>) -> BatchFuture {
        if let Err(err) = self.faults.check() {
            return Box::pin(async move { Err(err) });
        }
        self.inner.ingest_batch(deliveries)
    }
    async fn replay(
        &self,
        id: i64,
        again: ReplayInput,
        now: i64,
    ) -> Result<Option<Replayed>, StoreError> {
        self.faults.check()?;
        self.inner.replay(id, again, now).await
    }
    async fn register(
        &self,
        job_id: &str,
        metadata: Option<Value>,
        first_poll_at: Option<i64>,
        now: i64,
    ) -> Result<Registered, StoreError> {
        self.faults.check()?;
        self.inner
            .register(job_id, metadata, first_poll_at, now)
            .await
    }
    async fn begin_submission(
        &self,
        submission: NewSubmission,
        now: i64,
    ) -> Result<Begun, StoreError> {
        self.faults.check()?;
        self.inner.begin_submission(submission, now).await
    }
    async fn idempotency_key(&self, key: &str) -> Result<KeyState, StoreError> {
        self.inner.idempotency_key(key).await
    }
    async fn finish_submission(
        &self,
        submission_id: &str,
        outcome: SubmitOutcome,
        first_poll_at: Option<i64>,
        render: Arc<RenderResponse>,
        now: i64,
    ) -> Result<Job, StoreError> {
        self.faults.check()?;
        self.inner
            .finish_submission(submission_id, outcome, first_poll_at, render, now)
            .await
    }
    async fn recover_submissions(
        &self,
        render: Arc<RenderResponse>,
        created_before: i64,
        now: i64,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner
            .recover_submissions(render, created_before, now)
            .await
    }
    async fn prune_idempotency_keys(&self, before: i64) -> Result<u64, StoreError> {
        self.inner.prune_idempotency_keys(before).await
    }
    async fn release_leases(&self, now: i64) -> Result<u64, StoreError> {
        self.inner.release_leases(now).await
    }
    async fn release_claims(&self, pks: &[i64], now: i64) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.release_claims(pks, now).await
    }
    async fn watch_others(&self) -> Result<Option<OthersChanges>, StoreError> {
        self.inner.watch_others().await
    }
    fn shared_pace(&self) -> Option<Arc<dyn jobhook::store::SharedPace>> {
        self.inner.shared_pace()
    }
    async fn latest_change_id(&self) -> Result<i64, StoreError> {
        self.inner.latest_change_id().await
    }
    async fn changes_after(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        self.inner.changes_after(after, limit).await
    }
    async fn set_notify_routes(&self, routes: &[NotifyRoute]) -> Result<(), StoreError> {
        self.inner.set_notify_routes(routes).await
    }
    async fn claim_notifications(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        self.faults.check()?;
        self.inner
            .claim_notifications(now, lease_until, limit)
            .await
    }
    async fn next_notification_due(&self) -> Result<Option<i64>, StoreError> {
        self.inner.next_notification_due().await
    }
    async fn record_attempt(
        &self,
        id: i64,
        attempt: Attempt,
        now: i64,
    ) -> Result<Notification, StoreError> {
        self.faults.check()?;
        self.inner.record_attempt(id, attempt, now).await
    }
    async fn notification(&self, id: i64) -> Result<Option<Notification>, StoreError> {
        self.inner.notification(id).await
    }
    async fn list_notifications(
        &self,
        state: Option<&str>,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Notification>, StoreError> {
        self.inner.list_notifications(state, cursor, limit).await
    }
    async fn retry_notification(
        &self,
        id: i64,
        now: i64,
    ) -> Result<Option<Notification>, StoreError> {
        self.faults.check()?;
        self.inner.retry_notification(id, now).await
    }
    async fn endpoint_states(&self) -> Result<Vec<EndpointState>, StoreError> {
        self.inner.endpoint_states().await
    }
    async fn enable_endpoint(&self, url: &str, now: i64) -> Result<bool, StoreError> {
        self.faults.check()?;
        self.inner.enable_endpoint(url, now).await
    }
    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
        scheduled_first: bool,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.faults.check()?;
        self.inner
            .claim_due(now, lease_until, limit, scheduled_first)
            .await
    }
    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.inner.next_due().await
    }
    async fn record_poll(
        &self,
        job_pk: i64,
        poll: PollRecord,
        now: i64,
    ) -> Result<Job, StoreError> {
        self.faults.check()?;
        self.inner.record_poll(job_pk, poll, now).await
    }
    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.inner.job(id).await
    }
    async fn job_by_pk(&self, pk: i64) -> Result<Option<Job>, StoreError> {
        self.inner.job_by_pk(pk).await
    }
    async fn raw_response(&self, job_pk: i64) -> Result<Option<String>, StoreError> {
        self.inner.raw_response(job_pk).await
    }
    async fn job_events(&self, job_pk: i64) -> Result<Vec<JobEvent>, StoreError> {
        self.inner.job_events(job_pk).await
    }
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Job>, StoreError> {
        self.inner.list_jobs(filter, cursor, limit).await
    }
    async fn chain(&self, job_pk: i64, limit: u32) -> Result<Vec<Job>, StoreError> {
        self.inner.chain(job_pk, limit).await
    }
    async fn delivery(&self, id: i64) -> Result<Option<Delivery>, StoreError> {
        self.inner.delivery(id).await
    }
    async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Page<Delivery>, StoreError> {
        self.inner.list_deliveries(filter, cursor, limit).await
    }
    async fn prune_delivery_bodies(&self, before: i64, batch: u32) -> Result<u64, StoreError> {
        self.faults.check()?;
        self.inner.prune_delivery_bodies(before, batch).await
    }
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.inner.usage(query).await
    }
    async fn set_archive_policy(
        &self,
        policy: Option<&ArchivePolicy>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.set_archive_policy(policy, now).await
    }
    async fn claim_archive_files(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<ArchiveTask>, StoreError> {
        self.faults.check()?;
        self.inner
            .claim_archive_files(now, lease_until, limit)
            .await
    }
    async fn extend_archive_lease(
        &self,
        task: &ArchiveTask,
        until: i64,
    ) -> Result<bool, StoreError> {
        self.faults.check()?;
        self.inner.extend_archive_lease(task, until).await
    }
    async fn record_archive_file(
        &self,
        task: &ArchiveTask,
        result: ArchiveResult,
        now: i64,
    ) -> Result<Option<Job>, StoreError> {
        self.faults.check()?;
        self.inner.record_archive_file(task, result, now).await
    }
    async fn next_archive_due(&self) -> Result<Option<i64>, StoreError> {
        self.inner.next_archive_due().await
    }
    async fn archive_again(&self, job_pk: i64, now: i64) -> Result<Option<Job>, StoreError> {
        self.faults.check()?;
        self.inner.archive_again(job_pk, now).await
    }
    async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        self.inner.count_by_status().await
    }
    async fn overdue(&self, now: i64) -> Result<(i64, Option<i64>), StoreError> {
        self.inner.overdue(now).await
    }
}
