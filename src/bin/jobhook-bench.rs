//! `cargo run --release --bin jobhook-bench`: jobhook against baselines measured in the same run.
//!
//! Every server (jobhook and each baseline) runs in a child process of this binary; the load is
//! driven from this process over loopback. Figures are printed as a table with ratios, because
//! shared machines are too noisy for absolute numbers to mean much.

#![allow(clippy::unwrap_used)]

use anyhow::Context as _;
use axum::routing::{get, post};
use axum::Router;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

#[path = "bench/postgres.rs"]
mod postgres;

const SECRET: &str = "bench-webhook-secret-0123456789abcdef";

#[path = "bench/archive.rs"]
mod archive;
#[path = "bench/dashboard.rs"]
mod dashboard;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2..]).await;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "jobhook-bench [--quick] [--concurrency N] [--idle-connections-only] [--drain] [--log-bytes] [--usage] [--archive] [--dashboard]\n\
             jobhook-bench --database postgres://USER@HOST:PORT [--quick] [--concurrency N]\n\n\
             --quick                   2 s load runs and 100,000 stored jobs instead of 5 s and 1,000,000\n\
             --concurrency N           connections driving each load run (default 64)\n\
             --idle-connections-only   only the figures with {IDLE_CONNECTIONS} idle connections held\n\
             --drain                   only the reconciler's drain of 10,000 overdue jobs at rates 5, 20, 200\n\
             --log-bytes               only the write-ahead log bytes written per webhook\n\
             --usage                   only GET /v1/usage over a year of 1,000,000 final jobs (100,000 with --quick)\n\
             --archive                 only archiving a 500 MiB file (100 MiB with --quick) against curl, and peak memory\n\
             --dashboard               only the dashboard's jobs page over 1,000,000 jobs (100,000 with --quick)\n\
             --database URL            the PostgreSQL figures instead, on the server URL names (a user that may\n\
             \x20                         create databases; the bench creates jobhook_bench_<pid>_* and drops them):\n\
             \x20                         ingest vs raw batched inserts, three replicas vs one, Get Job calls per\n\
             \x20                         second with three replicas at reconcile.rate = 20"
        );
        return Ok(());
    }
    if args.iter().any(|a| a == "--log-bytes") {
        return print_log_bytes().await;
    }
    if args.iter().any(|a| a == "--dashboard") {
        return dashboard::print(if quick { 100_000 } else { 1_000_000 }).await;
    }
    if args.iter().any(|a| a == "--archive") {
        return archive::print_archive(quick).await;
    }
    if args.iter().any(|a| a == "--usage") {
        return print_usage(if quick { 100_000 } else { 1_000_000 }).await;
    }
    if args.iter().any(|a| a == "--drain") {
        return print_drains(quick).await;
    }
    let idle_only = args.iter().any(|a| a == "--idle-connections-only");
    let concurrency = args
        .iter()
        .position(|a| a == "--concurrency")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let settings = Settings {
        duration: Duration::from_secs(if quick { 2 } else { 5 }),
        rounds: 3,
        concurrency,
        big: if quick { 100_000 } else { 1_000_000 },
        idle_only,
    };
    if let Some(i) = args.iter().position(|a| a == "--database") {
        let server = args
            .get(i + 1)
            .context("--database takes a URL: postgres://USER@HOST:PORT")?;
        return postgres::print(server, &settings).await;
    }
    // The idle-connection figures hold thousands of sockets in this process and in the child.
    jobhook::http::serve::fd::raise_open_file_limit();
    run(settings).await
}

struct Settings {
    duration: Duration,
    /// Interleaved rounds of the ingest figures (their median is reported).
    rounds: usize,
    concurrency: usize,
    /// Jobs stored for the "large database" figures.
    big: usize,
    /// Only the figures with idle connections held.
    idle_only: bool,
}

/// Connections that send nothing, held on the public listener for the idle-connection figures.
const IDLE_CONNECTIONS: usize = 5_000;

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
            let connection = open_baseline(&PathBuf::from(&args[1])).await?;
            let template = Arc::new(Template::read(&PathBuf::from(&args[2]))?);
            let connection = Arc::new(Mutex::new(connection));
            let counter = Arc::new(AtomicUsize::new(1));
            let app = Router::new()
                .route(
                    "/hook",
                    post(
                        move |axum::extract::State(connection): axum::extract::State<
                            Arc<Mutex<Connection>>,
                        >,
                              body: axum::body::Bytes| async move {
                            let n = counter.fetch_add(1, Ordering::Relaxed) as i64;
                            tokio::task::spawn_blocking(move || {
                                let mut connection = connection.lock().unwrap();
                                let tx = connection.transaction().unwrap();
                                template.insert(&tx, &body, n).unwrap();
                                tx.commit().unwrap();
                            })
                            .await
                            .unwrap();
                            axum::Json(json!({"status": "accepted"}))
                        },
                    ),
                )
                .with_state(connection);
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

