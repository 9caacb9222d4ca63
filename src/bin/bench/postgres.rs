//! `jobhook-bench --database postgres://USER@HOST:PORT`: the PostgreSQL figures (issue #12).
//!
//! The bench creates its own databases on that server (`jobhook_bench_<pid>_<what>`) and drops
//! them at the end. In one run, against baselines of the same run:
//!
//! - webhook ingest of one jobhook replica against raw batched inserts of the same rows
//!   (multi-row `INSERT … SELECT FROM UNNEST(…)`, one statement per table, 256 webhooks per
//!   transaction); for context the same rows one statement per row, and jobhook's store alone;
//! - three replicas on one database against one, the same load spread round robin;
//! - Get Job calls per second with three replicas at `reconcile.rate = 20`, counted where the
//!   fake Pictory receives them.

use super::{
    closed_loop, deliveries, jobhook_env_url, now_ms, wait_ready, webhook_body, webhook_url, Row,
    Server, Settings,
};
use anyhow::Context as _;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Connection as _, PgConnection, Postgres, Row as _};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Webhooks per transaction in the raw baselines (jobhook's largest batch).
const BATCH: usize = 256;
/// Overdue jobs seeded for the Get Job rate figure.
const OVERDUE: usize = 10_000;
/// The rate of the Get Job figure.
const RATE: u32 = 20;

/// `jobhook-bench --database URL`: every PostgreSQL figure, printed as a table.
pub(super) async fn print(server: &str, settings: &Settings) -> anyhow::Result<()> {
    let mut databases = Databases::connect(server).await?;
    let result = measure(&mut databases, settings).await;
    databases.drop_all().await;
    super::print_rows(result?);
    Ok(())
}

/// The databases this run created, dropped at the end whatever happened.
struct Databases {
    /// `postgres://user@host:port`, without a database.
    base: String,
    /// The URL's parameters (`?sslmode=…`), kept for every database.
    query: String,
    admin: PgConnection,
    names: Vec<String>,
}

impl Databases {
    async fn connect(server: &str) -> anyhow::Result<Databases> {
        anyhow::ensure!(
            server.starts_with("postgres://") || server.starts_with("postgresql://"),
            "--database takes a postgres:// URL, not {server:?}"
        );
        let (without_query, query) = match server.split_once('?') {
            Some((url, query)) => (url, format!("?{query}")),
            None => (server, String::new()),
        };
        // Whatever database the URL names is replaced by the bench's own.
        let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
        let base = match without_query[scheme_end..].find('/') {
            Some(slash) => &without_query[..scheme_end + slash],
            None => without_query,
        };
        let admin = PgConnection::connect(&format!("{base}/postgres{query}"))
            .await
            .with_context(|| format!("connecting to {base}/postgres"))?;
        Ok(Databases {
            base: base.to_owned(),
            query,
            admin,
            names: Vec::new(),
        })
    }

    /// A new, empty database with jobhook's schema; returns its URL.
    async fn create(&mut self, what: &str) -> anyhow::Result<String> {
        let name = format!("jobhook_bench_{}_{what}", std::process::id());
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut self.admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut self.admin)
            .await?;
        self.names.push(name.clone());
        let url = format!("{}/{name}{}", self.base, self.query);
        let store = jobhook::store::open(&url).await?;
        store.migrate().await?;
        store.close().await;
        Ok(url)
    }

    async fn drop_all(&mut self) {
        for name in std::mem::take(&mut self.names) {
            let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut self.admin)
                .await;
            if let Err(err) = dropped {
                eprintln!("bench: could not drop database {name}: {err}");
            }
        }
    }
}

/// The ingest figures of one round.
struct Round {
    raw: f64,
    raw_rows: f64,
    store_only: f64,
    one: f64,
    three: f64,
}

