//! Signed outbound notifications: the outbox, its retry schedule, 410, manual retries, crashes.

use crate::helpers::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use jobhook::changes::Changes;
use jobhook::config::{decode_whsec, NotifyEndpoint};
use jobhook::domain::time::{Clock, ManualClock};
use jobhook::metrics::Metrics;
use jobhook::notify::Notifier;
use jobhook::signature;
use jobhook::store::{self, NotifyRoute, Store};
use secrecy::SecretString;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: String,
}

/// A scripted answer: status, and a `Retry-After` (or, for a 3xx, `Location`) value.
type Answer = (u16, Option<&'static str>);

/// A local endpoint that answers from a script (200 once the script is used up).
#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<VecDeque<Answer>>>,
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
}

impl Receiver {
    async fn start(script: &[Answer]) -> (Receiver, String) {
        let receiver = Receiver::default();
        receiver
            .script
            .lock()
            .unwrap()
            .extend(script.iter().copied());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Received> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let arrived = self.arrived.notified();
                if self.received.lock().unwrap().len() >= n {
                    return self.received();
                }
                arrived.await;
            }
        })
        .await
        .expect("the notification arrives")
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    receiver
        .received
        .lock()
        .unwrap()
        .push(Received { headers, body });
    receiver.arrived.notify_waiters();
    let (status, retry_after) = receiver
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((200, None));
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(value) = retry_after {
        let name = if status / 100 == 3 {
            "location"
        } else {
            "retry-after"
        };
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

fn verify(received: &Received) -> Value {
    let key = decode_whsec(WHSEC).unwrap();
    let ts: i64 = received.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    signature::verify(&[key], &received.headers, received.body.as_bytes(), ts)
        .expect("signature verifies");
    serde_json::from_str(&received.body).unwrap()
}

fn endpoint(url: &str, events: &[&str]) -> NotifyEndpoint {
    NotifyEndpoint {
        url: url.to_owned(),
        secret: SecretString::from(WHSEC),
        events: events.iter().map(|e| e.to_string()).collect(),
    }
}

#[tokio::test]
async fn a_final_status_is_sent_signed_to_the_endpoints_that_want_it() {
    let (receiver, url) = Receiver::start(&[]).await;
    let (other, other_url) = Receiver::start(&[]).await;
    let url_of_completed = url.clone();
    let app = spawn_app_with(move |config| {
        config.notify.endpoints = vec![
            endpoint(&url, &["job.completed"]),
            endpoint(&other_url, &["job.failed"]),
        ];
    })
    .await;
    app.webhook(completed_body("n1").to_string()).await;
    let got = receiver.wait_for(1).await;
    loop_until_attempts(&app, "n1", 1).await;
    let body = verify(&got[0]);
    assert_eq!(body["type"], "job.completed");
    assert_eq!(body["data"]["job_id"], "n1");
    assert_eq!(body["data"]["status"], "completed");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(got[0].headers["webhook-id"]
        .to_str()
        .unwrap()
        .starts_with("msg_"));
    assert!(
        other.received().is_empty(),
        "the failed-only endpoint is not told about a completion"
    );

    let notifications = app.get_json("/v1/notifications?state=delivered").await;
    assert_eq!(notifications["data"].as_array().unwrap().len(), 1);
    // Notifications are queued with the change itself, so one for the failed-only endpoint
    // would be listed by now even if it had not been sent yet.
    let queued = app.get_json("/v1/notifications").await;
    let queued = queued["data"].as_array().unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["endpoint"], url_of_completed);
    let history = app.events("n1").await;
    let attempt = history
        .iter()
        .find(|e| e["kind"] == "notification")
        .expect("attempt in the history");
    assert_eq!(attempt["outcome"], "delivered");
    assert_eq!(attempt["attempt"], 1);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "jobhook_notification_attempts_total{outcome=\"delivered\"}"
        ),
        Some(1.0)
    );
}

