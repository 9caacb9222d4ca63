use crate::helpers::*;
use serde_json::Value;
use std::collections::HashSet;

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["job_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn jobs_are_listed_newest_change_first() {
    let app = spawn_app().await;
    for n in 0..3 {
        app.register(&format!("j{n}")).await;
        app.clock.advance_ms(1000);
    }
    app.webhook(in_progress_body("j0").to_string()).await;
    let page = app.get_json("/v1/jobs").await;
    assert_eq!(ids(&page), ["j0", "j2", "j1"]);
    assert!(page["next_cursor"].is_null());
}

#[tokio::test]
async fn pagination_never_skips_or_repeats_a_row_while_others_write() {
    let app = spawn_app().await;
    let total = 40;
    for n in 0..total {
        app.register(&format!("p{n:02}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut round = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=7&cursor={c}"),
            None => "/v1/jobs?limit=7".to_owned(),
        };
        let page = app.get_json(&path).await;
        seen.extend(ids(&page));
        // Between pages: move rows not yet seen and rows already seen, and add new ones.
        round += 1;
        app.webhook(in_progress_body(&format!("p{:02}", round)).to_string())
            .await;
        app.webhook(in_progress_body(&format!("p{:02}", total - round)).to_string())
            .await;
        app.register(&format!("new{round}")).await;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a row was repeated: {seen:?}");
    let expected: HashSet<String> = (0..total).map(|n| format!("p{n:02}")).collect();
    let seen_set: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        seen_set, expected,
        "rows existing at the first page are all seen exactly once"
    );
}

#[tokio::test]
async fn filters_select_by_status_and_change_time() {
    let app = spawn_app().await;
    app.register("f-pending").await;
    app.clock.advance_ms(60_000);
    let middle = jobhook::domain::time::rfc3339(app.clock_now());
    app.clock.advance_ms(60_000);
    app.webhook(completed_body("f-done").to_string()).await;
    app.webhook(failed_body("f-failed").to_string()).await;

    let done = app.get_json("/v1/jobs?status=completed").await;
    assert_eq!(ids(&done), ["f-done"]);
    let finals = app.get_json("/v1/jobs?status=completed,failed").await;
    assert_eq!(ids(&finals), ["f-failed", "f-done"]);
    let recent = app
        .get_json(&format!("/v1/jobs?updated_after={middle}"))
        .await;
    assert_eq!(ids(&recent), ["f-failed", "f-done"]);
    let older = app
        .get_json(&format!("/v1/jobs?updated_before={middle}"))
        .await;
    assert_eq!(ids(&older), ["f-pending"]);
}

#[tokio::test]
async fn bad_list_parameters_answer_400_naming_the_parameter() {
    let app = spawn_app().await;
    for (query, needle) in [
        ("status=done", "status"),
        ("updated_after=yesterday", "updated_after"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
    ] {
        let response = app.get(&format!("/v1/jobs?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_query");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    assert_eq!(app.get("/v1/jobs?limit=500").await.status(), 200);
}

impl TestApp {
    fn clock_now(&self) -> i64 {
        use jobhook::domain::time::Clock;
        self.clock.now_ms()
    }
}