async fn measure(databases: &mut Databases, settings: &Settings) -> anyhow::Result<Vec<Row>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    eprintln!(
        "bench: PostgreSQL, {} s per load run, {} connections",
        settings.duration.as_secs(),
        settings.concurrency
    );

    // The rows the baselines write: what jobhook itself wrote for one webhook.
    let template_url = databases.create("template").await?;
    let server = Server::start(&["jobhook"], &jobhook_env_url(template_url.clone(), &[])).await?;
    wait_ready(&server.api).await;
    let hook = webhook_url(&client, &server).await?;
    let stored = client.post(&hook).body(webhook_body(0)).send().await?;
    anyhow::ensure!(
        stored.status().is_success(),
        "template webhook: {}",
        stored.status()
    );
    server.stop().await;
    let template = Template::read(&template_url).await?;
    eprintln!(
        "bench: one webhook wrote a job, a delivery, {} history entries, {} usage row(s) and \
         the daily usage summary",
        template.events.len(),
        usize::from(template.usage.is_some())
    );

    let raw_url = databases.create("raw").await?;
    let store_url = databases.create("store").await?;
    let one_url = databases.create("one").await?;
    let cluster_url = databases.create("cluster").await?;
    let one = Server::start(&["jobhook"], &jobhook_env_url(one_url, &[])).await?;
    let mut three = Vec::new();
    for _ in 0..3 {
        three.push(Server::start(&["jobhook"], &jobhook_env_url(cluster_url.clone(), &[])).await?);
    }
    wait_ready(&one.api).await;
    for replica in &three {
        wait_ready(&replica.api).await;
    }
    let one_hook = webhook_url(&client, &one).await?;
    let mut three_hooks = Vec::new();
    for replica in &three {
        three_hooks.push(webhook_url(&client, replica).await?);
    }
    let three_hooks = Arc::new(three_hooks);

    let mut raw_connection = PgConnection::connect(&raw_url).await?;
    let mut rounds = Vec::new();
    for round in 1..=settings.rounds {
        let offset = round * 100_000_000;
        let raw = raw_batched(&mut raw_connection, &template, settings, offset, true).await?;
        let raw_rows = raw_batched(
            &mut raw_connection,
            &template,
            settings,
            offset + 10_000_000,
            false,
        )
        .await?;
        let store_only = store_batched(&store_url, settings, offset).await?;
        let url = one_hook.clone();
        let c = client.clone();
        let single = closed_loop(settings, move |n| {
            c.post(&url).body(webhook_body(offset + 20_000_000 + n))
        })
        .await;
        let hooks = three_hooks.clone();
        let c = client.clone();
        let spread = closed_loop(settings, move |n| {
            c.post(&hooks[n % hooks.len()])
                .body(webhook_body(offset + 30_000_000 + n))
        })
        .await;
        eprintln!(
            "bench: round {round}: raw batched inserts {raw:.0}/s, one statement per row \
             {raw_rows:.0}/s, jobhook's store alone {store_only:.0}/s, one replica {:.0}/s \
             (p99 {:.1} ms), three replicas {:.0}/s (p99 {:.1} ms)",
            single.per_second, single.p99_ms, spread.per_second, spread.p99_ms
        );
        rounds.push(Round {
            raw,
            raw_rows,
            store_only,
            one: single.per_second,
            three: spread.per_second,
        });
    }
    raw_connection.close().await?;
    one.stop().await;
    for replica in three {
        replica.stop().await;
    }
    let median = |figure: fn(&Round) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(figure).collect();
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    };
    let (raw, raw_rows, store_only) = (
        median(|r| r.raw),
        median(|r| r.raw_rows),
        median(|r| r.store_only),
    );
    let (single, spread) = (median(|r| r.one), median(|r| r.three));

    let mut rows = vec![
        Row::throughput(
            "PostgreSQL: webhook ingest, one replica (req/s) vs raw batched inserts of the same rows",
            single,
            raw,
            "≥ 0.60",
        ),
        Row::throughput(
            "PostgreSQL: jobhook's store alone (deliveries/s, same batches, no HTTP) vs raw batched inserts",
            store_only,
            raw,
            "(context)",
        ),
        Row::throughput(
            "PostgreSQL: webhook ingest vs the same rows one INSERT per row, 256 webhooks per transaction",
            single,
            raw_rows,
            "(context)",
        ),
        Row::throughput(
            "PostgreSQL: webhook ingest, three replicas on one database vs one (same load, round robin)",
            spread,
            single,
            "(report)",
        ),
    ];

    let (busiest, mean, by_replica) = get_job_rate(databases, settings).await?;
    rows.push(Row {
        what: "PostgreSQL: Get Job calls per second, three replicas, 10,000 overdue jobs (busiest 1 s window / mean)",
        value: format!("{busiest} / {mean:.1}"),
        baseline: format!(
            "reconcile.rate = {RATE}; calls by replica {}",
            by_replica
                .iter()
                .map(|c| format!("{c:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        ratio: format!("{:.2}", mean / f64::from(RATE)),
        target: "never above rate",
    });
    Ok(rows)
}

// ---------- the baselines: the rows of one webhook, copied column by column ----------

/// One column's value, typed as jobhook's PostgreSQL schema types its columns.
#[derive(Clone, Debug)]
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Bool(Option<bool>),
}

/// A row: its columns (the identity `id` left out) and their values.
type Record = Vec<(String, Value)>;

/// The rows jobhook wrote for one webhook that completed a new job, read back from a jobhook
/// database: the job, its delivery, its history entries, its usage row and the daily summary.
struct Template {
    job: Record,
    delivery: Record,
    events: Vec<Record>,
    usage: Option<Record>,
    /// `(day, model, status, credits_milli, video_ms)` of the daily summary's row.
    daily: Option<(i64, String, String, i64, i64)>,
}

impl Template {
    async fn read(url: &str) -> anyhow::Result<Template> {
        let mut db = PgConnection::connect(url).await?;
        let pk: i64 = sqlx::query_scalar(
            "SELECT job_pk FROM deliveries WHERE outcome = 'accepted' ORDER BY id LIMIT 1",
        )
        .fetch_one(&mut db)
        .await?;
        let job = records(&mut db, "jobs", "id = $1 ORDER BY id", pk)
            .await?
            .pop()
            .context("the template job")?;
        let delivery = records(&mut db, "deliveries", "job_pk = $1 ORDER BY id LIMIT 1", pk)
            .await?
            .pop()
            .context("the template delivery")?;
        let events = records(&mut db, "job_events", "job_pk = $1 ORDER BY id", pk).await?;
        let usage = records(&mut db, "job_usage", "job_pk = $1", pk)
            .await?
            .pop();
        let daily = sqlx::query_as(
            "SELECT day, model, status, credits_milli, video_ms FROM usage_daily LIMIT 1",
        )
        .fetch_optional(&mut db)
        .await?;
        db.close().await?;
        Ok(Template {
            job,
            delivery,
            events,
            usage,
            daily,
        })
    }
}

/// The rows of `table` matching `condition` (with `$1` = `pk`), every column but identities.
async fn records(
    db: &mut PgConnection,
    table: &str,
    condition: &str,
    pk: i64,
) -> anyhow::Result<Vec<Record>> {
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 AND is_identity = 'NO' \
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *db)
    .await?;
    let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
    let rows = sqlx::query(&format!(
        "SELECT {} FROM {table} WHERE {condition}",
        names.join(", ")
    ))
    .bind(pk)
    .fetch_all(&mut *db)
    .await?;
    rows.iter()
        .map(|row| {
            columns
                .iter()
                .map(|(name, kind)| Ok((name.clone(), read_value(row, name, kind)?)))
                .collect()
        })
        .collect()
}

