//! The deployment files stay true: no container engine runs here, so these tests read
//! `compose.yaml`, `deploy/nginx.conf` and the `Dockerfile` and check them against the code.

use figment::Jail;
use jobhook::config::Config;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{}: {err}", full.display()))
}

fn compose() -> Value {
    serde_norway::from_str(&repo_file("compose.yaml")).expect("compose.yaml is YAML")
}

/// The services that run jobhook (built from this repository).
fn jobhook_services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_object()
        .expect("services")
        .iter()
        .filter(|(_, service)| service["build"].is_string())
        .map(|(name, service)| (name.clone(), service.clone()))
        .collect()
}

/// Values for the variables compose asks the user for (`${NAME:?message}`).
fn user_value(name: &str) -> &'static str {
    match name {
        "JOBHOOK_WEBHOOK_SECRET" => "compose-test-secret-0123456789abcdef",
        "JOBHOOK_API_TOKENS" => "compose-test-token",
        "JOBHOOK_PICTORY_API_KEY" => "pictai_compose_test",
        other => panic!("compose asks for {other}, unknown to this test"),
    }
}

/// Compose's interpolation: `${NAME:?message}` and `${NAME:-default}`.
fn interpolate(value: &str) -> String {
    let Some(start) = value.find("${") else {
        return value.to_owned();
    };
    let end = start + value[start..].find('}').expect("closing brace");
    let inner = &value[start + 2..end];
    let replaced = if let Some((name, _)) = inner.split_once(":?") {
        user_value(name).to_owned()
    } else if let Some((_, default)) = inner.split_once(":-") {
        default.to_owned()
    } else {
        user_value(inner).to_owned()
    };
    format!(
        "{}{replaced}{}",
        &value[..start],
        interpolate(&value[end + 1..])
    )
}

/// Loads and validates the configuration `environment` gives jobhook.
// figment's Jail returns its own large error type; boxing it would only obscure the test.
#[allow(clippy::result_large_err)]
fn config_from(environment: &BTreeMap<String, String>) -> Config {
    let mut loaded = None;
    Jail::expect_with(|jail| {
        for (name, value) in environment {
            jail.set_env(name, value);
        }
        let config = Config::load(None).map_err(|err| err.to_string())?;
        config.validate().map_err(|err| err.to_string())?;
        loaded = Some(config);
        Ok(())
    });
    loaded.expect("loaded")
}

#[test]
fn compose_runs_two_replicas_on_postgres_with_a_valid_configuration() {
    let compose = compose();
    let services = jobhook_services(&compose);
    assert!(
        services.len() >= 2,
        "several replicas: {:?}",
        services.keys()
    );
    for (name, service) in &services {
        let environment: BTreeMap<String, String> = service["environment"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: environment as a map"))
            .iter()
            .map(|(key, value)| {
                assert!(key.starts_with("JOBHOOK_"), "{name}: {key}");
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                (key.clone(), interpolate(&text))
            })
            .collect();
        // Every variable is a real key with a valid value: an unknown key fails the load.
        let config = config_from(&environment);
        assert!(
            config.database.url.starts_with("postgres://"),
            "{name}: replicas share PostgreSQL"
        );
        let database_host = config.database.url.split('@').nth(1).unwrap();
        let database_service = database_host.split([':', '/']).next().unwrap();
        assert!(
            compose["services"][database_service].is_object(),
            "{name}: database host {database_service} is a service"
        );
        assert!(!config.receive_only());
        assert_eq!(
            service["depends_on"]["postgres"]["condition"], "service_healthy",
            "{name} starts once the database answers"
        );
    }
}

#[test]
fn the_load_balancer_sends_both_listeners_to_every_replica() {
    let compose = compose();
    let services = jobhook_services(&compose);
    let nginx = repo_file("deploy/nginx.conf");
    let mount = compose["services"]["loadbalancer"]["volumes"][0]
        .as_str()
        .unwrap();
    assert!(mount.starts_with("./deploy/nginx.conf:"), "{mount}");
    for (name, service) in &services {
        let environment = &service["environment"];
        for key in ["JOBHOOK_SERVER_LISTEN", "JOBHOOK_SERVER_API_LISTEN"] {
            let listen = environment[key].as_str().unwrap();
            let port = listen.rsplit(':').next().unwrap();
            assert!(
                nginx.contains(&format!("server {name}:{port}")),
                "nginx.conf sends traffic to {name}:{port} ({key})"
            );
        }
    }
    // A delivery a replica could not store is retried on another (safe: duplicates are
    // stored once), which nginx does for a POST only when told so.
    assert!(nginx.contains("non_idempotent"));
    assert!(
        nginx.contains("proxy_buffering off"),
        "long-polls and streams"
    );
}

#[test]
fn the_dockerfile_copies_paths_that_exist_and_sets_real_keys() {
    let dockerfile = repo_file("Dockerfile");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut copied = 0;
    for line in dockerfile.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(root.join(source).exists(), "Dockerfile copies {source}");
            copied += 1;
        }
    }
    assert!(copied >= 4, "the build copies the sources");
    // ENV lines, joined across continuations.
    let joined = dockerfile.replace("\\\n", " ");
    let environment: BTreeMap<String, String> = joined
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ENV "))
        .flat_map(|vars| vars.split_whitespace())
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .chain([(
            "JOBHOOK_WEBHOOK_SECRET".to_owned(),
            user_value("JOBHOOK_WEBHOOK_SECRET").to_owned(),
        )])
        .collect();
    assert!(environment.contains_key("JOBHOOK_DATABASE_URL"));
    let config = config_from(&environment);
    assert!(config.database.url.starts_with("sqlite:///data/"));
    assert!(dockerfile.contains("VOLUME [\"/data\"]"));
}
