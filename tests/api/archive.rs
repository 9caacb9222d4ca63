//! The output archive (SPEC §10) on a local folder: files copied byte for byte with their
//! checksums, served with `Range` and `ETag` after Pictory cleaned them, faults retried or
//! recorded, copies made again, notifications that wait, and a restart mid-file.

use crate::helpers::{metric_value, spawn, Options, TestApp};
use jobhook::config::{Config, NotifyEndpoint};
use jobhook::mock::{FileFault, MockOptions, MockState};
use reqwest::header;
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;

/// An app with a fake Pictory and an archive in a temporary folder.
pub(crate) struct Archived {
    pub(crate) app: TestApp,
    pub(crate) dir: TempDir,
}

pub(crate) async fn start(
    mock: MockOptions,
    configure: impl FnOnce(&mut Config) + Send + 'static,
) -> Archived {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let mut options = Options::new(move |config| {
        config.archive.url = Some(url);
        configure(config);
    });
    options.pictory = Some(mock);
    Archived {
        app: spawn(options).await,
        dir,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TestApp {
    /// Waits (10 s at most) until the job's archive is no longer pending; returns the job.
    pub(crate) async fn wait_archived(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let job = self.job(id).await;
            let status = job["archive"]["status"].as_str().unwrap_or("pending");
            if status != "pending" {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the archive of {id} is still pending: {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the fake has been asked for `n` files.
    async fn wait_for_downloads(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.mock().file_requests().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "no download came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` archive attempts of the job are in its history; returns their outcomes.
    async fn wait_for_attempts(&self, id: &str, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let outcomes: Vec<String> = self
                .events(id)
                .await
                .iter()
                .filter(|e| e["kind"] == "archived")
                .map(|e| e["outcome"].as_str().unwrap().to_owned())
                .collect();
            if outcomes.len() >= n {
                return outcomes;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "attempt {n} not recorded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Moves the clock past any retry's backoff and wakes the archiver.
    fn skip_backoff(&self) {
        self.clock.advance_ms(60 * 60_000);
        self.state.wake_archiver();
    }

    async fn get_with(
        &self,
        path: &str,
        headers: &[(header::HeaderName, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .get(format!("{}{path}", self.api_url))
            .bearer_auth(crate::helpers::TOKEN);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        request.send().await.unwrap()
    }
}

fn video_only(config: &mut Config) {
    config.archive.files = vec!["video".into()];
}

#[tokio::test]
async fn every_file_of_a_completed_job_is_kept_byte_for_byte() {
    let Archived { app, dir } = start(MockOptions::default(), |_| {}).await;
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap();
    // The completion itself already shows the archive it started.
    assert_eq!(job["archive"]["status"], "pending", "{job}");

    let job = app.wait_archived(id).await;
    let archive = &job["archive"];
    assert_eq!(archive["status"], "done", "{job}");
    for (name, file, content_type) in [
        ("video", "video.mp4", "video/mp4"),
        ("thumbnail", "thumbnail.jpg", "image/jpeg"),
        ("last_frame", "last-frame.png", "image/png"),
        ("preview", "preview.jpg", "image/jpeg"),
    ] {
        let bytes = app.mock().file_bytes(file).unwrap();
        let kept = &archive["files"][name];
        assert_eq!(kept["status"], "done", "{name}: {kept}");
        assert_eq!(kept["size"], bytes.len(), "{name}");
        assert_eq!(kept["sha256"], sha256_hex(&bytes), "{name}");
        assert_eq!(kept["content_type"], content_type, "{name}");
        assert_eq!(kept["url"], format!("/v1/jobs/{id}/files/{name}"));

        let served = app.get(&format!("/v1/jobs/{id}/files/{name}")).await;
        assert_eq!(served.status(), 200);
        assert_eq!(served.headers()[header::CONTENT_TYPE], content_type);
        assert_eq!(
            served.headers()[header::ETAG].to_str().unwrap(),
            format!("\"{}\"", sha256_hex(&bytes))
        );
        assert_eq!(served.bytes().await.unwrap().to_vec(), bytes, "{name}");

        // In the store under <job_id>/<name>.<ext>.
        let extension = file.rsplit('.').next().unwrap();
        let on_disk: PathBuf = dir.path().join(id).join(format!("{name}.{extension}"));
        assert_eq!(
            std::fs::read(&on_disk).unwrap(),
            bytes,
            "{}",
            on_disk.display()
        );
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "jobhook_archive_files_total{result=\"done\"}"),
        Some(4.0)
    );
    let total: usize = [
        "video.mp4",
        "thumbnail.jpg",
        "last-frame.png",
        "preview.jpg",
    ]
    .iter()
    .map(|f| app.mock().file_bytes(f).unwrap().len())
    .sum();
    assert_eq!(
        metric_value(&metrics, "jobhook_archive_bytes_total{result=\"done\"}"),
        Some(total as f64)
    );
    // Each copy is in the job's history.
    let archived = app
        .events(id)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "archived" && e["outcome"] == "done")
        .count();
    assert_eq!(archived, 4);
}

#[tokio::test]
async fn files_are_served_after_pictory_cleaned_them() {
    let mock = MockOptions {
        clean_after: Some(Duration::from_secs(3600)),
        ..MockOptions::default()
    };
    let Archived { app, dir: _dir } = start(mock, video_only).await;
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap();
    app.wait_archived(id).await;

    app.clock.advance_ms(2 * 3600 * 1000);
    let pictory_url = job["output"]["url"].as_str().unwrap();
    let gone = reqwest::get(pictory_url).await.unwrap();
    assert_eq!(gone.status(), 404, "Pictory's copy is deleted");
    assert_eq!(
        app.mock().job_body(id).unwrap()["data"]["status"],
        "cleaned"
    );

    let served = app.get(&format!("/v1/jobs/{id}/files/video")).await;
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.bytes().await.unwrap().to_vec(),
        app.mock().file_bytes("video.mp4").unwrap()
    );
}

#[tokio::test]
async fn ranges_etags_and_refusals_are_answered_byte_for_byte() {
    let Archived { app, dir: _dir } = start(MockOptions::default(), video_only).await;
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap();
    app.wait_archived(id).await;
    let bytes = app.mock().file_bytes("video.mp4").unwrap();
    let size = bytes.len();
    let path = format!("/v1/jobs/{id}/files/video");
    let etag = format!("\"{}\"", sha256_hex(&bytes));

    let first = app.get_with(&path, &[(header::RANGE, "bytes=0-99")]).await;
    assert_eq!(first.status(), 206);
    assert_eq!(
        first.headers()[header::CONTENT_RANGE],
        format!("bytes 0-99/{size}").as_str()
    );
    assert_eq!(first.headers()[header::CONTENT_LENGTH], "100");
    assert_eq!(first.headers()[header::ACCEPT_RANGES], "bytes");
    assert_eq!(first.bytes().await.unwrap().to_vec(), bytes[..100]);

    let middle = app
        .get_with(&path, &[(header::RANGE, "bytes=1000-1999")])
        .await;
    assert_eq!(middle.status(), 206);
    assert_eq!(middle.bytes().await.unwrap().to_vec(), bytes[1000..2000]);

    let tail = app.get_with(&path, &[(header::RANGE, "bytes=-10")]).await;
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap().to_vec(), bytes[size - 10..]);

    let open_ended = app
        .get_with(&path, &[(header::RANGE, &format!("bytes={}-", size - 5))])
        .await;
    assert_eq!(open_ended.status(), 206);
    assert_eq!(
        open_ended.bytes().await.unwrap().to_vec(),
        bytes[size - 5..]
    );

    let outside = app
        .get_with(&path, &[(header::RANGE, &format!("bytes={size}-"))])
        .await;
    assert_eq!(outside.status(), 416);
    assert_eq!(
        outside.headers()[header::CONTENT_RANGE],
        format!("bytes */{size}").as_str()
    );

    // A Range it cannot read, and one for another copy (If-Range), get the whole file.
    let garbled = app.get_with(&path, &[(header::RANGE, "pages=1-2")]).await;
    assert_eq!(garbled.status(), 200);
    assert_eq!(garbled.bytes().await.unwrap().len(), size);
    let stale = app
        .get_with(
            &path,
            &[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, "\"old\"")],
        )
        .await;
    assert_eq!(stale.status(), 200);
    let same = app
        .get_with(
            &path,
            &[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, &etag)],
        )
        .await;
    assert_eq!(same.status(), 206);

    let cached = app.get_with(&path, &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(cached.status(), 304);
    assert_eq!(cached.headers()[header::ETAG], etag.as_str());
    assert!(cached.bytes().await.unwrap().is_empty());
    let changed = app
        .get_with(&path, &[(header::IF_NONE_MATCH, "\"other\"")])
        .await;
    assert_eq!(changed.status(), 200);

    let head = app
        .client
        .head(format!("{}{path}", app.api_url))
        .bearer_auth(crate::helpers::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        size.to_string().as_str()
    );

    // Files not archived, unknown names and jobs, and no token.
    assert_eq!(
        app.get(&format!("/v1/jobs/{id}/files/thumbnail"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/v1/jobs/{id}/files/nonsense"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get("/v1/jobs/no-such-job/files/video").await.status(),
        404
    );
    let anonymous = reqwest::get(format!("{}{path}", app.api_url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn a_cut_download_is_not_kept_and_is_copied_again_whole() {
    let Archived { app, dir } = start(MockOptions::default(), video_only).await;
    app.mock().force_next_file(FileFault::CutAfter(1000));
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap();
    app.wait_for_downloads(1).await;

    // The cut attempt is recorded as a retry: nothing is kept, no object is left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let job = loop {
        let job = app.job(id).await;
        if job["archive"]["files"]["video"]["error"].is_string() {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let video = &job["archive"]["files"]["video"];
    assert_eq!(job["archive"]["status"], "pending");
    assert_eq!(video["status"], "pending");
    assert!(video["error"].as_str().unwrap().contains("cut"), "{video}");
    assert!(video.get("sha256").is_none());
    assert!(!dir.path().join(id).join("video.mp4").exists());
    assert_eq!(
        app.get(&format!("/v1/jobs/{id}/files/video"))
            .await
            .status(),
        404
    );

    app.skip_backoff();
    let job = app.wait_archived(id).await;
    let bytes = app.mock().file_bytes("video.mp4").unwrap();
    assert_eq!(
        job["archive"]["files"]["video"]["sha256"],
        sha256_hex(&bytes)
    );
    let served = app.get(&format!("/v1/jobs/{id}/files/video")).await;
    assert_eq!(served.bytes().await.unwrap().to_vec(), bytes);
    assert_eq!(app.mock().file_requests().len(), 2);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "jobhook_archive_files_total{result=\"retrying\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_the_file_is_kept() {
    let Archived { app, dir: _dir } = start(MockOptions::default(), video_only).await;
    app.mock().force_next_file(FileFault::Status(500));
    app.mock().force_next_file(FileFault::Status(503));
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap();
    app.wait_for_downloads(1).await;
    // Each attempt is recorded before the clock jumps again (a jump past the lease of an
    // attempt still recording would let the next one take the file over, as it should).
    app.wait_for_attempts(id, 1).await;
    // Not tried again before its backoff has passed.
    app.state.wake_archiver();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.mock().file_requests().len(), 1, "the backoff is kept");

    app.skip_backoff();
    app.wait_for_attempts(id, 2).await;
    app.skip_backoff();
    let job = app.wait_archived(id).await;
    assert_eq!(job["archive"]["status"], "done");
    assert_eq!(
        app.wait_for_attempts(id, 3).await,
        ["retrying", "retrying", "done"]
    );
    let statuses: Vec<u16> = app
        .mock()
        .file_requests()
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 503, 200]);
}

#[tokio::test]
async fn a_file_pictory_no_longer_has_is_gone_and_not_asked_for_again() {
    let Archived { app, dir: _dir } = start(MockOptions::default(), video_only).await;
    app.mock().force_next_file(FileFault::Status(404));
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap();
    let job = app.wait_archived(id).await;
    assert_eq!(job["archive"]["status"], "failed", "{job}");
    assert_eq!(job["archive"]["files"]["video"]["status"], "gone");
    assert!(job["archive"]["files"]["video"]["error"]
        .as_str()
        .unwrap()
        .contains("404"));

    app.skip_backoff();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.mock().file_requests().len(),
        1,
        "a gone file is not retried"
    );
    assert_eq!(
        metric_value(
            &app.metrics().await,
            "jobhook_archive_files_total{result=\"gone\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_file_larger_than_the_limit_is_not_copied() {
    let Archived { app, dir } = start(MockOptions::default(), |config| {
        config.archive.files = vec!["video".into(), "thumbnail".into()];
        config.archive.max_size = bytesize::ByteSize::b(8000);
    })
    .await;
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap();
    let job = app.wait_archived(id).await;
    // The sample video is over 8000 bytes, the thumbnail under.
    assert!(app.mock().file_bytes("video.mp4").unwrap().len() > 8000);
    assert_eq!(job["archive"]["status"], "partial", "{job}");
    assert_eq!(job["archive"]["files"]["video"]["status"], "too_large");
    assert!(job["archive"]["files"]["video"]["error"]
        .as_str()
        .unwrap()
        .contains("archive.max_size"));
    assert_eq!(job["archive"]["files"]["thumbnail"]["status"], "done");
    assert!(!dir.path().join(id).join("video.mp4").exists());
}

#[tokio::test]
async fn a_restart_mid_file_copies_that_file_again_from_the_start() {
    let Archived { app, dir } = start(MockOptions::default(), video_only).await;
    app.mock().force_next_file(FileFault::StallAfter(2000));
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    app.wait_for_downloads(1).await;
    assert_eq!(app.job(&id).await["archive"]["status"], "pending");

    let mock = app.mock().clone();
    let app = app.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mock.file_requests().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "copied again after the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let job = app.wait_archived(&id).await;
    let bytes = mock.file_bytes("video.mp4").unwrap();
    assert_eq!(
        job["archive"]["files"]["video"]["sha256"],
        sha256_hex(&bytes)
    );
    assert_eq!(
        std::fs::read(dir.path().join(&id).join("video.mp4")).unwrap(),
        bytes
    );
}

#[tokio::test]
async fn archiving_again_copies_the_files_anew() {
    let Archived { app, dir: _dir } = start(MockOptions::default(), video_only).await;
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap();
    app.wait_archived(id).await;
    assert_eq!(app.mock().file_requests().len(), 1);

    let again = app.post_empty(&format!("/v1/jobs/{id}/archive")).await;
    assert_eq!(again.status(), 202);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["archive"]["status"], "pending");
    let job = app.wait_archived(id).await;
    assert_eq!(job["archive"]["status"], "done");
    assert_eq!(app.mock().file_requests().len(), 2);
    assert!(app
        .events(id)
        .await
        .iter()
        .any(|e| e["kind"] == "archive_requested"));

    // Asked twice in a row: the second request takes over, one copy is kept.
    assert_eq!(
        app.post_empty(&format!("/v1/jobs/{id}/archive"))
            .await
            .status(),
        202
    );
    assert_eq!(
        app.post_empty(&format!("/v1/jobs/{id}/archive"))
            .await
            .status(),
        202
    );
    let job = app.wait_archived(id).await;
    assert_eq!(job["archive"]["status"], "done");
    let bytes = app.mock().file_bytes("video.mp4").unwrap();
    assert_eq!(
        job["archive"]["files"]["video"]["sha256"],
        sha256_hex(&bytes)
    );
    let served = app.get(&format!("/v1/jobs/{id}/files/video")).await;
    assert_eq!(served.bytes().await.unwrap().to_vec(), bytes);

    assert_eq!(app.post_empty("/v1/jobs/nope/archive").await.status(), 404);
    let long_id = "x".repeat(500);
    assert_eq!(
        app.post_empty(&format!("/v1/jobs/{long_id}/archive"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/v1/jobs/{long_id}/files/video"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/v1/jobs/{id}/files/..%2F..%2Fetc%2Fpasswd"))
            .await
            .status(),
        404
    );
    // A job that is not completed has nothing to archive.
    let pending = app
        .post_json("/v1/videos", &json!({"prompt": "a cat"}))
        .await;
    let pending: Value = pending.json().await.unwrap();
    let pending_id = pending["job_id"].as_str().unwrap();
    let refused = app
        .post_empty(&format!("/v1/jobs/{pending_id}/archive"))
        .await;
    assert_eq!(refused.status(), 409);
    assert!(pending["archive"].is_null());
}

#[tokio::test]
async fn without_an_archive_there_is_no_archive_block_and_nothing_to_copy() {
    let mut options = Options::new(|_| {});
    options.pictory = Some(MockOptions::default());
    let app = spawn(options).await;
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap();
    assert!(job["archive"].is_null(), "{job}");
    let refused = app.post_empty(&format!("/v1/jobs/{id}/archive")).await;
    assert_eq!(refused.status(), 409);
    assert_eq!(
        app.get(&format!("/v1/jobs/{id}/files/video"))
            .await
            .status(),
        404
    );
    assert!(app.mock().file_requests().is_empty());
}

/// An endpoint nobody listens at: the outbox is what the tests check.
fn outbox_endpoint() -> NotifyEndpoint {
    NotifyEndpoint {
        url: "http://127.0.0.1:9/hooks".into(),
        secret: SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        events: vec!["job.completed".into(), "job.updated".into()],
    }
}

fn of_type(list: &Value, kind: &str) -> Vec<Value> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] == kind)
        .cloned()
        .collect()
}

#[tokio::test]
async fn completed_notifications_wait_for_the_files_and_carry_the_archive() {
    let Archived { app, dir: _dir } = start(MockOptions::default(), |config| {
        video_only(config);
        config.notify.after_archive = true;
        config.notify.endpoints = vec![outbox_endpoint()];
    })
    .await;
    app.mock().force_next_file(FileFault::Status(500));
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap();
    app.wait_for_downloads(1).await;

    let outbox = app.get_json("/v1/notifications").await;
    assert!(!of_type(&outbox, "job.updated").is_empty(), "{outbox}");
    assert!(
        of_type(&outbox, "job.completed").is_empty(),
        "held: {outbox}"
    );

    app.skip_backoff();
    app.wait_archived(id).await;
    let outbox = app.get_json("/v1/notifications").await;
    let completed = of_type(&outbox, "job.completed");
    assert_eq!(completed.len(), 1, "{outbox}");
    let data = &completed[0]["payload"]["data"];
    assert_eq!(data["status"], "completed");
    assert_eq!(data["archive"]["status"], "done");
    assert_eq!(data["archive"]["files"]["video"]["status"], "done");
    // Named after the completion, as it would have been without the wait.
    assert!(completed[0]["message_id"]
        .as_str()
        .unwrap()
        .ends_with("_completed"));

    // Archiving again sends nothing more.
    app.post_empty(&format!("/v1/jobs/{id}/archive")).await;
    app.wait_archived(id).await;
    let outbox = app.get_json("/v1/notifications").await;
    assert_eq!(of_type(&outbox, "job.completed").len(), 1);
}

#[tokio::test]
async fn a_webhook_body_completion_is_archived_in_receive_only_mode() {
    // Receive-only: the webhook body's URLs are taken as they are (no Get Job to ask).
    let mock = jobhook::mock::MockPictory::new(
        MockOptions::default(),
        std::sync::Arc::new(jobhook::domain::time::SystemClock),
    );
    let base = mock.spawn().await.unwrap();
    mock.set_state("rx-1", MockState::Completed);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let app = spawn(Options::new(move |config| {
        config.archive.url = Some(url);
        config.archive.files = vec!["thumbnail".into()];
    }))
    .await;
    assert!(base.contains("127.0.0.1"));
    let body = mock.job_body("rx-1").unwrap();
    assert_eq!(app.webhook(body.to_string()).await.status(), 200);
    app.state.wake_archiver();
    let job = app.wait_archived("rx-1").await;
    assert_eq!(
        job["archive"]["files"]["thumbnail"]["status"], "done",
        "{job}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("rx-1").join("thumbnail.jpg")).unwrap(),
        mock.file_bytes("thumbnail.jpg").unwrap()
    );
}

#[tokio::test]
async fn two_replicas_never_copy_the_same_file_twice() {
    let Some(db) = crate::helpers::TestDb::fresh_postgres_if_any().await else {
        crate::helpers::say_skipped("PostgreSQL only (one process owns a SQLite database)");
        return;
    };
    let mock = jobhook::mock::MockPictory::new(
        MockOptions::default(),
        std::sync::Arc::new(jobhook::domain::time::SystemClock),
    );
    mock.spawn().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let replica = |db: crate::helpers::TestDb| {
        let url = url.clone();
        let mut options = Options::new(move |config| config.archive.url = Some(url));
        options.db = Some(db);
        spawn(options)
    };
    let a = replica(db.alias()).await;
    let b = replica(db).await;
    let jobs: Vec<String> = (0..20).map(|n| format!("shared-{n}")).collect();
    for (n, id) in jobs.iter().enumerate() {
        mock.set_state(id, MockState::Completed);
        let body = mock.job_body(id).unwrap().to_string();
        let to = if n % 2 == 0 { &a } else { &b };
        assert_eq!(to.webhook(body).await.status(), 200);
    }
    for id in &jobs {
        let job = a.wait_archived(id).await;
        assert_eq!(job["archive"]["status"], "done", "{job}");
    }
    let mut seen = std::collections::HashMap::new();
    for request in mock.file_requests() {
        *seen.entry((request.job_id, request.file)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 80, "every file of every job");
    assert!(
        seen.values().all(|n| *n == 1),
        "a file was downloaded twice: {seen:?}"
    );
    // Each copy was made, and counted, by one replica or the other.
    let done = |metrics: &str| {
        metric_value(metrics, "jobhook_archive_files_total{result=\"done\"}").unwrap_or(0.0)
    };
    let (by_a, by_b) = (done(&a.metrics().await), done(&b.metrics().await));
    assert_eq!(by_a + by_b, 80.0);
}

#[tokio::test]
async fn held_completions_are_sent_once_the_wait_is_switched_off() {
    let Archived { mut app, dir } = start(MockOptions::default(), |config| {
        video_only(config);
        config.notify.after_archive = true;
        config.notify.endpoints = vec![outbox_endpoint()];
    })
    .await;
    app.mock().force_next_file(FileFault::StallAfter(100));
    let job = app.completed_video(&json!({"prompt": "a fox"})).await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    app.wait_for_downloads(1).await;
    let outbox = app.get_json("/v1/notifications").await;
    assert!(
        of_type(&outbox, "job.completed").is_empty(),
        "held: {outbox}"
    );

    // Started again without notify.after_archive: nothing would ever release the hold.
    app.stop().await.unwrap();
    let pictory = app.state.config.pictory.base_url.clone();
    let url = format!("file://{}", dir.path().display());
    let mut options = Options::new(move |config| {
        config.archive.url = Some(url);
        video_only(config);
        config.notify.endpoints = vec![outbox_endpoint()];
        config.pictory.base_url = pictory;
        config.pictory.api_key = Some(SecretString::from("pictai_test_key"));
    });
    options.db = Some(app.db.take());
    options.clock = Some(app.clock.clone());
    let again = spawn(options).await;
    let outbox = again.get_json("/v1/notifications").await;
    let completed = of_type(&outbox, "job.completed");
    assert_eq!(completed.len(), 1, "{outbox}");
    assert_eq!(completed[0]["payload"]["data"]["job_id"], id.as_str());
    assert!(completed[0]["message_id"]
        .as_str()
        .unwrap()
        .ends_with("_completed"));
}