fn read_value(row: &PgRow, name: &str, kind: &str) -> anyhow::Result<Value> {
    Ok(match kind {
        "bigint" => Value::Int(row.try_get(name)?),
        "text" => Value::Text(row.try_get(name)?),
        "bytea" => Value::Bytes(row.try_get(name)?),
        "boolean" => Value::Bool(row.try_get(name)?),
        other => anyhow::bail!("column {name} has type {other}, which the bench does not copy"),
    })
}

/// A row's columns with some values replaced.
fn with(row: &Record, replace: impl Fn(&str) -> Option<Value>) -> Record {
    row.iter()
        .map(|(name, value)| (name.clone(), replace(name).unwrap_or_else(|| value.clone())))
        .collect()
}

/// A column of many rows, bound as one array.
enum Column {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Bytes(Vec<Option<Vec<u8>>>),
    Bool(Vec<Option<bool>>),
}

impl Column {
    fn of(first: &Value) -> Column {
        match first {
            Value::Int(_) => Column::Int(Vec::new()),
            Value::Text(_) => Column::Text(Vec::new()),
            Value::Bytes(_) => Column::Bytes(Vec::new()),
            Value::Bool(_) => Column::Bool(Vec::new()),
        }
    }

    fn push(&mut self, value: Value) -> anyhow::Result<()> {
        match (self, value) {
            (Column::Int(c), Value::Int(v)) => c.push(v),
            (Column::Text(c), Value::Text(v)) => c.push(v),
            (Column::Bytes(c), Value::Bytes(v)) => c.push(v),
            (Column::Bool(c), Value::Bool(v)) => c.push(v),
            _ => anyhow::bail!("a column's values differ in type"),
        }
        Ok(())
    }