fn route(url: &str, fingerprint: &str) -> NotifyRoute {
    NotifyRoute {
        url: url.to_owned(),
        events: vec!["job.completed".into(), "job.failed".into()],
        fingerprint: fingerprint.to_owned(),
    }
}

/// The outbox and a notifier stepped by hand on injected time.
struct Outbox {
    store: Arc<dyn Store>,
    clock: ManualClock,
    notifier: Notifier,
    _db: TestDb,
}

async fn outbox(url: &str, schedule: &[u64]) -> Outbox {
    let db = TestDb::fresh().await;
    let mut config = test_config(&db);
    config.notify.endpoints = vec![endpoint(url, &["job.completed", "job.failed"])];
    config.notify.retry_schedule = schedule.iter().map(|s| Duration::from_secs(*s)).collect();
    let store = store::open(&config.database.url).await.unwrap();
    store.migrate().await.unwrap();
    store
        .set_notify_routes(&[route(url, "fingerprint-1")])
        .await
        .unwrap();
    let clock = ManualClock::new(START_MS);
    let notifier = Notifier::new(
        &config,
        store.clone(),
        Arc::new(clock.clone()),
        Arc::new(Metrics::new()),
        Changes::new(),
        Arc::new(Notify::new()),
    )
    .unwrap()
    .unwrap();
    Outbox {
        store,
        clock,
        notifier,
        _db: db,
    }
}

impl Outbox {
    async fn complete(&self, id: &str) {
        self.store
            .ingest(delivery(&completed_body(id), self.clock.now_ms(), false))
            .await
            .unwrap();
    }

    async fn step(&mut self) {
        self.notifier.step(self.clock.now_ms()).await.unwrap();
        self.notifier.drain().await;
    }

    async fn only(&self) -> jobhook::store::Notification {
        let page = self.store.list_notifications(None, None, 10).await.unwrap();
        assert_eq!(page.items.len(), 1);
        page.items[0].clone()
    }
}

#[tokio::test]
async fn failures_are_retried_on_the_schedule_with_one_message_id() {
    let (receiver, url) = Receiver::start(&[(500, None), (503, None)]).await;
    let mut outbox = outbox(&url, &[5, 300, 1800]).await;
    outbox.complete("r1").await;
    outbox.step().await;
    let first = outbox.only().await;
    assert_eq!((first.state.as_str(), first.attempts), ("pending", 1));
    let due = first.next_attempt_at.unwrap() - START_MS;
    assert!(
        (5_000..=5_500).contains(&due),
        "first retry 5 s later (+ up to 10% jitter): {due}"
    );

    outbox.clock.set_ms(START_MS + 4_999);
    outbox.step().await;
    assert_eq!(receiver.received().len(), 1, "not before its time");
    outbox.clock.set_ms(START_MS + due);
    outbox.step().await;
    let second = outbox.only().await;
    let gap = second.next_attempt_at.unwrap() - (START_MS + due);
    assert!((300_000..=330_000).contains(&gap), "then 5 min: {gap}");
    outbox.clock.set_ms(second.next_attempt_at.unwrap());
    outbox.step().await;
    let done = outbox.only().await;
    assert_eq!((done.state.as_str(), done.attempts), ("delivered", 3));
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "the same webhook-id on every attempt"
    );
    let stamps: Vec<i64> = receiver
        .received()
        .iter()
        .map(|r| {
            r.headers["webhook-timestamp"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        stamps[0] < stamps[1] && stamps[1] < stamps[2],
        "the timestamp is the attempt's own"
    );
    for received in receiver.received() {
        verify(&received);
    }
}

#[tokio::test]
async fn exhausted_notifications_are_kept_and_can_be_sent_again() {
    let (receiver, url) = Receiver::start(&[(500, None), (500, None), (500, None)]).await;
    let mut outbox = outbox(&url, &[1, 2]).await;
    outbox.complete("x1").await;
    for _ in 0..3 {
        outbox.step().await;
        if let Some(at) = outbox.only().await.next_attempt_at {
            outbox.clock.set_ms(at);
        }
    }
    let exhausted = outbox.only().await;
    assert_eq!(
        (exhausted.state.as_str(), exhausted.attempts),
        ("exhausted", 3)
    );
    outbox.clock.advance_ms(86_400_000);
    outbox.step().await;
    assert_eq!(receiver.received().len(), 3, "nothing more once exhausted");

    let retried = outbox
        .store
        .retry_notification(exhausted.id, outbox.clock.now_ms())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retried.state, "pending");
    outbox.step().await;
    let delivered = outbox.only().await;
    assert_eq!(
        (delivered.state.as_str(), delivered.attempts),
        ("delivered", 4)
    );
    assert_eq!(receiver.received().len(), 4);
}

