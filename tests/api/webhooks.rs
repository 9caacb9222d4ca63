use crate::helpers::*;
use jobhook::signature;
use serde_json::{json, Value};

#[tokio::test]
async fn webhook_for_an_unknown_job_starts_tracking_it_and_applies_the_body() {
    let app = spawn_app().await;
    let response = app.webhook(completed_body("job-1").to_string()).await;
    assert_eq!(response.status(), 200);
    let ack: Value = response.json().await.unwrap();
    assert_eq!(ack["status"], "accepted");

    let job = app.job("job-1").await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["resolved_by"], "webhook");
    assert_eq!(job["output"]["url"], "https://cdn.example/job-1.mp4");
    assert_eq!(
        job["output"]["thumbnail_image_url"],
        "https://cdn.example/t.jpg"
    );
    assert_eq!(job["output"]["ai_credits_used"], 12.8);
    assert_eq!(job["output"]["width"], 1280);
    assert!(job["completed_at"].is_string());
    assert!(job["webhook_received_at"].is_string());

    let kinds: Vec<String> = app
        .events("job-1")
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["registered", "webhook_received", "status_changed"]);
    let change = &app.events("job-1").await[2];
    assert_eq!(
        (change["from"].as_str(), change["to"].as_str()),
        (Some("pending"), Some("completed"))
    );
    assert_eq!(change["cause"], "webhook");
}

#[tokio::test]
async fn duplicate_webhook_is_recorded_once_and_acknowledged() {
    let app = spawn_app().await;
    let body = completed_body("job-dup").to_string();
    let first = app.webhook(body.clone()).await;
    let second = app.webhook(body.clone()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    assert_eq!(second.json::<Value>().await.unwrap()["status"], "duplicate");

    let accepted = app.deliveries("?job_id=job-dup&outcome=accepted").await;
    assert_eq!(accepted.len(), 1, "the body is stored once");
    let duplicates = app.deliveries("?job_id=job-dup&outcome=duplicate").await;
    assert_eq!(duplicates.len(), 1);
    assert_eq!(duplicates[0]["duplicate_of"], accepted[0]["id"]);
    let changes = app
        .events("job-dup")
        .await
        .into_iter()
        .filter(|e| e["kind"] == "status_changed")
        .count();
    assert_eq!(changes, 1);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "jobhook_webhook_duplicates_total"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "jobhook_webhook_deliveries_total{outcome=\"duplicate\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn wrong_key_answers_404_and_stores_nothing() {
    let app = spawn_app().await;
    let forged = format!(
        "{}/webhooks/pictory/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        app.public_url
    );
    for url in [
        forged.as_str(),
        &format!("{}x", app.webhook_url),
        &format!("{}/webhooks/pictory/..%2f..%2fetc", app.public_url),
    ] {
        let response = app
            .webhook_to(url, completed_body("job-x").to_string())
            .await;
        assert_eq!(response.status(), 404, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    assert!(app.deliveries("").await.is_empty());
    assert_eq!(app.get("/v1/jobs/job-x").await.status(), 404);
}

#[tokio::test]
async fn previous_secret_keys_are_still_accepted_after_rotation() {
    let old = spawn_app().await;
    let old_url = old.webhook_url.clone();
    let app = spawn_app_with(|config| {
        config.webhook.previous_secrets = vec![secrecy::SecretString::from(SECRET)];
        config.webhook.secret = Some(secrecy::SecretString::from(
            "a-brand-new-secret-that-is-long-enough-000",
        ));
    })
    .await;
    assert_ne!(
        app.webhook_url,
        old_url.replace(&old.public_url, &app.public_url)
    );
    let rotated = old_url.replace(&old.public_url, &app.public_url);
    let response = app
        .webhook_to(&rotated, completed_body("job-r").to_string())
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.job("job-r").await["status"], "completed");
}

#[tokio::test]
async fn oversized_body_answers_413_and_stores_nothing() {
    let app = spawn_app_with(|config| config.server.body_limit = bytesize::ByteSize::kib(1)).await;
    let mut big = completed_body("job-big");
    big["padding"] = json!("x".repeat(2048));
    let response = app.webhook(big.to_string()).await;
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );

    // Without a Content-Length header the limit holds while reading.
    let chunks = vec![Ok::<_, std::io::Error>(big.to_string().into_bytes())];
    let stream = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let response = app.webhook(stream).await;
    assert_eq!(response.status(), 413);

    assert!(app.deliveries("").await.is_empty());
    assert_eq!(app.get("/v1/jobs/job-big").await.status(), 404);
    // A body under the limit is taken.
    let response = app.webhook(completed_body("job-small").to_string()).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn malformed_body_is_archived_as_rejected_with_a_json_error() {
    let app = spawn_app().await;
    let response = app.webhook("{not json").await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "malformed_body");

    let response = app.webhook(vec![0xff, 0xfe, 0x00]).await;
    assert_eq!(response.status(), 400);

    let rejected = app.deliveries("?outcome=rejected").await;
    assert_eq!(rejected.len(), 2);
    let binary = &rejected[0];
    assert_eq!(binary["body_base64"], "//4A");
    assert!(binary["body"].is_null());
    assert_eq!(rejected[1]["body"], "{not json");
    assert_eq!(rejected[1]["reason"], "body is not JSON");
    assert!(rejected[1]["job_id"].is_null());
}

#[tokio::test]
async fn body_without_a_job_id_is_archived_as_rejected() {
    let app = spawn_app().await;
    let response = app
        .webhook(json!({"data": {"status": "completed"}}).to_string())
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "no_job_id"
    );
    let response = app.webhook("[1,2,3]").await;
    assert_eq!(response.status(), 400);
    let rejected = app.deliveries("?outcome=rejected").await;
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["reason"], "no job id in the body");
    assert!(app.get_json("/v1/jobs").await["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn late_in_progress_never_moves_a_completed_job() {
    let app = spawn_app().await;
    assert_eq!(
        app.webhook(completed_body("job-late").to_string())
            .await
            .status(),
        200
    );
    assert_eq!(
        app.webhook(in_progress_body("job-late").to_string())
            .await
            .status(),
        200
    );
    assert_eq!(
        app.webhook(failed_body("job-late").to_string())
            .await
            .status(),
        200
    );
    let job = app.job("job-late").await;
    assert_eq!(job["status"], "completed");
    assert!(job["error"].is_null());
    let events = app.events("job-late").await;
    let received: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "webhook_received")
        .collect();
    assert_eq!(received.len(), 3, "every delivery is in the history");
    assert_eq!(
        received[1]["outcome"],
        "completed does not move to in_progress"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "status_changed")
            .count(),
        1
    );
}

