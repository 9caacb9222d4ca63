//! Layered configuration: built-in defaults, then a TOML file, then `JOBHOOK_<SECTION>_<KEY>`
//! environment variables. Validated once, with messages that name the offending key.

use base64::Engine as _;
use bytesize::ByteSize;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod lenient;
pub(crate) use lenient::parse_duration;

/// The whole configuration (SPEC §2).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub pictory: PictoryConfig,
    pub webhook: WebhookConfig,
    pub api: ApiConfig,
    pub dashboard: DashboardConfig,
    pub reconcile: ReconcileConfig,
    pub notify: NotifyConfig,
    pub retention: RetentionConfig,
    pub log: LogConfig,
    pub archive: ArchiveConfig,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub public_url: String,
    #[serde(with = "lenient::size")]
    pub body_limit: ByteSize,
    /// Time a request line and headers have to arrive in: from accept for a connection's first
    /// request, from its first byte for a later one.
    #[serde(with = "lenient::duration")]
    pub header_timeout: Duration,
    /// Time a kept-alive connection may wait, silent, for its next request.
    #[serde(with = "lenient::duration")]
    pub idle_timeout: Duration,
    /// Most connections each listener holds at once; unset, sized from the open-file limit
    /// (see `http::serve::fd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            public_url: "http://localhost:8080".to_owned(),
            body_limit: ByteSize::kib(256),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    /// SQLite: the write-ahead log is checkpointed into the database past this size.
    pub wal_limit: ByteSize,
    /// PostgreSQL: most connections one replica opens (plus one that listens for changes).
    pub pool_size: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://data/jobhook.db".to_owned(),
            wal_limit: ByteSize::mib(64),
            pool_size: 10,
        }
    }
}

impl DatabaseConfig {
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            wal_limit: self.wal_limit.as_u64(),
            pool_size: self.pool_size,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PictoryConfig {
    pub base_url: String,
    #[serde(with = "lenient::secret_opt")]
    pub api_key: Option<SecretString>,
    pub verify_webhooks: bool,
    #[serde(with = "lenient::duration")]
    pub timeout: Duration,
}

impl Default for PictoryConfig {
    fn default() -> Self {
        PictoryConfig {
            base_url: "https://api.pictory.ai/pictoryapis".to_owned(),
            api_key: None,
            verify_webhooks: true,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(with = "lenient::secret_opt")]
    pub secret: Option<SecretString>,
    #[serde(with = "lenient::secret_list")]
    pub previous_secrets: Vec<SecretString>,
    #[serde(with = "lenient::secret_list")]
    pub signing_secrets: Vec<SecretString>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(with = "lenient::secret_list")]
    pub tokens: Vec<SecretString>,
}

/// The web dashboard at `/` on the private listener (SPEC §11).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    pub enabled: bool,
    /// How long a sign-in lasts before the token is asked for again.
    #[serde(with = "lenient::duration")]
    pub session_ttl: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: true,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileConfig {
    #[serde(with = "lenient::duration")]
    pub grace: Duration,
    #[serde(with = "lenient::duration")]
    pub interval: Duration,
    #[serde(with = "lenient::duration")]
    pub max_interval: Duration,
    #[serde(with = "lenient::duration")]
    pub deadline: Duration,
    pub rate: u32,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            grace: Duration::from_secs(120),
            interval: Duration::from_secs(15),
            max_interval: Duration::from_secs(300),
            deadline: Duration::from_secs(2 * 3600),
            rate: 5,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(with = "lenient::duration_list")]
    pub retry_schedule: Vec<Duration>,
    pub endpoints: Vec<NotifyEndpoint>,
    /// Hold `job.completed` until the job's files are archived (or archiving gave up).
    pub after_archive: bool,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        let schedule = [5, 300, 1800, 7200, 18000, 36000, 36000];
        NotifyConfig {
            retry_schedule: schedule.into_iter().map(Duration::from_secs).collect(),
            endpoints: Vec::new(),
            after_archive: false,
        }
    }
}

/// The output archive (SPEC §10): off until `url` is set.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `file:///PATH` or `s3://BUCKET/PREFIX`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Which outputs to copy: `video`, `thumbnail`, `last_frame`, `preview`.
    #[serde(with = "lenient::list")]
    pub files: Vec<String>,
    /// Downloads at once (per replica).
    pub concurrency: u32,
    /// A larger file is not copied (`too_large`).
    #[serde(with = "lenient::size")]
    pub max_size: ByteSize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            url: None,
            files: crate::domain::archive::FILE_NAMES
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            concurrency: 4,
            max_size: ByteSize::gib(2),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyEndpoint {
    pub url: String,
    #[serde(with = "lenient::secret")]
    pub secret: SecretString,
    #[serde(default = "NotifyEndpoint::default_events")]
    pub events: Vec<String>,
}

