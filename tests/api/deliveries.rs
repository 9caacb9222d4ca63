use crate::helpers::*;
use serde_json::{json, Value};

#[tokio::test]
async fn deliveries_are_listed_newest_first_with_pagination_and_filters() {
    let app = spawn_app().await;
    for n in 0..5 {
        app.webhook(in_progress_body(&format!("d{n}")).to_string())
            .await;
    }
    app.webhook("garbage").await;
    let first = app.get_json("/v1/deliveries?limit=4").await;
    let page: Vec<i64> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(page.len(), 4);
    assert!(page.windows(2).all(|w| w[0] > w[1]));
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app
        .get_json(&format!("/v1/deliveries?limit=4&cursor={cursor}"))
        .await;
    assert_eq!(second["data"].as_array().unwrap().len(), 2);
    assert!(second["next_cursor"].is_null());

    assert_eq!(app.deliveries("?outcome=accepted").await.len(), 5);
    assert_eq!(app.deliveries("?outcome=rejected").await.len(), 1);
    let for_job = app.deliveries("?job_id=d3").await;
    assert_eq!(for_job.len(), 1);
    assert_eq!(for_job[0]["job_id"], "d3");
    assert!(app.deliveries("?job_id=unknown").await.is_empty());

    let bad = app.get("/v1/deliveries?outcome=maybe").await;
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_query"
    );
}

#[tokio::test]
async fn one_delivery_by_id_and_404_for_others() {
    let app = spawn_app().await;
    let ack: Value = app
        .webhook(completed_body("one").to_string())
        .await
        .json()
        .await
        .unwrap();
    let id = ack["delivery_id"].as_i64().unwrap();
    let delivery = app.get_json(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(delivery["id"], id);
    assert_eq!(delivery["outcome"], "accepted");
    assert_eq!(delivery["job_id"], "one");
    assert!(delivery["received_at"].as_str().unwrap().ends_with('Z'));
    for missing in ["999999", "abc", "-1", "1.5"] {
        let response = app.get(&format!("/v1/deliveries/{missing}")).await;
        assert_eq!(response.status(), 404, "{missing}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"]["code"],
            "not_found"
        );
    }
}

#[tokio::test]
async fn replaying_a_delivery_applies_it_again_and_records_it() {
    let app = spawn_app().await;
    let ack: Value = app
        .webhook(completed_body("rp").to_string())
        .await
        .json()
        .await
        .unwrap();
    let id = ack["delivery_id"].as_i64().unwrap();
    let replayed = app.post_empty(&format!("/v1/deliveries/{id}/replay")).await;
    assert_eq!(replayed.status(), 200);
    let job: Value = replayed.json().await.unwrap();
    assert_eq!(job["job_id"], "rp");
    assert_eq!(job["status"], "completed");
    let events = app.events("rp").await;
    let replays: Vec<&Value> = events
        .iter()
        .filter(|e| e["replay"] == json!(true))
        .collect();
    assert_eq!(replays.len(), 1);
    assert_eq!(replays[0]["delivery_id"], id);
    assert_eq!(replays[0]["outcome"], "already completed");
}

#[tokio::test]
async fn replaying_an_old_delivery_onto_a_job_that_moved_on_cannot_move_it_back() {
    let app = spawn_app().await;
    let ack: Value = app
        .webhook(in_progress_body("rp2").to_string())
        .await
        .json()
        .await
        .unwrap();
    app.webhook(completed_body("rp2").to_string()).await;
    let id = ack["delivery_id"].as_i64().unwrap();
    let job: Value = app
        .post_empty(&format!("/v1/deliveries/{id}/replay"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        job["status"], "completed",
        "a replayed in-progress cannot move a final job"
    );
}

#[tokio::test]
async fn replaying_a_rejected_or_unknown_delivery_explains_why_not() {
    let app = spawn_app().await;
    let _ = app.webhook("not json").await;
    let rejected = &app.deliveries("?outcome=rejected").await[0];
    let id = rejected["id"].as_i64().unwrap();
    let response = app.post_empty(&format!("/v1/deliveries/{id}/replay")).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("names no job"));
    assert_eq!(
        app.post_empty("/v1/deliveries/424242/replay")
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn retention_prunes_old_bodies_in_batches_but_keeps_jobs_history_and_what_raw_serves() {
    use jobhook::domain::time::ManualClock;
    use jobhook::state::AppState;
    use std::sync::Arc;

    let db = TestDb::fresh().await;
    let config = test_config(&db);
    let store = jobhook::store::open(&config.database.url).await.unwrap();
    store.migrate().await.unwrap();
    let day = 86_400_000;
    let total_old = jobhook::retention::BATCH as i64 + 20;
    for n in 0..total_old + 5 {
        // The last five are recent; the others are older than the 30-day default.
        let received_at = if n < total_old {
            START_MS
        } else {
            START_MS + 29 * day
        };
        // Each job's second webhook is its latest word, which `/raw` serves from the delivery.
        for body in [
            in_progress_body(&format!("r{n}")),
            completed_body(&format!("r{n}")),
        ] {
            store
                .ingest(delivery(&body, received_at, false))
                .await
                .unwrap();
        }
    }
    let clock = ManualClock::new(START_MS + 30 * day + 1);
    let state = AppState::new(config, store.clone(), Arc::new(clock)).unwrap();
    let pruned = jobhook::retention::sweep(&state).await;
    assert_eq!(
        pruned, total_old as u64,
        "every old body, across several batches"
    );
    assert_eq!(jobhook::retention::sweep(&state).await, 0);

    let old = store.delivery(1).await.unwrap().unwrap();
    assert!(old.body.is_none());
    let served = store.delivery(2).await.unwrap().unwrap();
    assert!(served.body.is_some(), "r0's /raw is this body: kept");
    let recent = store.delivery(2 * total_old + 1).await.unwrap().unwrap();
    assert!(recent.body.is_some());
    let job = store.job("r0").await.unwrap().expect("jobs are kept");
    let raw: Value =
        serde_json::from_str(&store.raw_response(job.pk).await.unwrap().unwrap()).unwrap();
    assert_eq!(raw, completed_body("r0"));
    assert!(
        !store.job_events(job.pk).await.unwrap().is_empty(),
        "history is kept"
    );
    assert!(state
        .metrics
        .render()
        .contains("jobhook_delivery_bodies_pruned_total 520"));
}
