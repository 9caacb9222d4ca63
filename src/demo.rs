//! `jobhook demo`: a self-contained tour. A fake Pictory and the service run on loopback with a
//! temporary SQLite file; a batch of videos is submitted; the fake drops, duplicates and reorders
//! webhooks and fails some jobs; a progress bar follows the jobs; a table shows how each ended.

use crate::app::{Listeners, Service};
use crate::config::Config;
use crate::domain::time::SystemClock;
use crate::mock::{MockOptions, MockPictory};
use crate::store;
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::SecretString;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const VIDEOS: usize = 24;
const MODELS: [&str; 3] = ["pixverse5.5", "veo3.1_fast", "veo3.1"];
const PROMPTS: [&str; 8] = [
    "A lighthouse in a storm at night, waves crashing",
    "A red fox crossing a snowy forest at dawn",
    "Time-lapse of a city skyline from day to night",
    "A paper boat drifting down a rainy street",
    "Close-up of coffee being poured in slow motion",
    "A hot air balloon over a desert canyon",
    "An astronaut planting a flower on the moon",
    "Autumn leaves swirling in a courtyard",
];

pub async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("jobhook-demo-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).context("cannot create the demo's temporary directory")?;
    let result = tour(&dir).await;
    // The demo leaves nothing behind.
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    println!(
        "\nDone in {:.1} s. Nothing was sent outside this machine.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn tour(dir: &std::path::Path) -> anyhow::Result<()> {
    let mock = MockPictory::new(
        MockOptions {
            job_duration: Duration::from_secs(4),
            failure_rate: 0.15,
            drop_rate: 0.3,
            duplicate_rate: 0.3,
            reorder_rate: 0.3,
            seed: Some(2026),
            ..MockOptions::default()
        },
        Arc::new(SystemClock),
    );
    let base_url = mock.spawn().await?;

    let public = TcpListener::bind("127.0.0.1:0").await?;
    let api = TcpListener::bind("127.0.0.1:0").await?;
    let mut config = Config::default();
    config.server.public_url = format!("http://{}", public.local_addr()?);
    config.database.url = format!("sqlite://{}", dir.join("demo.db").display());
    config.webhook.secret = Some(SecretString::from(
        uuid::Uuid::new_v4().simple().to_string(),
    ));
    config.pictory.base_url = base_url;
    config.pictory.api_key = Some(SecretString::from("pictai_demo"));
    config.reconcile.grace = Duration::from_secs(3);
    config.reconcile.interval = Duration::from_secs(1);
    config.reconcile.max_interval = Duration::from_secs(3);
    config.reconcile.rate = 10;
    config.validate()?;
    let api_url = format!("http://{}", api.local_addr()?);

    println!(
        "jobhook demo: a fake Pictory and jobhook on loopback, SQLite in {}",
        dir.display()
    );
    println!(
        "The fake fails ~15% of jobs and drops, duplicates or reorders ~30% of webhooks each.\n"
    );
    let store = store::open_with(&config.database.url, &config.database.store_options()).await?;
    let service = Service::start(config, store, Arc::new(SystemClock)).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(service.run(Listeners { public, api }, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let mut submitted = Vec::with_capacity(VIDEOS);
    for n in 0..VIDEOS {
        let model = MODELS[n % MODELS.len()];
        let body = json!({"prompt": PROMPTS[n % PROMPTS.len()], "model": model,
            "metadata": {"demo_video": n + 1}});
        let response = client
            .post(format!("{api_url}/v1/videos"))
            .header("idempotency-key", format!("demo-{n}"))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "submission {n} answered {}",
            response.status()
        );
        let job: Value = response.json().await?;
        let id = job["job_id"].as_str().context("no job id")?.to_owned();
        submitted.push((id, model));
    }
    println!("Submitted {VIDEOS} videos through POST /v1/videos. Waiting for results (long-poll, no polling loop):");

    let bar = ProgressBar::new(VIDEOS as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} final  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let waits = submitted.iter().map(|(id, _)| {
        let client = client.clone();
        let url = format!("{api_url}/v1/jobs/{id}?wait=60s");
        let bar = bar.clone();
        async move {
            let job: Value = client.get(&url).send().await?.json().await?;
            bar.inc(1);
            bar.set_message(format!(
                "last: {} {}",
                short(job["job_id"].as_str().unwrap_or("?")),
                job["status"].as_str().unwrap_or("?")
            ));
            anyhow::Ok(job)
        }
    });
    let jobs = futures::future::try_join_all(waits).await?;
    bar.finish_and_clear();

    print_table(&submitted, &jobs);
    let count = |f: &dyn Fn(&Value) -> bool| jobs.iter().filter(|j| f(j)).count();
    let completed = count(&|j| j["status"] == "completed");
    let failed = count(&|j| j["status"] == "failed");
    let by_webhook = count(&|j| j["resolved_by"] == "webhook");
    let by_poll = count(&|j| j["resolved_by"] == "poll");
    let calls: i64 = jobs.iter().filter_map(|j| j["poll_count"].as_i64()).sum();
    println!(
        "\n{VIDEOS} jobs: {completed} completed, {failed} failed. Resolved by webhook: {by_webhook}, by fallback poll: {by_poll}."
    );
    println!(
        "{calls} Get Job calls in all; {} Generate calls (one per video, never two); {} webhooks sent by the fake for {VIDEOS} jobs.",
        mock.generate_calls(),
        mock.webhooks_sent()
    );
    println!("Every webhook's body was only a hint: each job's state came from Pictory's Get Job answer.");

    let _ = stop.send(());
    running.await??;
    Ok(())
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn print_table(submitted: &[(String, &str)], jobs: &[Value]) {
    println!(
        "\n{:>3}  {:<9} {:<12} {:<10} {:<13} {:>13} {:>8}",
        "#", "job", "model", "status", "resolved by", "Get Job calls", "credits"
    );
    for (n, ((id, model), job)) in submitted.iter().zip(jobs).enumerate() {
        let credits = job["output"]["ai_credits_used"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
        let resolved = match job["resolved_by"].as_str() {
            Some("poll") => "fallback poll",
            Some(other) => other,
            None => "-",
        };
        println!(
            "{:>3}  {:<9} {:<12} {:<10} {:<13} {:>13} {:>8}",
            n + 1,
            short(id),
            model,
            job["status"].as_str().unwrap_or("?"),
            resolved,
            job["poll_count"].as_i64().unwrap_or(0),
            credits
        );
    }
}
