//! The release-shaped binary under `kill -9` and SIGTERM: what was acknowledged is still there.

use crate::helpers::{completed_body, SECRET, TOKEN};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Service {
    child: Child,
    api: String,
    webhook_url: String,
    client: reqwest::Client,
}

/// Starts `jobhook serve` on ports the kernel picks, and reads them back from its log.
async fn start(db: &Path) -> Service {
    start_with(db, &[]).await
}

async fn start_with(db: &Path, env: &[(&str, &str)]) -> Service {
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
        .env("JOBHOOK_DATABASE_URL", format!("sqlite://{}", db.display()))
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
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.api))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn acknowledged_deliveries_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
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
            let status: Value = service
                .get(&format!("/v1/jobs/{job}"))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(status["status"], "completed", "round {round}: {job}");
        }
        drop(service);
    }
    assert!(acked.lock().unwrap().len() >= 120);
}

#[tokio::test]
async fn sigterm_stops_gracefully_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("term.db");
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
    let job: Value = service.get("/v1/jobs/term-1").await.json().await.unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("poll.db");
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
    let job: Value = service
        .get("/v1/jobs/crash-poll?wait=20s")
        .await
        .json()
        .await
        .unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("submit.db");
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
    let list: Value = service
        .get("/v1/jobs?status=submit_unknown")
        .await
        .json()
        .await
        .unwrap();
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