    fn sql_type(&self) -> &'static str {
        match self {
            Column::Int(_) => "bigint[]",
            Column::Text(_) => "text[]",
            Column::Bytes(_) => "bytea[]",
            Column::Bool(_) => "boolean[]",
        }
    }

    fn bind(self, query: Query<'_, Postgres, PgArguments>) -> Query<'_, Postgres, PgArguments> {
        match self {
            Column::Int(c) => query.bind(c),
            Column::Text(c) => query.bind(c),
            Column::Bytes(c) => query.bind(c),
            Column::Bool(c) => query.bind(c),
        }
    }
}

fn bind_value(
    query: Query<'_, Postgres, PgArguments>,
    value: Value,
) -> Query<'_, Postgres, PgArguments> {
    match value {
        Value::Int(v) => query.bind(v),
        Value::Text(v) => query.bind(v),
        Value::Bytes(v) => query.bind(v),
        Value::Bool(v) => query.bind(v),
    }
}

/// Inserts `rows` (all with the same columns) into `table`: with `multi`, in one statement
/// (`INSERT … SELECT * FROM UNNEST($1::type[], …)`), else one statement per row. Returns what
/// `returning` names of each row, in no particular order for `multi`.
async fn insert(
    db: &mut PgConnection,
    table: &str,
    rows: Vec<Record>,
    returning: Option<&str>,
    multi: bool,
) -> anyhow::Result<Vec<PgRow>> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = first.iter().map(|(name, _)| name.clone()).collect();
    let tail = returning.map_or(String::new(), |r| format!(" RETURNING {r}"));
    let mut out = Vec::new();
    if multi {
        let mut columns: Vec<Column> = first.iter().map(|(_, v)| Column::of(v)).collect();
        for row in rows {
            for (column, (_, value)) in columns.iter_mut().zip(row) {
                column.push(value)?;
            }
        }
        let arrays: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}", i + 1, c.sql_type()))
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT * FROM UNNEST({}){tail}",
            names.join(", "),
            arrays.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for column in columns {
            query = column.bind(query);
        }
        if returning.is_some() {
            out = query.fetch_all(&mut *db).await?;
        } else {
            query.execute(&mut *db).await?;
        }
    } else {
        let marks: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({}){tail}",
            names.join(", "),
            marks.join(", ")
        );
        for row in rows {
            let mut query = sqlx::query(&sql);
            for (_, value) in row {
                query = bind_value(query, value);
            }
            if returning.is_some() {
                out.push(query.fetch_one(&mut *db).await?);
            } else {
                query.execute(&mut *db).await?;
            }
        }
    }
    Ok(out)
}

