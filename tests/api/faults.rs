//! Real faults: the disk fills up under the database (then has room again), and a sender that
//! sends its body too slowly.

use crate::helpers::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root, which CI has"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_503_loses_nothing_acknowledged_and_recovers() {
    if skip_on_postgres("fills a tmpfs under the SQLite file; PostgreSQL's disk is the server's") {
        return;
    }
    let disk = SmallDisk::mount("1m");
    let db: PathBuf = disk.path().join("full.db");
    let app = spawn(Options {
        configure: Box::new(|_| {}),
        db: Some(TestDb::sqlite_at(&db, None)),
        pictory: None,
        clock: None,
    })
    .await;

    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for n in 0..2000 {
        let response = app
            .webhook(completed_body(&format!("full-{n}")).to_string())
            .await;
        match response.status().as_u16() {
            200 => {
                let ack: Value = response.json().await.unwrap();
                acknowledged.push(ack["delivery_id"].as_i64().unwrap());
            }
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                refused += 1;
                if refused >= 20 {
                    break;
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(!acknowledged.is_empty());
    // Reads still work while writes cannot.
    assert_eq!(
        app.client
            .get(format!("{}/healthz", app.public_url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for id in &acknowledged {
        assert_eq!(
            app.get(&format!("/v1/deliveries/{id}")).await.status(),
            200,
            "acknowledged delivery {id} lost"
        );
    }
    let df = Command::new("df").arg(disk.path()).output().unwrap();
    let ls = Command::new("ls")
        .arg("-la")
        .arg(disk.path())
        .output()
        .unwrap();
    assert!(
        refused >= 20,
        "the disk filled up ({} stored)\n{}\n{}",
        acknowledged.len(),
        String::from_utf8_lossy(&df.stdout),
        String::from_utf8_lossy(&ls.stdout)
    );

    // Room again: jobhook takes webhooks without being restarted.
    disk.grow("16m");
    let response = app.webhook(completed_body("after-full").to_string()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.job("after-full").await["status"], "completed");
}

#[tokio::test]
async fn registrations_acknowledged_on_a_filling_disk_are_all_kept() {
    if skip_on_postgres("fills a tmpfs under the SQLite file; PostgreSQL's disk is the server's") {
        return;
    }
    let disk = SmallDisk::mount("1m");
    let app = spawn(Options {
        configure: Box::new(|_| {}),
        db: Some(TestDb::sqlite_at(&disk.path().join("reg.db"), None)),
        pictory: None,
        clock: None,
    })
    .await;
    let mut created = Vec::new();
    let mut refused = 0;
    for n in 0..5000 {
        let id = format!("reg-{n}");
        let metadata = serde_json::json!({"padding": "x".repeat(1500)});
        let response = app
            .post_json(
                "/v1/jobs",
                &serde_json::json!({"job_id": id, "metadata": metadata}),
            )
            .await;
        match response.status().as_u16() {
            201 => created.push(id),
            503 => {
                refused += 1;
                if refused >= 20 {
                    break;
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 20 && !created.is_empty());
    for id in &created {
        assert_eq!(
            app.get(&format!("/v1/jobs/{id}?wait=0s")).await.status(),
            200,
            "{id} was acknowledged and lost"
        );
    }
    disk.grow("16m");
    assert_eq!(
        app.post_json("/v1/jobs", &serde_json::json!({"job_id": "reg-after"}))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_cut_off_without_holding_anything_else() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let address = app.public_url.trim_start_matches("http://").to_owned();
    let path = app
        .webhook_url
        .trim_start_matches(&app.public_url)
        .to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"job_id\""
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    // While that sender dawdles, everyone else is served.
    assert_eq!(
        app.webhook(completed_body("not-held").to_string())
            .await
            .status(),
        200
    );
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(40),
        slow.read_to_end(&mut answer),
    )
    .await
    .expect("the slow request is cut off")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(app.get("/v1/jobs/not-held").await.status(), 200);
}
