// figment's Jail returns its own large error type; boxing it would only obscure the tests.
#![allow(clippy::result_large_err)]

use super::*;
use figment::Jail;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn load_in(jail: &mut Jail, toml: &str) -> Result<Config, ConfigError> {
    jail.create_file("jobhook.toml", toml)
        .expect("write config");
    Config::load(Some(Path::new("jobhook.toml")))
}

#[test]
fn defaults_match_the_spec() {
    Jail::expect_with(|jail| {
        jail.set_env("JOBHOOK_WEBHOOK_SECRET", SECRET);
        let config = Config::load(None).expect("defaults load");
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.server.api_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(config.server.body_limit.as_u64(), 256 * 1024);
        assert_eq!(config.server.header_timeout, Duration::from_secs(10));
        assert_eq!(config.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.server.max_connections, None, "sized at start-up");
        assert_eq!(config.database.url, "sqlite://data/jobhook.db");
        assert!(config.pictory.verify_webhooks);
        assert_eq!(config.reconcile.grace, Duration::from_secs(120));
        assert_eq!(config.reconcile.max_interval, Duration::from_secs(300));
        assert_eq!(config.reconcile.rate, 5);
        assert_eq!(config.notify.retry_schedule.len(), 7);
        assert_eq!(config.retention.deliveries, Duration::from_secs(30 * 86400));
        assert!(config.receive_only());
        Ok(())
    });
}

#[test]
fn environment_overrides_the_file_and_splits_lists() {
    Jail::expect_with(|jail| {
        jail.set_env("JOBHOOK_SERVER_API_LISTEN", "127.0.0.1:9999");
        jail.set_env("JOBHOOK_API_TOKENS", "tok-a, tok-b");
        jail.set_env("JOBHOOK_RECONCILE_GRACE", "90s");
        jail.set_env("JOBHOOK_SERVER_BODY_LIMIT", "1MiB");
        jail.set_env("JOBHOOK_PICTORY_API_KEY", "12345");
        jail.set_env("JOBHOOK_SERVER_HEADER_TIMEOUT", "2s");
        jail.set_env("JOBHOOK_SERVER_MAX_CONNECTIONS", "500");
        let config = load_in(
            jail,
            &format!(
                "[server]\napi_listen = \"127.0.0.1:7000\"\nidle_timeout = \"5m\"\nmax_connections = 100\n[webhook]\nsecret = \"{SECRET}\"\n[reconcile]\ninterval = \"2m\"\n"
            ),
        )
        .expect("loads");
        assert_eq!(config.server.api_listen.port(), 9999);
        let tokens: Vec<&str> = config
            .api
            .tokens
            .iter()
            .map(|t| t.expose_secret())
            .collect();
        assert_eq!(tokens, ["tok-a", "tok-b"]);
        assert_eq!(config.reconcile.grace, Duration::from_secs(90));
        assert_eq!(config.reconcile.interval, Duration::from_secs(120));
        assert_eq!(config.server.body_limit.as_u64(), 1024 * 1024);
        assert_eq!(config.server.header_timeout, Duration::from_secs(2));
        assert_eq!(config.server.idle_timeout, Duration::from_secs(300));
        assert_eq!(config.server.max_connections, Some(500));
        assert_eq!(
            config.pictory.api_key.as_ref().map(|k| k.expose_secret()),
            Some("12345")
        );
        Ok(())
    });
}

