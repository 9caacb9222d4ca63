//! `jobhook demo`: a self-contained tour. A fake Pictory and the service run on loopback with a
//! temporary SQLite file; a batch of videos is submitted; the fake drops, duplicates and reorders
//! webhooks and fails some jobs; a progress bar follows the jobs; a table shows how each ended.
//! Meanwhile a chain of three clips is made, each continuing from the last frame of the one
//! before; every completed job's files are archived to a local folder; the tour ends with the
//! credits used per model, as jobhook sums them and as the fake counted them.

use crate::app::{Listeners, Service};
use crate::config::Config;
use crate::domain::time::{rfc3339, Clock, SystemClock};
use crate::domain::usage::credits_milli;
use crate::mock::{MockOptions, MockPictory, MockState};
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
/// The chain: one video told in three clips.
const CHAIN: [&str; 3] = [
    "A paper plane is thrown from a rooftop at sunrise",
    "The paper plane glides over busy streets and a river",
    "The paper plane lands softly in a child's hands in a park",
];
/// Tries at each clip of the chain: the fake fails some jobs, and a failed clip is generated
/// again from the same frame.
const CHAIN_TRIES: usize = 3;

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
    let kept = dir.join("archive");
    config.archive.url = Some(format!("file://{}", kept.display()));
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

    // A little earlier than anything this run completes: the start of the usage range.
    let since = SystemClock.now_ms() - 1_000;
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
    // The chain is made while the batch resolves.
    let (jobs, chain) = tokio::join!(
        futures::future::try_join_all(waits),
        make_chain(&client, &api_url)
    );
    let (jobs, (chain, chain_submitted)) = (jobs?, chain?);
    bar.finish_and_clear();
    let jobs = with_archives(&client, &api_url, jobs).await?;

    print_table(&submitted, &jobs);
    let count = |f: &dyn Fn(&Value) -> bool| jobs.iter().filter(|j| f(j)).count();
    let completed = count(&|j| j["status"] == "completed");
    let failed = count(&|j| j["status"] == "failed");
    let by_webhook = count(&|j| j["resolved_by"] == "webhook");
    let by_poll = count(&|j| j["resolved_by"] == "poll");
    let calls: i64 = jobs
        .iter()
        .chain(&chain)
        .filter_map(|j| j["poll_count"].as_i64())
        .sum();
    let all = VIDEOS + chain_submitted;
    println!(
        "\n{VIDEOS} jobs: {completed} completed, {failed} failed. Resolved by webhook: {by_webhook}, by fallback poll: {by_poll}."
    );
    println!(
        "With the {chain_submitted} clips submitted for the chain below: {calls} Get Job calls in all; {} Generate calls for {all} jobs (never two for one); {} webhooks sent by the fake.",
        mock.generate_calls(),
        mock.webhooks_sent()
    );
    println!("Every webhook's body was only a hint: each job's state came from Pictory's Get Job answer.");
    let (files, bytes) = jobs
        .iter()
        .flat_map(|j| j["archive"]["files"].as_object().into_iter().flatten())
        .filter(|(_, f)| f["status"] == "done")
        .fold((0, 0), |(n, size), (_, f)| {
            (n + 1, size + f["size"].as_u64().unwrap_or(0))
        });
    println!(
        "Archived {files} files ({}) to {}: Pictory deletes its copies after a while; these stay, served by GET /v1/jobs/{{id}}/files/{{name}}.",
        human_size(bytes),
        kept.display()
    );

    print_chain(&chain);
    if let Some(failed) = jobs.iter().find(|j| j["status"] == "failed") {
        refuse_to_continue(&client, &api_url, failed).await?;
    }
    print_quota(&client, &api_url).await?;
    print_credits(&client, &api_url, &mock, since).await?;

    let _ = stop.send(());
    running.await??;
    Ok(())
}

/// The jobs again once the archive has kept (or given up on) the files of each completed one.
async fn with_archives(
    client: &reqwest::Client,
    api: &str,
    jobs: Vec<Value>,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut settled = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        while job["archive"]["status"] == "pending" && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let id = job["job_id"].as_str().context("no job id")?;
            job = client
                .get(format!("{api}/v1/jobs/{id}"))
                .send()
                .await?
                .json()
                .await?;
        }
        settled.push(job);
    }
    Ok(settled)
}

