//! The binary's commands, run as a user would.

use crate::helpers::SECRET;
use std::process::Command;

fn jobhook() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobhook"));
    // Keep the caller's JOBHOOK_* variables out of the test.
    for (key, _) in std::env::vars() {
        if key.starts_with("JOBHOOK_") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["check", "--help"],
        vec!["healthcheck", "--help"],
        vec!["copy-db", "--help"],
    ] {
        let output = jobhook().args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn check_prints_effective_values_with_secrets_redacted() {
    let output = jobhook()
        .arg("check")
        .env("JOBHOOK_WEBHOOK_SECRET", SECRET)
        .env("JOBHOOK_PICTORY_API_KEY", "pictai_very_secret_key")
        .env("JOBHOOK_RECONCILE_RATE", "9")
        .env("JOBHOOK_SERVER_HEADER_TIMEOUT", "3s")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(!printed.contains(SECRET) && !printed.contains("pictai_very_secret_key"));
    assert!(printed.contains("rate = 9"));
    assert!(printed.contains("header_timeout = \"3s\""), "{printed}");
    assert!(printed.contains("idle_timeout = \"1m\""), "{printed}");
    assert!(
        printed.contains("# server.max_connections is unset: each listener will hold at most"),
        "{printed}"
    );
    assert!(printed.contains("[redacted]"));
}

#[test]
fn check_names_the_key_that_is_wrong() {
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[], "webhook.secret"),
        (&[("JOBHOOK_WEBHOOK_SECRET", "short")], "webhook.secret"),
        (
            &[
                ("JOBHOOK_WEBHOOK_SECRET", SECRET),
                ("JOBHOOK_SERVER_API_LISTEN", "0.0.0.0:8081"),
            ],
            "server.api_listen",
        ),
        (
            &[
                ("JOBHOOK_WEBHOOK_SECRET", SECRET),
                ("JOBHOOK_WEBHOOK_SIGNING_SECRETS", "whsec_***"),
            ],
            "webhook.signing_secrets",
        ),
        (
            &[
                ("JOBHOOK_WEBHOOK_SECRET", SECRET),
                ("JOBHOOK_SERVER_HEADER_TIMEOUT", "0s"),
            ],
            "server.header_timeout",
        ),
    ];
    for (env, key) in cases {
        let output = jobhook()
            .arg("check")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{env:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{env:?}: {stderr}");
    }
}

#[test]
fn a_config_file_is_read_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobhook.toml");
    std::fs::write(
        &path,
        format!(
            "[webhook]\nsecret = \"{SECRET}\"\n[server]\npublic_url = \"https://hooks.example\"\n"
        ),
    )
    .unwrap();
    let output = jobhook()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("https://hooks.example"));

    std::fs::write(
        &path,
        format!("[webhook]\nsecret = \"{SECRET}\"\nsecrett = 1\n"),
    )
    .unwrap();
    let output = jobhook()
        .arg("check")
        .env("JOBHOOK_CONFIG", &path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("secrett"));
}

#[test]
fn the_example_config_documents_every_key_and_loads() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/jobhook.example.toml"
    ))
    .unwrap();
    for key in [
        "listen",
        "api_listen",
        "public_url",
        "body_limit",
        "header_timeout",
        "idle_timeout",
        "max_connections",
        "url",
        "pool_size",
        "base_url",
        "api_key",
        "verify_webhooks",
        "timeout",
        "secret",
        "previous_secrets",
        "signing_secrets",
        "tokens",
        "enabled",
        "session_ttl",
        "grace",
        "interval",
        "max_interval",
        "deadline",
        "rate",
        "retry_schedule",
        "deliveries",
        "format",
        "after_archive",
        "files",
        "concurrency",
        "max_size",
    ] {
        assert!(
            example.contains(&format!("{key} =")),
            "{key} is not documented in the example"
        );
    }
    let output = jobhook()
        .arg("check")
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/jobhook.example.toml"
        ))
        .env("JOBHOOK_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn migrate_creates_the_database_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/dir/jobhook.db");
    for _ in 0..2 {
        let status = jobhook()
            .arg("migrate")
            .env("JOBHOOK_WEBHOOK_SECRET", SECRET)
            .env("JOBHOOK_DATABASE_URL", format!("sqlite://{}", db.display()))
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert!(db.exists());
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    // Bound, never listening: refused, and the port cannot be taken by another test meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let output = jobhook()
        .args(["healthcheck", "--url", &format!("http://{addr}/healthz")])
        .env("JOBHOOK_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!output.status.success());
}

#[test]
fn the_demo_runs_offline_and_ends_with_a_summary() {
    let output = jobhook().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    // Rows of the batch's table: `#`, then the job's short id.
    let rows = lines
        .iter()
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 2
                && cols[0].parse::<u32>().is_ok()
                && cols[1].len() == 8
                && cols[1].chars().all(|c| c.is_ascii_hexdigit())
        })
        .count();
    assert_eq!(rows, 24, "{stdout}");
    assert!(
        stdout.contains("fallback poll"),
        "some webhooks were dropped and found by polling"
    );
    // One Generate call per job submitted, the chain's clips included.
    let calls = lines
        .iter()
        .find(|l| l.contains("Generate calls for"))
        .unwrap();
    let (before, after) = calls.split_once(" Generate calls for ").unwrap();
    let generate = before.rsplit(' ').next().unwrap();
    let jobs = after.split(' ').next().unwrap();
    assert_eq!(generate, jobs, "{calls}");

    // The chain: three completed clips, each continuing the one before.
    let chain_at = lines
        .iter()
        .position(|l| l.contains("GET /v1/jobs/{id}/chain lists them"))
        .expect("the chain is shown");
    let clips: Vec<Vec<&str>> = lines[chain_at + 2..]
        .iter()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Continuing"))
        .map(|l| l.split_whitespace().collect())
        .filter(|cols: &Vec<&str>| cols[1] == "completed")
        .collect();
    assert_eq!(clips.len(), 3, "{stdout}");
    assert_eq!(clips[0][2], "-");
    assert_eq!(clips[1][2], clips[0][0]);
    assert_eq!(clips[2][2], clips[1][0]);

    // It ends with the credits per model, as jobhook sums them and as the fake charged.
    let credits_at = lines
        .iter()
        .position(|l| l.starts_with("Credits per model"))
        .expect("credits per model are shown");
    let table: Vec<Vec<&str>> = lines[credits_at + 2..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(table.len(), 4, "three models and the total: {stdout}");
    for row in &table {
        assert_eq!(
            row[3], row[4],
            "jobhook's sum and the fake's count: {row:?}"
        );
    }
    assert_eq!(table[3][0], "total");
    assert!(stdout.contains("24 jobs:"));
}

#[tokio::test]
async fn replicas_migrating_at_once_apply_each_migration_once() {
    if crate::helpers::postgres_server().is_none() {
        crate::helpers::say_skipped(
            "skipped on SQLite: PostgreSQL only (one process owns a SQLite database)",
        );
        return;
    }
    let db = crate::helpers::TestDb::fresh().await;
    let migrating: Vec<_> = (0..4)
        .map(|_| {
            tokio::process::Command::from(jobhook())
                .arg("migrate")
                .env("JOBHOOK_WEBHOOK_SECRET", SECRET)
                .env("JOBHOOK_DATABASE_URL", &db.url)
                .output()
        })
        .collect();
    for output in futures::future::join_all(migrating).await {
        let output = output.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    assert_eq!(
        versions.len(),
        shipped,
        "each migration applied once: {versions:?}"
    );
    connection.close().await.unwrap();
}