#[tokio::test]
async fn gone_disables_the_endpoint_until_it_is_enabled_again() {
    let (receiver, url) = Receiver::start(&[(410, None)]).await;
    let mut outbox = outbox(&url, &[5]).await;
    outbox.complete("g1").await;
    outbox.step().await;
    let states = outbox.store.endpoint_states().await.unwrap();
    assert!(states[0].disabled_at.is_some());
    assert_eq!(
        outbox.store.next_notification_due().await.unwrap(),
        None,
        "nothing due: the notifier sleeps"
    );
    outbox.complete("g2").await;
    outbox.clock.advance_ms(3_600_000);
    outbox.step().await;
    assert_eq!(
        receiver.received().len(),
        1,
        "a disabled endpoint gets nothing"
    );
    assert!(outbox
        .store
        .enable_endpoint(&url, outbox.clock.now_ms())
        .await
        .unwrap());
    outbox.step().await;
    let bodies: Vec<Value> = receiver
        .received()
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    assert_eq!(
        bodies.len(),
        3,
        "both pending notifications go out after re-enabling"
    );
}

#[tokio::test]
async fn retry_after_is_honoured_and_redirects_are_not_followed() {
    let (receiver, url) = Receiver::start(&[
        (429, Some("600")),
        (302, Some("http://127.0.0.1:9/elsewhere")),
    ])
    .await;
    let mut outbox = outbox(&url, &[5, 5, 5]).await;
    outbox.complete("ra").await;
    outbox.step().await;
    let waiting = outbox.only().await;
    assert!(
        waiting.next_attempt_at.unwrap() >= START_MS + 600_000,
        "Retry-After beats the 5 s schedule"
    );
    outbox.clock.set_ms(waiting.next_attempt_at.unwrap());
    outbox.step().await;
    let redirected = outbox.only().await;
    assert_eq!(redirected.state, "pending", "a 3xx is a failure");
    assert_eq!(redirected.last_status, Some(302));
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn a_notification_committed_before_a_crash_is_sent_after_it_with_the_same_id() {
    let (receiver, url) = Receiver::start(&[]).await;
    let mut outbox = outbox(&url, &[5]).await;
    outbox.complete("c1").await;
    // A notifier leased it and died mid-send.
    let leased = outbox
        .store
        .claim_notifications(START_MS, START_MS + 45_000, 10)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    outbox.step().await;
    assert!(
        receiver.received().is_empty(),
        "leased to the dead notifier"
    );
    outbox.clock.set_ms(START_MS + 45_000);
    outbox.step().await;
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].headers["webhook-id"].to_str().unwrap(),
        leased[0].message_id
    );
}

