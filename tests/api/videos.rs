//! Submitting through jobhook: validation first, one paid job per request, whatever happens.

use crate::helpers::*;
use jobhook::mock::{Forced, MockState};
use serde_json::{json, Value};

fn video(prompt: &str) -> Value {
    json!({"prompt": prompt, "model": "pixverse5.5", "aspectRatio": "16:9", "duration": "5s",
        "metadata": {"order": 42}})
}

impl TestApp {
    async fn submit(&self, body: &Value, key: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/v1/videos", self.api_url))
            .bearer_auth(TOKEN)
            .json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.unwrap()
    }
}

fn forced(status: u16) -> Forced {
    Forced {
        status,
        retry_after: Some("0".into()),
        body: "{\"message\":\"unavailable\"}".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_valid_submission_is_recorded_submitted_and_tracked() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let response = app.submit(&video("a lighthouse in a storm"), None).await;
    assert_eq!(response.status(), 201);
    let job: Value = response.json().await.unwrap();
    let job_id = job["job_id"].as_str().unwrap();
    let submission_id = job["submission_id"].as_str().unwrap();
    assert_eq!(
        uuid::Uuid::parse_str(submission_id)
            .unwrap()
            .get_version_num(),
        7
    );
    assert_eq!(job["status"], "pending");
    assert_eq!(job["metadata"], json!({"order": 42}));
    assert_eq!(job["request"]["prompt"], "a lighthouse in a storm");
    assert!(
        job["request"].get("webhook").is_none(),
        "jobhook's own URL is not echoed"
    );
    assert!(
        job["next_poll_at"].is_string(),
        "the reconciler has it scheduled"
    );

    let sent = app.mock().job(job_id).unwrap().request;
    let webhook = sent["webhook"].as_str().unwrap();
    let simple = uuid::Uuid::parse_str(submission_id)
        .unwrap()
        .simple()
        .to_string();
    assert!(
        webhook.contains(&simple),
        "the webhook URL names the submission: {webhook}"
    );
    assert_eq!(
        app.job(submission_id).await["job_id"],
        job_id,
        "reachable by either id"
    );
    let kinds: Vec<String> = app
        .events(job_id)
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["submitted", "status_changed"]);

    // Pictory's webhook for it then completes it, verified by Get Job.
    app.mock().set_state(job_id, MockState::Completed);
    let body = app.mock().job_body(job_id).unwrap();
    assert_eq!(
        app.webhook_to(webhook, body.to_string()).await.status(),
        200
    );
    let done = app.wait_final(job_id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"]["ai_credits_used"], 8.0);
}

#[tokio::test]
async fn every_rule_is_checked_before_pictory_is_called() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let cases = [
        (json!({"prompt": "tiny"}), "prompt"),
        (json!({"prompt": "x".repeat(5001)}), "prompt"),
        (json!({"model": "pixverse5.5"}), "prompt"),
        (
            json!({"prompt": "a valid prompt", "model": "sora"}),
            "model",
        ),
        (
            json!({"prompt": "a valid prompt", "model": "veo3.1_fast", "aspectRatio": "4:3"}),
            "aspectRatio",
        ),
        (
            json!({"prompt": "a valid prompt", "model": "veo3.1", "duration": "5s"}),
            "duration",
        ),
        (
            json!({"prompt": "a valid prompt", "firstFrameImageUrl": "not a url"}),
            "firstFrameImageUrl",
        ),
        (
            json!({"prompt": "a valid prompt", "extendVideoUrl": "file:///etc/passwd"}),
            "extendVideoUrl",
        ),
        (
            json!({"prompt": "a valid prompt", "referenceImageUrls": []}),
            "referenceImageUrls",
        ),
        (
            json!({"prompt": "a valid prompt", "referenceImageUrls": ["https://a/1", "https://a/2", "https://a/3", "https://a/4"]}),
            "referenceImageUrls",
        ),
        (
            json!({"prompt": "a valid prompt", "firstFrameImageUrl": "https://a/1.png", "referenceImageUrls": ["https://a/2"]}),
            "referenceImageUrls",
        ),
        (
            json!({"prompt": "a valid prompt", "metadata": [1, 2]}),
            "metadata",
        ),
        (
            json!({"prompt": "a valid prompt", "metadata": {"x": "y".repeat(20_000)}}),
            "metadata",
        ),
        (
            json!({"prompt": "a valid prompt", "webhook": "https://mine.example/hook"}),
            "webhook",
        ),
        (
            json!({"prompt": "a valid prompt", "negativePrompt": "blur"}),
            "negativePrompt",
        ),
        (json!(["not", "an", "object"]), "body"),
    ];
    for (body, field) in cases {
        let response = app.submit(&body, None).await;
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.unwrap();
        let fields: Vec<&str> = error["error"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{body}: {error}");
    }
    assert_eq!(app.mock().generate_attempts(), 0, "nothing reached Pictory");
    assert!(
        app.get_json("/v1/jobs").await["data"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing recorded"
    );
}

#[tokio::test]
async fn bad_requests_unauthorised_and_receive_only_are_refused_clearly() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let unauthorised = app
        .client
        .post(format!("{}/v1/videos", app.api_url))
        .json(&video("hello there"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);
    let malformed = app
        .client
        .post(format!("{}/v1/videos", app.api_url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let long_key = "k".repeat(300);
    let bad_key = app
        .submit(&video("hello there"), Some(long_key.as_str()))
        .await;
    assert_eq!(bad_key.status(), 400);
    assert_eq!(app.mock().generate_attempts(), 0);

    let receive_only = spawn_app().await;
    let response = receive_only.submit(&video("hello there"), None).await;
    assert_eq!(response.status(), 409);
}

#[tokio::test]
async fn the_same_key_and_body_answer_the_first_result_without_a_second_call() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let first = app.submit(&video("same thing twice"), Some("key-1")).await;
    let (status, body) = (first.status(), first.text().await.unwrap());
    assert_eq!(status, 201);
    // Keys in another order are the same body.
    let reordered: Value = serde_json::from_str(
        r#"{"metadata": {"order": 42}, "duration": "5s",
        "aspectRatio": "16:9", "model": "pixverse5.5", "prompt": "same thing twice"}"#,
    )
    .unwrap();
    let again = app.submit(&reordered, Some("key-1")).await;
    assert_eq!(again.status(), status);
    assert_eq!(
        again.text().await.unwrap(),
        body,
        "exactly what the first answered"
    );
    assert_eq!(app.mock().generate_attempts(), 1);

    let other = app.submit(&video("a different video"), Some("key-1")).await;
    assert_eq!(other.status(), 422);
    assert_eq!(
        other.json::<Value>().await.unwrap()["error"]["code"],
        "idempotency_key_reused"
    );
    assert_eq!(app.mock().generate_attempts(), 1);

    // And after a restart.
    let app = app.restart().await;
    let after = app.submit(&video("same thing twice"), Some("key-1")).await;
    assert_eq!(after.status(), 201);
    assert_eq!(after.text().await.unwrap(), body);
}

#[tokio::test]
async fn concurrent_twins_make_exactly_one_call() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.mock().force_next_generate(Forced {
        status: 200,
        body: "{\"success\": true, \"data\": {\"jobId\": \"twin-job\"}}".into(),
        delay: std::time::Duration::from_millis(300),
        ..Default::default()
    });
    let body = video("ten clicks on one button");
    let requests = (0..10).map(|_| app.submit(&body, Some("double-click")));
    let responses = futures::future::join_all(requests).await;
    let mut answers = Vec::new();
    for response in responses {
        answers.push((response.status(), response.text().await.unwrap()));
    }
    assert_eq!(
        app.mock().generate_attempts(),
        1,
        "exactly one call reached Pictory"
    );
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "every twin got the first answer: {answers:?}"
    );
    assert_eq!(answers[0].0, 201);
    let jobs = app.get_json("/v1/jobs").await;
    assert_eq!(jobs["data"].as_array().unwrap().len(), 1, "one record");
}