/// Raw inserts of the rows one webhook makes, `BATCH` webhooks per transaction, for the
/// bench's duration; returns webhooks per second. `multi`: one statement per table and batch
/// (the floor of storing these rows), else one statement per row (as SQLite's baseline does,
/// which costs a round trip each here).
async fn raw_batched(
    db: &mut PgConnection,
    template: &Template,
    settings: &Settings,
    offset: usize,
    multi: bool,
) -> anyhow::Result<f64> {
    let bodies: Vec<(Vec<u8>, Vec<u8>)> = (0..BATCH)
        .map(|n| {
            let body = webhook_body(n).into_bytes();
            let sha = Sha256::digest(&body).to_vec();
            (body, sha)
        })
        .collect();
    let started = Instant::now();
    let mut stored = 0usize;
    while started.elapsed() < settings.duration {
        let mut tx = db.begin().await?;
        let names: Vec<String> = (0..BATCH)
            .map(|i| format!("raw-{}-{}", offset + stored + i, uuid::Uuid::new_v4()))
            .collect();
        let jobs: Vec<Record> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                with(&template.job, |column| match column {
                    "job_id" => Some(Value::Text(Some(name.clone()))),
                    "seq" => Some(Value::Int(Some((offset + stored + i) as i64))),
                    // Set below, once the delivery it refers to exists.
                    "raw_delivery" => Some(Value::Int(None)),
                    _ => None,
                })
            })
            .collect();
        let by_name = insert(&mut tx, "jobs", jobs, Some("id, job_id"), multi)
            .await?
            .iter()
            .map(|row| Ok((row.try_get::<String, _>(1)?, row.try_get::<i64, _>(0)?)))
            .collect::<anyhow::Result<HashMap<String, i64>>>()?;
        let pks: Vec<i64> = names.iter().map(|name| by_name[name]).collect();
        let deliveries: Vec<Record> = pks
            .iter()
            .zip(&bodies)
            .map(|(pk, (body, sha))| {
                with(&template.delivery, |column| match column {
                    "job_pk" => Some(Value::Int(Some(*pk))),
                    "body" => Some(Value::Bytes(Some(body.clone()))),
                    "body_sha256" => Some(Value::Bytes(Some(sha.clone()))),
                    "body_size" => Some(Value::Int(Some(body.len() as i64))),
                    _ => None,
                })
            })
            .collect();
        let delivered = insert(&mut tx, "deliveries", deliveries, Some("id, job_pk"), multi)
            .await?
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?)))
            .collect::<anyhow::Result<Vec<(i64, i64)>>>()?;
        // The job's `/raw` is its delivery's body, as jobhook records it.
        let (delivery_ids, job_pks): (Vec<i64>, Vec<i64>) = delivered.into_iter().unzip();
        if multi {
            sqlx::query(
                "UPDATE jobs SET raw_delivery = u.delivery FROM \
                 UNNEST($1::bigint[], $2::bigint[]) AS u(job, delivery) WHERE jobs.id = u.job",
            )
            .bind(&job_pks)
            .bind(&delivery_ids)
            .execute(&mut *tx)
            .await?;
        } else {
            for (job, delivery) in job_pks.iter().zip(&delivery_ids) {
                sqlx::query("UPDATE jobs SET raw_delivery = $1 WHERE id = $2")
                    .bind(delivery)
                    .bind(job)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let job_pk =
            |pk: i64| move |column: &str| (column == "job_pk").then_some(Value::Int(Some(pk)));
        let events: Vec<Record> = pks
            .iter()
            .flat_map(|pk| template.events.iter().map(|event| with(event, job_pk(*pk))))
            .collect();
        insert(&mut tx, "job_events", events, None, multi).await?;
        if let Some(usage) = &template.usage {
            let usage: Vec<Record> = pks.iter().map(|pk| with(usage, job_pk(*pk))).collect();
            insert(&mut tx, "job_usage", usage, None, multi).await?;
        }
        if let Some((day, model, status, credits, video)) = &template.daily {
            // One upsert of the batch's sum, or one per webhook as each comes.
            let (times, count) = if multi { (1, BATCH as i64) } else { (BATCH, 1) };
            for _ in 0..times {
                sqlx::query(
                    "INSERT INTO usage_daily (day, model, status, jobs, credits_milli, video_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (day, model, status) DO UPDATE SET \
                     jobs = usage_daily.jobs + excluded.jobs, \
                     credits_milli = usage_daily.credits_milli + excluded.credits_milli, \
                     video_ms = usage_daily.video_ms + excluded.video_ms",
                )
                .bind(day)
                .bind(model)
                .bind(status)
                .bind(count)
                .bind(credits * count)
                .bind(video * count)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        stored += BATCH;
    }
    Ok(stored as f64 / started.elapsed().as_secs_f64())
}

/// jobhook's storage alone, without HTTP: the same webhooks as deliveries, `BATCH` per
/// `Store::ingest_batch` call, each awaited before the next.
async fn store_batched(url: &str, settings: &Settings, offset: usize) -> anyhow::Result<f64> {
    let store = jobhook::store::open(url).await?;
    let started = Instant::now();
    let mut stored = 0usize;
    while started.elapsed() < settings.duration {
        let batch = deliveries(offset + stored, BATCH)?;
        for result in store.ingest_batch(batch).await? {
            result?;
        }
        stored += BATCH;
    }
    let rate = stored as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    Ok(rate)
}

// ---------- the Get Job rate with three replicas ----------

/// Three replicas on one database holding [`OVERDUE`] overdue jobs, at `reconcile.rate =
/// RATE`, against the in-process fake Pictory, which timestamps every Get Job call on
/// arrival: the most calls in any closed one-second window, the mean per second, and the calls
/// each replica says it made.
async fn get_job_rate(
    databases: &mut Databases,
    settings: &Settings,
) -> anyhow::Result<(usize, f64, Vec<f64>)> {
    let url = databases.create("rate").await?;
    let mut db = PgConnection::connect(&url).await?;
    sqlx::query(
        "INSERT INTO jobs (job_id, status, created_at, updated_at, seq, next_poll_at, output) \
         SELECT 'seed-' || i, 'pending', $2, $2 + i, i, $3, \
         '{\"url\":\"https://cdn.example/v.mp4\",\"duration\":\"8s\",\"width\":1280,\"height\":720}' \
         FROM generate_series(1, $1) AS i",
    )
    .bind(OVERDUE as i64)
    .bind(now_ms() - 3_600_000)
    .bind(now_ms() - 3_600_000)
    .execute(&mut db)
    .await?;
    db.close().await?;
    let mock = jobhook::mock::MockPictory::new(
        jobhook::mock::MockOptions::default(),
        Arc::new(jobhook::domain::time::SystemClock),
    );
    for i in 1..=OVERDUE {
        mock.set_state(&format!("seed-{i}"), jobhook::mock::MockState::Completed);
    }
    let base = mock.spawn().await?;
    let env = jobhook_env_url(
        url,
        &[
            ("JOBHOOK_PICTORY_API_KEY", "pictai_bench".into()),
            ("JOBHOOK_PICTORY_BASE_URL", base),
            ("JOBHOOK_RECONCILE_RATE", RATE.to_string()),
        ],
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Server::start(&["jobhook"], &env).await?);
    }
    let window = Duration::from_secs(if settings.duration.as_secs() < 5 {
        5
    } else {
        10
    });
    tokio::time::sleep(Duration::from_secs(1) + window).await;
    let client = reqwest::Client::new();
    let mut by_replica = Vec::new();
    for replica in &replicas {
        let metrics = client
            .get(format!("{}/metrics", replica.api))
            .send()
            .await?
            .text()
            .await?;
        by_replica.push(
            metrics
                .lines()
                .filter(|line| line.starts_with("jobhook_pictory_get_job_calls_total"))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        );
    }
    for replica in replicas {
        replica.stop().await;
    }
    let mut calls: Vec<i64> = mock.get_calls().iter().map(|c| c.at_ms).collect();
    calls.sort_unstable();
    let (busiest, mean) = windows(&calls, window);
    eprintln!(
        "bench: three replicas at rate {RATE}: {} Get Job calls, busiest 1 s window {busiest}, \
         mean {mean:.1}/s; by replica {by_replica:?}",
        calls.len()
    );
    Ok((busiest, mean, by_replica))
}

/// The most calls in any closed one-second window `[t, t + 1000]` starting at a call, and the
/// mean per second over the whole seconds of `window` after the first call. `calls`: arrival
/// times in ms, sorted.
fn windows(calls: &[i64], window: Duration) -> (usize, f64) {
    let mut busiest = 0;
    let mut end = 0;
    for (start, &at) in calls.iter().enumerate() {
        while end < calls.len() && calls[end] <= at + 1000 {
            end += 1;
        }
        busiest = busiest.max(end - start);
    }
    let whole = (window.as_secs() - 1).max(1) as i64;
    let first = calls.first().copied().unwrap_or(0);
    let in_window = calls
        .iter()
        .filter(|&&t| t >= first && t < first + whole * 1000)
        .count();
    (busiest, in_window as f64 / whole as f64)
}
