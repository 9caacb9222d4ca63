//! A fake Pictory that follows `reference/pictory-api.md` to the letter, with knobs to make it
//! misbehave. It backs `jobhook mock-pictory`, `jobhook demo` and jobhook's own tests.
//!
//! Jobs run for `job_duration`, then complete (or fail, at `failure_rate`) and their webhook is
//! sent, or dropped, duplicated, preceded by a stale "in-progress" (reordered) or delayed. Get Job
//! answers 429 (with `Retry-After`) and 5xx at the configured rates. Tests can also script a job's
//! state directly and queue exact answers.

use crate::domain::time::Clock;
use crate::pictory::rules;
use crate::sync::lock;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

mod files;
pub use files::{synthetic, FileFault, FileRequest, FILES};

/// How the fake behaves. Rates are probabilities from 0 to 1.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Accept only this key; otherwise any key starting with `pictai_`.
    pub api_key: Option<String>,
    pub job_duration: Duration,
    pub failure_rate: f64,
    pub drop_rate: f64,
    pub duplicate_rate: f64,
    pub reorder_rate: f64,
    pub webhook_delay: Duration,
    pub throttle_rate: f64,
    /// Retry-After sent with a 429; None sends none.
    pub retry_after_secs: Option<u64>,
    pub error_rate: f64,
    pub seed: Option<u64>,
    /// A completed job's files are deleted this long after it completed; the job then reads
    /// `cleaned` (None: kept for ever).
    pub clean_after: Option<Duration>,
    /// Serve videos of this many (synthetic) bytes instead of the small sample.
    pub video_size: Option<u64>,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            api_key: None,
            job_duration: Duration::from_secs(20),
            failure_rate: 0.0,
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            reorder_rate: 0.0,
            webhook_delay: Duration::ZERO,
            throttle_rate: 0.0,
            retry_after_secs: Some(2),
            error_rate: 0.0,
            seed: None,
            clean_after: None,
            video_size: None,
        }
    }
}

/// Where a fake job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockState {
    InProgress,
    Completed,
    Failed,
    /// Get Job answers 404.
    Gone,
    /// Completed, then its files were deleted (`clean_after`, or `DELETE .../clean`).
    Cleaned,
}