impl NotifyEndpoint {
    pub const EVENTS: [&'static str; 4] = [
        "job.completed",
        "job.failed",
        "job.timed_out",
        "job.updated",
    ];

    /// Identifies this entry's configuration without revealing the secret.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for part in [self.url.as_str(), self.secret.expose_secret()]
            .into_iter()
            .chain(self.events.iter().map(String::as_str))
        {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hash.finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn default_events() -> Vec<String> {
        vec![
            "job.completed".to_owned(),
            "job.failed".to_owned(),
            "job.timed_out".to_owned(),
        ]
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(with = "lenient::duration")]
    pub deliveries: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            deliveries: Duration::from_secs(30 * 86400),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The environment variable that names the config file; it is not a key itself.
pub const CONFIG_PATH_VAR: &str = "JOBHOOK_CONFIG";

impl Config {
    /// Loads defaults, then `file` (when given), then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(environment());
        let config: Config = figment
            .extract()
            .map_err(|err| ConfigError::Load(describe_figment_error(err)))?;
        config.validate()?;
        Ok(config)
    }

    /// The start-up refusals of SPEC §2, plus the values that would fail later at first use.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.webhook.secret {
            None => {
                return Err(invalid(
                    "webhook.secret",
                    "is required (at least 32 characters)",
                ))
            }
            Some(secret) if secret.expose_secret().chars().count() < 32 => {
                return Err(invalid(
                    "webhook.secret",
                    "must be at least 32 characters long",
                ))
            }
            Some(_) => {}
        }
        for (index, secret) in self.webhook.previous_secrets.iter().enumerate() {
            if secret.expose_secret().chars().count() < 32 {
                return Err(invalid(
                    "webhook.previous_secrets",
                    format!("entry {index} must be at least 32 characters long"),
                ));
            }
        }
        for (index, secret) in self.webhook.signing_secrets.iter().enumerate() {
            decode_whsec(secret.expose_secret()).map_err(|why| {
                invalid("webhook.signing_secrets", format!("entry {index}: {why}"))
            })?;
        }
        if !self.server.api_listen.ip().is_loopback() && self.api.tokens.is_empty() {
            return Err(invalid(
                "server.api_listen",
                format!(
                    "{} is not a loopback address, so api.tokens must be set",
                    self.server.api_listen
                ),
            ));
        }
        if self
            .api
            .tokens
            .iter()
            .any(|t| t.expose_secret().trim().is_empty())
        {
            return Err(invalid("api.tokens", "tokens must not be empty"));
        }
        if self.dashboard.session_ttl < Duration::from_secs(60)
            || self.dashboard.session_ttl > Duration::from_secs(366 * 86400)
        {
            return Err(invalid(
                "dashboard.session_ttl",
                "must be between 1m and 366d",
            ));
        }
        check_http_url("server.public_url", &self.server.public_url)?;
        check_http_url("pictory.base_url", &self.pictory.base_url)?;
        if self.server.body_limit.as_u64() == 0 {
            return Err(invalid("server.body_limit", "must be larger than zero"));
        }
        if self.database.wal_limit.as_u64() < 64 * 1024 {
            return Err(invalid("database.wal_limit", "must be at least 64KiB"));
        }
        if self.server.header_timeout.is_zero() {
            return Err(invalid("server.header_timeout", "must be larger than zero"));
        }
        if self.server.idle_timeout.is_zero() {
            return Err(invalid("server.idle_timeout", "must be larger than zero"));
        }
        if self.server.max_connections == Some(0) {
            return Err(invalid(
                "server.max_connections",
                "must be at least 1 (leave it unset to size it from the open-file limit)",
            ));
        }
        if crate::store::Backend::of_url(&self.database.url).is_none() {
            return Err(invalid(
                "database.url",
                "must be sqlite://PATH, postgres://... or postgresql://...",
            ));
        }
        if !(1..=1000).contains(&self.database.pool_size) {
            return Err(invalid("database.pool_size", "must be between 1 and 1000"));
        }
        if let Some(key) = &self.pictory.api_key {
            if key.expose_secret().trim().is_empty() {
                return Err(invalid("pictory.api_key", "must not be empty when set"));
            }
        }
        if self.pictory.timeout.is_zero() {
            return Err(invalid("pictory.timeout", "must be larger than zero"));
        }
        let reconcile = &self.reconcile;
        if reconcile.interval.is_zero() {
            return Err(invalid("reconcile.interval", "must be larger than zero"));
        }
        if reconcile.max_interval < reconcile.interval {
            return Err(invalid(
                "reconcile.max_interval",
                "must not be shorter than reconcile.interval",
            ));
        }
        if reconcile.rate == 0 {
            return Err(invalid("reconcile.rate", "must be at least 1"));
        }
        if self.retention.deliveries.is_zero() {
            return Err(invalid("retention.deliveries", "must be larger than zero"));
        }
        for (index, endpoint) in self.notify.endpoints.iter().enumerate() {
            let key = format!("notify.endpoints[{index}]");
            if self.notify.endpoints[..index]
                .iter()
                .any(|e| e.url == endpoint.url)
            {
                return Err(invalid(
                    &format!("{key}.url"),
                    format!(
                        "`{}` is listed twice; list each endpoint once with all its events",
                        endpoint.url
                    ),
                ));
            }
            check_http_url(&format!("{key}.url"), &endpoint.url)?;
            decode_whsec(endpoint.secret.expose_secret())
                .map_err(|why| invalid(&format!("{key}.secret"), why))?;
            if let Some(unknown) = endpoint
                .events
                .iter()
                .find(|e| !NotifyEndpoint::EVENTS.contains(&e.as_str()))
            {
                return Err(invalid(
                    &format!("{key}.events"),
                    format!(
                        "unknown event `{unknown}`, expected one of {:?}",
                        NotifyEndpoint::EVENTS
                    ),
                ));
            }
        }
        self.validate_archive()
    }

    fn validate_archive(&self) -> Result<(), ConfigError> {
        let archive = &self.archive;
        match &archive.url {
            None if self.notify.after_archive => {
                return Err(invalid(
                    "notify.after_archive",
                    "needs archive.url: without an archive there is nothing to wait for",
                ))
            }
            None => {}
            Some(url) => {
                crate::archive::ArchiveLocation::parse(url)
                    .map_err(|why| invalid("archive.url", why))?;
            }
        }
        if let Some(unknown) = archive
            .files
            .iter()
            .find(|f| !crate::domain::archive::FILE_NAMES.contains(&f.as_str()))
        {
            return Err(invalid(
                "archive.files",
                format!(
                    "unknown file `{unknown}`, expected some of {:?}",
                    crate::domain::archive::FILE_NAMES
                ),
            ));
        }
        if archive.concurrency == 0 {
            return Err(invalid("archive.concurrency", "must be at least 1"));
        }
        if archive.max_size.as_u64() == 0 {
            return Err(invalid("archive.max_size", "must be larger than zero"));
        }
        Ok(())
    }

    /// The effective configuration as TOML, every secret replaced by a marker.
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }

    /// Whether jobhook can call Pictory at all.
    pub fn receive_only(&self) -> bool {
        self.pictory.api_key.is_none()
    }
}

