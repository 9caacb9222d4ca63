//! A Pictory that answers 429 again and again: the reconciler slows down instead of falling
//! over, never makes more Get Job calls than `reconcile.rate` in any second, and still brings
//! every job to its final state or its deadline.

use crate::helpers::*;
use jobhook::domain::time::Clock;
use jobhook::mock::{MockOptions, MockState};
use serde_json::Value;
use std::time::Duration;

const RATE: usize = 20;

/// Most calls in any closed one-second window (the limiter's own definition).
fn busiest_second(calls: &[i64]) -> usize {
    calls
        .iter()
        .map(|&start| {
            calls
                .iter()
                .filter(|&&t| t >= start && t <= start + 1000)
                .count()
        })
        .max()
        .unwrap_or(0)
}

struct Storm {
    statuses: Vec<String>,
    calls: Vec<i64>,
    throttled_calls: usize,
    lowest_effective_rate: f64,
    readyz_said_throttled: bool,
}

/// `jobs` jobs, half done at once and half two seconds in, polled through a storm of 429s.
async fn storm(
    jobs: usize,
    deadline: Duration,
    throttle_rate: f64,
    retry_after_secs: Option<u64>,
) -> Storm {
    let mut options = Options::new(move |config| {
        config.reconcile.grace = Duration::from_millis(500);
        config.reconcile.interval = Duration::from_millis(500);
        config.reconcile.max_interval = Duration::from_secs(2);
        config.reconcile.deadline = deadline;
        config.reconcile.rate = RATE as u32;
    });
    options.pictory = Some(MockOptions {
        drop_rate: 1.0,
        throttle_rate,
        retry_after_secs,
        seed: Some(11),
        ..MockOptions::default()
    });
    let app = spawn(options).await;
    let ids: Vec<String> = (0..jobs).map(|n| format!("storm-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let state = if n % 2 == 0 {
            MockState::Completed
        } else {
            MockState::InProgress
        };
        app.mock().set_state(id, state);
        app.register(id).await;
    }
    let mut lowest_effective_rate = RATE as f64;
    let mut readyz_said_throttled = false;
    let mut flipped = false;
    let give_up = std::time::Instant::now() + deadline + Duration::from_secs(5);
    let statuses = loop {
        if !flipped && app.clock.now_ms() > START_MS + 2_000 {
            for id in ids.iter().skip(1).step_by(2) {
                app.mock().set_state(id, MockState::Completed);
            }
            flipped = true;
        }
        if let Some(rate) = metric_value(&app.metrics().await, "jobhook_reconcile_effective_rate") {
            lowest_effective_rate = lowest_effective_rate.min(rate);
        }
        let ready: Value = app.get("/readyz").await.json().await.unwrap();
        readyz_said_throttled |= ready["polling"]["throttled"] == true;
        let jobs = app.all("/v1/jobs?limit=500").await;
        let statuses: Vec<String> = jobs
            .iter()
            .map(|j| j["status"].as_str().unwrap().to_owned())
            .collect();
        let open = statuses
            .iter()
            .filter(|s| ["pending", "in_progress"].contains(&s.as_str()))
            .count();
        if open == 0 {
            break statuses;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "{open} jobs neither final nor timed out after the deadline: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all = app.mock().get_calls();
    Storm {
        statuses,
        calls: all.iter().map(|c| c.at_ms).collect(),
        throttled_calls: all.iter().filter(|c| c.status == 429).count(),
        lowest_effective_rate,
        readyz_said_throttled,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_percent_429_rate_slows_polling_but_every_job_completes() {
    let storm = storm(40, Duration::from_secs(15), 0.10, Some(1)).await;
    assert_eq!(storm.statuses.len(), 40);
    assert!(
        storm.statuses.iter().all(|s| s == "completed"),
        "{:?}",
        storm.statuses
    );
    assert!(storm.throttled_calls > 0, "the storm happened");
    assert!(busiest_second(&storm.calls) <= RATE);
    assert!(
        storm.lowest_effective_rate < RATE as f64,
        "the rate adapted"
    );
    assert!(storm.readyz_said_throttled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_percent_429_rate_without_retry_after_never_breaks_the_rate_and_ends_every_job() {
    // Half of all calls refused whatever the pace: the rate falls to a call or two a second
    // (it halves on a 429 and climbs only in seconds without one), so fewer jobs.
    let storm = storm(12, Duration::from_secs(20), 0.50, None).await;
    assert_eq!(storm.statuses.len(), 12);
    assert!(
        storm
            .statuses
            .iter()
            .all(|s| s == "completed" || s == "timed_out"),
        "{:?}",
        storm.statuses
    );
    let completed = storm.statuses.iter().filter(|s| *s == "completed").count();
    assert!(completed >= 6, "only {completed} completed");
    assert!(
        storm.throttled_calls >= 4,
        "the storm happened: {} of {} calls refused",
        storm.throttled_calls,
        storm.calls.len()
    );
    assert!(busiest_second(&storm.calls) <= RATE);
    assert!(storm.lowest_effective_rate < RATE as f64 / 2.0);
    assert!(storm.readyz_said_throttled);
}