impl MockState {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "in-progress" | "in_progress" => Some(MockState::InProgress),
            "completed" => Some(MockState::Completed),
            "failed" => Some(MockState::Failed),
            "gone" | "not_found" => Some(MockState::Gone),
            "cleaned" => Some(MockState::Cleaned),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MockJob {
    pub id: String,
    pub request: Value,
    pub state: MockState,
    pub get_calls: u32,
    pub credits: f64,
    /// The job whose last frame this one's `firstFrameImageUrl` is (a continuation).
    pub continues: Option<String>,
    /// When it became `completed` (the fake's clock), for `clean_after`.
    pub completed_at_ms: Option<i64>,
}

/// The host of the fake's output URLs.
pub const CDN_HOST: &str = "cdn.pictory.example";
/// The account limits the fake's quota reports.
pub const QUOTA_AI_CREDITS: f64 = 10_000.0;
pub const QUOTA_VIDEO_MINUTES: f64 = 600.0;

/// One Get Job call as the fake saw it.
#[derive(Debug, Clone)]
pub struct GetCall {
    pub job_id: String,
    pub at_ms: i64,
    pub status: u16,
}

/// An exact answer queued by a test for the next call.
#[derive(Debug, Clone, Default)]
pub struct Forced {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    /// Wait this long before answering (longer than the client's timeout: "timeout after sending").
    pub delay: Duration,
}

struct Inner {
    options: Mutex<MockOptions>,
    jobs: Mutex<HashMap<String, MockJob>>,
    get_calls: Mutex<Vec<GetCall>>,
    forced: Mutex<VecDeque<Forced>>,
    forced_generate: Mutex<VecDeque<Forced>>,
    forced_quota: Mutex<VecDeque<Forced>>,
    quota_calls: AtomicUsize,
    generate_calls: AtomicUsize,
    generate_attempts: AtomicUsize,
    /// Woken on every Generate request, for tests that must act while one is in flight.
    generate_seen: tokio::sync::Notify,
    webhooks_sent: AtomicUsize,
    /// `http://ADDR` once the fake serves its own output files.
    files_base: Mutex<Option<String>>,
    forced_files: Mutex<VecDeque<files::FileFault>>,
    file_requests: Mutex<Vec<files::FileRequest>>,
    rng: Mutex<StdRng>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
}

#[derive(Clone)]
pub struct MockPictory {
    inner: Arc<Inner>,
}

impl MockPictory {
    pub fn new(options: MockOptions, clock: Arc<dyn Clock>) -> MockPictory {
        let rng = match options.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        MockPictory {
            inner: Arc::new(Inner {
                options: Mutex::new(options),
                jobs: Mutex::default(),
                get_calls: Mutex::default(),
                forced: Mutex::default(),
                forced_generate: Mutex::default(),
                forced_quota: Mutex::default(),
                quota_calls: AtomicUsize::new(0),
                generate_calls: AtomicUsize::new(0),
                generate_attempts: AtomicUsize::new(0),
                generate_seen: tokio::sync::Notify::new(),
                webhooks_sent: AtomicUsize::new(0),
                files_base: Mutex::default(),
                forced_files: Mutex::default(),
                file_requests: Mutex::default(),
                rng: Mutex::new(rng),
                clock,
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap_or_default(),
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/pictoryapis/v1/aistudio/videos", post(generate))
            .route("/pictoryapis/v1/jobs/{id}", get(get_job))
            .route(
                "/pictoryapis/v1/jobs/{id}/clean",
                axum::routing::delete(clean_job),
            )
            .route("/files/{id}/{file}", get(files::serve_file))
            .route("/pictoryapis/v1/quota", get(quota))
            .route("/_mock/jobs", get(list_jobs))
            .route("/_mock/jobs/{id}", axum::routing::put(set_job))
            .with_state(self.clone())
    }

    /// Serves the fake on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        *lock(&self.inner.files_base) = Some(format!("http://{}", listener.local_addr()?));
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Starts the fake on a loopback port; returns its `pictory.base_url`.
    pub async fn spawn(&self) -> std::io::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}/pictoryapis", listener.local_addr()?);
        let this = self.clone();
        tokio::spawn(async move { this.serve(listener, std::future::pending()).await });
        Ok(base)
    }

    pub fn set_options(&self, options: MockOptions) {
        *lock(&self.inner.options) = options;
    }

    pub fn options(&self) -> MockOptions {
        lock(&self.inner.options).clone()
    }

    /// Creates or changes a job (tests script Pictory's side this way).
    pub fn set_state(&self, id: &str, state: MockState) {
        let mut jobs = lock(&self.inner.jobs);
        let job = jobs.entry(id.to_owned()).or_insert_with(|| MockJob {
            id: id.to_owned(),
            request: json!({}),
            state,
            get_calls: 0,
            credits: 8.0,
            continues: None,
            completed_at_ms: None,
        });
        if state == MockState::Completed && job.state != MockState::Completed {
            job.completed_at_ms = Some(self.inner.clock.now_ms());
        }
        job.state = state;
    }

    /// Deletes a completed job's files once `clean_after` has passed since it completed.
    fn clean_if_due(&self, job: &mut MockJob) {
        let Some(after) = self.options().clean_after else {
            return;
        };
        let due = job
            .completed_at_ms
            .is_some_and(|at| self.inner.clock.now_ms() - at >= crate::domain::time::millis(after));
        if job.state == MockState::Completed && due {
            job.state = MockState::Cleaned;
        }
    }

    /// Queues an exact answer for the next Get Job call.
    pub fn force_next(&self, forced: Forced) {
        lock(&self.inner.forced).push_back(forced);
    }

    /// Queues an exact answer for the next Generate Video call.
    pub fn force_next_generate(&self, forced: Forced) {
        lock(&self.inner.forced_generate).push_back(forced);
    }

    /// Queues an exact answer for the next quota call.
    pub fn force_next_quota(&self, forced: Forced) {
        lock(&self.inner.forced_quota).push_back(forced);
    }

    /// `GET /v1/quota` requests received, whatever the answer.
    pub fn quota_calls(&self) -> usize {
        self.inner.quota_calls.load(Ordering::SeqCst)
    }

    /// The quota body the fake serves: its own figures of the jobs it completed.
    ///
    /// Pictory documents only that `GET /v1/quota` "returns used and limit for video minutes and
    /// AI credits"; the shape here is a guess in Pictory's usual envelope (`success`, `data`,
    /// camelCase), so jobhook relays whatever comes and never reads it.
    pub fn quota_body(&self) -> Value {
        let (mut credits_milli, mut video_seconds) = (0i64, 0.0);
        for job in lock(&self.inner.jobs).values() {
            if job.state == MockState::Completed {
                credits_milli += (job.credits * 1000.0).round() as i64;
                video_seconds += duration_of(&job.request)
                    .and_then(rules::seconds)
                    .unwrap_or(0.0);
            }
        }
        json!({"success": true, "data": {
            "videoMinutes": {"used": (video_seconds / 60.0 * 100.0).round() / 100.0,
                             "limit": QUOTA_VIDEO_MINUTES},
            "aiCredits": {"used": credits_milli as f64 / 1000.0, "limit": QUOTA_AI_CREDITS}}})
    }

    pub fn job(&self, id: &str) -> Option<MockJob> {
        lock(&self.inner.jobs).get(id).cloned()
    }

    pub fn jobs(&self) -> Vec<MockJob> {
        lock(&self.inner.jobs).values().cloned().collect()
    }

    pub fn get_calls(&self) -> Vec<GetCall> {
        lock(&self.inner.get_calls).clone()
    }

    /// Jobs the fake created (each one costs the user credits).
    pub fn generate_calls(&self) -> usize {
        self.inner.generate_calls.load(Ordering::SeqCst)
    }

    /// Generate requests received, whatever the answer.
    pub fn generate_attempts(&self) -> usize {
        self.inner.generate_attempts.load(Ordering::SeqCst)
    }

    /// Resolves once at least `n` Generate requests have arrived.
    pub async fn wait_for_generate_attempts(&self, n: usize) {
        loop {
            let seen = self.inner.generate_seen.notified();
            if self.generate_attempts() >= n {
                return;
            }
            seen.await;
        }
    }

    pub fn webhooks_sent(&self) -> usize {
        self.inner.webhooks_sent.load(Ordering::SeqCst)
    }

    /// The Get Job body for a job, exactly as Pictory documents it.
    pub fn job_body(&self, id: &str) -> Option<Value> {
        let base = self.output_base();
        let mut jobs = lock(&self.inner.jobs);
        let job = jobs.get_mut(id)?;
        self.clean_if_due(job);
        Some(body_of(job, &base))
    }

    /// The URL of one of a job's output files (`video.mp4`...), as Get Job reports it.
    pub fn file_url(&self, id: &str, file: &str) -> String {
        format!("{}/{id}/{file}", self.output_base())
    }

    /// Where the fake's output URLs point: its own files once it serves them, else a CDN
    /// host that does not resolve.
    fn output_base(&self) -> String {
        self.files_base()
            .map(|base| format!("{base}/files"))
            .unwrap_or_else(|| format!("https://{CDN_HOST}"))
    }

    /// Which of the fake's jobs a `firstFrameImageUrl` is the last frame of (None for an image
    /// elsewhere on the internet, which the real Pictory would fetch and the fake takes on
    /// trust), or why Pictory could not fetch it: a loopback or private address (jobhook's own
    /// URLs, say), or an image of the fake's that is no completed job's last frame.
    fn first_frame_of(&self, url: &str) -> Result<Option<String>, String> {
        let parsed = reqwest::Url::parse(url).map_err(|_| "is not a URL".to_owned())?;
        // The fake's own files come first: on a test machine they are served on loopback.
        if let Some((id, file)) = self.own_file(url) {
            let completed = lock(&self.inner.jobs)
                .get(&id)
                .is_some_and(|job| job.state == MockState::Completed);
            if file != "last-frame.png" || !completed {
                return Err("could not be downloaded: no such image".to_owned());
            }
            return Ok(Some(id));
        }
        let host = parsed.host_str().unwrap_or_default();
        let unreachable = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
            }
            Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || ip.is_unspecified(),
            Err(_) => {
                host.is_empty()
                    || host.eq_ignore_ascii_case("localhost")
                    || host.ends_with(".localhost")
            }
        };
        if unreachable {
            return Err(format!(
                "could not be downloaded: {} is not reachable from Pictory",
                if host.is_empty() { "the host" } else { host }
            ));
        }
        Ok(None)
    }