fn human_size(bytes: u64) -> String {
    if bytes < 10 * 1024 {
        format!("{bytes} B")
    } else if bytes < 10 * 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

/// Three clips, each continuing (`POST /v1/jobs/{id}/continue`) from the last frame of the one
/// before. Returns the chain as `GET /v1/jobs/{id}/chain` lists it, and how many clips were
/// submitted to make it (a failed first clip is not part of the chain).
async fn make_chain(client: &reqwest::Client, api: &str) -> anyhow::Result<(Vec<Value>, usize)> {
    let mut submitted = 0;
    let first = json!({"prompt": CHAIN[0], "model": "veo3.1_fast", "aspectRatio": "9:16",
        "duration": "4s", "metadata": {"demo_chain": 1}});
    let mut clip = until_completed(
        client,
        api,
        &format!("{api}/v1/videos"),
        &first,
        1,
        &mut submitted,
    )
    .await?;
    for (n, prompt) in CHAIN.iter().enumerate().skip(1) {
        let id = clip["job_id"].as_str().context("a clip without a job id")?;
        let next = json!({"prompt": prompt, "duration": "4s", "metadata": {"demo_chain": n + 1}});
        let url = format!("{api}/v1/jobs/{id}/continue");
        clip = until_completed(client, api, &url, &next, n + 1, &mut submitted).await?;
    }
    let id = clip["job_id"].as_str().context("a clip without a job id")?;
    let chain: Value = client
        .get(format!("{api}/v1/jobs/{id}/chain"))
        .send()
        .await?
        .json()
        .await?;
    let chain = chain["data"]
        .as_array()
        .cloned()
        .context("the chain has no data")?;
    Ok((chain, submitted))
}

/// Submits one clip (to `url`: the videos or a continue route) and waits for it, again when
/// the fake fails it; returns the completed clip.
async fn until_completed(
    client: &reqwest::Client,
    api: &str,
    url: &str,
    body: &Value,
    clip: usize,
    submitted: &mut usize,
) -> anyhow::Result<Value> {
    for attempt in 1..=CHAIN_TRIES {
        *submitted += 1;
        let response = client
            .post(url)
            .header("idempotency-key", format!("demo-chain-{clip}-{attempt}"))
            .json(body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "chain clip {clip} answered {}",
            response.status()
        );
        let job: Value = response.json().await?;
        let id = job["job_id"].as_str().context("no job id")?;
        let done: Value = client
            .get(format!("{api}/v1/jobs/{id}?wait=60s"))
            .send()
            .await?
            .json()
            .await?;
        if done["status"] == "completed" {
            return Ok(done);
        }
    }
    anyhow::bail!("chain clip {clip} failed {CHAIN_TRIES} times")
}

fn print_chain(chain: &[Value]) {
    println!(
        "
A longer video in clips: each continues from Pictory's last frame of the one before\n\
         (POST /v1/jobs/{{id}}/continue), as GET /v1/jobs/{{id}}/chain lists them:"
    );
    println!(
        "{:<9} {:<10} {:<9} {:<34} prompt",
        "clip", "status", "parent", "first frame"
    );
    for clip in chain {
        let first_frame = clip["request"]["firstFrameImageUrl"]
            .as_str()
            .map_or("-", |url| url.trim_start_matches("https://"));
        println!(
            "{:<9} {:<10} {:<9} {:<34} {}",
            short(clip["job_id"].as_str().unwrap_or("?")),
            clip["status"].as_str().unwrap_or("?"),
            clip["parent"].as_str().map_or("-", short),
            shorten(first_frame, 34),
            clip["request"]["prompt"].as_str().unwrap_or("")
        );
    }
}

/// A failed job has no last frame to start from: jobhook says so instead of paying for a clip.
async fn refuse_to_continue(
    client: &reqwest::Client,
    api: &str,
    failed: &Value,
) -> anyhow::Result<()> {
    let id = failed["job_id"].as_str().context("no job id")?;
    let response = client
        .post(format!("{api}/v1/jobs/{id}/continue"))
        .json(&json!({"prompt": "Continue a video that never was"}))
        .send()
        .await?;
    let status = response.status();
    let error: Value = response.json().await?;
    println!(
        "Continuing failed job {} is refused: {} {}",
        short(id),
        status.as_u16(),
        error["error"]["message"].as_str().unwrap_or("")
    );
    Ok(())
}

async fn print_quota(client: &reqwest::Client, api: &str) -> anyhow::Result<()> {
    let quota: Value = client
        .get(format!("{api}/v1/quota"))
        .send()
        .await?
        .json()
        .await?;
    let credits = &quota["data"]["aiCredits"];
    match (credits["used"].as_f64(), credits["limit"].as_f64()) {
        (Some(used), Some(limit)) => println!(
            "
GET /v1/quota (Pictory's, cached 60 s; no API key needed): {used} of {limit} AI credits used."
        ),
        _ => println!(
            "
GET /v1/quota (Pictory's, cached 60 s): {quota}"
        ),
    }
    Ok(())
}

/// Credits per model from `GET /v1/usage`, next to the fake's own count of what it charged.
async fn print_credits(
    client: &reqwest::Client,
    api: &str,
    mock: &MockPictory,
    since: i64,
) -> anyhow::Result<()> {
    let to = SystemClock.now_ms() + 1_000;
    let usage: Value = client
        .get(format!(
            "{api}/v1/usage?group_by=model&from={}&to={}",
            rfc3339(since),
            rfc3339(to)
        ))
        .send()
        .await?
        .json()
        .await?;
    let mut charged: std::collections::BTreeMap<String, i64> = Default::default();
    for job in mock.jobs() {
        if job.state == MockState::Completed {
            let model = job.request["model"].as_str().unwrap_or("pixverse5.5");
            *charged.entry(model.to_owned()).or_default() += credits_milli(job.credits);
        }
    }
    println!(
        "
Credits per model (GET /v1/usage?group_by=model), next to the fake's own count:"
    );
    println!(
        "{:<12} {:>5} {:>14} {:>16} {:>20}",
        "model", "jobs", "video seconds", "credits used", "the fake charged"
    );
    let number = |value: &Value| {
        value
            .as_f64()
            .map_or_else(|| "?".to_owned(), |n| n.to_string())
    };
    for group in usage["data"].as_array().into_iter().flatten() {
        let model = group["group"].as_str().unwrap_or("?");
        let fake = charged.get(model).copied().unwrap_or(0) as f64 / 1000.0;
        println!(
            "{:<12} {:>5} {:>14} {:>16} {:>20}",
            model,
            group["jobs"].as_i64().unwrap_or(0),
            number(&group["video_seconds"]),
            number(&group["credits"]),
            fake
        );
    }
    let total = &usage["total"];
    let fake_total = charged.values().sum::<i64>() as f64 / 1000.0;
    println!(
        "{:<12} {:>5} {:>14} {:>16} {:>20}",
        "total",
        total["jobs"].as_i64().unwrap_or(0),
        number(&total["video_seconds"]),
        number(&total["credits"]),
        fake_total
    );
    Ok(())
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// "4 files, 41.3 KiB" for a job whose files are archived; "-" for one with none.
fn files_kept(job: &Value) -> String {
    let Some(files) = job["archive"]["files"].as_object() else {
        return "-".to_owned();
    };
    let done: Vec<u64> = files
        .values()
        .filter(|f| f["status"] == "done")
        .map(|f| f["size"].as_u64().unwrap_or(0))
        .collect();
    format!(
        "{} of {} files, {}",
        done.len(),
        files.len(),
        human_size(done.iter().sum())
    )
}

fn print_table(submitted: &[(String, &str)], jobs: &[Value]) {
    println!(
        "\n{:>3}  {:<9} {:<12} {:<10} {:<13} {:>13} {:>8}  files kept",
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
            "{:>3}  {:<9} {:<12} {:<10} {:<13} {:>13} {:>8}  {}",
            n + 1,
            short(id),
            model,
            job["status"].as_str().unwrap_or("?"),
            resolved,
            job["poll_count"].as_i64().unwrap_or(0),
            credits,
            files_kept(job)
        );
    }
}