#[tokio::test]
async fn a_pictory_4xx_is_upstream_rejected_and_kept_as_submit_failed() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.mock().force_next_generate(Forced {
        status: 400,
        body: r#"{"code":"INVALID_REQUEST_BODY","message":"Prompt violates policy","fields":[{"name":"prompt","errors":"not allowed"}]}"#.into(),
        ..Default::default()
    });
    let response = app
        .submit(&video("something forbidden"), Some("rejected"))
        .await;
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "upstream_rejected");
    assert_eq!(error["error"]["message"], "Prompt violates policy");
    assert_eq!(
        error["error"]["fields"][0],
        json!({"field": "prompt", "message": "not allowed"})
    );
    let submission_id = error["error"]["submission_id"].as_str().unwrap();
    let job = app.job(submission_id).await;
    assert_eq!(job["status"], "submit_failed");
    assert_eq!(job["error"]["code"], "INVALID_REQUEST_BODY");
    assert!(job["job_id"].is_null());
    assert_eq!(app.mock().generate_attempts(), 1, "a 4xx is never retried");
    let replay = app
        .submit(&video("something forbidden"), Some("rejected"))
        .await;
    assert_eq!(replay.status(), 422);
    assert_eq!(app.mock().generate_attempts(), 1);
}

#[tokio::test]
async fn ambiguous_failures_answer_202_submit_unknown_and_are_never_retried() {
    let app = spawn_app_with_pictory(|config| {
        config.pictory.timeout = std::time::Duration::from_millis(300)
    })
    .await;
    for (n, forced) in [
        forced(500),
        forced(502),
        Forced {
            status: 200,
            body: "{\"success\": true, \"data\": {}}".into(),
            ..Default::default()
        },
        Forced {
            status: 200,
            body: "{}".into(),
            delay: std::time::Duration::from_millis(1500),
            ..Default::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        app.mock().force_next_generate(forced);
        let before = app.mock().generate_attempts();
        let response = app
            .submit(&video(&format!("ambiguous number {n}")), None)
            .await;
        assert_eq!(response.status(), 202, "case {n}");
        let job: Value = response.json().await.unwrap();
        assert_eq!(job["status"], "submit_unknown", "case {n}");
        assert!(job["job_id"].is_null());
        assert_eq!(
            app.mock().generate_attempts(),
            before + 1,
            "case {n}: never retried"
        );
    }
}

#[tokio::test]
async fn calls_that_created_nothing_are_retried_then_given_up_with_the_key_released() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.mock().force_next_generate(forced(503));
    app.mock().force_next_generate(forced(429));
    let response = app
        .submit(&video("retried until it works"), Some("retry"))
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(app.mock().generate_attempts(), 3);
    assert_eq!(app.mock().generate_calls(), 1, "one paid job");

    for _ in 0..3 {
        app.mock().force_next_generate(forced(503));
    }
    let response = app.submit(&video("pictory is down"), Some("down")).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "upstream_unavailable");
    let failed = app
        .job(error["error"]["submission_id"].as_str().unwrap())
        .await;
    assert_eq!(failed["status"], "submit_failed");
    assert_eq!(failed["error"]["code"], "UPSTREAM_UNAVAILABLE");
    // Nothing was created, so the same key may try again.
    let retry = app.submit(&video("pictory is down"), Some("down")).await;
    assert_eq!(retry.status(), 201);
}