    fn chance(&self, rate: f64) -> bool {
        rate > 0.0 && lock(&self.inner.rng).gen_bool(rate.clamp(0.0, 1.0))
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(key) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        match &lock(&self.inner.options).api_key {
            Some(pinned) => key == pinned,
            None => key.starts_with("pictai_"),
        }
    }

    /// Runs a job to its end, then sends its webhook with the configured misbehaviour.
    async fn run_job(self, id: String, webhook: Option<String>) {
        let options = self.options();
        tokio::time::sleep(options.job_duration).await;
        let failed = self.chance(options.failure_rate);
        {
            let mut jobs = lock(&self.inner.jobs);
            let Some(job) = jobs.get_mut(&id) else { return };
            if job.state != MockState::InProgress {
                return; // scripted meanwhile
            }
            job.state = if failed {
                MockState::Failed
            } else {
                job.completed_at_ms = Some(self.inner.clock.now_ms());
                MockState::Completed
            };
        }
        let Some(url) = webhook else { return };
        tokio::time::sleep(options.webhook_delay).await;
        if self.chance(options.drop_rate) {
            return;
        }
        let Some(body) = self.job_body(&id) else {
            return;
        };
        let stale = json!({"job_id": id, "success": true, "data": {"status": "in-progress"}});
        self.post_webhook(&url, &body).await;
        if self.chance(options.reorder_rate) {
            // A stale "in-progress" arriving after the final answer.
            self.post_webhook(&url, &stale).await;
        }
        if self.chance(options.duplicate_rate) {
            self.post_webhook(&url, &body).await;
        }
    }

