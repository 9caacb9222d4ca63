//! Long-poll and the Server-Sent Events stream.

use crate::helpers::*;
use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;

/// One parsed Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: i64,
    pub event: String,
    pub data: Value,
}

impl SseEvent {
    /// The job's id and status in the event's data.
    pub fn job_status(&self) -> (String, String) {
        let text = |key: &str| self.data[key].as_str().unwrap_or_default().to_owned();
        (text("job_id"), text("status"))
    }
}

/// `(job id, status)` pairs, for comparing with what a test expects.
fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A minimal SSE reader over a streaming response.
pub struct SseClient {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseClient {
    pub async fn connect(app: &TestApp, query: &str, last_event_id: Option<i64>) -> SseClient {
        let mut request = app
            .client
            .get(format!("{}/v1/events{query}", app.api_url))
            .bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        SseClient {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event, failing the test if none comes within five seconds.
    pub async fn next(&mut self) -> SseEvent {
        tokio::time::timeout(Duration::from_secs(5), self.read())
            .await
            .expect("an event within five seconds")
    }

    /// The next `n` events.
    pub async fn next_n(&mut self, n: usize) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next().await);
        }
        events
    }

    /// Whether an event arrives within `wait` (for asserting that nothing more comes).
    async fn read(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                // Comments (keep-alives) have no id.
                if let Some(id) = id {
                    return SseEvent {
                        id,
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                    };
                }
                continue;
            }
            let chunk = self.body.next().await.expect("stream open").unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn long_poll_answers_as_soon_as_the_job_is_final() {
    let app = spawn_app().await;
    app.register("lp").await;
    let url = format!("{}/v1/jobs/lp?wait=30s", app.api_url);
    let waiting = tokio::spawn(app.client.get(url).bearer_auth(TOKEN).send());
    app.wait_for_long_polls(1).await;
    // A non-final change does not end the wait...
    app.webhook(in_progress_body("lp").to_string()).await;
    assert_eq!(app.job("lp").await["status"], "in_progress");
    assert!(!waiting.is_finished());
    assert_eq!(
        metric_value(&app.metrics().await, "jobhook_long_polls_waiting"),
        Some(1.0)
    );
    // ...the final one does.
    app.webhook(completed_body("lp").to_string()).await;
    let response = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered long before the 30 s wait ran out")
        .unwrap()
        .unwrap();
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "completed");
    app.wait_for_long_polls(0).await;
}

#[tokio::test]
async fn long_poll_times_out_with_the_job_as_it_is() {
    let app = spawn_app().await;
    app.register("lp-timeout").await;
    let asked = std::time::Instant::now();
    let job = app.get_json("/v1/jobs/lp-timeout?wait=1s").await;
    let waited = asked.elapsed();
    assert_eq!(job["status"], "pending");
    // It really waited for the job to change (a wait that is ignored answers at once).
    assert!(
        waited >= Duration::from_millis(950),
        "answered after {waited:?}"
    );
    let done = app.webhook(completed_body("lp-final").to_string()).await;
    assert_eq!(done.status(), 200);
    let immediate = tokio::time::timeout(
        Duration::from_secs(5),
        app.get_json("/v1/jobs/lp-final?wait=60s"),
    )
    .await
    .expect("a final job answers at once");
    assert_eq!(immediate["status"], "completed");
    for bad in ["61s", "2m", "soon", "-1"] {
        let response = app.get(&format!("/v1/jobs/lp-timeout?wait={bad}")).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"]["code"],
            "invalid_query"
        );
    }
}

