//! Losing the database (SPEC §9): while PostgreSQL is unreachable, webhooks answer `503` with
//! `Retry-After` within seconds and nothing is acknowledged that was not committed, the API
//! answers `503`, and everything (the pool, the listener, the reconciler, the lease-owner lock)
//! resumes by itself when the database returns. The replica under test reaches its database
//! through a TCP proxy the test cuts and restores.

use crate::helpers::*;
use crate::proxy::{upstream_of, Cut, TcpProxy};
use jobhook::mock::{MockOptions, MockState};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One webhook sent, and how it was answered.
#[derive(Debug, Clone)]
struct Sent {
    job: String,
    status: u16,
    retry_after: bool,
    took: Duration,
    delivery_id: Option<i64>,
}

/// Sends webhooks for new jobs one after the other until `stop`, recording every answer.
async fn send_until(
    app_url: String,
    mock: jobhook::mock::MockPictory,
    sent: Arc<Mutex<Vec<Sent>>>,
    sender: usize,
    stop: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for n in 0.. {
        if stop.is_cancelled() {
            return;
        }
        let job = format!("outage-{sender}-{n}");
        mock.set_state(&job, MockState::Completed);
        let started = Instant::now();
        let response = client
            .post(&app_url)
            .body(completed_body(&job).to_string())
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        sent.lock().unwrap().push(Sent {
            job,
            status,
            retry_after,
            took,
            delivery_id: body["delivery_id"].as_i64(),
        });
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn acked(sent: &Mutex<Vec<Sent>>) -> usize {
    sent.lock()
        .unwrap()
        .iter()
        .filter(|s| s.status == 200)
        .count()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_refuses_connections_jobhook_answers_503_and_resumes_by_itself() {
    outage(Cut::Refuse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_network_to_the_database_drops_everything_jobhook_answers_503_within_seconds_and_resumes(
) {
    outage(Cut::Silence).await;
}

/// Webhooks sent all along from three senders; the database cut off for three seconds.
async fn outage(how: Cut) {
    if postgres_server().is_none() {
        say_skipped("skipped on SQLite: the database is a file of the process itself");
        return;
    }
    let db = TestDb::fresh().await;
    let proxy = TcpProxy::start(upstream_of(&db.url)).await;
    // A reaches the database through the proxy and verifies webhooks with Get Job (it alone
    // polls); B, connected directly and receive-only, writes while A is cut off.
    let mut behind_proxy = db.alias();
    behind_proxy.url = proxy.url_for(&db.url);
    let mut options = Options::new(|config| {
        config.reconcile.rate = 50;
    });
    options.db = Some(behind_proxy);
    options.pictory = Some(MockOptions {
        job_duration: Duration::from_secs(600),
        drop_rate: 1.0,
        ..MockOptions::default()
    });
    let a = spawn(options).await;
    let mut options = Options::new(|_| {});
    options.db = Some(db.alias());
    options.clock = Some(a.clock.clone());
    let b = spawn(options).await;

    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = CancellationToken::new();
    let senders: Vec<_> = (0..3)
        .map(|n| {
            tokio::spawn(send_until(
                a.webhook_url.clone(),
                a.mock().clone(),
                sent.clone(),
                n,
                stop.clone(),
            ))
        })
        .collect();
    wait_for("webhooks acknowledged before the cut", || {
        acked(&sent) >= 10
    })
    .await;

    proxy.cut(how);
    let cut_started = Instant::now();
    let cut_at = sent.lock().unwrap().len();
    wait_for("webhooks refused during the cut", || {
        sent.lock().unwrap()[cut_at..]
            .iter()
            .filter(|s| s.status == 503)
            .count()
            >= 6
    })
    .await;
    // The API answers 503 in its JSON error format, with Retry-After, within seconds.
    let started = Instant::now();
    let listed = a.get("/v1/jobs?limit=5").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(listed.status(), 503);
    assert!(listed.headers().contains_key("retry-after"));
    let error: Value = listed.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unavailable", "{error}");
    // Each replica's readiness is about its own connection: B, connected directly, is ready.
    assert_eq!(a.get("/readyz").await.status(), 503);
    assert_eq!(b.get("/readyz").await.status(), 200);
    assert!(proxy.refused() > 0, "jobhook tried to reconnect meanwhile");
    // Long enough for the loops to back off and the lease-owner lock to be lost for good.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(cut_started.elapsed())).await;

    proxy.restore();
    let restored_at = sent.lock().unwrap().len();
    wait_for("webhooks acknowledged after the database came back", || {
        sent.lock().unwrap()[restored_at..]
            .iter()
            .filter(|s| s.status == 200)
            .count()
            >= 10
    })
    .await;
    stop.cancel();
    for sender in senders {
        sender.await.unwrap();
    }
    let sent = sent.lock().unwrap().clone();

    for s in &sent {
        assert!(
            s.took < Duration::from_secs(8),
            "{} was answered {} after {:?}",
            s.job,
            s.status,
            s.took
        );
        assert!(
            s.status == 200 || (s.status == 503 && s.retry_after),
            "{} was answered {} (Retry-After: {})",
            s.job,
            s.status,
            s.retry_after
        );
    }
    // Every acknowledged delivery was committed: B, which never lost the database, has it.
    for s in sent.iter().filter(|s| s.status == 200) {
        let id = s.delivery_id.expect("an acknowledged delivery has an id");
        let delivery = b.get(&format!("/v1/deliveries/{id}")).await;
        assert_eq!(
            delivery.status(),
            200,
            "{} was acknowledged, not stored",
            s.job
        );
        let delivery: Value = delivery.json().await.unwrap();
        assert_eq!(delivery["job_id"], s.job.as_str());
    }
    // A's reconciler resumed: it alone verifies webhooks with Get Job, and the last ones are
    // completed by its calls.
    let last_acked = sent.iter().rev().find(|s| s.status == 200).unwrap();
    assert_eq!(a.wait_final(&last_acked.job).await["status"], "completed");
    assert!(
        a.mock()
            .get_calls()
            .iter()
            .any(|call| call.job_id == last_acked.job),
        "completed by A's Get Job call, not by the webhook's body"
    );
    // A's pool and API are back, and so is its listener: a change B makes reaches a long-poll
    // on A at once.
    assert_eq!(a.get("/readyz").await.status(), 200);
    b.register("after-the-cut").await;
    let waiting = {
        let client = a.client.clone();
        let url = format!("{}/v1/jobs/after-the-cut?wait=20s", a.api_url);
        tokio::spawn(async move {
            let started = Instant::now();
            let job: Value = client
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (job, started.elapsed())
        })
    };
    a.wait_for_long_polls(1).await;
    assert_eq!(
        b.webhook(completed_body("after-the-cut").to_string())
            .await
            .status(),
        200
    );
    let (job, waited) = waiting.await.unwrap();
    assert_eq!(job["status"], "completed", "{job}");
    assert!(waited < Duration::from_secs(5), "heard after {waited:?}");
    // The cut ended A's lease-owner lock on the server; A takes it again by itself (so a
    // replica starting up cannot take its leases for a dead one's), and counts itself among
    // the live replicas.
    let held = || async {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
        // 0x6a68: the class of every lease-owner lock ("jh").
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 27240 \
             AND objsubid = 2 AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        admin.close().await.unwrap();
        held
    };
    let mut owners = 0;
    for _ in 0..100 {
        owners = held().await;
        if owners == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(owners, 2, "A and B each hold their lease-owner lock");
    assert_eq!(
        metric_value(&a.metrics().await, "jobhook_replicas"),
        Some(2.0)
    );
}
