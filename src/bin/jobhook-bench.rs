//! `cargo run --release --bin jobhook-bench`: jobhook against baselines measured in the same run.
//!
//! Every server (jobhook and each baseline) runs in a child process of this binary; the load is
//! driven from this process over loopback. Figures are printed as a table with ratios, because
//! shared machines are too noisy for absolute numbers to mean much.

#![allow(clippy::unwrap_used)]

use anyhow::Context as _;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

const SECRET: &str = "bench-webhook-secret-0123456789abcdef";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2..]).await;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let concurrency = args
        .iter()
        .position(|a| a == "--concurrency")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let settings = Settings {
        duration: Duration::from_secs(if quick { 2 } else { 5 }),
        concurrency,
        big: if quick { 100_000 } else { 1_000_000 },
    };
    run(settings).await
}

struct Settings {
    duration: Duration,
    concurrency: usize,
    /// Jobs stored for the "large database" figures.
    big: usize,
}

// ---------- child processes: the servers ----------

async fn child(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("jobhook") => {
            let config = jobhook::config::Config::load(None)?;
            let listeners = jobhook::app::Listeners::bind(&config).await?;
            println!(
                "READY {} {}",
                listeners.public.local_addr()?,
                listeners.api.local_addr()?
            );
            jobhook::app::run(
                config,
                listeners,
                Arc::new(jobhook::domain::time::SystemClock),
                jobhook::app::shutdown_signal(),
            )
            .await
        }
        Some("body-only") => {
            let app = Router::new().route(
                "/hook",
                post(|body: axum::body::Bytes| async move {
                    axum::Json(json!({"status": "accepted", "bytes": body.len()}))
                }),
            );
            serve_child(app).await
        }
        Some("txn-per-request") => {
            let path = PathBuf::from(&args[1]);
            let pool = open_pool(&path, 1).await?;
            create_baseline_schema(&pool).await?;
            let app = Router::new()
                .route(
                    "/hook",
                    post(
                        |axum::extract::State(pool): axum::extract::State<SqlitePool>,
                         body: axum::body::Bytes| async move {
                            let mut tx = pool.begin().await.unwrap();
                            insert_like_jobhook(&mut tx, &body).await.unwrap();
                            tx.commit().await.unwrap();
                            axum::Json(json!({"status": "accepted"}))
                        },
                    ),
                )
                .with_state(pool);
            serve_child(app).await
        }
        Some("constant-json") => {
            let size: usize = args[1].parse()?;
            let body = constant_job_json(size);
            let app = Router::new().route(
                "/job",
                get(move || {
                    let body = body.clone();
                    async move { ([("content-type", "application/json")], body) }
                }),
            );
            serve_child(app).await
        }
        other => anyhow::bail!("unknown child {other:?}"),
    }
}

async fn serve_child(app: Router) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("READY {addr} {addr}");
    axum::serve(listener, app).await?;
    Ok(())
}

fn constant_job_json(size: usize) -> String {
    let mut text = json!({"job_id": "constant", "status": "completed", "padding": ""}).to_string();
    let pad = size.saturating_sub(text.len());
    text = json!({"job_id": "constant", "status": "completed", "padding": "x".repeat(pad)})
        .to_string();
    text
}

async fn open_pool(path: &Path, connections: u32) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    Ok(SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await?)
}

