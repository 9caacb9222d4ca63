//! `GET /v1/quota`: Pictory's quota, relayed verbatim, asked at most once a minute.

use crate::helpers::*;
use jobhook::mock::Forced;
use serde_json::{json, Value};

fn forced(status: u16, retry_after: Option<&str>, body: &str) -> Forced {
    Forced {
        status,
        retry_after: retry_after.map(str::to_owned),
        body: body.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_quota_is_pictorys_answer_verbatim_and_asked_once_a_minute() {
    let app = spawn_app_with_pictory(|_| {}).await;
    app.completed_video(&json!({"prompt": "a quiet library at night", "model": "veo3.1"}))
        .await;
    let expected = app.mock().quota_body();
    assert_eq!(expected["data"]["aiCredits"]["used"], json!(80.0));

    let first = app.get("/v1/quota").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "application/json");
    assert_eq!(first.headers()["age"], "0");
    assert_eq!(first.headers()["cache-control"], "private, max-age=60");
    let first_text = first.text().await.unwrap();
    assert_eq!(first_text, expected.to_string(), "relayed byte for byte");
    assert_eq!(app.mock().quota_calls(), 1);

    // Pictory's figures move on; within the minute jobhook still answers what it has.
    app.completed_video(&json!({"prompt": "a busy market at noon", "model": "veo3.1_fast"}))
        .await;
    app.clock.advance_ms(30_000);
    let cached = app.get("/v1/quota").await;
    assert_eq!(cached.headers()["age"], "30");
    assert_eq!(cached.text().await.unwrap(), first_text);
    app.clock.advance_ms(29_000);
    assert_eq!(app.get("/v1/quota").await.text().await.unwrap(), first_text);
    assert_eq!(
        app.mock().quota_calls(),
        1,
        "two requests, one upstream call"
    );

    // After a minute: asked again, once, however many ask together.
    app.clock.advance_ms(1_000);
    let together = (0..8).map(|_| app.get("/v1/quota"));
    let answers = futures::future::join_all(together).await;
    assert_eq!(app.mock().quota_calls(), 2);
    for answer in answers {
        assert_eq!(answer.status(), 200);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["data"]["aiCredits"]["used"], json!(120.0));
    }
}

#[tokio::test]
async fn a_pictory_error_is_a_clear_502_or_503_and_is_not_cached() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let cases = [
        (
            forced(500, None, "{\"message\":\"Internal server error\"}"),
            502,
            "upstream_error",
        ),
        (
            forced(200, None, "<html>maintenance</html>"),
            502,
            "upstream_error",
        ),
        (
            forced(401, None, "{\"message\":\"Unauthorized\"}"),
            502,
            "upstream_unauthorized",
        ),
        (
            forced(403, None, "error code: 1010"),
            502,
            "upstream_unauthorized",
        ),
        (forced(503, Some("7"), ""), 503, "upstream_unavailable"),
        (forced(429, None, ""), 503, "upstream_unavailable"),
    ];
    for (n, (answer, status, code)) in cases.into_iter().enumerate() {
        app.mock().force_next_quota(answer);
        let response = app.get("/v1/quota").await;
        assert_eq!(response.status(), status, "case {n}");
        if status == 503 {
            let expected = if n == 4 { "7" } else { "5" };
            assert_eq!(response.headers()["retry-after"], expected, "case {n}");
        }
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "case {n}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("quota"),
            "case {n}: {error}"
        );
        assert_eq!(app.mock().quota_calls(), n + 1, "errors are not cached");
    }
    // Then Pictory answers, and that is served.
    let response = app.get("/v1/quota").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        app.mock().quota_body()
    );
}

#[tokio::test]
async fn an_unreachable_pictory_is_503_and_receive_only_and_strangers_are_refused() {
    // Bound, never listening: refused, and the port cannot be taken by another test meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = format!("http://{}/pictoryapis", closed.local_addr().unwrap());
    let app = spawn_app_with(move |config| {
        config.pictory.api_key = Some(secrecy::SecretString::from("pictai_x"));
        config.pictory.base_url = dead;
    })
    .await;
    let response = app.get("/v1/quota").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "upstream_unavailable"
    );

    let receive_only = spawn_app().await;
    let response = receive_only.get("/v1/quota").await;
    assert_eq!(response.status(), 409);
    assert!(response.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("receive-only"));

    let stranger = receive_only
        .client
        .get(format!("{}/v1/quota", receive_only.api_url))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 401);
}
