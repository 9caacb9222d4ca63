//! Continuations: the next clip starts from the last frame of the one before (SPEC §12).

use crate::helpers::*;
use jobhook::mock::{Forced, MockState};
use serde_json::{json, Value};

fn clip(prompt: &str) -> Value {
    json!({"prompt": prompt, "duration": "8s", "metadata": {"film": "harbour"}})
}

impl TestApp {
    async fn continue_from(&self, id: &str, body: &Value, key: Option<&str>) -> reqwest::Response {
        self.post_keyed(&format!("/v1/jobs/{id}/continue"), body, key)
            .await
    }

    async fn chain_ids(&self, id: &str) -> Vec<String> {
        let chain = self.get_json(&format!("/v1/jobs/{id}/chain")).await;
        assert_eq!(chain["truncated"], false);
        chain["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["job_id"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[tokio::test]
async fn a_three_clip_chain_starts_each_clip_from_pictorys_last_frame_of_the_one_before() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let first = app
        .completed_video(&json!({"prompt": "a harbour at dawn, boats leaving",
            "model": "veo3.1_fast", "aspectRatio": "9:16", "duration": "4s"}))
        .await;
    let mut chain = vec![first];
    for prompt in [
        "the boats reach the open sea",
        "a storm gathers over the boats",
    ] {
        let parent = chain.last().unwrap().clone();
        let parent_id = parent["job_id"].as_str().unwrap();
        let response = app.continue_from(parent_id, &clip(prompt), None).await;
        assert_eq!(response.status(), 201);
        let child: Value = response.json().await.unwrap();
        assert_eq!(child["parent"], parent_id);
        assert_eq!(child["status"], "pending");
        let last_frame = parent["output"]["last_frame_image_url"].as_str().unwrap();
        assert_eq!(last_frame, app.mock().file_url(parent_id, "last-frame.png"));
        assert_eq!(child["request"]["firstFrameImageUrl"], last_frame);
        // The next clip keeps the model and aspect ratio unless told otherwise.
        assert_eq!(child["request"]["model"], "veo3.1_fast");
        assert_eq!(child["request"]["aspectRatio"], "9:16");
        assert_eq!(child["metadata"], json!({"film": "harbour"}));

        // What reached Pictory: the parent's last frame, as the fake itself made it.
        let child_id = child["job_id"].as_str().unwrap();
        let sent = app.mock().job(child_id).unwrap();
        assert_eq!(sent.continues.as_deref(), Some(parent_id));
        assert_eq!(sent.request["firstFrameImageUrl"], last_frame);
        assert_eq!(sent.request["prompt"], prompt);
        chain.push(app.complete(child_id).await);
    }
    let ids: Vec<String> = chain
        .iter()
        .map(|job| job["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(app.mock().generate_calls(), 3);

    // Each job shows its parent and its children, read fresh (not from a stale cache).
    let first = app.job(&ids[0]).await;
    assert_eq!(first["parent"], Value::Null);
    assert_eq!(first["children"], json!([ids[1]]));
    let middle = app.job(&ids[1]).await;
    assert_eq!(middle["parent"], ids[0].as_str());
    assert_eq!(middle["children"], json!([ids[2]]));
    let last = app.job(&ids[2]).await;
    assert_eq!(last["parent"], ids[1].as_str());
    assert_eq!(last["children"], json!([]));

    // The chain from any clip (by either id), first clip first.
    assert_eq!(app.chain_ids(&ids[2]).await, ids);
    let middle_submission = middle["submission_id"].as_str().unwrap();
    assert_eq!(app.chain_ids(middle_submission).await, ids);
    assert_eq!(app.chain_ids(&ids[0]).await, ids);

    let submitted = app
        .events(&ids[1])
        .await
        .into_iter()
        .find(|e| e["kind"] == "submitted")
        .unwrap();
    assert_eq!(submitted["continues"], ids[0].as_str());
}

#[tokio::test]
async fn a_branching_chain_is_listed_depth_first_oldest_branch_first() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let root = app.completed_video(&clip("a lighthouse on a cliff")).await;
    let root_id = root["job_id"].as_str().unwrap().to_owned();
    let continue_with = |parent: String, prompt: &'static str| {
        let app = &app;
        async move {
            let child: Value = app
                .continue_from(&parent, &clip(prompt), None)
                .await
                .json()
                .await
                .unwrap();
            child["job_id"].as_str().unwrap().to_owned()
        }
    };
    let a = continue_with(root_id.clone(), "the light turns on at dusk").await;
    let b = continue_with(root_id.clone(), "a ship passes in the fog").await;
    app.complete(&a).await;
    let a1 = continue_with(a.clone(), "the keeper climbs the stairs").await;
    assert_eq!(app.job(&root_id).await["children"], json!([a, b]));
    // Model and aspect ratio fall back to Pictory's defaults when the parent named none.
    assert_eq!(app.job(&a).await["request"].get("model"), None);
    assert_eq!(app.chain_ids(&b).await, [root_id, a.clone(), a1, b]);
}

#[tokio::test]
async fn the_chain_of_an_untracked_job_is_404_and_strangers_get_401() {
    let app = spawn_app().await;
    app.webhook(completed_body("alone").to_string()).await;
    let alone = app.get_json("/v1/jobs/alone/chain").await;
    assert_eq!(
        alone["data"].as_array().unwrap().len(),
        1,
        "a job is a chain of one"
    );
    assert_eq!(alone["data"][0]["job_id"], "alone");
    for id in ["nobody".to_owned(), "x".repeat(500)] {
        let response = app.get(&format!("/v1/jobs/{id}/chain")).await;
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"]["code"],
            "not_found"
        );
    }
    let stranger = app
        .client
        .get(format!("{}/v1/jobs/alone/chain", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 401);
}

#[tokio::test]
async fn only_a_completed_job_with_a_last_frame_can_be_continued() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let running: Value = app
        .post_json("/v1/videos", &clip("still being generated"))
        .await
        .json()
        .await
        .unwrap();
    let running_id = running["job_id"].as_str().unwrap();
    let response = app
        .continue_from(running_id, &clip("too early"), None)
        .await;
    assert_eq!(response.status(), 409);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "conflict");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is pending; only a completed job can be continued"),
        "{error}"
    );

    // A failed job.
    app.finish(running_id, MockState::Failed).await;
    let response = app
        .continue_from(running_id, &clip("after a failure"), None)
        .await;
    assert_eq!(response.status(), 409);

    // A completed job whose answer had no last frame (a render job, say).
    app.register("no-last-frame").await;
    app.mock().force_next(Forced {
        status: 200,
        body: json!({"job_id": "no-last-frame", "success": true, "data": {"status": "completed",
            "url": "https://cdn.example/v.mp4", "duration": "8s", "aiCreditsUsed": 8}})
        .to_string(),
        ..Default::default()
    });
    let refreshed = app.post_empty("/v1/jobs/no-last-frame/refresh").await;
    assert_eq!(refreshed.status(), 200);
    let response = app
        .continue_from("no-last-frame", &clip("nothing to start from"), None)
        .await;
    assert_eq!(response.status(), 409);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no last frame"),
        "{error}"
    );

    let unknown = app.continue_from("no-such-job", &clip("who?"), None).await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(app.mock().generate_attempts(), 1, "only the first video");
}