    async fn post_webhook(&self, url: &str, body: &Value) {
        self.inner.webhooks_sent.fetch_add(1, Ordering::SeqCst);
        if let Err(err) = self.inner.http.post(url).json(body).send().await {
            tracing::debug!(error = %err, url, "fake Pictory could not deliver a webhook");
        }
    }
}

/// The duration a request asked for, or its model's default.
fn duration_of(request: &Value) -> Option<&str> {
    request.get("duration").and_then(Value::as_str).or_else(|| {
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(rules::DEFAULT_MODEL);
        rules::model(model).map(|m| m.durations[0])
    })
}

/// `base` is where output URLs point (see [`MockPictory::output_base`]).
fn body_of(job: &MockJob, base: &str) -> Value {
    let id = &job.id;
    match job.state {
        MockState::InProgress | MockState::Gone => {
            json!({"job_id": id, "success": true, "data": {"status": "in-progress"}})
        }
        MockState::Completed => {
            let duration = duration_of(&job.request).unwrap_or("5s");
            json!({"job_id": id, "success": true, "data": {
                "status": "completed",
                "url": format!("{base}/{id}/video.mp4"),
                "duration": duration, "width": 1280, "height": 720,
                "thumbnailImageUrl": format!("{base}/{id}/thumbnail.jpg"),
                "lastFrameImageUrl": format!("{base}/{id}/last-frame.png"),
                "previewImageUrl": format!("{base}/{id}/preview.jpg"),
                "aiCreditsUsed": job.credits}})
        }
        MockState::Cleaned => {
            json!({"job_id": id, "success": true, "data": {"status": "cleaned"}})
        }
        MockState::Failed => json!({"job_id": id, "success": false, "data": {
            "status": "failed", "error_code": "TEXT_TO_VIDEO_FAILED",
            "error_message": "The video could not be generated from this prompt"}}),
    }
}

fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"message": "Unauthorized"})),
    )
        .into_response()
}

/// Answers a queued [`Forced`] (after its delay), if one is waiting.
async fn forced_answer(queue: &Mutex<VecDeque<Forced>>) -> Option<Response> {
    let forced = lock(queue).pop_front()?;
    tokio::time::sleep(forced.delay).await;
    let status = StatusCode::from_u16(forced.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, forced.body).into_response();
    if let Some(retry) = forced.retry_after.and_then(|r| r.parse().ok()) {
        response.headers_mut().insert("retry-after", retry);
    }
    Some(response)
}

async fn generate(
    State(mock): State<MockPictory>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    mock.inner.generate_attempts.fetch_add(1, Ordering::SeqCst);
    mock.inner.generate_seen.notify_waiters();
    if let Some(response) = forced_answer(&mock.inner.forced_generate).await {
        return response;
    }
    if !mock.authorised(&headers) {
        return unauthorised();
    }
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "INVALID_REQUEST_BODY", "message": "Request body must be a JSON object"})),
        )
            .into_response();
    };
    let violations = rules::check(&request);
    if !violations.is_empty() {
        let fields: Vec<Value> = violations
            .iter()
            .map(|v| json!({"name": v.field, "errors": v.message}))
            .collect();
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "INVALID_REQUEST_BODY", "message": "Invalid request body", "fields": fields})),
        )
            .into_response();
    }
    // Pictory fetches the first frame itself: the fake checks what it can of that.
    let continues =
        match request.get("firstFrameImageUrl").and_then(Value::as_str) {
            None => None,
            Some(url) => match mock.first_frame_of(url) {
                Ok(source) => source,
                Err(why) => return (
                    StatusCode::BAD_REQUEST,
                    Json(
                        json!({"code": "INVALID_REQUEST_BODY", "message": "Invalid request body",
                        "fields": [{"name": "firstFrameImageUrl", "errors": why}]}),
                    ),
                )
                    .into_response(),
            },
        };
    let options = mock.options();
    if mock.chance(options.throttle_rate) {
        return throttled(options.retry_after_secs);
    }
    mock.inner.generate_calls.fetch_add(1, Ordering::SeqCst);
    let id = uuid::Uuid::new_v4().to_string();
    let webhook = request
        .get("webhook")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let job = MockJob {
        id: id.clone(),
        // Pictory reports credits as decimals (1.6 credits/s x 8 s is 12.8, not the
        // 12.800000000000001 the product gives in floating point).
        credits: (rules::credits(&request).unwrap_or(0.0) * 1000.0).round() / 1000.0,
        request: Value::Object(request),
        state: MockState::InProgress,
        get_calls: 0,
        continues,
        completed_at_ms: None,
    };
    lock(&mock.inner.jobs).insert(id.clone(), job);
    tokio::spawn(mock.clone().run_job(id.clone(), webhook));
    Json(json!({"success": true, "data": {"jobId": id}})).into_response()
}

