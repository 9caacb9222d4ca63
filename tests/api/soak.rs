//! A bounded mixed-load run against a misbehaving fake Pictory, with invariants checked at the
//! end. Three seconds by default; `JOBHOOK_SOAK_SECONDS=600 cargo test soak` for a long one.

use crate::helpers::*;
use crate::stream::SseClient;
use jobhook::mock::MockOptions;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    server_errors: AtomicUsize,
    upstream_unavailable: AtomicUsize,
    garbage_sent: AtomicUsize,
    reads: AtomicUsize,
}

#[tokio::test]
async fn mixed_load_against_a_misbehaving_pictory_keeps_every_invariant() {
    let seconds: u64 = std::env::var("JOBHOOK_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut options = Options::new(|config| {
        config.reconcile.grace = Duration::from_secs(1);
        config.reconcile.interval = Duration::from_secs(1);
        config.reconcile.max_interval = Duration::from_secs(2);
        config.reconcile.rate = 100;
    });
    options.pictory = Some(MockOptions {
        job_duration: Duration::from_millis(200),
        failure_rate: 0.2,
        drop_rate: 0.3,
        duplicate_rate: 0.3,
        reorder_rate: 0.3,
        // Each 429 holds every poll back for its Retry-After, so a high rate starves a long run.
        throttle_rate: 0.01,
        retry_after_secs: Some(1),
        error_rate: 0.1,
        seed: Some(99),
        ..MockOptions::default()
    });
    let app = Arc::new(spawn(options).await);
    let first_change = app.state.store.latest_change_id().await.unwrap();
    let mut stream = SseClient::connect(&app, "", None).await;
    let tally = Arc::new(Tally::default());
    let submitted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop_at = Instant::now() + Duration::from_secs(seconds);

    let mut workers = Vec::new();
    for worker in 0..4 {
        let app = app.clone();
        let tally = tally.clone();
        let submitted = submitted.clone();
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop_at {
                n += 1;
                let status = match worker {
                    0 | 1 => {
                        let model = ["pixverse5.5", "veo3.1_fast", "veo3.1"][n % 3];
                        let body = json!({"prompt": format!("soak {worker} {n}"), "model": model});
                        let response = app.post_json("/v1/videos", &body).await;
                        let status = response.status().as_u16();
                        let body: Value = response.json().await.unwrap();
                        if status == 503 && body["error"]["code"] == "upstream_unavailable" {
                            tally.upstream_unavailable.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if let Some(id) = body["submission_id"].as_str() {
                            submitted.lock().unwrap().push(id.to_owned());
                        }
                        // Pace submissions (about 20 a second each) so the verification polls
                        // they cause stay within the rate limit the fake's 429s leave.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        status
                    }
                    2 => {
                        tally.garbage_sent.fetch_add(1, Ordering::Relaxed);
                        app.webhook(format!("not json {n}")).await.status().as_u16()
                    }
                    _ => {
                        tally.reads.fetch_add(1, Ordering::Relaxed);
                        let last = submitted.lock().unwrap().last().cloned();
                        match last {
                            Some(id) => app
                                .get(&format!("/v1/jobs/{id}?wait=1s"))
                                .await
                                .status()
                                .as_u16(),
                            None => app.get("/v1/jobs?limit=50").await.status().as_u16(),
                        }
                    }
                };
                if status >= 500 {
                    tally.server_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Memory after a third of the run (warmed up) and at the end, to show it holds steady.
    let third = stop_at - Duration::from_secs(seconds) + Duration::from_secs(seconds.div_ceil(3));
    tokio::time::sleep_until(third.into()).await;
    let warmed = resident_mb();
    for worker in workers {
        worker.await.unwrap();
    }
    let ended = resident_mb();
    assert!(warmed > 0.0 && ended > 0.0, "resident memory unreadable");
    eprintln!("soak: resident memory {warmed:.0} MB after a third, {ended:.0} MB at the end");
    // The reading is the whole test process, where other tests run alongside, and a few
    // seconds cannot show a leak: the bound is held on long runs (JOBHOOK_SOAK_SECONDS).
    if seconds >= 30 {
        assert!(
            ended < warmed + 64.0,
            "memory grew from {warmed:.0} MB to {ended:.0} MB"
        );
    }

    assert_eq!(
        tally.server_errors.load(Ordering::Relaxed),
        0,
        "no server errors"
    );
    let submitted = submitted.lock().unwrap().clone();
    assert!(!submitted.is_empty());
    // Every submission ends final (or submit_unknown when the fake answered ambiguously).
    for id in &submitted {
        let job = app.get_json(&format!("/v1/jobs/{id}?wait=60s")).await;
        let status = job["status"].as_str().unwrap();
        assert!(
            ["completed", "failed", "submit_unknown"].contains(&status),
            "{job}"
        );
    }
    // One paid job per submission that reached Pictory.
    let mock = app.mock();
    assert!(
        mock.generate_calls()
            <= submitted.len() + tally.upstream_unavailable.load(Ordering::Relaxed)
    );
    // Every garbage delivery is archived as rejected.
    let rejected = app
        .all("/v1/deliveries?outcome=rejected&limit=500")
        .await
        .len();
    assert_eq!(rejected, tally.garbage_sent.load(Ordering::Relaxed));
    // The stream saw every status change, in order, once.
    let changes = app
        .state
        .store
        .changes_after(first_change, 100_000)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < changes.len() {
        seen.push(stream.next().await.id);
    }
    let expected: Vec<i64> = changes.iter().map(|c| c.id).collect();
    assert_eq!(seen, expected);
    assert!(tally.reads.load(Ordering::Relaxed) > 0);
    eprintln!(
        "soak {seconds} s: {} submissions, {} garbage deliveries, {} reads, {} status changes streamed, \
         {} webhooks from the fake, {} Get Job calls, memory {warmed:.0} -> {ended:.0} MB",
        submitted.len(),
        tally.garbage_sent.load(Ordering::Relaxed),
        tally.reads.load(Ordering::Relaxed),
        seen.len(),
        mock.webhooks_sent(),
        mock.get_calls().len(),
    );
}

/// This process's resident memory (the service runs inside it), in MB.
fn resident_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
