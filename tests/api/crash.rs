//! The release-shaped binary under `kill -9` and SIGTERM: what was acknowledged is still there.

use crate::helpers::{completed_body, TestDb, SECRET, TOKEN};
use serde_json::Value;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) struct Service {
    pub(crate) child: Child,
    pub(crate) api: String,
    pub(crate) webhook_url: String,
    pub(crate) client: reqwest::Client,
}

/// Starts `jobhook serve` on the database `db` and ports the kernel picks, and reads them back
/// from its log.
async fn start(db: &TestDb) -> Service {
    start_with(db, &[]).await
}

pub(crate) async fn start_with(db: &TestDb, env: &[(&str, &str)]) -> Service {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobhook"));
    for (key, _) in std::env::vars() {
        if key.starts_with("JOBHOOK_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .arg("serve")
        .env("JOBHOOK_WEBHOOK_SECRET", SECRET)
        .env("JOBHOOK_API_TOKENS", TOKEN)
        .env("JOBHOOK_DATABASE_URL", &db.url)
        .env("JOBHOOK_SERVER_LISTEN", "127.0.0.1:0")
        .env("JOBHOOK_SERVER_API_LISTEN", "127.0.0.1:0")
        .env("JOBHOOK_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (public, api) = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("jobhook exited before it was listening");
        let Ok(entry) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if entry["message"] == "jobhook is listening" {
            break (
                entry["public"].as_str().unwrap().to_owned(),
                entry["api"].as_str().unwrap().to_owned(),
            );
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let client = reqwest::Client::new();
    let api = format!("http://{api}");
    let url: Value = client
        .get(format!("{api}/v1/webhook-url"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let webhook_url = url["url"]
        .as_str()
        .unwrap()
        .replace("http://localhost:8080", &format!("http://{public}"));
    Service {
        child,
        api,
        webhook_url,
        client,
    }
}

impl Service {
    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.api))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
    }
}

#[tokio::test]
async fn acknowledged_deliveries_survive_kill_9_and_restart() {
    let db = TestDb::fresh().await;
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    for round in 0..3 {
        let service = start(&db).await;
        let target = (round + 1) * 40;
        let mut senders = Vec::new();
        for sender in 0..4 {
            let client = service.client.clone();
            let url = service.webhook_url.clone();
            let acked = acked.clone();
            senders.push(tokio::spawn(async move {
                for n in 0.. {
                    let job = format!("crash-{round}-{sender}-{n}");
                    let sent = client
                        .post(&url)
                        .body(completed_body(&job).to_string())
                        .send()
                        .await;
                    let Ok(response) = sent else { return };
                    if response.status() != 200 {
                        return;
                    }
                    let Ok(ack) = response.json::<Value>().await else {
                        return;
                    };
                    let mut acked = acked.lock().unwrap();
                    acked.push((job, ack["delivery_id"].as_i64().unwrap()));
                    if acked.len() >= target {
                        return;
                    }
                }
            }));
        }
        // Kill while the senders are still going: as soon as this round's target is reached by one
        // of them, the others are mid-request.
        loop {
            if acked.lock().unwrap().len() >= target {
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut service = service;
        service.child.kill().await.unwrap();
        for sender in senders {
            sender.await.unwrap();
        }

        let service = start(&db).await;
        let acked_now = acked.lock().unwrap().clone();
        for (job, delivery_id) in &acked_now {
            let delivery = service.get(&format!("/v1/deliveries/{delivery_id}")).await;
            assert_eq!(
                delivery.status(),
                200,
                "round {round}: delivery {delivery_id} of {job} was lost"
            );
            let delivery: Value = delivery.json().await.unwrap();
            assert_eq!(&delivery["job_id"], job);
            let status: Value = service.get_json(&format!("/v1/jobs/{job}")).await;
            assert_eq!(status["status"], "completed", "round {round}: {job}");
        }
        drop(service);
    }
    assert!(acked.lock().unwrap().len() >= 120);
}

#[tokio::test]
async fn sigterm_stops_gracefully_with_exit_code_zero() {
    let db = TestDb::fresh().await;
    let mut service = start(&db).await;
    let response = service
        .client
        .post(&service.webhook_url)
        .body(completed_body("term-1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let pid = service.child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = service.child.wait().await.unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM exits 0");

    let service = start(&db).await;
    let job: Value = service.get_json("/v1/jobs/term-1").await;
    assert_eq!(job["status"], "completed");
}

#[tokio::test]
async fn a_registration_survives_kill_9_before_its_first_poll() {
    use jobhook::domain::time::SystemClock;
    use jobhook::mock::{MockOptions, MockPictory, MockState};

    let mock = MockPictory::new(MockOptions::default(), std::sync::Arc::new(SystemClock));
    let base_url = mock.spawn().await.unwrap();
    let env = [
        ("JOBHOOK_PICTORY_API_KEY", "pictai_crash_test"),
        ("JOBHOOK_PICTORY_BASE_URL", base_url.as_str()),
        ("JOBHOOK_RECONCILE_GRACE", "1s"),
    ];
    let db = TestDb::fresh().await;
    let mut service = start_with(&db, &env).await;
    mock.set_state("crash-poll", MockState::Completed);
    let registered = service
        .client
        .post(format!("{}/v1/jobs", service.api))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"job_id": "crash-poll"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    service.child.kill().await.unwrap();
    assert!(mock.get_calls().is_empty(), "killed before the first poll");

    let service = start_with(&db, &env).await;
    let job: Value = service.get_json("/v1/jobs/crash-poll?wait=20s").await;
    assert_eq!(
        job["status"], "completed",
        "the scheduled poll survived the crash: {job}"
    );
    assert_eq!(job["resolved_by"], "poll");
    assert_eq!(mock.get_calls().len(), 1);
}

#[tokio::test]
async fn a_submission_killed_mid_call_stays_visible_and_is_never_sent_twice() {
    use jobhook::domain::time::SystemClock;
    use jobhook::mock::{Forced, MockOptions, MockPictory};

    let mock = MockPictory::new(MockOptions::default(), std::sync::Arc::new(SystemClock));
    let base_url = mock.spawn().await.unwrap();
    // Pictory takes its time answering, and jobhook dies meanwhile.
    mock.force_next_generate(Forced {
        status: 200,
        body: "{\"success\": true, \"data\": {\"jobId\": \"never-seen\"}}".into(),
        delay: std::time::Duration::from_secs(30),
        ..Default::default()
    });
    let env = [
        ("JOBHOOK_PICTORY_API_KEY", "pictai_crash_test"),
        ("JOBHOOK_PICTORY_BASE_URL", base_url.as_str()),
    ];
    let db = TestDb::fresh().await;
    let mut service = start_with(&db, &env).await;
    let body = serde_json::json!({"prompt": "a video worth paying for once"});
    let request = service
        .client
        .post(format!("{}/v1/videos", service.api))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "crash-key")
        .json(&body)
        .send();
    let in_flight = tokio::spawn(request);
    mock.wait_for_generate_attempts(1).await;
    service.child.kill().await.unwrap();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the client saw the connection die"
    );

    let service = start_with(&db, &env).await;
    let list: Value = service.get_json("/v1/jobs?status=submit_unknown").await;
    let jobs = list["data"].as_array().unwrap();
    assert_eq!(
        jobs.len(),
        1,
        "the interrupted submission is visible: {list}"
    );
    assert_eq!(
        jobs[0]["request"]["prompt"],
        "a video worth paying for once"
    );
    let retried = service
        .client
        .post(format!("{}/v1/videos", service.api))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "crash-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 202, "the retry gets the recorded outcome");
    let job: Value = retried.json().await.unwrap();
    assert_eq!(job["submission_id"], jobs[0]["submission_id"]);
    assert_eq!(
        mock.generate_attempts(),
        1,
        "no second call after the restart"
    );
}

/// A notification receiver that records every delivery it gets.
#[derive(Clone, Default)]
struct Inbox {
    messages: Arc<Mutex<Vec<(String, Value)>>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl Inbox {
    /// Distinct jobs notified so far.
    fn jobs(&self) -> std::collections::HashSet<String> {
        let messages = self.messages.lock().unwrap();
        messages
            .iter()
            .filter_map(|(_, body)| body["data"]["job_id"].as_str().map(str::to_owned))
            .collect()
    }

    async fn wait_for_jobs(&self, expected: &std::collections::HashSet<String>) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                let arrived = self.arrived.notified();
                if expected.is_subset(&self.jobs()) {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        let notified = self.jobs();
        let missing: Vec<&String> = expected.difference(&notified).collect();
        assert!(waited.is_ok(), "notifications never sent for {missing:?}");
    }
}

async fn start_inbox() -> (Inbox, String) {
    let inbox = Inbox::default();
    let recorder = inbox.clone();
    let app = axum::Router::new().route(
        "/inbox",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let recorder = recorder.clone();
            async move {
                let id = headers["webhook-id"].to_str().unwrap_or("").to_owned();
                let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                recorder.messages.lock().unwrap().push((id, body));
                recorder.arrived.notify_waiters();
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/inbox", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (inbox, url)
}

#[tokio::test]
async fn twenty_kill_9_rounds_under_mixed_load_lose_nothing_and_charge_once() {
    use jobhook::domain::time::SystemClock;
    use jobhook::mock::{MockOptions, MockPictory, MockState};
    use rand::{Rng, SeedableRng};

    let mock = MockPictory::new(
        MockOptions {
            job_duration: std::time::Duration::from_millis(100),
            ..MockOptions::default()
        },
        Arc::new(SystemClock),
    );
    let base_url = mock.spawn().await.unwrap();
    let (inbox, inbox_url) = start_inbox().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("jobhook.toml");
    std::fs::write(
        &config,
        format!(
            "[reconcile]\ngrace = \"1s\"\ninterval = \"1s\"\nmax_interval = \"2s\"\nrate = 100\n\
             [[notify.endpoints]]\nurl = \"{inbox_url}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
             events = [\"job.completed\", \"job.failed\"]\n"
        ),
    )
    .unwrap();
    let config_path = config.display().to_string();
    // Small, so twenty short rounds would pass it many times over without checkpoints.
    const WAL_LIMIT: u64 = 256 * 1024;
    // One transaction past the limit: a batch of this test's deliveries is far below it.
    const ONE_BATCH: u64 = 256 * 1024;
    let env = [
        ("JOBHOOK_PICTORY_API_KEY", "pictai_crash_test"),
        ("JOBHOOK_PICTORY_BASE_URL", base_url.as_str()),
        ("JOBHOOK_CONFIG", config_path.as_str()),
        ("JOBHOOK_DATABASE_WAL_LIMIT", "256KiB"),
    ];
    let db = TestDb::fresh().await;
    // SQLite's write-ahead log, which must stay bounded across the kills (PostgreSQL's is the
    // server's business).
    let wal = db
        .sqlite_path()
        .map(|path| std::path::PathBuf::from(format!("{}-wal", path.display())));
    let mut wal_sizes = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let delivered: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let submitted: Arc<Mutex<Vec<String>>> = Arc::default();
    let rounds = 20;
    const PER_ROUND: usize = 25;
    for round in 0..rounds {
        let mut service = start_with(&db, &env).await;
        let mut load = Vec::new();
        for worker in 0..3 {
            let client = service.client.clone();
            let url = service.webhook_url.clone();
            let api = service.api.clone();
            let mock = mock.clone();
            let delivered = delivered.clone();
            let submitted = submitted.clone();
            load.push(tokio::spawn(async move {
                // Bounded, so the last start can poll every job within its waits below
                // (the reconciler runs at `rate`, and faster ingest would otherwise pile up
                // more jobs than it can reach).
                for n in 0..PER_ROUND {
                    if worker == 0 {
                        // Submissions through jobhook, each with its own key.
                        let sent = client
                            .post(format!("{api}/v1/videos"))
                            .bearer_auth(TOKEN)
                            .header("idempotency-key", format!("k-{round}-{n}"))
                            .json(
                                &serde_json::json!({"prompt": format!("round {round} video {n}")}),
                            )
                            .send()
                            .await;
                        let Ok(response) = sent else { return };
                        if !response.status().is_success() {
                            return;
                        }
                        let Ok(job) = response.json::<Value>().await else {
                            return;
                        };
                        submitted
                            .lock()
                            .unwrap()
                            .push(job["submission_id"].as_str().unwrap().to_owned());
                    } else {
                        // Webhooks for jobs submitted elsewhere.
                        let job = format!("mix-{round}-{worker}-{n}");
                        mock.set_state(&job, MockState::Completed);
                        let body = mock.job_body(&job).unwrap().to_string();
                        let Ok(response) = client.post(&url).body(body).send().await else {
                            return;
                        };
                        if response.status() != 200 {
                            return;
                        }
                        let Ok(ack) = response.json::<Value>().await else {
                            return;
                        };
                        delivered
                            .lock()
                            .unwrap()
                            .push((job, ack["delivery_id"].as_i64().unwrap()));
                    }
                }
            }));
        }
        let alive = std::time::Duration::from_millis(rng.gen_range(80..400));
        tokio::time::sleep(alive).await;
        service.child.kill().await.unwrap();
        for task in load {
            task.await.unwrap();
        }
        // What the killed process left: checkpointed at the next start, never piling up.
        if let Some(wal) = &wal {
            let size = std::fs::metadata(wal).map_or(0, |m| m.len());
            assert!(
                size <= WAL_LIMIT + ONE_BATCH,
                "round {round}: the write-ahead log is {size} bytes"
            );
            wal_sizes.push(size);
        }
    }
    let written: u64 = wal_sizes.iter().sum();
    assert!(
        wal.is_none() || written > 2 * WAL_LIMIT,
        "the rounds wrote enough to pass the limit without checkpoints: {wal_sizes:?}"
    );

    // One last start: everything acknowledged must be there and must reach a final status.
    let service = start_with(&db, &env).await;
    let delivered = delivered.lock().unwrap().clone();
    let submitted = submitted.lock().unwrap().clone();
    assert!(
        delivered.len() > rounds && !submitted.is_empty(),
        "load ran: {} {}",
        delivered.len(),
        submitted.len()
    );
    for (job, delivery_id) in &delivered {
        let delivery = service.get(&format!("/v1/deliveries/{delivery_id}")).await;
        assert_eq!(
            delivery.status(),
            200,
            "delivery {delivery_id} of {job} was lost"
        );
        let job: Value = service.get_json(&format!("/v1/jobs/{job}?wait=30s")).await;
        if job["status"] != "completed" {
            // What happened to it, so that a failure here can be told from a slow machine.
            let events = service
                .get_json(&format!(
                    "/v1/jobs/{}/events",
                    job["job_id"].as_str().unwrap()
                ))
                .await;
            panic!("{job} is not completed; its history: {events}");
        }
    }
    for submission in &submitted {
        let job: Value = service
            .get_json(&format!("/v1/jobs/{submission}?wait=30s"))
            .await;
        assert_eq!(
            job["status"], "completed",
            "an acknowledged submission ends completed: {job}"
        );
    }
    // Never a second paid job: every Generate call belongs to exactly one record.
    let mut with_ids = 0;
    let mut unknown_without_id = 0;
    let mut cursor: Option<String> = None;
    let mut pictory_ids = std::collections::HashSet::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=500&cursor={c}"),
            None => "/v1/jobs?limit=500".to_owned(),
        };
        let page: Value = service.get_json(&path).await;
        for job in page["data"].as_array().unwrap() {
            if job["submission_id"].is_string() {
                if let Some(id) = job["job_id"].as_str() {
                    with_ids += 1;
                    assert!(
                        pictory_ids.insert(id.to_owned()),
                        "two records for one Pictory job"
                    );
                }
                // A submission whose answer the kill cut off may still be on its way (its
                // first poll due a moment after the last start): wait for it to settle.
                let mut job = job.clone();
                for _ in 0..3 {
                    if !["pending", "in_progress"].contains(&job["status"].as_str().unwrap()) {
                        break;
                    }
                    let submission = job["submission_id"].as_str().unwrap();
                    job = service
                        .get_json(&format!("/v1/jobs/{submission}?wait=30s"))
                        .await;
                }
                let status = job["status"].as_str().unwrap();
                assert!(
                    ["completed", "submit_unknown"].contains(&status),
                    "a submission left where nothing will move it: {job}"
                );
                if status == "submit_unknown" && job["job_id"].is_null() {
                    unknown_without_id += 1;
                }
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    // Each record made at most one call; only a call cut short by the kill leaves its record
    // submit_unknown without an id (at most one per round).
    assert!(mock.generate_calls() >= with_ids);
    assert!(unknown_without_id <= rounds);
    assert!(
        mock.generate_calls() <= with_ids + unknown_without_id,
        "a record made two calls: {} calls, {with_ids} records with an id, \
         {unknown_without_id} cut short",
        mock.generate_calls()
    );

    // No notification lost: every acknowledged job was announced.
    let mut expected: std::collections::HashSet<String> =
        delivered.iter().map(|(job, _)| job.clone()).collect();
    for submission in &submitted {
        let job: Value = service.get_json(&format!("/v1/jobs/{submission}")).await;
        expected.insert(job["job_id"].as_str().unwrap().to_owned());
    }
    inbox.wait_for_jobs(&expected).await;

    eprintln!(
        "{rounds} kill -9 rounds: {} deliveries and {} submissions acknowledged, {} Generate calls, {} notifications received",
        delivered.len(),
        submitted.len(),
        mock.generate_calls(),
        inbox.messages.lock().unwrap().len()
    );
    // Notifications: one webhook-id per job and event, whatever was resent.
    let mut ids_of: std::collections::HashMap<(String, String), std::collections::HashSet<String>> =
        std::collections::HashMap::new();
    for (id, body) in inbox.messages.lock().unwrap().iter() {
        let key = (
            body["data"]["job_id"].as_str().unwrap_or("").to_owned(),
            body["type"].as_str().unwrap_or("").to_owned(),
        );
        ids_of.entry(key).or_default().insert(id.clone());
    }
    for (key, ids) in &ids_of {
        assert_eq!(ids.len(), 1, "{key:?} was sent under several ids: {ids:?}");
    }
}
