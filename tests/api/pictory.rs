//! End to end in verify mode: jobhook, the fake Pictory, and webhooks that are lost, duplicated,
//! reordered or forged, all over real sockets.

use crate::helpers::*;
use jobhook::mock::{Forced, MockState};
use serde_json::{json, Value};

#[tokio::test]
async fn a_forged_completed_webhook_never_reaches_a_client() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.mock().set_state("forged", MockState::Failed);
    let forged = json!({"job_id": "forged", "success": true, "data": {"status": "completed",
        "url": "https://evil.example/malware.mp4", "thumbnailImageUrl": "https://evil.example/x.jpg"}});
    assert_eq!(app.webhook(forged.to_string()).await.status(), 200);
    let job = app.wait_final("forged").await;
    assert_eq!(job["status"], "failed", "the state comes from Get Job");
    assert_eq!(job["error"]["code"], "TEXT_TO_VIDEO_FAILED");
    assert_eq!(job["resolved_by"], "webhook");
    for body in [
        job.to_string(),
        app.get("/v1/jobs/forged/raw").await.text().await.unwrap(),
    ] {
        assert!(!body.contains("evil.example"), "{body}");
    }
    let events = app.events("forged").await;
    let received = events
        .iter()
        .find(|e| e["kind"] == "webhook_received")
        .unwrap();
    assert_eq!(received["outcome"], "verifying with Get Job");
    let polled = events.iter().find(|e| e["kind"] == "polled").unwrap();
    assert_eq!(polled["cause"], "webhook");
}

#[tokio::test]
async fn a_lost_webhook_is_found_by_the_fallback_poll() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.register("lost").await;
    app.mock().set_state("lost", MockState::Completed);
    app.clock.advance_ms(120_000);
    app.state.wake_reconciler();
    let job = app.wait_final("lost").await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["resolved_by"], "poll");
    assert_eq!(
        job["output"]["url"],
        app.mock().file_url("lost", "video.mp4")
    );
    assert_eq!(job["poll_count"], 1);
    assert!(job["webhook_received_at"].is_null());
    assert!(job["next_poll_at"].is_null());
}

#[tokio::test]
async fn duplicate_webhooks_cause_one_get_job_call() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.mock().set_state("dup", MockState::Completed);
    let body = app.mock().job_body("dup").unwrap().to_string();
    app.webhook(body.clone()).await;
    app.wait_final("dup").await;
    assert_eq!(
        app.webhook(body).await.json::<Value>().await.unwrap()["status"],
        "duplicate"
    );
    // The reconciler makes its calls later, so what rules a second call out is that the
    // duplicate scheduled none: that is committed before it is answered.
    assert_eq!(app.state.store.next_due().await.unwrap(), None);
    assert!(app.job("dup").await["next_poll_at"].is_null());
    assert_eq!(app.mock().job("dup").unwrap().get_calls, 1);
}

#[tokio::test]
async fn a_stale_in_progress_after_completion_changes_nothing() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.mock().set_state("ro", MockState::Completed);
    app.webhook(app.mock().job_body("ro").unwrap().to_string())
        .await;
    app.wait_final("ro").await;
    app.webhook(in_progress_body("ro").to_string()).await;
    let job = app.job("ro").await;
    assert_eq!(job["status"], "completed");
    assert!(
        job["next_poll_at"].is_null(),
        "no look was scheduled: {job}"
    );
    assert_eq!(app.state.store.next_due().await.unwrap(), None);
    assert_eq!(
        app.mock().job("ro").unwrap().get_calls,
        1,
        "a final job is not re-verified"
    );
}

#[tokio::test]
async fn an_early_in_progress_webhook_is_verified_and_polling_goes_on() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.mock().set_state("early", MockState::InProgress);
    let ack: Value = app
        .webhook(in_progress_body("early").to_string())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ack["status"], "accepted");
    // The webhook was checked with Get Job: one call, and the job moved on its answer.
    let job = app.get_json("/v1/jobs/early").await;
    let mut job = job;
    for _ in 0..500 {
        if job["status"] == "in_progress" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        job = app.get_json("/v1/jobs/early").await;
    }
    assert_eq!(job["status"], "in_progress");
    assert_eq!(job["poll_count"], 1);
    let calls = app.mock().get_calls();
    let checks: Vec<_> = calls.iter().filter(|c| c.job_id == "early").collect();
    assert_eq!(checks.len(), 1, "one Get Job call for the webhook");
    let polled = app
        .events("early")
        .await
        .into_iter()
        .find(|e| e["kind"] == "polled")
        .expect("the Get Job call is in the history");
    assert_eq!(
        (polled["cause"].as_str(), polled["http_status"].as_i64()),
        (Some("webhook"), Some(200))
    );
    // And polling goes on: the job is scheduled again.
    assert!(job["next_poll_at"].is_string());
    app.mock().set_state("early", MockState::Completed);
    app.webhook(app.mock().job_body("early").unwrap().to_string())
        .await;
    let job = app.wait_final("early").await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["resolved_by"], "webhook");
    let received = app
        .events("early")
        .await
        .into_iter()
        .filter(|e| e["kind"] == "webhook_received")
        .count();
    assert_eq!(received, 2);
}