fn throttled(retry_after: Option<u64>) -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({"message": "Too Many Requests"})),
    )
        .into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

async fn get_job(
    State(mock): State<MockPictory>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let response = match forced_answer(&mock.inner.forced).await {
        Some(response) => response,
        None => answer_get_job(&mock, &id, &headers),
    };
    lock(&mock.inner.get_calls).push(GetCall {
        job_id: id,
        at_ms: mock.inner.clock.now_ms(),
        status: response.status().as_u16(),
    });
    response
}

fn answer_get_job(mock: &MockPictory, id: &str, headers: &HeaderMap) -> Response {
    if !mock.authorised(headers) {
        return unauthorised();
    }
    let options = mock.options();
    if mock.chance(options.throttle_rate) {
        return throttled(options.retry_after_secs);
    }
    if mock.chance(options.error_rate) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"message": "Internal server error, retry after a brief delay"})),
        )
            .into_response();
    }
    let base = mock.output_base();
    let mut jobs = lock(&mock.inner.jobs);
    match jobs.get_mut(id) {
        Some(job) if job.state != MockState::Gone => {
            job.get_calls += 1;
            mock.clean_if_due(job);
            Json(body_of(job, &base)).into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({"success": false, "error_code": "5000", "error_message": "JOB_NOT_FOUND"})),
        )
            .into_response(),
    }
}

/// `DELETE /v1/jobs/{id}/clean`: deletes a completed job's outputs now, as Pictory documents.
async fn clean_job(
    State(mock): State<MockPictory>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !mock.authorised(&headers) {
        return unauthorised();
    }
    let mut jobs = lock(&mock.inner.jobs);
    match jobs.get_mut(&id) {
        Some(job) if job.state == MockState::Completed => {
            job.state = MockState::Cleaned;
            Json(json!({"success": true, "data": {"jobId": id, "status": "cleaned"}}))
                .into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({"success": false, "error_code": "5000", "error_message": "JOB_NOT_FOUND"})),
        )
            .into_response(),
    }
}

async fn quota(State(mock): State<MockPictory>, headers: HeaderMap) -> Response {
    mock.inner.quota_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(response) = forced_answer(&mock.inner.forced_quota).await {
        return response;
    }
    if !mock.authorised(&headers) {
        return unauthorised();
    }
    let options = mock.options();
    if mock.chance(options.throttle_rate) {
        return throttled(options.retry_after_secs);
    }
    Json(mock.quota_body()).into_response()
}

async fn list_jobs(State(mock): State<MockPictory>) -> Json<Value> {
    let jobs: Vec<Value> = mock
        .jobs()
        .iter()
        .map(|job| json!({"id": job.id, "state": format!("{:?}", job.state), "get_calls": job.get_calls, "request": job.request}))
        .collect();
    Json(
        json!({"data": jobs, "generate_calls": mock.generate_calls(), "webhooks_sent": mock.webhooks_sent()}),
    )
}

#[derive(Deserialize)]
struct SetJob {
    status: String,
}

#[derive(Deserialize)]
struct SetJobQuery {
    /// Also deliver the job's webhook to this URL now.
    webhook: Option<String>,
}

async fn set_job(
    State(mock): State<MockPictory>,
    Path(id): Path<String>,
    Query(query): Query<SetJobQuery>,
    Json(body): Json<SetJob>,
) -> Response {
    let Some(state) = MockState::parse(&body.status) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": "status: in-progress, completed, failed or gone"})),
        )
            .into_response();
    };
    mock.set_state(&id, state);
    if let (Some(url), Some(body)) = (query.webhook, mock.job_body(&id)) {
        mock.post_webhook(&url, &body).await;
    }
    Json(json!({"id": id, "status": body.status})).into_response()
}
