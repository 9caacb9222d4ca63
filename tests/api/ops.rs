use crate::helpers::*;
use serde_json::Value;

#[tokio::test]
async fn readyz_reports_a_writable_current_database() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/readyz", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "ready");
}

#[tokio::test]
async fn metrics_expose_deliveries_jobs_and_latency_with_the_prefix() {
    let app = spawn_app().await;
    app.webhook(completed_body("m1").to_string()).await;
    app.webhook(in_progress_body("m2").to_string()).await;
    app.webhook("nope").await;
    app.get("/v1/jobs/m1").await;
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "jobhook_webhook_deliveries_total{outcome=\"accepted\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "jobhook_webhook_deliveries_total{outcome=\"rejected\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "jobhook_jobs{status=\"completed\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "jobhook_jobs{status=\"in_progress\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "jobhook_jobs{status=\"failed\"}"),
        Some(0.0)
    );
    assert_eq!(metric_value(&metrics, "jobhook_jobs_overdue"), Some(0.0));
    assert!(
        metrics.contains("route=\"/v1/jobs/{id}\""),
        "latency is labelled with the route template, not the raw path"
    );
    assert!(!metrics.contains("route=\"/v1/jobs/m1\""));
    assert!(metrics.contains("jobhook_http_request_duration_seconds_bucket"));
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("jobhook_"), "unprefixed metric: {line}");
    }
}

#[tokio::test]
async fn openapi_describes_every_route_of_the_private_listener() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(format!("{}/openapi.json", app.api_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/raw",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/continue",
        "/v1/jobs/{id}/chain",
        "/v1/usage",
        "/v1/quota",
        "/v1/webhook-url",
        "/v1/deliveries",
        "/v1/deliveries/{id}",
        "/v1/deliveries/{id}/replay",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} is missing from the OpenAPI document"
        );
    }
    let job = &doc["components"]["schemas"]["JobView"];
    assert!(job["properties"]["parent"].is_object());
    assert!(job["properties"]["children"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn responses_carry_a_request_id_and_keep_the_callers() {
    let app = spawn_app().await;
    let response = app.get("/v1/jobs").await;
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36);
    let response = app
        .client
        .get(format!("{}/healthz", app.public_url))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let app = spawn_app().await;
    let response = app.get("/v2/anything").await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
}

#[tokio::test]
async fn graceful_stop_returns_ok_and_data_survives_a_restart() {
    let app = spawn_app().await;
    app.webhook(completed_body("kept").to_string()).await;
    let app = app.restart().await;
    assert_eq!(app.job("kept").await["status"], "completed");
}
