//! The archive in the `jobhook` binary: on S3 (`archive.url = s3://...` and the usual `AWS_*`
//! variables, against a local S3-compatible server, moto, started by `.ci/s3-server`), and
//! through a `kill -9` in the middle of a file.

use crate::crash::{start_with, Service};
use crate::helpers::{TestDb, TOKEN};
use jobhook::mock::{synthetic, FileFault, MockOptions, MockPictory, MockState};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// One S3 server for the whole test binary; each test makes a bucket of its own. It stops when
/// this process ends (its standard input closes).
struct S3Server {
    endpoint: String,
    _child: Mutex<Child>,
}

fn s3_server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/s3-server");
        let mut child = Command::new(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect(".ci/s3-server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the S3 server prints its port");
        S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            _child: Mutex::new(child),
        }
    })
}

const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

async fn new_bucket() -> (String, String) {
    let endpoint = tokio::task::spawn_blocking(|| s3_server().endpoint.clone())
        .await
        .unwrap();
    let bucket = format!("jobhook-{}", uuid::Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    (endpoint, bucket)
}

/// `jobhook serve` archiving to `archive_url`, with a fake Pictory.
async fn serve(db: &TestDb, mock: &MockPictory, endpoint: &str, archive_url: &str) -> Service {
    let base = mock.spawn().await.unwrap();
    let mut env: Vec<(&str, &str)> = AWS_ENV.to_vec();
    env.extend([
        ("AWS_ENDPOINT_URL", endpoint),
        ("JOBHOOK_ARCHIVE_URL", archive_url),
        ("JOBHOOK_PICTORY_BASE_URL", base.as_str()),
        ("JOBHOOK_PICTORY_API_KEY", "pictai_test_key"),
    ]);
    start_with(db, &env).await
}

/// Submits a video through the service and has the fake complete it.
async fn complete_one(service: &Service, mock: &MockPictory) -> String {
    let submitted: Value = service
        .client
        .post(format!("{}/v1/videos", service.api))
        .bearer_auth(TOKEN)
        .json(&json!({"prompt": "a fox"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["job_id"].as_str().unwrap().to_owned();
    mock.set_state(&id, MockState::Completed);
    // The URL Pictory was given names server.public_url (the default); the service listens
    // on the port the kernel picked.
    let public = service.webhook_url.split("/webhooks/").next().unwrap();
    let webhook = mock.job(&id).unwrap().request["webhook"]
        .as_str()
        .unwrap()
        .replace("http://localhost:8080", public);
    let delivered = service
        .client
        .post(webhook)
        .body(mock.job_body(&id).unwrap().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 200);
    id
}

async fn wait_archived(service: &Service, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let job = service.get_json(&format!("/v1/jobs/{id}")).await;
        if job["archive"]["status"].is_string() && job["archive"]["status"] != "pending" {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn files_are_archived_to_an_s3_compatible_store_in_parts() {
    let (endpoint, bucket) = new_bucket().await;
    // 12 MiB: three parts of a multipart upload.
    let size = 12 * 1024 * 1024;
    let mock = MockPictory::new(
        MockOptions {
            video_size: Some(size as u64),
            ..MockOptions::default()
        },
        Arc::new(jobhook::domain::time::SystemClock),
    );
    let db = TestDb::fresh().await;
    let service = serve(&db, &mock, &endpoint, &format!("s3://{bucket}/kept/videos")).await;
    let id = complete_one(&service, &mock).await;
    let job = wait_archived(&service, &id).await;
    assert_eq!(job["archive"]["status"], "done", "{job}");
    let video = synthetic(0, size);
    assert_eq!(job["archive"]["files"]["video"]["size"], size);
    assert_eq!(
        job["archive"]["files"]["video"]["sha256"],
        hex_sha256(&video)
    );

    // In the bucket, under the prefix, byte for byte.
    let s3 = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .with_region("us-east-1")
        .build()
        .unwrap();
    let stored = s3
        .get(&Path::from(format!("kept/videos/{id}/video.mp4")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(stored.as_ref() == video.as_slice(), "the object differs");
    let thumbnail = s3
        .get(&Path::from(format!("kept/videos/{id}/thumbnail.jpg")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        thumbnail.to_vec(),
        mock.file_bytes("thumbnail.jpg").unwrap()
    );

    // Served from S3 through the API, a range of it too.
    let range = service
        .client
        .get(format!("{}/v1/jobs/{id}/files/video", service.api))
        .bearer_auth(TOKEN)
        .header("range", "bytes=6000000-6000099")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(
        range.bytes().await.unwrap().to_vec(),
        video[6_000_000..6_000_100]
    );
    let whole = service.get(&format!("/v1/jobs/{id}/files/video")).await;
    assert_eq!(whole.status(), 200);
    assert!(whole.bytes().await.unwrap().as_ref() == video.as_slice());

    let ready = service.get_json("/readyz").await;
    assert_eq!(ready["archive"]["writable"], true, "{ready}");
}

#[tokio::test]
async fn a_store_that_refuses_writes_is_reported_and_files_wait() {
    let (endpoint, _) = new_bucket().await;
    let mock = MockPictory::new(
        MockOptions::default(),
        Arc::new(jobhook::domain::time::SystemClock),
    );
    let db = TestDb::fresh().await;
    // A bucket that does not exist refuses every write.
    let service = serve(&db, &mock, &endpoint, "s3://no-such-bucket/kept").await;
    let ready = service.get("/readyz").await;
    // Webhooks are still taken: the archive's trouble is reported, not a 503.
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["archive"]["writable"], false, "{ready}");
    assert!(ready["archive"]["error"].is_string());

    let id = complete_one(&service, &mock).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        let job = service.get_json(&format!("/v1/jobs/{id}")).await;
        if job["archive"]["files"]["video"]["error"].is_string() {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Kept for another attempt, not given up.
    assert_eq!(job["archive"]["status"], "pending", "{job}");
    assert_eq!(job["archive"]["files"]["video"]["status"], "pending");
    assert!(job["archive"]["files"]["video"]["error"]
        .as_str()
        .unwrap()
        .contains("archive refused"));
}

#[tokio::test]
async fn a_file_cut_off_by_kill_9_is_copied_again_whole_after_the_restart() {
    let mock = MockPictory::new(
        MockOptions::default(),
        Arc::new(jobhook::domain::time::SystemClock),
    );
    let base = mock.spawn().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive_url = format!("file://{}", dir.path().display());
    let env = [
        ("JOBHOOK_ARCHIVE_URL", archive_url.as_str()),
        ("JOBHOOK_ARCHIVE_FILES", "video"),
        ("JOBHOOK_PICTORY_BASE_URL", base.as_str()),
        ("JOBHOOK_PICTORY_API_KEY", "pictai_test_key"),
    ];
    let db = TestDb::fresh().await;
    let mut service = start_with(&db, &env).await;
    // The download sends 2000 bytes and then hangs: the process is killed in the middle.
    mock.force_next_file(FileFault::StallAfter(2000));
    let id = complete_one(&service, &mock).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mock.file_requests().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no download started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    service.child.kill().await.unwrap();

    let service = start_with(&db, &env).await;
    let job = wait_archived(&service, &id).await;
    let bytes = mock.file_bytes("video.mp4").unwrap();
    assert_eq!(
        job["archive"]["files"]["video"]["sha256"],
        hex_sha256(&bytes),
        "{job}"
    );
    assert_eq!(mock.file_requests().len(), 2, "copied again from the start");
    assert_eq!(
        std::fs::read(dir.path().join(&id).join("video.mp4")).unwrap(),
        bytes
    );
    let served = service.get(&format!("/v1/jobs/{id}/files/video")).await;
    assert_eq!(served.bytes().await.unwrap().to_vec(), bytes);
}