#[tokio::test]
async fn the_notification_api_lists_shows_and_retries() {
    let (_receiver, url) = Receiver::start(&[(500, None), (500, None)]).await;
    let app = spawn_app_with(move |config| {
        config.notify.endpoints = vec![endpoint(&url, &["job.completed"])];
        config.notify.retry_schedule = vec![Duration::from_secs(1)];
    })
    .await;
    app.webhook(completed_body("api1").to_string()).await;
    // Wait for the first attempt through the job's history.
    let id = loop_until_attempts(&app, "api1", 1).await;
    app.clock.advance_ms(2_000);
    app.state.outbox_wake.notify_one();
    loop_until_attempts(&app, "api1", 2).await;
    let shown = app.get_json(&format!("/v1/notifications/{id}")).await;
    assert_eq!(shown["state"], "exhausted");
    assert_eq!(shown["attempts"], 2);
    assert_eq!(shown["payload"]["type"], "job.completed");
    let retried = app
        .post_empty(&format!("/v1/notifications/{id}/retry"))
        .await;
    assert_eq!(retried.status(), 200);
    loop_until_attempts(&app, "api1", 3).await;
    let shown = app.get_json(&format!("/v1/notifications/{id}")).await;
    assert_eq!(shown["state"], "delivered");
    assert_eq!(
        app.post_empty(&format!("/v1/notifications/{id}/retry"))
            .await
            .status(),
        409
    );
    assert_eq!(
        app.post_empty("/v1/notifications/999/retry").await.status(),
        404
    );
    assert_eq!(app.get("/v1/notifications?state=lost").await.status(), 400);
    let endpoints = app.get_json("/v1/notify/endpoints").await;
    assert_eq!(endpoints["data"][0]["enabled"], true);
    let unknown = app
        .post_json(
            "/v1/notify/endpoints/enable",
            &serde_json::json!({"url": "http://nope"}),
        )
        .await;
    assert_eq!(unknown.status(), 404);
}

/// Waits, on the job's change notifications, until `n` attempts are in its history; returns
/// the notification id.
async fn loop_until_attempts(app: &TestApp, job: &str, n: usize) -> i64 {
    let mut changes = app.state.changes.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let history = app.events(job).await;
            let attempts: Vec<&Value> = history
                .iter()
                .filter(|e| e["kind"] == "notification")
                .collect();
            if attempts.len() >= n {
                return attempts[0]["notification_id"].as_i64().unwrap();
            }
            let _ = changes.recv().await;
        }
    })
    .await
    .expect("the attempts happen")
}

#[tokio::test]
async fn an_endpoint_that_hangs_does_not_hold_up_the_others() {
    // One endpoint accepts connections and never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}/hook", hanging.local_addr().unwrap());
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    let (receiver, url) = Receiver::start(&[]).await;
    let app = spawn_app_with(move |config| {
        config.notify.endpoints = vec![
            endpoint(&hanging_url, &["job.completed"]),
            endpoint(&url, &["job.completed"]),
        ];
    })
    .await;
    for n in 0..5 {
        app.webhook(completed_body(&format!("h{n}")).to_string())
            .await;
    }
    let got = receiver.wait_for(5).await;
    assert_eq!(
        got.len(),
        5,
        "the healthy endpoint got every notification while the other hangs"
    );
}

#[tokio::test]
async fn a_changed_configuration_re_enables_a_gone_endpoint() {
    let (receiver, url) = Receiver::start(&[(410, None)]).await;
    let mut outbox = outbox(&url, &[5]).await;
    outbox.complete("cfg1").await;
    outbox.step().await;
    assert!(outbox.store.endpoint_states().await.unwrap()[0]
        .disabled_at
        .is_some());
    // A restart with the same configuration keeps it disabled...
    outbox
        .store
        .set_notify_routes(&[route(&url, "fingerprint-1")])
        .await
        .unwrap();
    assert!(outbox.store.endpoint_states().await.unwrap()[0]
        .disabled_at
        .is_some());
    // ...a changed one (a new secret, say) enables it again.
    outbox
        .store
        .set_notify_routes(&[route(&url, "fingerprint-2")])
        .await
        .unwrap();
    assert!(outbox.store.endpoint_states().await.unwrap()[0]
        .disabled_at
        .is_none());
    outbox.step().await;
    assert_eq!(receiver.received().len(), 2);
}
