//! `jobhook copy-db --from URL --to URL` (SPEC §9): SQLite to PostgreSQL and back keeps every
//! row of every table (ids included), the copy serves the same answers, new rows continue after
//! the copied ids, and a target that already holds state is refused unless `--replace`.
//! Without a PostgreSQL server (`JOBHOOK_TEST_POSTGRES`) the middle copy is a SQLite file.

use crate::helpers::*;
use jobhook::config::NotifyEndpoint;
use jobhook::mock::{MockOptions, MockState};
use secrecy::SecretString;
use serde_json::{json, Value};
use std::process::Output;
use std::time::Duration;

fn copy_db(args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_jobhook"));
    for (key, _) in std::env::vars() {
        if key.starts_with("JOBHOOK_") {
            command.env_remove(key);
        }
    }
    command.arg("copy-db").args(args).output().unwrap()
}

fn assert_copied(output: &Output) {
    assert!(
        output.status.success(),
        "copy-db failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("copied "), "{printed}");
}

/// A SQLite database with work of every kind: verified webhooks, a duplicate, a rejected body,
/// a failed job, an idempotent submission, notifications attempted, a registration.
async fn populated_sqlite() -> TestDb {
    let db = TestDb::fresh_sqlite();
    // An archive whose copies are not made yet (the fake Pictory answers 503 for the files, see
    // below): each completion leaves pending file records, and holds its `job.completed`
    // notification.
    let archive = tempfile::tempdir().unwrap();
    let archive_url = format!("file://{}", archive.path().display());
    let mut options = Options::new(move |config| {
        config.archive.url = Some(archive_url);
        config.notify.after_archive = true;
        // Nothing listens there: each notification is attempted once, then waits an hour.
        config.notify.endpoints = vec![NotifyEndpoint {
            url: "http://127.0.0.1:9/hooks".into(),
            secret: SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            events: vec!["job.completed".into(), "job.failed".into()],
        }];
        config.notify.retry_schedule = vec![Duration::from_secs(3600)];
    });
    options.db = Some(db.alias());
    options.pictory = Some(MockOptions {
        job_duration: Duration::from_secs(600),
        drop_rate: 1.0,
        ..MockOptions::default()
    });
    let mut app = spawn(options).await;
    let mock = app.mock().clone();
    for _ in 0..40 {
        mock.force_next_file(jobhook::mock::FileFault::Status(503));
    }
    mock.set_state("copy-done", MockState::Completed);
    mock.set_state("copy-failed", MockState::Failed);
    for body in [
        completed_body("copy-done"),
        completed_body("copy-done"),
        failed_body("copy-failed"),
    ] {
        assert_eq!(app.webhook(body.to_string()).await.status(), 200);
    }
    assert_eq!(app.webhook("not json").await.status(), 400);
    app.register("copy-registered").await;
    let submitted = app
        .client
        .post(format!("{}/v1/videos", app.api_url))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "copy-key")
        .json(&json!({"prompt": "a lighthouse in a storm", "metadata": {"order": "Copy-1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 201);
    assert_eq!(app.wait_final("copy-done").await["status"], "completed");
    assert_eq!(app.wait_final("copy-failed").await["status"], "failed");
    for _ in 0..200 {
        let attempted = app.all("/v1/notifications?limit=100").await;
        // `job.failed` only: the completion's notification is held for its files.
        if attempted.len() == 1 && attempted.iter().all(|n| n["attempts"] == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = app.job("copy-done").await;
    assert_eq!(done["archive"]["status"], "pending", "{done}");
    app.stop().await.unwrap();
    db
}

/// What a receive-only service over `db` answers: every list, every job and its history.
async fn api_view(db: &TestDb) -> Value {
    let mut options = Options::new(|_| {});
    options.db = Some(db.alias());
    let app = spawn(options).await;
    let jobs = app.all("/v1/jobs?limit=2").await;
    let mut histories = Vec::new();
    for job in &jobs {
        let id = job["job_id"]
            .as_str()
            .or(job["submission_id"].as_str())
            .unwrap();
        histories.push(json!({"job": app.job(id).await, "events": app.events(id).await}));
    }
    json!({
        "jobs": jobs,
        "histories": histories,
        "deliveries": app.all("/v1/deliveries?limit=2").await,
        "notifications": app.all("/v1/notifications?limit=2").await,
        "raw": app.get_json("/v1/jobs/copy-done/raw").await,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_sqlite_to_postgres_and_back_keeps_every_row_and_its_meaning() {
    let original = populated_sqlite().await;
    let middle = match TestDb::fresh_postgres_if_any().await {
        Some(db) => db,
        None => {
            say_skipped("copy-db round trip through a second SQLite file (no PostgreSQL server)");
            TestDb::fresh_sqlite()
        }
    };
    let back = TestDb::fresh_sqlite();
    let before = jobhook::copy_db::dump(&original.url).await.unwrap();
    let rows: usize = before.iter().map(|(_, rows)| rows.len()).sum();
    for (table, rows) in &before {
        if *table != "notify_endpoints" {
            assert!(!rows.is_empty(), "the source has {table} rows to copy");
        }
    }

    assert_copied(&copy_db(&["--from", &original.url, "--to", &middle.url]));
    assert_eq!(
        jobhook::copy_db::dump(&middle.url).await.unwrap(),
        before,
        "the copy holds every row of every table, ids included"
    );
    let copied = copy_db(&["--from", &middle.url, "--to", &back.url]);
    assert_copied(&copied);
    assert!(
        String::from_utf8_lossy(&copied.stdout).contains(&format!("copied {rows} rows")),
        "{}",
        String::from_utf8_lossy(&copied.stdout)
    );
    assert_eq!(
        jobhook::copy_db::dump(&back.url).await.unwrap(),
        before,
        "and back again, row for row"
    );

    // A target that already holds state is refused, and left as it was.
    let refused = copy_db(&["--from", &original.url, "--to", &middle.url]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("--replace"), "{message}");
    assert_eq!(jobhook::copy_db::dump(&middle.url).await.unwrap(), before);
    assert_copied(&copy_db(&[
        "--from",
        &original.url,
        "--to",
        &middle.url,
        "--replace",
    ]));
    assert_eq!(jobhook::copy_db::dump(&middle.url).await.unwrap(), before);

    // The copy means the same through the API: lists, cursors, histories, raw answers.
    // (A service starting rewrites the notification routes from its configuration, so this
    // comes after the row-for-row comparisons.)
    assert_eq!(api_view(&middle).await, api_view(&back).await);

    // New rows continue after the copied ids (PostgreSQL's sequences were moved past them).
    let max_id = |table: &str| {
        before
            .iter()
            .find(|(name, _)| *name == table)
            .and_then(|(_, rows)| {
                rows.iter()
                    .filter_map(|row| match row[0] {
                        jobhook::copy_db::Cell::Int(Some(id)) => Some(id),
                        _ => None,
                    })
                    .max()
            })
            .unwrap()
    };
    let mut options = Options::new(|_| {});
    options.db = Some(middle.alias());
    let app = spawn(options).await;
    let stored = app
        .webhook(completed_body("after-the-copy").to_string())
        .await;
    assert_eq!(
        stored.status(),
        200,
        "a new delivery is stored after the copy"
    );
    let stored: Value = stored.json().await.unwrap();
    assert!(stored["delivery_id"].as_i64().unwrap() > max_id("deliveries"));
    let events = app.events("after-the-copy").await;
    assert!(events
        .iter()
        .all(|e| e["id"].as_i64().unwrap() > max_id("job_events")));
    let job = app.job("after-the-copy").await;
    assert_eq!(job["status"], "completed");
}

#[test]
fn copy_db_refuses_urls_it_cannot_use() {
    let same = copy_db(&["--from", "sqlite://a.db", "--to", "sqlite://a.db"]);
    assert!(!same.status.success());
    assert!(String::from_utf8_lossy(&same.stderr).contains("same database"));
    let unknown = copy_db(&["--from", "mysql://x", "--to", "sqlite://b.db"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--from"));
}