/// The rows jobhook wrote for one webhook that completed a new job (the job, its delivery, its
/// history entries, its usage row and its day's usage summary), copied from a jobhook database
/// column by column. The baselines write these same rows, into jobhook's own schema with its
/// indexes, but without any of its logic.
struct Template {
    job: Vec<(String, SqlValue)>,
    delivery: Vec<(String, SqlValue)>,
    events: Vec<Vec<(String, SqlValue)>>,
    usage: Vec<(String, SqlValue)>,
    /// Added to the day's summary row, as jobhook does.
    daily: Vec<(String, SqlValue)>,
}

impl Template {
    fn read(db: &Path) -> anyhow::Result<Template> {
        let connection = Connection::open(db)?;
        let pk: i64 = connection.query_row(
            "SELECT job_pk FROM deliveries WHERE outcome = 'accepted' ORDER BY id LIMIT 1",
            [],
            |row| row.get(0),
        )?;
        let rows = |sql: &str| -> anyhow::Result<Vec<Vec<(String, SqlValue)>>> {
            let mut statement = connection.prepare(sql)?;
            let names: Vec<String> = statement
                .column_names()
                .into_iter()
                .map(str::to_owned)
                .collect();
            let rows = statement.query_map([pk], |row| {
                names
                    .iter()
                    .enumerate()
                    .filter(|(_, name)| *name != "id")
                    .map(|(i, name)| Ok((name.clone(), row.get::<_, SqlValue>(i)?)))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        };
        let job = rows("SELECT * FROM jobs WHERE id = ?1")?.remove(0);
        let delivery =
            rows("SELECT * FROM deliveries WHERE job_pk = ?1 ORDER BY id LIMIT 1")?.remove(0);
        let events = rows("SELECT * FROM job_events WHERE job_pk = ?1 ORDER BY id")?;
        let mut usage = rows("SELECT * FROM job_usage WHERE job_pk = ?1")?;
        let mut daily = rows(
            "SELECT d.* FROM usage_daily d JOIN job_usage u ON u.job_pk = ?1 \
             AND d.model = u.model AND d.status = u.status",
        )?;
        anyhow::ensure!(
            usage.len() == 1 && daily.len() == 1,
            "the template webhook should have completed its job and counted its usage"
        );
        let (usage, daily) = (usage.remove(0), daily.remove(0));
        let copied = [
            ("deliveries", 1),
            ("job_events", events.len()),
            ("job_usage", 1),
        ];
        Self::check_nothing_else_written(&connection, pk, &copied)?;
        Ok(Template {
            job,
            delivery,
            events,
            usage,
            daily,
        })
    }

    /// Any row of the template's job beyond the `copied` count of its table would mean the
    /// baselines write less than jobhook does.
    fn check_nothing_else_written(
        connection: &Connection,
        pk: i64,
        copied: &[(&str, usize)],
    ) -> anyhow::Result<()> {
        let mut tables = connection.prepare(
            "SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) c \
             WHERE m.type = 'table' AND c.name = 'job_pk'",
        )?;
        let tables = tables
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for table in tables {
            let count: i64 = connection.query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE job_pk = ?1"),
                [pk],
                |row| row.get(0),
            )?;
            let expected = copied
                .iter()
                .find(|(name, _)| *name == table)
                .map_or(0, |&(_, rows)| rows);
            anyhow::ensure!(
                usize::try_from(count) == Ok(expected),
                "jobhook wrote {count} rows of {table} for the template webhook, the baselines \
                 {expected}: they must write the same"
            );
        }
        Ok(())
    }

    /// Inserts a copy of the rows for a new job numbered `n`, with `body` as its webhook body.
    fn insert(&self, tx: &Connection, body: &[u8], n: i64) -> anyhow::Result<()> {
        let job = with(&self.job, |name| match name {
            "job_id" => Some(SqlValue::Text(format!(
                "baseline-{n}-{}",
                uuid::Uuid::new_v4()
            ))),
            "seq" => Some(SqlValue::Integer(n)),
            // Set below, once the delivery it refers to exists.
            "raw_delivery" => Some(SqlValue::Null),
            _ => None,
        });
        let pk: i64 = tx
            .prepare_cached(&insert_sql("jobs", &job, " RETURNING id"))?
            .query_row(params_from_iter(job.iter().map(|(_, v)| v)), |row| {
                row.get(0)
            })?;
        let delivery = with(&self.delivery, |name| match name {
            "job_pk" => Some(SqlValue::Integer(pk)),
            "body" => Some(SqlValue::Blob(body.to_vec())),
            "body_sha256" => Some(SqlValue::Blob(Sha256::digest(body).to_vec())),
            _ => None,
        });
        tx.prepare_cached(&insert_sql("deliveries", &delivery, ""))?
            .execute(params_from_iter(delivery.iter().map(|(_, v)| v)))?;
        // The job's `/raw` is its delivery's body, as jobhook records it.
        tx.prepare_cached("UPDATE jobs SET raw_delivery = ?1 WHERE id = ?2")?
            .execute(params![tx.last_insert_rowid(), pk])?;
        for event in &self.events {
            insert_row(tx, "job_events", event, pk, "")?;
        }
        insert_row(tx, "job_usage", &self.usage, pk, "")?;
        let add = " ON CONFLICT (day, model, status) DO UPDATE SET jobs = jobs + excluded.jobs, \
                   credits_milli = credits_milli + excluded.credits_milli, \
                   video_ms = video_ms + excluded.video_ms";
        insert_row(tx, "usage_daily", &self.daily, pk, add)?;
        Ok(())
    }
}

/// Inserts a copy of `row` into `table`, made a row of the job `pk` when it has a `job_pk`.
fn insert_row(
    tx: &Connection,
    table: &str,
    row: &[(String, SqlValue)],
    pk: i64,
    tail: &str,
) -> anyhow::Result<()> {
    let row = with(row, |name| {
        (name == "job_pk").then_some(SqlValue::Integer(pk))
    });
    tx.prepare_cached(&insert_sql(table, &row, tail))?
        .execute(params_from_iter(row.iter().map(|(_, v)| v)))?;
    Ok(())
}

/// A row's columns with some values replaced.
fn with(
    row: &[(String, SqlValue)],
    replace: impl Fn(&str) -> Option<SqlValue>,
) -> Vec<(String, SqlValue)> {
    row.iter()
        .map(|(name, value)| (name.clone(), replace(name).unwrap_or_else(|| value.clone())))
        .collect()
}

fn insert_sql(table: &str, row: &[(String, SqlValue)], tail: &str) -> String {
    let names: Vec<&str> = row.iter().map(|(name, _)| name.as_str()).collect();
    let marks: Vec<String> = (1..=row.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({}){tail}",
        names.join(", "),
        marks.join(", ")
    )
}

/// A fresh database with jobhook's schema, opened with the durability jobhook promises (WAL,
/// every commit flushed).
async fn open_baseline(path: &Path) -> anyhow::Result<Connection> {
    let store = jobhook::store::open(&format!("sqlite://{}", path.display())).await?;
    store.migrate().await?;
    store.close().await;
    let connection = Connection::open(path)?;
    connection.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
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
    jobhook_env_url(format!("sqlite://{}", db.display()), extra)
}

/// [`jobhook_env`] for a database named by its URL.
fn jobhook_env_url(url: String, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("JOBHOOK_WEBHOOK_SECRET", SECRET.to_owned()),
        ("JOBHOOK_DATABASE_URL", url),
        ("JOBHOOK_SERVER_LISTEN", "127.0.0.1:0".to_owned()),
        ("JOBHOOK_SERVER_API_LISTEN", "127.0.0.1:0".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

/// The ingest figures of one round.
struct IngestRound {
    bare: f64,
    per_request: f64,
    raw: f64,
    store_only: f64,
    ingest: f64,
    half_p50: f64,
    half_p99: f64,
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

/// Raw batched inserts of the same rows, 256 webhooks' worth per transaction, straight into
/// SQLite with prepared statements: the floor of what storing these rows durably costs here.
async fn raw_batched_inserts(
    dir: &Path,
    template: &Template,
    settings: &Settings,
) -> anyhow::Result<f64> {
    let mut connection = open_baseline(&dir.join("raw.db")).await?;
    let bodies: Vec<String> = (0..256).map(webhook_body).collect();
    let started = Instant::now();
    let mut rows = 0usize;
    while started.elapsed() < settings.duration {
        let tx = connection.transaction()?;
        for body in &bodies {
            rows += 1;
            template.insert(&tx, body.as_bytes(), rows as i64)?;
        }
        tx.commit()?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Webhook deliveries `from..from + count` as the public listener makes them in receive-only
/// mode (the body's report is applied).
fn deliveries(from: usize, count: usize) -> anyhow::Result<Vec<jobhook::store::NewDelivery>> {
    (from..from + count)
        .map(|n| {
            let body = webhook_body(n);
            let report = jobhook::pictory::JobReport::from_json(&serde_json::from_str(&body)?);
            Ok(jobhook::store::NewDelivery {
                received_at: now_ms(),
                remote_addr: Some("127.0.0.1".into()),
                headers: r#"{"content-type":"application/json"}"#.into(),
                body: body.into_bytes(),
                target: jobhook::store::DeliveryTarget::Job {
                    job_id: report.job_id,
                    submission_id: None,
                    report: Some(report.state),
                    look_now: false,
                    first_poll_at: None,
                },
            })
        })
        .collect()
}

/// Bytes jobhook writes to its log per webhook (a 1.5 KB body, receive-only mode, a new job
/// each), alone in its transaction and in batches of 256: the size the write-ahead log grows
/// by, with no checkpoint to reuse it.
async fn log_bytes_per_webhook(dir: &Path) -> anyhow::Result<(f64, f64)> {
    let mut figures = Vec::new();
    for (name, batch, count) in [("alone", 1, 1_000), ("batched", 256, 256 * 20)] {
        let db = dir.join(format!("log-bytes-{name}.db"));
        let options = jobhook::store::StoreOptions {
            wal_limit: u64::MAX,
            ..Default::default()
        };
        let store =
            jobhook::store::open_with(&format!("sqlite://{}", db.display()), &options).await?;
        store.migrate().await?;
        let wal = PathBuf::from(format!("{}-wal", db.display()));
        let before = std::fs::metadata(&wal)?.len();
        for from in (0..count).step_by(batch) {
            for result in store.ingest_batch(deliveries(from, batch)?).await? {
                result?;
            }
        }
        let after = std::fs::metadata(&wal)?.len();
        store.close().await;
        figures.push((after - before) as f64 / count as f64);
    }
    Ok((figures[0], figures[1]))
}

/// `jobhook-bench --drain`: only the reconciler's drain of overdue jobs, at rates 5, 20, 200.
async fn print_drains(quick: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("jobhook-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let settings = Settings {
        duration: Duration::from_secs(if quick { 2 } else { 5 }),
        rounds: 1,
        concurrency: 1,
        big: 0,
        idle_only: false,
    };
    for rate in [5, 20, 200] {
        match drain_overdue(&dir, &settings, rate).await {
            Ok((busiest, sustained)) => {
                println!("rate {rate}: busiest 1 s window {busiest}, sustained {sustained:.1}/s");
            }
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(err);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `jobhook-bench --log-bytes`: only the log bytes per webhook (quick, any build).
async fn print_log_bytes() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("jobhook-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let result = log_bytes_per_webhook(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (alone, batched) = result?;
    println!("log bytes per webhook: {alone:.0} alone, {batched:.0} in batches of 256");
    Ok(())
}

/// jobhook's storage alone, without HTTP: the same webhooks as deliveries, 256 per
/// `Store::ingest_batch` call (the raw baseline's batch), each awaited before the next.
async fn store_batched(dir: &Path, settings: &Settings) -> anyhow::Result<f64> {
    let store =
        jobhook::store::open(&format!("sqlite://{}", dir.join("store.db").display())).await?;
    store.migrate().await?;
    let started = Instant::now();
    let mut stored = 0usize;
    while started.elapsed() < settings.duration {
        let batch = deliveries(stored, 256)?;
        for result in store.ingest_batch(batch).await? {
            result?;
        }
        stored += 256;
    }
    let rate = stored as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    Ok(rate)
}

/// jobhook started over 10,000 overdue jobs against a fast fake Pictory at `rate`: the most
/// Get Job calls in any closed one-second window, and the calls per second sustained.
async fn drain_overdue(dir: &Path, settings: &Settings, rate: u32) -> anyhow::Result<(usize, f64)> {
    let db = dir.join(format!("overdue-{rate}.db"));
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
    // Sorted by arrival, so each window is counted by a moving pointer.
    let mut sorted = calls.clone();
    sorted.sort_unstable();
    let mut busiest = 0;
    let mut end = 0;
    for (start, &at) in sorted.iter().enumerate() {
        while end < sorted.len() && sorted[end] <= at + 1000 {
            end += 1;
        }
        busiest = busiest.max(end - start);
    }
    // Calls in the whole seconds after the first call, per second.
    let whole = (window.as_secs() - 1).max(1) as i64;
    let first = sorted.first().copied().unwrap_or(0);
    let in_window = sorted
        .iter()
        .filter(|&&t| t >= first && t < first + whole * 1000)
        .count();
    Ok((busiest, in_window as f64 / whole as f64))
}

/// `jobhook-bench --usage`: only the `GET /v1/usage` figures.
async fn print_usage(count: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("jobhook-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let result = usage_figures(&dir, count).await;
    let _ = std::fs::remove_dir_all(&dir);
    print_rows(result?);
    Ok(())
}

/// `GET /v1/usage` over a year holding `count` final jobs: the median time of `group_by=model`
/// (the figure with a target), and for context `group_by=day` and `group_by=metadata.customer`
/// (which reads each job of the range). The range starts and ends mid-day, so both the daily
/// summary and the per-job rows at its ends are read.
async fn usage_figures(dir: &Path, count: usize) -> anyhow::Result<Vec<Row>> {
    const DAY: i64 = 86_400_000;
    let db = dir.join(format!("usage-{count}.db"));
    // A year ending yesterday, day-aligned, so the seeded jobs fill it.
    let start = (now_ms() / DAY - 366) * DAY;
    let seeding = Instant::now();
    seed_usage(&db, count, start, 365 * DAY).await?;
    eprintln!(
        "bench: seeded {count} final jobs over a year in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let server = Server::start(&["jobhook"], &jobhook_env(&db, &[])).await?;
    wait_ready(&server.api).await;
    let client = reqwest::Client::new();
    let from = start + 7 * 3_600_000;
    let to = from + 365 * DAY;
    let range = format!(
        "from={}&to={}",
        jobhook::domain::time::rfc3339(from),
        jobhook::domain::time::rfc3339(to)
    );
    let mut medians = Vec::new();
    for (group_by, runs) in [("model", 101), ("day", 31), ("metadata.customer", 7)] {
        let url = format!("{}/v1/usage?{range}&group_by={group_by}", server.api);
        let mut timings = Vec::with_capacity(runs);
        let mut jobs = 0;
        // One untimed request first: the first read of a file pays for the page cache.
        for run in 0..=runs {
            let sent = Instant::now();
            let response = client.get(&url).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            let usage: Value = response.json().await?;
            if run > 0 {
                timings.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            jobs = usage["total"]["jobs"].as_i64().unwrap_or(0);
        }
        timings.sort_by(|a, b| a.total_cmp(b));
        let median = timings[timings.len() / 2];
        let p90 = timings[timings.len() * 9 / 10];
        eprintln!(
            "bench: GET /v1/usage?group_by={group_by} over a year: median {median:.2} ms, p90 {p90:.2} ms, {jobs} jobs summed"
        );
        medians.push((median, p90, jobs));
    }
    server.stop().await;
    let [(model, model_p90, jobs), (day, day_p90, _), (metadata, metadata_p90, _)] = medians[..]
    else {
        anyhow::bail!("three usage figures expected");
    };
    Ok(vec![
        Row::figure(
            "GET /v1/usage?group_by=model over a year, median ms",
            format!("{model:.2} ({jobs} jobs)"),
            format!("p90 {model_p90:.2}"),
            "< 50 ms",
        ),
        Row::figure(
            "GET /v1/usage?group_by=day over a year, median ms",
            format!("{day:.2}"),
            format!("p90 {day_p90:.2}"),
            "(context)",
        ),
        Row::figure(
            "GET /v1/usage?group_by=metadata.KEY over a year (reads every job of the range), median ms",
            format!("{metadata:.0}"),
            format!("p90 {metadata_p90:.0}"),
            "(context)",
        ),
    ])
}

/// Fills a jobhook database with `count` jobs that became final evenly over `span` ms from
/// `start` (one in 20 failed; three models, their durations and prices as Pictory's table
/// says; 40 customers in the metadata), with the usage rows jobhook's bookkeeping writes when
/// a job becomes final. SQL, because a million submissions through the API would take the
/// bench longer than everything else together.
async fn seed_usage(db: &Path, count: usize, start: i64, span: i64) -> anyhow::Result<()> {
    let url = format!("sqlite://{}", db.display());
    let store = jobhook::store::open(&url).await?;
    store.migrate().await?;
    store.close().await;
    let mut connection = Connection::open(db)?;
    let tx = connection.transaction()?;
    tx.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1), \
         spec AS (SELECT i, \
           CASE i % 3 WHEN 0 THEN 'veo3.1' WHEN 1 THEN 'veo3.1_fast' ELSE 'pixverse5.5' END AS model, \
           CASE i % 3 WHEN 0 THEN 20.0 WHEN 1 THEN 10.0 ELSE 1.6 END AS per_second, \
           CASE WHEN i % 3 = 2 THEN (CASE (i / 3) % 3 WHEN 0 THEN 5 WHEN 1 THEN 8 ELSE 10 END) \
                ELSE (CASE (i / 3) % 3 WHEN 0 THEN 4 WHEN 1 THEN 6 ELSE 8 END) END AS seconds, \
           ?2 + i * ?3 / ?1 AS at, i % 20 = 7 AS failed FROM n) \
         INSERT INTO jobs (job_id, status, request, metadata, output, error, resolved_by, \
           created_at, updated_at, completed_at, seq) \
         SELECT 'usage-' || i, CASE WHEN failed THEN 'failed' ELSE 'completed' END, \
           json_object('prompt', 'a seeded clip', 'model', model, 'duration', seconds || 's'), \
           json_object('customer', 'customer-' || (i % 40)), \
           CASE WHEN failed THEN NULL ELSE json_object('url', 'https://cdn.example/' || i || '.mp4', \
             'duration', seconds || 's', 'width', 1280, 'height', 720, \
             'last_frame_image_url', 'https://cdn.example/' || i || '.png', \
             'ai_credits_used', ROUND(per_second * seconds, 3)) END, \
           CASE WHEN failed THEN json_object('code', 'TEXT_TO_VIDEO_FAILED', 'message', 'seeded') END, \
           'webhook', at - 60000, at, at, i + 1 FROM spec",
        params![count as i64, start, span],
    )?;
    tx.execute(
        "INSERT INTO job_usage (job_pk, at, model, status, credits_milli, video_ms, metadata) \
         SELECT id, completed_at, json_extract(request, '$.model'), status, \
           CASE WHEN status = 'completed' \
             THEN CAST(ROUND(json_extract(output, '$.ai_credits_used') * 1000) AS INTEGER) ELSE 0 END, \
           CASE WHEN status = 'completed' \
             THEN CAST(RTRIM(json_extract(output, '$.duration'), 's') AS INTEGER) * 1000 ELSE 0 END, \
           metadata FROM jobs WHERE job_id LIKE 'usage-%' ORDER BY completed_at",
        [],
    )?;
    tx.execute(
        "INSERT INTO usage_daily (day, model, status, jobs, credits_milli, video_ms) \
         SELECT at / 86400000, model, status, COUNT(*), SUM(credits_milli), SUM(video_ms) \
         FROM job_usage GROUP BY at / 86400000, model, status",
        [],
    )?;
    tx.commit()?;
    Ok(())
}

/// Fills a jobhook database with `count` completed jobs, in one statement.
async fn seed_jobs(db: &Path, count: usize, next_poll_at: Option<i64>) -> anyhow::Result<()> {
    let url = format!("sqlite://{}", db.display());
    let store = jobhook::store::open(&url).await?;
    store.migrate().await?;
    store.close().await;
    let status = if next_poll_at.is_some() {
        "pending"
    } else {
        "completed"
    };
    Connection::open(db)?.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO jobs (job_id, status, created_at, updated_at, seq, next_poll_at, output) \
         SELECT 'seed-' || i, ?2, ?3, ?3 + i, i, ?4, \
         '{\"url\":\"https://cdn.example/v.mp4\",\"duration\":\"8s\",\"width\":1280,\"height\":720}' FROM n",
        params![count as i64, status, now_ms() - 3_600_000, next_poll_at],
    )?;
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

/// The URL a running jobhook takes webhooks at, as Pictory would be given it.
async fn webhook_url(client: &reqwest::Client, server: &Server) -> anyhow::Result<String> {
    let hook: Value = client
        .get(format!("{}/v1/webhook-url", server.api))
        .send()
        .await?
        .json()
        .await?;
    Ok(hook["url"]
        .as_str()
        .context("webhook url")?
        .replace("http://localhost:8080", &server.public))
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
    let result = if settings.idle_only {
        idle_connections(&settings, &dir).await
    } else {
        measure(&settings, &dir).await
    };
    let _ = std::fs::remove_dir_all(&dir);
    print_rows(result?);
    Ok(())
}

/// The figures as a markdown table.
fn print_rows(rows: Vec<Row>) {
    println!("\n| measure | jobhook | baseline | ratio | target |\n|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.what, row.value, row.baseline, row.ratio, row.target
        );
    }
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

    // 1. Webhook ingest against its baselines. This machine's speed drifts from one second to
    // the next, so every figure is taken in each of several interleaved rounds and the median
    // is reported.
    // The rows the baselines write: what jobhook itself wrote for one webhook.
    let template_db = dir.join("template.db");
    let server = Server::start(&["jobhook"], &jobhook_env(&template_db, &[])).await?;
    wait_ready(&server.api).await;
    let hook_url = webhook_url(&client, &server).await?;
    let stored = client.post(&hook_url).body(webhook_body(0)).send().await?;
    anyhow::ensure!(
        stored.status().is_success(),
        "template webhook: {}",
        stored.status()
    );
    server.stop().await;
    let template = Template::read(&template_db)?;

    let body_only = Server::start(&["body-only"], &[]).await?;
    let txn = Server::start(
        &[
            "txn-per-request",
            dir.join("txn.db").to_str().unwrap(),
            template_db.to_str().unwrap(),
        ],
        &[],
    )
    .await?;
    let db = dir.join("jobhook.db");
    let jobhook = Server::start(&["jobhook"], &jobhook_env(&db, &[])).await?;
    wait_ready(&jobhook.api).await;
    let idle_rss = rss_mb(jobhook.pid());
    let hook_url = webhook_url(&client, &jobhook).await?;

    let mut rounds: Vec<IngestRound> = Vec::new();
    for round in 1..=settings.rounds {
        let url = format!("{}/hook", body_only.public);
        let c = client.clone();
        let bare = closed_loop(settings, move |n| c.post(&url).body(webhook_body(n))).await;
        let url = format!("{}/hook", txn.public);
        let c = client.clone();
        let per_request = closed_loop(settings, move |n| c.post(&url).body(webhook_body(n))).await;
        let raw = raw_batched_inserts(dir, &template, settings).await?;
        let store_only = store_batched(dir, settings).await?;
        let url = hook_url.clone();
        let c = client.clone();
        let offset = round * 100_000_000;
        let ingest = closed_loop(settings, move |n| {
            c.post(&url).body(webhook_body(offset + n))
        })
        .await;
        let url = hook_url.clone();
        let c = client.clone();
        let half = open_loop(settings, ingest.per_second / 2.0, move |n| {
            c.post(&url).body(webhook_body(offset + 50_000_000 + n))
        })
        .await;
        eprintln!(
            "bench: round {round}: bare axum {:.0}/s, transaction per request {:.0}/s, raw \
             batched inserts {raw:.0}/s, jobhook's store alone {store_only:.0}/s, jobhook \
             ingest {:.0}/s; at half load p50 {:.1} ms, p99 {:.1} ms",
            bare.per_second, per_request.per_second, ingest.per_second, half.p50_ms, half.p99_ms
        );
        rounds.push(IngestRound {
            bare: bare.per_second,
            per_request: per_request.per_second,
            raw,
            store_only,
            ingest: ingest.per_second,
            half_p50: half.p50_ms,
            half_p99: half.p99_ms,
        });
    }
    body_only.stop().await;
    txn.stop().await;
    let median = |figure: fn(&IngestRound) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(figure).collect();
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    };
    let bare = median(|r| r.bare);
    let per_request = median(|r| r.per_request);
    let raw = median(|r| r.raw);
    let store_only = median(|r| r.store_only);
    let ingest = median(|r| r.ingest);
    let (half_p50, half_p99) = (median(|r| r.half_p50), median(|r| r.half_p99));

    rows.push(Row::throughput(
        "webhook ingest (req/s) vs raw batched inserts of the same rows",
        ingest,
        raw,
        "≥ 0.60",
    ));
    rows.push(Row::throughput(
        "jobhook's store alone (deliveries/s, same batches, no HTTP) vs raw batched inserts",
        store_only,
        raw,
        "(context)",
    ));
    rows.push(Row {
        what: "webhook ingest vs a transaction-per-request handler",
        value: format!("{ingest:.0}"),
        baseline: format!("{per_request:.0}"),
        ratio: format!("{:.1}×", ingest / per_request),
        target: "≥ 4×",
    });
    rows.push(Row::throughput(
        "webhook ingest vs an axum handler that only reads the body",
        ingest,
        bare,
        "(context)",
    ));
    rows.push(Row::figure(
        "p99 acknowledgement latency at half load (ms)",
        format!("{half_p99:.1}"),
        format!("p50 {half_p50:.1}"),
        "< 20 ms",
    ));

    // 1b. Ingest while thousands of connections that send nothing are held.
    rows.extend(idle_connections(settings, dir).await?);

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

    // 3b. Usage over a year of final jobs.
    rows.extend(usage_figures(dir, settings.big).await?);

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

    for rate in [5, 20, 200] {
        let (busiest, sustained) = drain_overdue(dir, settings, rate).await?;
        rows.push(Row {
            what: "10,000 overdue jobs: Get Job calls per second (busiest 1 s window / sustained)",
            value: format!("{busiest} / {sustained:.1}"),
            baseline: format!("reconcile.rate = {rate}"),
            ratio: format!("{:.2}", sustained / f64::from(rate)),
            target: "= rate, never above",
        });
    }
    Ok(rows)
}

/// Webhook ingest while [`IDLE_CONNECTIONS`] connections that never send a byte are held on the
/// public listener, against ingest on the same server without them, in interleaved rounds (the
/// medians are reported); and the resident memory those connections take. The header timeout
/// is raised to an hour so that they stay open for the whole measure.
async fn idle_connections(settings: &Settings, dir: &Path) -> anyhow::Result<Vec<Row>> {
    let needed = (IDLE_CONNECTIONS + 1_000) as u64;
    let limit = jobhook::http::serve::fd::open_file_limit().map_or(0, |l| l.soft);
    anyhow::ensure!(
        limit >= needed,
        "the idle-connection figures need an open-file limit of at least {needed} (ulimit -n); it is {limit}"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let db = dir.join("idle-connections.db");
    let env = jobhook_env(
        &db,
        &[
            ("JOBHOOK_SERVER_HEADER_TIMEOUT", "1h".to_owned()),
            (
                "JOBHOOK_SERVER_MAX_CONNECTIONS",
                (IDLE_CONNECTIONS + 1_000).to_string(),
            ),
        ],
    );
    let server = Server::start(&["jobhook"], &env).await?;
    wait_ready(&server.api).await;
    let hook_url = webhook_url(&client, &server).await?;
    let public = server.public.trim_start_matches("http://").to_owned();
    let open = |client: reqwest::Client, api: String| async move {
        let metrics = client
            .get(format!("{api}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix("jobhook_connections_open{listener=\"Public\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        anyhow::Ok(value as usize)
    };
    let until = |want: Box<dyn Fn(usize) -> bool + Send>| {
        let client = client.clone();
        let api = server.api.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let now_open = open(client.clone(), api.clone()).await?;
                if want(now_open) {
                    return anyhow::Ok(now_open);
                }
                anyhow::ensure!(Instant::now() < deadline, "{now_open} connections open");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut memory = Vec::new();
    for round in 1..=settings.rounds {
        let offset = 900_000_000 + round * 1_000_000;
        let url = hook_url.clone();
        let c = client.clone();
        let bare = closed_loop(settings, move |n| {
            c.post(&url).body(webhook_body(offset + n))
        })
        .await;
        let before = open(client.clone(), server.api.clone()).await?;
        let rss_before = rss_mb(server.pid());
        let mut held = Vec::with_capacity(IDLE_CONNECTIONS);
        for _ in 0..IDLE_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(&public).await?);
        }
        until(Box::new(move |n| n >= before + IDLE_CONNECTIONS)).await?;
        let rss_held = rss_mb(server.pid());
        let url = hook_url.clone();
        let c = client.clone();
        let loaded = closed_loop(settings, move |n| {
            c.post(&url).body(webhook_body(offset + 500_000 + n))
        })
        .await;
        drop(held);
        until(Box::new(move |n| n <= before)).await?;
        eprintln!(
            "bench: round {round}: ingest {:.0}/s without idle connections, {:.0}/s with \
             {IDLE_CONNECTIONS} held; resident memory {rss_before:.1} MB, {rss_held:.1} MB with them",
            bare.per_second, loaded.per_second
        );
        without.push(bare.per_second);
        with.push(loaded.per_second);
        memory.push(rss_held - rss_before);
    }
    server.stop().await;
    let median = |values: &mut Vec<f64>| {
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    };
    // The first round's cost: later rounds reuse what the allocator kept from the first.
    let first_round_mb = memory[0];
    Ok(vec![
        Row::throughput(
            "webhook ingest (req/s) with 5,000 idle connections held vs without, same server",
            median(&mut with),
            median(&mut without),
            "≥ 0.90",
        ),
        Row::figure(
            "resident memory taken by 5,000 idle connections (MB)",
            format!("{first_round_mb:.1}"),
            format!(
                "{:.1} KB each",
                first_round_mb * 1024.0 / IDLE_CONNECTIONS as f64
            ),
            "(context)",
        ),
    ])
}