#[tokio::test]
async fn refresh_asks_pictory_now() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.register("rf").await;
    app.mock().set_state("rf", MockState::Completed);
    let response = app.post_empty("/v1/jobs/rf/refresh").await;
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "completed");
    assert_eq!(job["resolved_by"], "refresh");
    assert_eq!(app.post_empty("/v1/jobs/nope/refresh").await.status(), 404);

    // A 429 with a long Retry-After leaves no slot for a second refresh.
    app.register("rf2").await;
    app.mock().force_next(Forced {
        status: 429,
        retry_after: Some("60".into()),
        body: String::new(),
        ..Default::default()
    });
    assert_eq!(app.post_empty("/v1/jobs/rf2/refresh").await.status(), 200);
    let throttled = app.post_empty("/v1/jobs/rf2/refresh").await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "1");
    assert_eq!(
        throttled.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
}

#[tokio::test]
async fn refresh_in_receive_only_mode_explains_why_not() {
    let app = spawn_app().await;
    app.register("ro-refresh").await;
    let response = app.post_empty("/v1/jobs/ro-refresh/refresh").await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("receive-only"));
}

#[tokio::test]
async fn readyz_says_why_polling_is_paused_and_metrics_count_calls() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.register("auth").await;
    app.mock().force_next(Forced {
        status: 401,
        retry_after: None,
        body: "{\"message\":\"Unauthorized\"}".into(),
        ..Default::default()
    });
    app.post_empty("/v1/jobs/auth/refresh").await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200, "webhooks are still taken");
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["pictory"].as_str().unwrap().contains("polling paused"),
        "{body}"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "jobhook_pictory_get_job_calls_total{result=\"unauthorized\"}"
        ),
        Some(1.0)
    );
    app.mock().set_state("auth", MockState::Completed);
    app.post_empty("/v1/jobs/auth/refresh").await;
    let body: Value = app.get("/readyz").await.json().await.unwrap();
    assert!(body["pictory"].is_null(), "{body}");
}

#[tokio::test]
async fn jobs_run_on_the_fake_end_to_end_with_misbehaving_webhooks() {
    use jobhook::mock::MockOptions;
    let mut options = Options::new(|config| config.reconcile.rate = 50);
    options.pictory = Some(MockOptions {
        job_duration: std::time::Duration::from_millis(50),
        failure_rate: 0.25,
        duplicate_rate: 0.5,
        reorder_rate: 0.5,
        seed: Some(42),
        ..MockOptions::default()
    });
    let app = spawn(options).await;
    let generate = format!("{}/v1/aistudio/videos", app.state.config.pictory.base_url);
    let mut ids = Vec::new();
    for n in 0..12 {
        let created: Value = app
            .client
            .post(&generate)
            .header("authorization", "pictai_anything")
            .json(&json!({"prompt": format!("video number {n}"), "webhook": app.webhook_url}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["data"]["jobId"].as_str().unwrap().to_owned();
        // As a client that submits elsewhere would: register the job with jobhook.
        assert!(app
            .post_json("/v1/jobs", &json!({"job_id": id}))
            .await
            .status()
            .is_success());
        ids.push(id);
    }
    for id in &ids {
        let job = app.wait_final(id).await;
        let expected = match app.mock().job(id).unwrap().state {
            MockState::Completed => "completed",
            MockState::Failed => "failed",
            other => panic!("fake job {id} in {other:?}"),
        };
        assert_eq!(job["status"], expected, "{id}");
        assert_eq!(job["resolved_by"], "webhook");
    }
    assert!(
        app.mock().webhooks_sent() > ids.len(),
        "the fake duplicated and reordered some"
    );
}