/// The tables a delivery touches, without jobhook's logic.
async fn create_baseline_schema(pool: &SqlitePool) -> anyhow::Result<()> {
    for statement in [
        "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, job_id TEXT UNIQUE, status TEXT, body TEXT, updated_at INTEGER)",
        "CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, job_pk INTEGER, headers TEXT, body BLOB, sha BLOB, received_at INTEGER)",
        "CREATE TABLE IF NOT EXISTS job_events (id INTEGER PRIMARY KEY, job_pk INTEGER, kind TEXT, detail TEXT, at INTEGER)",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    Ok(())
}

/// The same rows jobhook writes for a new job's completed webhook: the job, the delivery, and
/// three history entries.
async fn insert_like_jobhook(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    body: &[u8],
) -> anyhow::Result<()> {
    let job_id = uuid::Uuid::new_v4().to_string();
    let pk: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (job_id, status, body, updated_at) VALUES ($1, 'completed', $2, 0) RETURNING id",
    )
    .bind(&job_id)
    .bind(String::from_utf8_lossy(body).into_owned())
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO deliveries (job_pk, headers, body, sha, received_at) VALUES ($1, '{}', $2, $3, 0)")
        .bind(pk)
        .bind(body)
        .bind(&job_id.as_bytes()[..16])
        .execute(&mut **tx)
        .await?;
    for kind in ["registered", "webhook_received", "status_changed"] {
        sqlx::query("INSERT INTO job_events (job_pk, kind, detail, at) VALUES ($1, $2, '{}', 0)")
            .bind(pk)
            .bind(kind)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

// ---------- the parent: starting children, driving load ----------

struct Server {
    child: Child,
    public: String,
    api: String,
}

impl Server {
    async fn start(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command.arg("child").args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("JOBHOOK_") {
                command.env_remove(key);
            }
        }
        command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let line = lines
            .next_line()
            .await?
            .context("child exited before READY")?;
        let mut parts = line.split_whitespace().skip(1);
        let public = format!("http://{}", parts.next().context("public")?);
        let api = format!("http://{}", parts.next().context("api")?);
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server { child, public, api })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn jobhook_env(db: &Path, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("JOBHOOK_WEBHOOK_SECRET", SECRET.to_owned()),
        ("JOBHOOK_DATABASE_URL", format!("sqlite://{}", db.display())),
        ("JOBHOOK_SERVER_LISTEN", "127.0.0.1:0".to_owned()),
        ("JOBHOOK_SERVER_API_LISTEN", "127.0.0.1:0".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

/// Throughput and latency of one load run.
struct Load {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Closed loop: `concurrency` workers send as fast as answers come back. `request(n)` makes the
/// n-th request.
async fn closed_loop<F>(settings: &Settings, make: F) -> Load
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    drive(settings, make, None).await
}

/// Open loop at `rate` requests per second, spread evenly.
async fn open_loop<F>(settings: &Settings, rate: f64, make: F) -> Load
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    drive(settings, make, Some(rate)).await
}

async fn drive<F>(settings: &Settings, make: F, rate: Option<f64>) -> Load
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let counter = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + settings.duration;
    let mut workers = Vec::new();
    for _ in 0..settings.concurrency {
        let make = make.clone();
        let counter = counter.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64(n as f64 / rate);
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                } else if Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                let response = make(n).send().await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok(r) => panic!("request failed with {}", r.status()),
                    Err(e) => panic!("request failed: {e}"),
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Load {
        per_second: latencies.len() as f64 / elapsed,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    }
}

fn webhook_body(n: usize) -> String {
    let mut body = json!({"job_id": format!("bench-{n}-{}", uuid::Uuid::new_v4()), "success": true, "data": {
        "status": "completed", "url": "https://cdn.example/video.mp4", "duration": "8s",
        "width": 1280, "height": 720, "thumbnailImageUrl": "https://cdn.example/thumbnail.jpg",
        "lastFrameImageUrl": "https://cdn.example/last-frame.png",
        "previewImageUrl": "https://cdn.example/preview.jpg", "aiCreditsUsed": 12.8}});
    // Pad to about 1.5 KB, the size of a real completion body with its URLs signed.
    let pad = 1500usize.saturating_sub(body.to_string().len());
    body["data"]["note"] = Value::String("x".repeat(pad));
    body.to_string()
}

/// Raw batched inserts of the same rows, 256 per transaction, straight into SQLite.
async fn raw_batched_inserts(dir: &Path, settings: &Settings) -> anyhow::Result<f64> {
    let pool = open_pool(&dir.join("raw.db"), 1).await?;
    create_baseline_schema(&pool).await?;
    let bodies: Vec<String> = (0..256).map(webhook_body).collect();
    let started = Instant::now();
    let mut rows = 0usize;
    while started.elapsed() < settings.duration {
        let mut tx = pool.begin().await?;
        for body in &bodies {
            insert_like_jobhook(&mut tx, body.as_bytes()).await?;
        }
        tx.commit().await?;
        rows += bodies.len();
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Fills a jobhook database with `count` completed jobs, in one statement.
async fn seed_jobs(db: &Path, count: usize, next_poll_at: Option<i64>) -> anyhow::Result<()> {
    let url = format!("sqlite://{}", db.display());
    let store = jobhook::store::open(&url).await?;
    store.migrate().await?;
    store.close().await;
    let pool = open_pool(db, 1).await?;
    let status = if next_poll_at.is_some() {
        "pending"
    } else {
        "completed"
    };
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO jobs (job_id, status, created_at, updated_at, seq, next_poll_at, output) \
         SELECT 'seed-' || i, $2, $3, $3 + i, i, $4, \
         '{\"url\":\"https://cdn.example/v.mp4\",\"duration\":\"8s\",\"width\":1280,\"height\":720}' FROM n",
    )
    .bind(count as i64)
    .bind(status)
    .bind(now_ms() - 3_600_000)
    .bind(next_poll_at)
    .execute(&pool)
    .await?;
    pool.close().await;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

async fn wait_ready(api: &str) -> Duration {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{api}/readyz")).send().await {
            if r.status().is_success() {
                return started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

struct Row {
    what: &'static str,
    value: String,
    baseline: String,
    ratio: String,
    target: &'static str,
}

impl Row {
    /// A throughput row: jobhook's and the baseline's requests (or rows) per second, and the
    /// ratio between them.
    fn throughput(what: &'static str, value: f64, baseline: f64, target: &'static str) -> Row {
        Row {
            what,
            value: format!("{value:.0}"),
            baseline: format!("{baseline:.0}"),
            ratio: format!("{:.2}", value / baseline),
            target,
        }
    }

    /// A figure with no baseline, only a target.
    fn figure(what: &'static str, value: String, note: String, target: &'static str) -> Row {
        Row {
            what,
            value,
            baseline: note,
            ratio: "-".into(),
            target,
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("jobhook-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&settings, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result?;
    println!("\n| measure | jobhook | baseline | ratio | target |\n|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.what, row.value, row.baseline, row.ratio, row.target
        );
    }
    Ok(())
}

async fn measure(settings: &Settings, dir: &Path) -> anyhow::Result<Vec<Row>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut rows = Vec::new();
    eprintln!(
        "bench: {} s per load run, {} connections",
        settings.duration.as_secs(),
        settings.concurrency
    );

    // 1. Webhook ingest against its baselines.
    let body_only = Server::start(&["body-only"], &[]).await?;
    let url = format!("{}/hook", body_only.public);
    let c = client.clone();
    let bare = closed_loop(settings, move |n| c.post(&url).body(webhook_body(n))).await;
    body_only.stop().await;
    eprintln!(
        "bench: bare axum reading the body: {:.0}/s",
        bare.per_second
    );

    let txn = Server::start(
        &["txn-per-request", dir.join("txn.db").to_str().unwrap()],
        &[],
    )
    .await?;
    let url = format!("{}/hook", txn.public);
    let c = client.clone();
    let per_request = closed_loop(settings, move |n| c.post(&url).body(webhook_body(n))).await;
    txn.stop().await;
    eprintln!(
        "bench: one transaction per request: {:.0}/s",
        per_request.per_second
    );

    let raw = raw_batched_inserts(dir, settings).await?;
    eprintln!("bench: raw batched inserts: {raw:.0} rows/s");

    let db = dir.join("jobhook.db");
    let jobhook = Server::start(&["jobhook"], &jobhook_env(&db, &[])).await?;
    wait_ready(&jobhook.api).await;
    let idle_rss = rss_mb(jobhook.pid());
    let hook: Value = client
        .get(format!("{}/v1/webhook-url", jobhook.api))
        .send()
        .await?
        .json()
        .await?;
    let hook_url = hook["url"]
        .as_str()
        .unwrap()
        .replace("http://localhost:8080", &jobhook.public);
    let url = hook_url.clone();
    let c = client.clone();
    let cpu_before = cpu_seconds(jobhook.pid());
    let bench_before = cpu_seconds(std::process::id());
    let ingest = closed_loop(settings, move |n| c.post(&url).body(webhook_body(n))).await;
    let cpu = (cpu_seconds(jobhook.pid()) - cpu_before) / settings.duration.as_secs_f64();
    let load_cpu =
        (cpu_seconds(std::process::id()) - bench_before) / settings.duration.as_secs_f64();
    eprintln!(
        "bench: jobhook ingest: {:.0}/s (p99 {:.1} ms), jobhook {:.0}% of a core, load generator {:.0}%",
        ingest.per_second,
        ingest.p99_ms,
        cpu * 100.0,
        load_cpu * 100.0
    );
    let url = hook_url.clone();
    let c = client.clone();
    let half = open_loop(settings, ingest.per_second / 2.0, move |n| {
        c.post(&url).body(webhook_body(n + 10_000_000))
    })
    .await;
    eprintln!(
        "bench: jobhook at half load: p50 {:.1} ms, p99 {:.1} ms",
        half.p50_ms, half.p99_ms
    );

    rows.push(Row::throughput(
        "webhook ingest (req/s) vs raw batched inserts of the same rows",
        ingest.per_second,
        raw,
        "≥ 0.60",
    ));
    rows.push(Row {
        what: "webhook ingest vs a transaction-per-request handler",
        value: format!("{:.0}", ingest.per_second),
        baseline: format!("{:.0}", per_request.per_second),
        ratio: format!("{:.1}×", ingest.per_second / per_request.per_second),
        target: "≥ 4×",
    });
    rows.push(Row::throughput(
        "webhook ingest vs an axum handler that only reads the body",
        ingest.per_second,
        bare.per_second,
        "(context)",
    ));
    rows.push(Row::figure(
        "p99 acknowledgement latency at half load (ms)",
        format!("{:.1}", half.p99_ms),
        format!("p50 {:.1}", half.p50_ms),
        "< 20 ms",
    ));

    // 2. Reading one job against a constant JSON of the same size.
    let job: Value = client
        .get(format!("{}/v1/jobs?limit=1", jobhook.api))
        .send()
        .await?
        .json()
        .await?;
    let job_id = job["data"][0]["job_id"].as_str().unwrap().to_owned();
    let size = serde_json::to_string(&job["data"][0])?.len();
    let url = format!("{}/v1/jobs/{job_id}", jobhook.api);
    let c = client.clone();
    let read = closed_loop(settings, move |_| c.get(&url)).await;
    let constant = Server::start(&["constant-json", &size.to_string()], &[]).await?;
    let url = format!("{}/job", constant.public);
    let c = client.clone();
    let constant_load = closed_loop(settings, move |_| c.get(&url)).await;
    constant.stop().await;
    // Every job read once in turn, and through the long-poll path: nothing comes from the
    // cache of rendered jobs.
    let page: Value = client
        .get(format!("{}/v1/jobs?limit=500", jobhook.api))
        .send()
        .await?
        .json()
        .await?;
    let ids: Arc<Vec<String>> = Arc::new(
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_owned())
            .collect(),
    );
    let api = jobhook.api.clone();
    let c = client.clone();
    let cold = closed_loop(settings, move |n| {
        c.get(format!("{api}/v1/jobs/{}?wait=0s", ids[n % ids.len()]))
    })
    .await;
    rows.push(Row::throughput(
        "GET /v1/jobs/{id}, uncached reads (req/s) vs constant JSON",
        cold.per_second,
        constant_load.per_second,
        "(context)",
    ));
    rows.push(Row::throughput(
        "GET /v1/jobs/{id} (req/s) vs constant JSON of the same size",
        read.per_second,
        constant_load.per_second,
        "≥ 0.50",
    ));
    rows.push(Row::figure(
        "resident memory, idle (MB)",
        format!("{idle_rss:.1}"),
        "-".into(),
        "< 40 MB",
    ));
    jobhook.stop().await;

    // 3. Lists, memory and start-up with a small and a large database.
    let mut page_ms = Vec::new();
    for count in [1_000, settings.big] {
        let db = dir.join(format!("list-{count}.db"));
        seed_jobs(&db, count, None).await?;
        let started = Instant::now();
        let server = Server::start(&["jobhook"], &jobhook_env(&db, &[])).await?;
        wait_ready(&server.api).await;
        let startup = started.elapsed();
        let mut timings = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..200 {
            let url = match &cursor {
                Some(c) => format!("{}/v1/jobs?limit=50&cursor={c}", server.api),
                None => format!("{}/v1/jobs?limit=50&status=completed", server.api),
            };
            let sent = Instant::now();
            let page: Value = client.get(url).send().await?.json().await?;
            timings.push(sent.elapsed().as_secs_f64() * 1000.0);
            cursor = page["next_cursor"].as_str().map(str::to_owned);
        }
        timings.sort_by(|a, b| a.total_cmp(b));
        let median = timings[timings.len() / 2];
        let rss = rss_mb(server.pid());
        page_ms.push((count, median, startup, rss));
        server.stop().await;
    }
    let (small, small_ms, _, _) = page_ms[0];
    let (big, big_ms, big_startup, big_rss) = page_ms[1];
    rows.push(Row {
        what: "GET /v1/jobs page of 50, median ms: large vs small database",
        value: format!("{big_ms:.2} ({big} jobs)"),
        baseline: format!("{small_ms:.2} ({small} jobs)"),
        ratio: format!("{:.2}", big_ms / small_ms),
        target: "flat (≈ 1)",
    });
    rows.push(Row::figure(
        "resident memory with the large database stored (MB)",
        format!("{big_rss:.1}"),
        "-".into(),
        "< 100 MB",
    ));
    rows.push(Row::figure(
        "start-up to ready with the large database (ms)",
        format!("{:.0}", big_startup.as_secs_f64() * 1000.0),
        "-".into(),
        "< 300 ms",
    ));

    // 4. The reconciler: idle with 100,000 scheduled jobs, and a drain of 10,000 overdue ones.
    let db = dir.join("idle.db");
    seed_jobs(&db, 100_000, Some(now_ms() + 86_400_000)).await?;
    let dead = TcpListener::bind("127.0.0.1:0").await?;
    let dead_url = format!("http://{}/pictoryapis", dead.local_addr()?);
    drop(dead);
    let env = jobhook_env(
        &db,
        &[
            ("JOBHOOK_PICTORY_API_KEY", "pictai_bench".into()),
            ("JOBHOOK_PICTORY_BASE_URL", dead_url),
        ],
    );
    let server = Server::start(&["jobhook"], &env).await?;
    wait_ready(&server.api).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_seconds(server.pid());
    let idle_window = Duration::from_secs(if settings.duration.as_secs() < 5 {
        5
    } else {
        10
    });
    tokio::time::sleep(idle_window).await;
    let idle_cpu = (cpu_seconds(server.pid()) - before) / idle_window.as_secs_f64() * 100.0;
    server.stop().await;
    rows.push(Row::figure(
        "reconciler idle with 100,000 scheduled jobs (% of one core)",
        format!("{idle_cpu:.2}%"),
        "2 indexed queries per 30 s wake-up".into(),
        "< 1%",
    ));

    let rate = 20;
    let db = dir.join("overdue.db");
    seed_jobs(&db, 10_000, Some(now_ms() - 3_600_000)).await?;
    let mock = jobhook::mock::MockPictory::new(
        jobhook::mock::MockOptions::default(),
        Arc::new(jobhook::domain::time::SystemClock),
    );
    for i in 1..=10_000 {
        mock.set_state(&format!("seed-{i}"), jobhook::mock::MockState::Completed);
    }
    let base = mock.spawn().await?;
    let env = jobhook_env(
        &db,
        &[
            ("JOBHOOK_PICTORY_API_KEY", "pictai_bench".into()),
            ("JOBHOOK_PICTORY_BASE_URL", base),
            ("JOBHOOK_RECONCILE_RATE", rate.to_string()),
        ],
    );
    let server = Server::start(&["jobhook"], &env).await?;
    let window = Duration::from_secs(if settings.duration.as_secs() < 5 {
        5
    } else {
        10
    });
    tokio::time::sleep(Duration::from_secs(1) + window).await;
    server.stop().await;
    let calls: Vec<i64> = mock.get_calls().iter().map(|c| c.at_ms).collect();
    let busiest = calls
        .iter()
        .map(|&start| {
            calls
                .iter()
                .filter(|&&t| t >= start && t < start + 1000)
                .count()
        })
        .max()
        .unwrap_or(0);
    // Calls in the whole seconds after the first call, per second.
    let whole = (window.as_secs() - 1).max(1) as i64;
    let first = calls.first().copied().unwrap_or(0);
    let in_window = calls
        .iter()
        .filter(|&&t| t >= first && t < first + whole * 1000)
        .count();
    let sustained = in_window as f64 / whole as f64;
    rows.push(Row {
        what: "10,000 overdue jobs: Get Job calls per second (busiest 1 s window / sustained)",
        value: format!("{busiest} / {sustained:.1}"),
        baseline: format!("reconcile.rate = {rate}"),
        ratio: format!("{:.2}", sustained / f64::from(rate)),
        target: "= rate, never above",
    });
    Ok(rows)
}