#[tokio::test]
async fn a_continuation_is_validated_and_refused_like_a_submission() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let parent = app
        .completed_video(&json!({"prompt": "a field of sunflowers", "model": "veo3.1"}))
        .await;
    let id = parent["job_id"].as_str().unwrap();
    let cases = [
        (json!({"prompt": "tiny"}), "prompt"),
        (json!({"duration": "6s"}), "prompt"),
        (
            json!({"prompt": "a valid prompt", "model": "sora"}),
            "model",
        ),
        // veo3.1 (inherited) has no 5 s clip.
        (
            json!({"prompt": "a valid prompt", "duration": "5s"}),
            "duration",
        ),
        (
            json!({"prompt": "a valid prompt", "aspectRatio": "1:1"}),
            "aspectRatio",
        ),
        (
            json!({"prompt": "a valid prompt", "firstFrameImageUrl": "https://mine.example/f.png"}),
            "firstFrameImageUrl",
        ),
        (
            json!({"prompt": "a valid prompt", "extendVideoUrl": "https://mine.example/v.mp4"}),
            "extendVideoUrl",
        ),
        (
            json!({"prompt": "a valid prompt", "referenceImageUrls": ["https://a/1.png"]}),
            "referenceImageUrls",
        ),
        (
            json!({"prompt": "a valid prompt", "webhook": "https://mine.example/hook"}),
            "webhook",
        ),
        (
            json!({"prompt": "a valid prompt", "metadata": "not an object"}),
            "metadata",
        ),
        (
            json!({"prompt": "a valid prompt", "negativePrompt": "blur"}),
            "negativePrompt",
        ),
        (json!(["not", "an", "object"]), "body"),
    ];
    for (body, field) in cases {
        let response = app.continue_from(id, &body, None).await;
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

    let path = format!("{}/v1/jobs/{id}/continue", app.api_url);
    let unauthorised = app
        .client
        .post(&path)
        .json(&clip("no token"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);
    let malformed = app
        .client
        .post(&path)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.json::<Value>().await.unwrap()["error"]["code"],
        "malformed_json"
    );
    let oversized = app
        .client
        .post(&path)
        .bearer_auth(TOKEN)
        .json(&json!({"prompt": "x".repeat(2 * 1024 * 1024)}))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    let long_key = "k".repeat(300);
    let bad_key = app
        .continue_from(id, &clip("a valid prompt"), Some(&long_key))
        .await;
    assert_eq!(bad_key.status(), 400);
    assert_eq!(
        app.mock().generate_attempts(),
        1,
        "nothing more reached Pictory"
    );

    let receive_only = spawn_app().await;
    receive_only
        .webhook(completed_body("elsewhere").to_string())
        .await;
    let response = receive_only
        .post_keyed("/v1/jobs/elsewhere/continue", &clip("no key"), None)
        .await;
    assert_eq!(response.status(), 409);
    assert!(response.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("receive-only"));
}