fn refusal(jail: &mut Jail, toml: &str) -> String {
    match load_in(jail, toml) {
        Ok(_) => panic!("config was accepted:\n{toml}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn start_up_refusals_name_the_key() {
    Jail::expect_with(|jail| {
        assert!(refusal(jail, "").contains("webhook.secret"));
        assert!(refusal(jail, "[webhook]\nsecret = \"short\"\n").contains("webhook.secret"));
        let base = format!("[webhook]\nsecret = \"{SECRET}\"\n");
        let message = refusal(
            jail,
            &format!("{base}[server]\napi_listen = \"0.0.0.0:8081\"\n"),
        );
        assert!(message.contains("server.api_listen"), "{message}");
        let message = refusal(
            jail,
            &format!("{base}signing_secrets = [\"whsec_!!notbase64\"]\n"),
        );
        assert!(message.contains("webhook.signing_secrets"), "{message}");
        let message = refusal(jail, &format!("{base}[server]\nlisten_port = 1\n"));
        assert!(message.contains("listen_port"), "{message}");
        let message = refusal(jail, &format!("{base}[nonsense]\nx = 1\n"));
        assert!(message.contains("nonsense"), "{message}");
        let message = refusal(jail, &format!("{base}[reconcile]\ngrace = \"soon\"\n"));
        assert!(message.contains("reconcile.grace"), "{message}");
        for (line, key) in [
            ("header_timeout = \"0s\"", "server.header_timeout"),
            ("idle_timeout = 0", "server.idle_timeout"),
            ("max_connections = 0", "server.max_connections"),
            ("max_connections = -1", "max_connections"),
        ] {
            let message = refusal(jail, &format!("{base}[server]\n{line}\n"));
            assert!(message.contains(key), "{line}: {message}");
        }
        Ok(())
    });
}

#[test]
fn archive_settings_are_checked_and_name_the_key() {
    Jail::expect_with(|jail| {
        let base = format!("[webhook]\nsecret = \"{SECRET}\"\n");
        for (section, key) in [
            ("[archive]\nurl = \"gs://bucket\"", "archive.url"),
            ("[archive]\nurl = \"file://relative\"", "archive.url"),
            ("[archive]\nurl = \"s3:///x\"", "archive.url"),
            (
                "[archive]\nurl = \"s3://b\"\nfiles = [\"video\", \"audio\"]",
                "archive.files",
            ),
            (
                "[archive]\nurl = \"s3://b\"\nconcurrency = 0",
                "archive.concurrency",
            ),
            (
                "[archive]\nurl = \"s3://b\"\nmax_size = \"0B\"",
                "archive.max_size",
            ),
            ("[notify]\nafter_archive = true", "notify.after_archive"),
        ] {
            let message = refusal(jail, &format!("{base}{section}\n"));
            assert!(message.contains(key), "{section}: {message}");
        }
        let config = load_in(
            jail,
            &format!("{base}[archive]\nurl = \"s3://b/p\"\nmax_size = \"1GiB\"\n[notify]\nafter_archive = true\n"),
        )
        .unwrap();
        assert_eq!(config.archive.max_size.as_u64(), 1 << 30);
        assert_eq!(config.archive.files.len(), 4, "all four by default");
        assert!(config.notify.after_archive);
        jail.set_env("JOBHOOK_ARCHIVE_FILES", "video, last_frame");
        let from_env = load_in(jail, &base).unwrap();
        assert_eq!(from_env.archive.files, ["video", "last_frame"]);
        jail.clear_env();
        // Off by default.
        assert!(load_in(jail, &base).unwrap().archive.url.is_none());
        Ok(())
    });
}

#[test]
fn unknown_environment_key_is_refused() {
    Jail::expect_with(|jail| {
        jail.set_env("JOBHOOK_WEBHOOK_SECRET", SECRET);
        jail.set_env("JOBHOOK_SERVER_LISTN", "0.0.0.0:1");
        let message = Config::load(None).expect_err("refused").to_string();
        assert!(message.contains("listn"), "{message}");
        Ok(())
    });
}

#[test]
fn non_loopback_api_is_allowed_with_tokens() {
    Jail::expect_with(|jail| {
        jail.set_env("JOBHOOK_API_TOKENS", "secret-token");
        let config = load_in(
            jail,
            &format!("[webhook]\nsecret = \"{SECRET}\"\n[server]\napi_listen = \"0.0.0.0:8081\"\n"),
        );
        assert!(config.is_ok());
        Ok(())
    });
}

#[test]
fn redacted_output_never_contains_a_secret() {
    Jail::expect_with(|jail| {
        let signing = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        jail.set_env("JOBHOOK_PICTORY_API_KEY", "pictai_supersecretkey");
        jail.set_env("JOBHOOK_API_TOKENS", "bearer-token-value");
        let config = load_in(
            jail,
            &format!("[webhook]\nsecret = \"{SECRET}\"\nsigning_secrets = [\"{signing}\"]\n"),
        )
        .expect("loads");
        let printed = config.redacted_toml();
        for secret in [
            SECRET,
            signing,
            "pictai_supersecretkey",
            "bearer-token-value",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
        }
        assert!(printed.contains(lenient::REDACTED));
        assert!(
            printed.contains("api_listen = \"127.0.0.1:8081\""),
            "{printed}"
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains(SECRET) && !debug.contains("pictai_supersecretkey"));
        Ok(())
    });
}

#[test]
fn whsec_secrets_decode_or_are_refused() {
    assert_eq!(
        decode_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").map(|k| k.len()),
        Ok(24)
    );
    assert!(decode_whsec("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    assert!(decode_whsec("whsec_").is_err());
    assert!(decode_whsec("whsec_%%%").is_err());
}

#[test]
fn an_endpoint_listed_twice_is_refused() {
    Jail::expect_with(|jail| {
        let entry = "[[notify.endpoints]]\nurl = \"https://a.example/h\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
        let message = refusal(
            jail,
            &format!("[webhook]\nsecret = \"{SECRET}\"\n{entry}{entry}"),
        );
        assert!(message.contains("notify.endpoints[1].url"), "{message}");
        Ok(())
    });
}

#[test]
fn database_urls_of_both_backends_are_accepted_and_pool_size_is_checked() {
    Jail::expect_with(|jail| {
        jail.set_env("JOBHOOK_WEBHOOK_SECRET", SECRET);
        for url in [
            "sqlite://data/x.db",
            "postgres://jobhook:pw@db.internal:5432/jobhook?sslmode=require",
            "postgresql://db/jobhook",
        ] {
            jail.set_env("JOBHOOK_DATABASE_URL", url);
            let config = Config::load(None).expect("accepted");
            assert_eq!(config.database.url, url);
            assert_eq!(config.database.pool_size, 10);
        }
        jail.set_env("JOBHOOK_DATABASE_URL", "mysql://db/jobhook");
        let refused = Config::load(None).expect_err("mysql is refused");
        assert!(refused.to_string().contains("database.url"), "{refused}");
        jail.set_env("JOBHOOK_DATABASE_URL", "postgres://db/jobhook");
        jail.set_env("JOBHOOK_DATABASE_POOL_SIZE", "25");
        assert_eq!(Config::load(None).expect("loads").database.pool_size, 25);
        jail.set_env("JOBHOOK_DATABASE_POOL_SIZE", "0");
        let refused = Config::load(None).expect_err("an empty pool is refused");
        assert!(
            refused.to_string().contains("database.pool_size"),
            "{refused}"
        );
        Ok(())
    });
}