#[tokio::test]
async fn connection_refused_is_retried_and_reported_as_unavailable() {
    // A socket bound but never listening: connections to its port are refused, and no other
    // test can take the port meanwhile (a dropped listener's port could be reused at once).
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = format!("http://{}/pictoryapis", closed.local_addr().unwrap());
    let app = spawn_app_with(move |config| {
        config.pictory.api_key = Some(secrecy::SecretString::from("pictai_x"));
        config.pictory.base_url = dead;
    })
    .await;
    let response = app.submit(&video("nobody is listening"), None).await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 attempts"),
        "{error}"
    );
}

#[tokio::test]
async fn a_webhook_settles_a_submit_unknown_job() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.mock().force_next_generate(forced(500));
    let job: Value = app
        .submit(&video("did it go through?"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "submit_unknown");
    let submission_id = job["submission_id"].as_str().unwrap();
    let key = app
        .state
        .webhook_keys
        .submission_key(uuid::Uuid::parse_str(submission_id).unwrap());
    let url = app.state.webhook_url(&key);

    // It did: Pictory's webhook arrives at the submission's URL with the job id.
    app.mock().set_state("late-id", MockState::Completed);
    let body = app.mock().job_body("late-id").unwrap();
    assert_eq!(app.webhook_to(&url, body.to_string()).await.status(), 200);
    let done = app.wait_final(submission_id).await;
    assert_eq!(done["job_id"], "late-id");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["resolved_by"], "webhook");
}

#[tokio::test]
async fn a_webhook_without_a_job_id_is_matched_by_its_submission_url() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let job: Value = app
        .submit(&video("matched by url"), None)
        .await
        .json()
        .await
        .unwrap();
    let submission_id = job["submission_id"].as_str().unwrap();
    let job_id = job["job_id"].as_str().unwrap();
    let url = app.mock().job(job_id).unwrap().request["webhook"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .webhook_to(&url, json!({"data": {"status": "completed"}}).to_string())
        .await;
    assert_eq!(response.status(), 200);
    let deliveries = app.deliveries(&format!("?job_id={submission_id}")).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["job_id"], job_id);
}

#[tokio::test]
async fn a_look_now_for_a_submission_without_a_pictory_id_waits_for_the_id() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.mock().force_next_generate(forced(500));
    let job: Value = app
        .submit(&video("no id yet"), None)
        .await
        .json()
        .await
        .unwrap();
    let submission_id = job["submission_id"].as_str().unwrap();
    let key = app
        .state
        .webhook_keys
        .submission_key(uuid::Uuid::parse_str(submission_id).unwrap());
    let response = app
        .webhook_to(
            &app.state.webhook_url(&key),
            json!({"data": {"status": "completed"}}).to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        app.state.store.next_due().await.unwrap(),
        None,
        "nothing to poll without an id"
    );
    assert_eq!(app.job(submission_id).await["status"], "submit_unknown");
}