#[tokio::test]
async fn a_repeated_continuation_answers_the_first_result_without_a_second_generate() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let parent = app
        .completed_video(&clip("snow falling on a village"))
        .await;
    let other = app
        .completed_video(&clip("rain falling on a village"))
        .await;
    let id = parent["job_id"].as_str().unwrap();
    let first = app
        .continue_from(id, &clip("the village wakes up"), Some("next-1"))
        .await;
    let (status, body) = (first.status(), first.text().await.unwrap());
    assert_eq!(status, 201);
    let calls = app.mock().generate_calls();

    // By the parent's other id, keys in another order: the same request.
    let submission_id = parent["submission_id"].as_str().unwrap();
    let reordered: Value = serde_json::from_str(
        r#"{"metadata": {"film": "harbour"}, "duration": "8s", "prompt": "the village wakes up"}"#,
    )
    .unwrap();
    let again = app
        .continue_from(submission_id, &reordered, Some("next-1"))
        .await;
    assert_eq!(again.status(), status);
    assert_eq!(
        again.text().await.unwrap(),
        body,
        "exactly what the first answered"
    );
    assert_eq!(app.mock().generate_calls(), calls);

    let other_body = app
        .continue_from(id, &clip("the village sleeps"), Some("next-1"))
        .await;
    assert_eq!(other_body.status(), 422);
    assert_eq!(
        other_body.json::<Value>().await.unwrap()["error"]["code"],
        "idempotency_key_reused"
    );
    let other_parent = app
        .continue_from(
            other["job_id"].as_str().unwrap(),
            &clip("the village wakes up"),
            Some("next-1"),
        )
        .await;
    assert_eq!(
        other_parent.status(),
        422,
        "the key covers the job continued"
    );
    assert_eq!(app.mock().generate_calls(), calls);
    assert_eq!(app.job(id).await["children"].as_array().unwrap().len(), 1);

    // Twins in flight make one call.
    app.mock().force_next_generate(Forced {
        status: 200,
        body: "{\"success\": true, \"data\": {\"jobId\": \"twin-continuation\"}}".into(),
        delay: std::time::Duration::from_millis(300),
        ..Default::default()
    });
    let attempts = app.mock().generate_attempts();
    let double_click = clip("double click");
    let twins = (0..5).map(|_| app.continue_from(id, &double_click, Some("twin")));
    let answers = futures::future::join_all(twins).await;
    assert!(answers.iter().all(|a| a.status() == 201));
    assert_eq!(app.mock().generate_attempts(), attempts + 1);
}

#[tokio::test]
async fn an_ambiguous_continuation_is_submit_unknown_and_keeps_its_parent() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let parent = app.completed_video(&clip("a kite over the dunes")).await;
    let id = parent["job_id"].as_str().unwrap();
    app.mock().force_next_generate(Forced {
        status: 500,
        body: "{\"message\":\"Internal server error\"}".into(),
        ..Default::default()
    });
    let attempts = app.mock().generate_attempts();
    let response = app
        .continue_from(id, &clip("the kite string snaps"), None)
        .await;
    assert_eq!(response.status(), 202);
    let child: Value = response.json().await.unwrap();
    assert_eq!(child["status"], "submit_unknown");
    assert_eq!(child["parent"], id);
    assert_eq!(
        app.mock().generate_attempts(),
        attempts + 1,
        "never retried"
    );
    let submission_id = child["submission_id"].as_str().unwrap();
    assert_eq!(app.job(id).await["children"], json!([submission_id]));
}