/// `JOBHOOK_SERVER_API_LISTEN` is key `api_listen` of section `server`: the first underscore
/// separates the section, the rest belongs to the key. `JOBHOOK_CONFIG` names the file, and
/// `JOBHOOK_TEST_*` belongs to jobhook's own test suite (`JOBHOOK_TEST_POSTGRES`): not keys.
fn environment() -> Env {
    Env::prefixed("JOBHOOK_")
        .filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            key != "config" && !key.starts_with("test_")
        })
        .map(|key| match key.as_str().split_once('_') {
            Some((section, rest)) => format!("{section}.{rest}").into(),
            None => key.as_str().to_owned().into(),
        })
}

fn describe_figment_error(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("key `{key}`: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn check_http_url(key: &str, value: &str) -> Result<(), ConfigError> {
    if crate::pictory::rules::is_web_url(value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{value}` is not an absolute http(s) URL"),
        ))
    }
}

/// Decodes a Standard Webhooks `whsec_` secret into its key bytes.
pub fn decode_whsec(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| "must start with `whsec_`".to_owned())?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "is not valid base64 after `whsec_`".to_owned())?;
    if bytes.len() < 16 || bytes.len() > 64 {
        return Err(format!(
            "decodes to {} bytes; expected 16 to 64",
            bytes.len()
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
