use crate::helpers::*;
use serde_json::{json, Value};

#[tokio::test]
async fn registering_a_job_answers_201_then_200_with_the_same_job() {
    let app = spawn_app().await;
    let first = app
        .post_json(
            "/v1/jobs",
            &json!({"job_id": "ext-1", "metadata": {"order": 1234}}),
        )
        .await;
    assert_eq!(first.status(), 201);
    let created: Value = first.json().await.unwrap();
    assert_eq!(created["job_id"], "ext-1");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["metadata"]["order"], 1234);
    assert!(created["submission_id"].is_null());
    assert!(created["resolved_by"].is_null());
    assert_eq!(created["poll_count"], 0);

    let again = app
        .post_json(
            "/v1/jobs",
            &json!({"job_id": "ext-1", "metadata": {"order": 9}}),
        )
        .await;
    assert_eq!(again.status(), 200);
    let existing: Value = again.json().await.unwrap();
    assert_eq!(
        existing["metadata"]["order"], 1234,
        "the first registration wins"
    );
    assert_eq!(existing["created_at"], created["created_at"]);

    let events = app.events("ext-1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["kind"], "registered");
    assert_eq!(events[0]["cause"], "api");
}

#[tokio::test]
async fn registering_rejects_bad_bodies_with_json_errors() {
    let app = spawn_app().await;
    let cases = [
        (json!({"job_id": ""}), 422),
        (json!({"job_id": "has space"}), 422),
        (json!({"job_id": "a/b"}), 422),
        (json!({"job_id": "x".repeat(129)}), 422),
        (json!({"job_id": 17}), 422),
        (json!({}), 422),
        (json!({"job_id": "ok", "metadata": [1]}), 422),
        (
            json!({"job_id": "ok", "metadata": {"big": "x".repeat(17 * 1024)}}),
            422,
        ),
        (json!({"job_id": "ok", "unexpected": true}), 422),
    ];
    for (body, status) in cases {
        let response = app.post_json("/v1/jobs", &body).await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].is_string(), "{body}: {error}");
    }
    let metadata_error: Value = app
        .post_json("/v1/jobs", &json!({"job_id": "ok", "metadata": "text"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(metadata_error["error"]["fields"][0]["field"], "metadata");

    let malformed = app
        .client
        .post(format!("{}/v1/jobs", app.api_url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"job_id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.json::<Value>().await.unwrap()["error"]["code"],
        "malformed_json"
    );

    let not_json = app
        .client
        .post(format!("{}/v1/jobs", app.api_url))
        .bearer_auth(TOKEN)
        .body("job_id=x")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);

    let oversized = app
        .client
        .post(format!("{}/v1/jobs", app.api_url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"job_id\": \"{}\"}}",
            "x".repeat(2 * 1024 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert_eq!(
        oversized.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );
    assert!(app.get_json("/v1/jobs").await["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn every_v1_route_needs_the_bearer_token() {
    let app = spawn_app().await;
    app.register("ext-auth").await;
    let routes = [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/ext-auth"),
        ("GET", "/v1/jobs/ext-auth/raw"),
        ("GET", "/v1/jobs/ext-auth/events"),
        ("GET", "/v1/webhook-url"),
        ("GET", "/v1/deliveries"),
        ("GET", "/v1/deliveries/1"),
        ("POST", "/v1/deliveries/1/replay"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong-token"), Some("test-api-token-but-longer")] {
            let mut request = app
                .client
                .request(method.parse().unwrap(), format!("{}{path}", app.api_url));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {token:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    // Operations endpoints are open on the private listener.
    for path in ["/readyz", "/metrics", "/openapi.json"] {
        let response = app
            .client
            .get(format!("{}{path}", app.api_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn without_tokens_a_loopback_api_is_open() {
    let app = spawn_app_with(|config| config.api.tokens.clear()).await;
    let response = app
        .client
        .get(format!("{}/v1/jobs", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn unknown_jobs_answer_404_in_json() {
    let app = spawn_app().await;
    for id in [
        "nope",
        "..%2F..%2Fetc%2Fpasswd",
        "%00",
        "' OR 1=1 --",
        &"x".repeat(300),
    ] {
        for suffix in ["", "/raw", "/events"] {
            let response = app.get(&format!("/v1/jobs/{id}{suffix}")).await;
            assert_eq!(response.status(), 404, "{id}{suffix}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "not_found");
        }
    }
    let message = app
        .get("/v1/jobs/nope")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(message["error"]["message"], "job nope is not tracked");
}

#[tokio::test]
async fn raw_is_404_until_pictory_has_said_something() {
    let app = spawn_app().await;
    app.register("ext-raw").await;
    let response = app.get("/v1/jobs/ext-raw/raw").await;
    assert_eq!(response.status(), 404);
    let body = in_progress_body("ext-raw").to_string();
    app.webhook(body.clone()).await;
    let raw = app.get("/v1/jobs/ext-raw/raw").await;
    assert_eq!(raw.headers()["content-type"], "application/json");
    assert_eq!(raw.text().await.unwrap(), body);
}

#[tokio::test]
async fn a_registered_job_follows_its_webhooks() {
    let app = spawn_app().await;
    app.register("ext-flow").await;
    app.webhook(in_progress_body("ext-flow").to_string()).await;
    assert_eq!(app.job("ext-flow").await["status"], "in_progress");
    app.webhook(completed_body("ext-flow").to_string()).await;
    let job = app.job("ext-flow").await;
    assert_eq!(job["status"], "completed");
    let changes: Vec<(String, String)> = app
        .events("ext-flow")
        .await
        .iter()
        .filter(|e| e["kind"] == "status_changed")
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("pending".to_owned(), "in_progress".to_owned()),
            ("in_progress".to_owned(), "completed".to_owned())
        ]
    );
    let ids: Vec<i64> = app
        .events("ext-flow")
        .await
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "history is oldest first: {ids:?}"
    );
}

#[tokio::test]
async fn webhook_url_route_gives_a_url_that_accepts_deliveries() {
    let app = spawn_app().await;
    let body = app.get_json("/v1/webhook-url").await;
    let url = body["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/webhooks/pictory/", app.public_url)));
    assert!(url.len() < 200);
    assert_eq!(
        app.webhook_to(url, completed_body("via-url").to_string())
            .await
            .status(),
        200
    );
}
