//! Several replicas acting as one service (SPEC §9, issue #12): one Get Job rate for all of
//! them, a `429` or an auth pause seen by one holding all, one Generate call per
//! `Idempotency-Key`. The replicas are whole services in this process on one PostgreSQL
//! database, with one fake Pictory; on a SQLite run these tests say so and return.

use crate::helpers::*;
use jobhook::config::Config;
use jobhook::domain::time::Clock;
use jobhook::mock::{Forced, GetCall, MockOptions, MockState};
use serde_json::Value;
use std::time::Duration;

fn postgres_only() -> bool {
    if postgres_server().is_none() {
        say_skipped("skipped on SQLite: PostgreSQL only (one process owns a SQLite database)");
        return false;
    }
    true
}

/// `n` replicas on one fresh database, with one fake Pictory (whose jobs never send webhooks)
/// and one clock, each configured by `configure`.
async fn replicas(n: usize, configure: fn(&mut Config)) -> Vec<TestApp> {
    let mut options = Options::new(configure);
    options.pictory = Some(MockOptions {
        job_duration: Duration::from_secs(600),
        drop_rate: 1.0,
        ..MockOptions::default()
    });
    let first = spawn(options).await;
    let base_url = first.state.config.pictory.base_url.clone();
    let api_key = first.state.config.pictory.api_key.clone();
    let mut apps = vec![first];
    for _ in 1..n {
        let (base_url, api_key) = (base_url.clone(), api_key.clone());
        let mut options = Options::new(move |config| {
            configure(config);
            config.pictory.base_url = base_url;
            config.pictory.api_key = api_key;
        });
        options.db = Some(apps[0].db.alias());
        options.clock = Some(apps[0].clock.clone());
        apps.push(spawn(options).await);
    }
    apps
}

