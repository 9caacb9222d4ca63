//! `jobhook-bench --archive`: archiving one large file from a local server, against `curl`
//! downloading the same file to disk in the same run, and the peak memory of the process.

use super::{jobhook_env, webhook_url, Server};
use anyhow::Context as _;
use jobhook::mock::{MockOptions, MockPictory, MockState};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rounds of each; the best of each is reported (the machine is shared: the best is the one
/// least disturbed).
const ROUNDS: usize = 3;

pub async fn print_archive(quick: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("jobhook-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, quick).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(dir: &Path, quick: bool) -> anyhow::Result<()> {
    let size: u64 = if quick { 100 << 20 } else { 500 << 20 };
    let mock = MockPictory::new(
        MockOptions {
            video_size: Some(size),
            ..MockOptions::default()
        },
        Arc::new(jobhook::domain::time::SystemClock),
    );
    mock.spawn().await?;
    let client = reqwest::Client::new();

    let mut curl_best = f64::MAX;
    let mut jobhook_best = f64::MAX;
    let mut peak_mb: f64 = 0.0;
    let mut idle_mb: f64 = 0.0;
    for round in 0..ROUNDS {
        let id = format!("bench-archive-{round}");
        mock.set_state(&id, MockState::Completed);
        let url = mock.file_url(&id, "video.mp4");

        let target = dir.join(format!("curl-{round}.mp4"));
        let started = Instant::now();
        let status = tokio::process::Command::new("curl")
            .args(["-sS", "-o"])
            .arg(&target)
            .arg(&url)
            .status()
            .await
            .context("curl is needed for the baseline")?;
        anyhow::ensure!(status.success(), "curl failed: {status}");
        curl_best = curl_best.min(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            std::fs::metadata(&target)?.len() == size,
            "curl got a short file"
        );
        std::fs::remove_file(&target)?;

        let archive = dir.join(format!("archive-{round}"));
        let db = dir.join(format!("archive-{round}.db"));
        let server = Server::start(
            &["jobhook"],
            &jobhook_env(
                &db,
                &[
                    (
                        "JOBHOOK_ARCHIVE_URL",
                        format!("file://{}", archive.display()),
                    ),
                    ("JOBHOOK_ARCHIVE_FILES", "video".to_owned()),
                ],
            ),
        )
        .await?;
        idle_mb = idle_mb.max(peak_rss_mb(server.pid()));
        let hook = webhook_url(&client, &server).await?;
        let body = mock.job_body(&id).context("the fake's job")?.to_string();
        let started = Instant::now();
        let answer = client.post(&hook).body(body).send().await?;
        anyhow::ensure!(answer.status().is_success(), "webhook: {}", answer.status());
        let job = wait_archived(&client, &server.api, &id).await?;
        jobhook_best = jobhook_best.min(started.elapsed().as_secs_f64());
        peak_mb = peak_mb.max(peak_rss_mb(server.pid()));
        anyhow::ensure!(
            job["archive"]["files"]["video"]["size"].as_u64() == Some(size),
            "jobhook kept a short file: {job}"
        );
        server.stop().await;
        std::fs::remove_dir_all(&archive)?;
    }

    let mb = size as f64 / (1024.0 * 1024.0);
    println!(
        "\nArchiving one {mb:.0} MiB file from a local server (best of {ROUNDS}):\n\n\
         | measure | jobhook | baseline | ratio | target |\n|---|---|---|---|---|"
    );
    println!(
        "| archive throughput (MiB/s) vs curl to disk | {:.0} | {:.0} | {:.2} | ≥ 0.8 |",
        mb / jobhook_best,
        mb / curl_best,
        curl_best / jobhook_best
    );
    println!(
        "| peak resident memory of the process (MB) | {peak_mb:.1} | {idle_mb:.1} (idle, after start) | - | < 50 |"
    );
    Ok(())
}

async fn wait_archived(client: &reqwest::Client, api: &str, id: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let job: Value = client
            .get(format!("{api}/v1/jobs/{id}"))
            .send()
            .await?
            .json()
            .await?;
        match job["archive"]["status"].as_str() {
            Some("done") => return Ok(job),
            Some("pending") | None => {}
            Some(other) => anyhow::bail!("the archive ended {other}: {job}"),
        }
        anyhow::ensure!(Instant::now() < deadline, "not archived in 10 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The most memory the process has held resident so far (`VmHWM`), in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    status_kb(pid, "VmHWM:").map_or(0.0, |kb| kb / 1024.0)
}

fn status_kb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"));
    status.ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse().ok())
    })
}