#[tokio::test]
async fn the_stream_sends_each_status_change_in_order_from_now_on() {
    let app = spawn_app().await;
    app.webhook(completed_body("before").to_string()).await;
    let mut stream = SseClient::connect(&app, "", None).await;
    app.webhook(in_progress_body("s1").to_string()).await;
    app.webhook(completed_body("s1").to_string()).await;
    app.webhook(failed_body("s2").to_string()).await;
    let events = stream.next_n(3).await;
    let seen: Vec<(String, String)> = events.iter().map(SseEvent::job_status).collect();
    assert_eq!(
        seen,
        pairs(&[("s1", "in_progress"), ("s1", "completed"), ("s2", "failed")]),
        "nothing from before the connection"
    );
    assert!(events.iter().all(|e| e.event == "job.updated"));
    assert!(events.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert_eq!(
        events[1].data["output"]["url"], "https://cdn.example/s1.mp4",
        "data is the job JSON"
    );
}

#[tokio::test]
async fn a_client_resumes_with_last_event_id_across_a_restart_without_gaps_or_repeats() {
    let app = spawn_app().await;
    let mut stream = SseClient::connect(&app, "", None).await;
    app.webhook(in_progress_body("r1").to_string()).await;
    let first = stream.next().await;
    drop(stream);
    // Changes while the client is away, then a restart, then more changes.
    app.webhook(completed_body("r1").to_string()).await;
    app.webhook(in_progress_body("r2").to_string()).await;
    let app = app.restart().await;
    app.webhook(failed_body("r2").to_string()).await;

    let mut resumed = SseClient::connect(&app, "", Some(first.id)).await;
    let missed = resumed.next_n(3).await;
    let seen: Vec<(String, String)> = missed.iter().map(SseEvent::job_status).collect();
    assert_eq!(
        seen,
        pairs(&[("r1", "completed"), ("r2", "in_progress"), ("r2", "failed")])
    );
    assert!(missed[0].id > first.id && missed.windows(2).all(|w| w[0].id < w[1].id));
    // And it continues live: the next event is the next change, no repeat in between.
    app.webhook(completed_body("r3").to_string()).await;
    let live = resumed.next().await;
    assert_eq!(live.job_status(), ("r3".to_owned(), "completed".to_owned()));
    assert!(live.id > missed[2].id);
}

#[tokio::test]
async fn the_stream_filters_by_status_and_job() {
    let app = spawn_app().await;
    let mut finals = SseClient::connect(&app, "?status=completed,failed", None).await;
    let mut one_job = SseClient::connect(&app, "?job_id=f2", None).await;
    app.webhook(in_progress_body("f1").to_string()).await;
    app.webhook(completed_body("f1").to_string()).await;
    app.webhook(in_progress_body("f2").to_string()).await;
    app.webhook(failed_body("f2").to_string()).await;
    let a = finals.next().await;
    let b = finals.next().await;
    assert_eq!(
        (a.data["job_id"].as_str(), a.data["status"].as_str()),
        (Some("f1"), Some("completed"))
    );
    assert_eq!(
        (b.data["job_id"].as_str(), b.data["status"].as_str()),
        (Some("f2"), Some("failed"))
    );
    let c = one_job.next().await;
    let d = one_job.next().await;
    assert_eq!(
        (c.data["status"].as_str(), d.data["status"].as_str()),
        (Some("in_progress"), Some("failed"))
    );
}

#[tokio::test]
async fn the_stream_refuses_bad_input() {
    let app = spawn_app().await;
    let unauthorised = app
        .client
        .get(format!("{}/v1/events", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);
    let bad_id = app
        .client
        .get(format!("{}/v1/events", app.api_url))
        .bearer_auth(TOKEN)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), 400);
    assert_eq!(
        bad_id.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_last_event_id"
    );
    assert_eq!(app.get("/v1/events?status=done").await.status(), 400);
}

#[tokio::test]
async fn a_slow_stream_reader_does_not_hold_up_ingest() {
    let app = spawn_app().await;
    // Connected, never read.
    let _idle = SseClient::connect(&app, "", None).await;
    for n in 0..300 {
        let response = app
            .webhook(completed_body(&format!("flood-{n}")).to_string())
            .await;
        assert_eq!(response.status(), 200);
    }
    let mut late = SseClient::connect(&app, "", Some(0)).await;
    let events = late.next_n(300).await;
    let expected: Vec<String> = (0..300).map(|n| format!("flood-{n}")).collect();
    let seen: Vec<String> = events.iter().map(|e| e.job_status().0).collect();
    assert_eq!(
        seen, expected,
        "a reader from the start gets every change, in order"
    );
    // Nothing else was queued: the next event is the next change.
    app.webhook(completed_body("after").to_string()).await;
    assert_eq!(late.next().await.job_status().0, "after");
}