/// Most calls in any closed one-second window (the limiter's own definition).
fn busiest_second(calls: &[GetCall]) -> usize {
    calls
        .iter()
        .map(|c| {
            calls
                .iter()
                .filter(|d| d.at_ms >= c.at_ms && d.at_ms <= c.at_ms + 1000)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Get Job calls this replica made, whatever their result.
async fn calls_made(app: &TestApp) -> f64 {
    app.metrics()
        .await
        .lines()
        .filter(|line| line.starts_with("jobhook_pictory_get_job_calls_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Registers `jobs` completed jobs named `prefix-N`, spread over the replicas, all due at once.
async fn register_due(apps: &[TestApp], prefix: &str, jobs: usize) -> Vec<String> {
    let mock = apps[0].mock();
    let mut ids = Vec::new();
    for n in 0..jobs {
        let id = format!("{prefix}-{n}");
        mock.set_state(&id, MockState::Completed);
        apps[n % apps.len()].register(&id).await;
        ids.push(id);
    }
    ids
}

/// Waits (30 s at most) until every job is completed.
async fn wait_all_completed(app: &TestApp, ids: &[String]) {
    for id in ids {
        let job = app.wait_final(id).await;
        assert_eq!(job["status"], "completed", "{job}");
    }
}

fn rate_10_grace_1s(config: &mut Config) {
    config.reconcile.rate = 10;
    config.reconcile.grace = Duration::from_secs(1);
    config.reconcile.interval = Duration::from_secs(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_together_never_exceed_the_rate_in_any_closed_second() {
    if !postgres_only() {
        return;
    }
    let apps = replicas(3, rate_10_grace_1s).await;
    let ids = register_due(&apps, "paced", 60).await;
    wait_all_completed(&apps[0], &ids).await;
    let calls = apps[0].mock().get_calls();
    assert_eq!(calls.len(), 60, "one call per job");
    assert!(
        busiest_second(&calls) <= 10,
        "{} calls in one second from three replicas at reconcile.rate = 10",
        busiest_second(&calls)
    );
    // Every replica polled, so the limit held for their calls together, not each alone.
    for app in &apps {
        assert!(calls_made(app).await >= 1.0, "each replica made calls");
    }
    // And the rate is used: 60 calls at 10 per second take about six seconds, not thirty.
    let span = calls.last().unwrap().at_ms - calls.first().unwrap().at_ms;
    assert!(span < 9_000, "60 calls took {span} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_replica_holds_back_every_replica() {
    if !postgres_only() {
        return;
    }
    let apps = replicas(3, rate_10_grace_1s).await;
    apps[0].mock().force_next(Forced {
        status: 429,
        retry_after: Some("2".into()),
        ..Default::default()
    });
    let ids = register_due(&apps, "held", 30).await;
    wait_all_completed(&apps[0], &ids).await;
    let calls = apps[0].mock().get_calls();
    let throttled = calls.iter().find(|c| c.status == 429).expect("the 429");
    // The calls already under way when the 429 came back are like calls in flight: allowed a
    // few tens of milliseconds; after that nobody calls until Retry-After has passed.
    let during_hold: Vec<i64> = calls
        .iter()
        .filter(|c| c.at_ms > throttled.at_ms + 50 && c.at_ms < throttled.at_ms + 2_000)
        .map(|c| c.at_ms - throttled.at_ms)
        .collect();
    assert!(
        during_hold.is_empty(),
        "calls {during_hold:?} ms after a 429 with Retry-After: 2"
    );
    assert_eq!(
        calls.len(),
        31,
        "every job once, and the refused call again"
    );
    assert!(busiest_second(&calls) <= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_failure_seen_by_one_replica_pauses_every_replica_until_a_probe_succeeds() {
    if !postgres_only() {
        return;
    }
    let apps = replicas(3, rate_10_grace_1s).await;
    apps[0].mock().force_next(Forced {
        status: 401,
        body: "{\"message\":\"Unauthorized\"}".into(),
        ..Default::default()
    });
    let ids = register_due(&apps, "paused", 12).await;
    // Every replica reports the pause, whichever one met the 401.
    for app in &apps {
        let mut paused = false;
        for _ in 0..300 {
            let ready: Value = app.get("/readyz").await.json().await.unwrap();
            if ready["pictory"]
                .as_str()
                .is_some_and(|p| p.contains("polling paused"))
            {
                paused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(paused, "a replica did not hear of the pause");
    }
    wait_all_completed(&apps[0], &ids).await;
    let calls = apps[0].mock().get_calls();
    let refused = calls.iter().find(|c| c.status == 401).expect("the 401");
    // Paused: nothing until the probe, one interval (2 s) later, made by one replica only.
    let after: Vec<i64> = calls
        .iter()
        .filter(|c| c.at_ms > refused.at_ms + 50)
        .map(|c| c.at_ms - refused.at_ms)
        .collect();
    assert!(
        after.first().is_some_and(|&first| first >= 1_975),
        "calls at {after:?} ms after the 401, before the probe"
    );
    // After the probe got through, polling resumed everywhere.
    for app in &apps {
        let ready: Value = app.get("/readyz").await.json().await.unwrap();
        assert!(ready["pictory"].is_null(), "{ready}");
    }
}

/// Jobs leased by each lease owner now, and the owners whose process is alive (holds its
/// lease-owner lock).
async fn leases_and_live_owners(url: &str) -> (Vec<(String, i64)>, Vec<i64>) {
    use sqlx::Connection as _;
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    let leased: Vec<(String, i64)> =
        sqlx::query_as("SELECT job_id, lease_owner FROM jobs WHERE leased AND job_id IS NOT NULL")
            .fetch_all(&mut db)
            .await
            .unwrap();
    // 27240 = 0x6a68, the class of every lease-owner lock ("jh").
    let live: Vec<i64> = sqlx::query_scalar(
        "SELECT objid::BIGINT FROM pg_locks WHERE locktype = 'advisory' AND classid = 27240 \
         AND objsubid = 2 AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    (leased, live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_no_acknowledged_webhook_when_one_is_killed_and_the_others_poll_its_jobs(
) {
    use crate::crash::start_with;
    use jobhook::domain::time::SystemClock;
    use jobhook::mock::MockPictory;
    use std::sync::{Arc, Mutex};
    use tokio_util::sync::CancellationToken;

    if !postgres_only() {
        return;
    }
    let mock = MockPictory::new(
        MockOptions {
            job_duration: Duration::from_secs(600),
            drop_rate: 1.0,
            ..MockOptions::default()
        },
        Arc::new(SystemClock),
    );
    let base_url = mock.spawn().await.unwrap();
    // Verify mode: every webhook asks for a Get Job call, far more than 20 a second can make,
    // so each replica always holds claimed (leased) jobs waiting for their slots.
    let env = [
        ("JOBHOOK_PICTORY_API_KEY", "pictai_cluster_test"),
        ("JOBHOOK_PICTORY_BASE_URL", base_url.as_str()),
        ("JOBHOOK_RECONCILE_RATE", "20"),
    ];
    let db = TestDb::fresh().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start_with(&db, &env).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.webhook_url.clone()).collect();
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let stop = CancellationToken::new();
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (urls, acked, stop, mock) =
                (urls.clone(), acked.clone(), stop.clone(), mock.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for n in 0.. {
                    if stop.is_cancelled() {
                        return;
                    }
                    let job = format!("rr-{sender}-{n}");
                    mock.set_state(&job, MockState::Completed);
                    // Round robin over the replicas, the dead one included.
                    let url = &urls[(sender + n) % urls.len()];
                    let Ok(response) = client
                        .post(url)
                        .body(completed_body(&job).to_string())
                        .send()
                        .await
                    else {
                        continue;
                    };
                    if response.status() != 200 {
                        continue;
                    }
                    let Ok(ack) = response.json::<Value>().await else {
                        continue;
                    };
                    acked
                        .lock()
                        .unwrap()
                        .push((job, ack["delivery_id"].as_i64().unwrap()));
                }
            })
        })
        .collect();
    let acked_count = || acked.lock().unwrap().len();
    while acked_count() < 90 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Kill one replica mid-load, right after noting which jobs each replica holds.
    let (leased, live_before) = leases_and_live_owners(&db.url).await;
    let mut victim = replicas.remove(2);
    victim.child.kill().await.unwrap();
    let killed_at = SystemClock.now_ms();
    let mut dead_owner = None;
    for _ in 0..100 {
        let (_, live) = leases_and_live_owners(&db.url).await;
        let gone: Vec<i64> = live_before
            .iter()
            .copied()
            .filter(|owner| !live.contains(owner))
            .collect();
        if let [owner] = gone[..] {
            dead_owner = Some(owner);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead_owner = dead_owner.expect("the killed replica's lease-owner lock ended");
    let orphaned: Vec<String> = leased
        .into_iter()
        .filter(|(_, owner)| *owner == dead_owner)
        .map(|(job, _)| job)
        .collect();
    assert!(
        !orphaned.is_empty(),
        "the killed replica held leased jobs when it died"
    );
    // The survivors take more webhooks, then the load stops.
    let after_kill = acked_count();
    while acked_count() < after_kill + 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    for sender in senders {
        sender.await.unwrap();
    }

    let survivor = &replicas[0];
    let acked = acked.lock().unwrap().clone();
    for (job, delivery_id) in &acked {
        let delivery = survivor.get(&format!("/v1/deliveries/{delivery_id}")).await;
        assert_eq!(
            delivery.status(),
            200,
            "delivery {delivery_id} of {job} was acknowledged, then lost"
        );
        let delivery: Value = delivery.json().await.unwrap();
        assert_eq!(&delivery["job_id"], job);
    }
    // Every acknowledged job is polled to the end by the replicas still alive, the killed
    // one's leased jobs too, long before their leases (90 s) would have run out.
    for (job, _) in &acked {
        let status: Value = survivor.get_json(&format!("/v1/jobs/{job}?wait=60s")).await;
        assert_eq!(status["status"], "completed", "{job}: {status}");
    }
    let calls = mock.get_calls();
    let polled_after_kill = orphaned
        .iter()
        .filter(|job| {
            calls
                .iter()
                .any(|c| &c.job_id == *job && c.at_ms > killed_at && c.at_ms < killed_at + 60_000)
        })
        .count();
    assert!(
        polled_after_kill > 0,
        "none of the killed replica's leased jobs {orphaned:?} was polled by the others"
    );
    assert!(busiest_second(&calls) <= 20);
}

async fn count(app: &TestApp) -> Option<f64> {
    metric_value(&app.metrics().await, "jobhook_replicas")
}

#[tokio::test]
async fn metrics_count_the_replicas_alive_and_a_stopped_one_drops_out() {
    if !postgres_only() {
        return;
    }
    let mut apps = replicas(3, |_| {}).await;
    for app in &apps {
        assert_eq!(count(app).await, Some(3.0));
    }
    let mut stopped = apps.pop().unwrap();
    stopped.stop().await.unwrap();
    assert_eq!(
        count(&apps[0]).await,
        Some(2.0),
        "a replica that stops says so"
    );
}

/// POSTs a video with `key` to `app`, returning the status and the body's text.
async fn submit_with_key(app: &TestApp, key: &str) -> (u16, String) {
    let response = app
        .client
        .post(format!("{}/v1/videos", app.api_url))
        .bearer_auth(TOKEN)
        .header("idempotency-key", key)
        .json(&serde_json::json!({"prompt": "a lighthouse in a storm", "metadata": {"n": 1}}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_at_once_to_two_replicas_makes_one_generate_call() {
    if !postgres_only() {
        return;
    }
    let apps = replicas(2, |_| {}).await;
    let mock = apps[0].mock().clone();
    for round in 0..3 {
        // Pictory takes a second to answer, so the twin arrives while the first is in flight.
        mock.force_next_generate(Forced {
            status: 200,
            body: format!("{{\"success\": true, \"data\": {{\"jobId\": \"twin-{round}\"}}}}"),
            delay: Duration::from_secs(1),
            ..Default::default()
        });
        let before = mock.generate_attempts();
        let key = format!("same-key-{round}");
        let (a, b) = tokio::join!(
            submit_with_key(&apps[round % 2], &key),
            submit_with_key(&apps[(round + 1) % 2], &key)
        );
        assert_eq!(
            mock.generate_attempts() - before,
            1,
            "one Generate call per key"
        );
        assert_eq!(a.0, 201, "{}", a.1);
        assert_eq!(a, b, "both replicas answer exactly what the call answered");
        let job: Value = serde_json::from_str(&a.1).unwrap();
        assert_eq!(job["job_id"], format!("twin-{round}"));
        // And later, on either replica, the key replays the same answer.
        assert_eq!(submit_with_key(&apps[1], &key).await, a);
    }
}
