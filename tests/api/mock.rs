//! The fake Pictory itself: it must refuse what Pictory refuses and misbehave on request.

use jobhook::domain::time::SystemClock;
use jobhook::mock::{MockOptions, MockPictory};
use serde_json::{json, Value};
use std::sync::Arc;

async fn fake(options: MockOptions) -> (MockPictory, String) {
    let mock = MockPictory::new(options, Arc::new(SystemClock));
    let base = mock.spawn().await.unwrap();
    (mock, base)
}

/// `GET /v1/jobs/{id}` on the fake with `key` as the bare Authorization value.
async fn get_job(base: &str, id: &str, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}/v1/jobs/{id}"))
        .header("authorization", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_key_goes_bare_and_must_look_like_a_pictory_key() {
    let (_mock, base) = fake(MockOptions::default()).await;
    let client = reqwest::Client::new();
    for key in [None, Some("Bearer pictai_x"), Some("sk_live_x")] {
        let mut request = client.get(format!("{base}/v1/jobs/x"));
        if let Some(key) = key {
            request = request.header("authorization", key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{key:?}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"message": "Unauthorized"})
        );
    }
    let unknown = get_job(&base, "x", "pictai_x").await;
    assert_eq!(unknown.status(), 404);
    let pinned = fake(MockOptions {
        api_key: Some("pictai_only".into()),
        ..MockOptions::default()
    })
    .await
    .1;
    let wrong = get_job(&pinned, "x", "pictai_other").await;
    assert_eq!(wrong.status(), 401);
}

#[tokio::test]
async fn generate_refuses_what_pictory_refuses_and_accepts_the_rest() {
    let (mock, base) = fake(MockOptions::default()).await;
    let client = reqwest::Client::new();
    let post = |body: Value| {
        client
            .post(format!("{base}/v1/aistudio/videos"))
            .header("authorization", "pictai_x")
            .json(&body)
            .send()
    };
    let bad = post(json!({"prompt": "hi", "model": "veo3.1", "aspectRatio": "1:1"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_REQUEST_BODY");
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["prompt", "aspectRatio"]);
    assert_eq!(mock.generate_calls(), 0);

    let ok = post(json!({"prompt": "a calm lake at dawn", "model": "veo3.1", "duration": "8s"}))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["success"], true);
    let id = body["data"]["jobId"].as_str().unwrap();
    assert_eq!(mock.generate_calls(), 1);
    assert_eq!(mock.job(id).unwrap().credits, 160.0);
    let status: Value = get_job(&base, id, "pictai_x").await.json().await.unwrap();
    assert_eq!(
        status,
        json!({"job_id": id, "success": true, "data": {"status": "in-progress"}})
    );
}

#[tokio::test]
async fn a_first_frame_must_be_one_pictory_can_fetch() {
    let (mock, base) = fake(MockOptions::default()).await;
    let client = reqwest::Client::new();
    let generate = |first_frame: String| {
        client
            .post(format!("{base}/v1/aistudio/videos"))
            .header("authorization", "pictai_x")
            .json(&json!({"prompt": "the next clip", "firstFrameImageUrl": first_frame}))
            .send()
    };
    mock.set_state("done", jobhook::mock::MockState::Completed);
    mock.set_state("running", jobhook::mock::MockState::InProgress);
    for unreachable in [
        "http://127.0.0.1:8081/v1/jobs/done/files/last_frame",
        "http://localhost/last-frame.png",
        "http://10.1.2.3/last-frame.png",
        "http://[::1]/last-frame.png",
        "https://cdn.pictory.example/running/last-frame.png",
        "https://cdn.pictory.example/nobody/last-frame.png",
        "https://cdn.pictory.example/done/thumbnail.jpg",
    ] {
        let refused = generate(unreachable.to_owned()).await.unwrap();
        assert_eq!(refused.status(), 400, "{unreachable}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["fields"][0]["name"], "firstFrameImageUrl");
    }
    assert_eq!(mock.generate_calls(), 0);

    let own = generate("https://cdn.pictory.example/done/last-frame.png".into())
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    let id = own.json::<Value>().await.unwrap()["data"]["jobId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(mock.job(&id).unwrap().continues.as_deref(), Some("done"));
    // An image elsewhere on the internet: Pictory would fetch it; the fake takes it on trust.
    let elsewhere = generate("https://images.example.org/frame.png".into())
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 200);
}

#[tokio::test]
async fn the_quota_reports_the_fakes_completed_jobs_to_a_pictory_key_only() {
    let (mock, base) = fake(MockOptions::default()).await;
    let client = reqwest::Client::new();
    let refused = client.get(format!("{base}/v1/quota")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    mock.set_state("q1", jobhook::mock::MockState::Completed);
    mock.set_state("q2", jobhook::mock::MockState::Failed);
    let quota: Value = client
        .get(format!("{base}/v1/quota"))
        .header("authorization", "pictai_x")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // A scripted job costs 8 credits for a 5 s clip; the failed one costs nothing.
    assert_eq!(
        quota,
        json!({"success": true, "data": {
            "videoMinutes": {"used": 0.08, "limit": 600.0},
            "aiCredits": {"used": 8.0, "limit": 10000.0}}})
    );
    assert_eq!(mock.quota_calls(), 2);
}

#[tokio::test]
async fn throttling_and_errors_follow_their_rates() {
    let (mock, base) = fake(MockOptions {
        throttle_rate: 1.0,
        retry_after_secs: Some(9),
        ..MockOptions::default()
    })
    .await;
    mock.set_state("j", jobhook::mock::MockState::Completed);
    let response = get_job(&base, "j", "pictai_x").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "9");
    mock.set_options(MockOptions {
        error_rate: 1.0,
        ..MockOptions::default()
    });
    let response = get_job(&base, "j", "pictai_x").await;
    assert_eq!(response.status(), 500);
    mock.set_options(MockOptions::default());
    let response = get_job(&base, "j", "pictai_x").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        mock.get_calls()
            .iter()
            .map(|c| c.status)
            .collect::<Vec<_>>(),
        [429, 500, 200]
    );
}

#[test]
fn the_mock_pictory_command_has_its_knobs() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_jobhook"))
        .args(["mock-pictory", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for knob in [
        "--listen",
        "--api-key",
        "--job-duration",
        "--failure-rate",
        "--drop-rate",
        "--duplicate-rate",
        "--reorder-rate",
        "--webhook-delay",
        "--throttle-rate",
        "--retry-after",
        "--error-rate",
    ] {
        assert!(help.contains(knob), "{knob} missing from:\n{help}");
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_jobhook"))
        .args(["mock-pictory", "--failure-rate", "2"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