#[tokio::test]
async fn reordered_webhooks_end_in_the_final_state() {
    let app = spawn_app().await;
    app.webhook(failed_body("job-o").to_string()).await;
    app.webhook(in_progress_body("job-o").to_string()).await;
    let job = app.job("job-o").await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "TEXT_TO_VIDEO_FAILED");
    assert_eq!(job["error"]["message"], "the model refused the prompt");
}

#[tokio::test]
async fn store_failure_answers_503_with_retry_after_and_recovers() {
    let app = spawn_app().await;
    app.faults.set_fail_writes(true);
    let response = app.webhook(completed_body("job-503").to_string()).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "unavailable"
    );
    assert_eq!(app.get("/readyz").await.status(), 503);

    app.faults.set_fail_writes(false);
    assert_eq!(
        app.webhook(completed_body("job-503").to_string())
            .await
            .status(),
        200
    );
    assert_eq!(app.job("job-503").await["status"], "completed");
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn raw_delivery_keeps_headers_and_masks_credentials() {
    let app = spawn_app().await;
    let body = completed_body("job-h").to_string();
    let response = app
        .client
        .post(&app.webhook_url)
        .header("content-type", "application/json")
        .header("x-pictory-test", "yes")
        .header("authorization", "Basic c2VjcmV0")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let delivery = &app.deliveries("?job_id=job-h").await[0];
    assert_eq!(delivery["headers"]["x-pictory-test"], "yes");
    assert_eq!(delivery["headers"]["authorization"], "[redacted]");
    assert_eq!(delivery["body"], body);
    assert!(delivery["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    // /raw serves the last Pictory body verbatim...
    let raw = app.get("/v1/jobs/job-h/raw").await;
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.text().await.unwrap(), body);
    // ...from the delivery: the job row keeps no second copy of it.
    let sql = "SELECT raw_response, raw_delivery FROM jobs WHERE job_id = 'job-h'";
    let (copy, refers_to): (Option<String>, Option<i64>) = match app.db.sqlite_path() {
        Some(path) => rusqlite::Connection::open(path)
            .unwrap()
            .query_row(sql, [], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap(),
        None => {
            use sqlx::Connection as _;
            let mut db = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query_as(sql).fetch_one(&mut db).await.unwrap()
        }
    };
    assert_eq!((copy, refers_to), (None, delivery["id"].as_i64()));
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn signed_app() -> TestApp {
    spawn_app_with(|config| {
        config.webhook.signing_secrets = vec![secrecy::SecretString::from(WHSEC)];
    })
    .await
}

async fn send_signed(
    app: &TestApp,
    body: &str,
    id: &str,
    timestamp: i64,
    signature: &str,
) -> reqwest::Response {
    app.client
        .post(&app.webhook_url)
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn signed_deliveries_must_verify_when_signing_secrets_are_set() {
    let app = signed_app().await;
    let key = jobhook::config::decode_whsec(WHSEC).unwrap();
    let now = START_MS / 1000;
    let body = completed_body("job-s").to_string();

    let unsigned = app.webhook(body.clone()).await;
    assert_eq!(unsigned.status(), 401);
    assert_eq!(
        unsigned.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_signature"
    );

    let stale = signature::sign(&key, "msg_1", now - 301, body.as_bytes());
    assert_eq!(
        send_signed(&app, &body, "msg_1", now - 301, &stale)
            .await
            .status(),
        401
    );
    let future = signature::sign(&key, "msg_1", now + 301, body.as_bytes());
    assert_eq!(
        send_signed(&app, &body, "msg_1", now + 301, &future)
            .await
            .status(),
        401
    );
    assert_eq!(
        send_signed(&app, &body, "msg_1", now, "v1,").await.status(),
        401
    );
    assert_eq!(app.get("/v1/jobs/job-s").await.status(), 404);
    assert_eq!(app.deliveries("?outcome=rejected").await.len(), 4);

    let good = signature::sign(&key, "msg_1", now, body.as_bytes());
    let response = send_signed(&app, &body, "msg_1", now, &format!("v1,bogus {good}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.job("job-s").await["status"], "completed");
}

#[tokio::test]
async fn healthz_answers_on_the_public_listener_only() {
    let app = spawn_app().await;
    let health = app
        .client
        .get(format!("{}/healthz", app.public_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let api_on_public = app
        .client
        .get(format!("{}/v1/jobs", app.public_url))
        .send()
        .await
        .unwrap();
    assert_eq!(api_on_public.status(), 404);
    let wrong_method = app.client.get(&app.webhook_url).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(
        wrong_method.json::<Value>().await.unwrap()["error"]["code"],
        "method_not_allowed"
    );
}

#[tokio::test]
async fn concurrent_identical_deliveries_store_one_copy() {
    let app = spawn_app().await;
    let body = completed_body("job-race").to_string();
    let sends = (0..16).map(|_| app.webhook(body.clone()));
    let responses = futures::future::join_all(sends).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(
        app.deliveries("?job_id=job-race&outcome=accepted")
            .await
            .len(),
        1
    );
    assert_eq!(
        app.deliveries("?job_id=job-race&outcome=duplicate")
            .await
            .len(),
        15
    );
}

#[tokio::test]
async fn unusable_job_ids_in_a_body_are_archived_as_rejected() {
    let app = spawn_app().await;
    for id in ["x".repeat(129), "has space".to_owned(), "a/b".to_owned()] {
        let response = app
            .webhook(json!({"job_id": id, "data": {"status": "completed"}}).to_string())
            .await;
        assert_eq!(response.status(), 400, "{id}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"]["code"],
            "invalid_job_id"
        );
    }
    assert_eq!(app.deliveries("?outcome=rejected").await.len(), 3);
    assert!(app.get_json("/v1/jobs").await["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_stale_body_does_not_replace_the_raw_answer_of_a_final_job() {
    let app = spawn_app().await;
    let completed = completed_body("raw-keep").to_string();
    app.webhook(completed.clone()).await;
    app.webhook(in_progress_body("raw-keep").to_string()).await;
    assert_eq!(
        app.get("/v1/jobs/raw-keep/raw").await.text().await.unwrap(),
        completed
    );
}
