//! The command line (SPEC §1).

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "jobhook",
    version,
    about = "Durable receiver and reconciler for Pictory video jobs"
)]
pub struct Cli {
    /// TOML configuration file; environment variables JOBHOOK_<SECTION>_<KEY> override it.
    #[arg(long, global = true, env = "JOBHOOK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: both listeners and the background tasks. Applies pending migrations first.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration and print the effective values, secrets redacted.
    Check,
    /// Exit 0 when the local /healthz answers, non-zero otherwise (for container HEALTHCHECK).
    Healthcheck {
        /// Address to ask instead of the one server.listen names.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// A self-contained tour: a fake Pictory and jobhook on loopback, a batch of videos, a summary.
    Demo,
    /// Run a fake Pictory (Generate Video and Get Job, with webhooks) for integration tests.
    MockPictory(MockArgs),
    /// Copy every job, delivery, history entry, notification, key and archive record to another database
    /// (SQLite to PostgreSQL and back). Stop the service first for an up-to-the-moment copy.
    CopyDb(CopyDbArgs),
}

#[derive(Debug, Args)]
pub struct CopyDbArgs {
    /// The database to copy: sqlite://PATH or postgres://...
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The database to copy into (migrated first; a SQLite file is created if missing).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Delete what the target already holds, instead of refusing a target that is not empty.
    #[arg(long)]
    pub replace: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn rate(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err("must be between 0 and 1".into())
    }
}

#[derive(Debug, Args)]
pub struct MockArgs {
    /// Address to listen on; point pictory.base_url at http://ADDR/pictoryapis.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Accept only this API key (default: any key starting with `pictai_`).
    #[arg(long)]
    pub api_key: Option<String>,
    /// How long a job runs before it completes or fails.
    #[arg(long, default_value = "20s", value_parser = duration)]
    pub job_duration: Duration,
    /// Share of jobs that fail (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub failure_rate: f64,
    /// Share of webhooks never sent.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub drop_rate: f64,
    /// Share of webhooks sent twice.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub duplicate_rate: f64,
    /// Share of jobs whose final webhook is followed by a stale "in-progress" one.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub reorder_rate: f64,
    /// Extra delay before a webhook is sent.
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub webhook_delay: Duration,
    /// Share of API calls answered 429.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub throttle_rate: f64,
    /// Retry-After seconds sent with a 429.
    #[arg(long, default_value_t = 2, conflicts_with = "no_retry_after")]
    pub retry_after: u64,
    /// Send 429s without a Retry-After header.
    #[arg(long)]
    pub no_retry_after: bool,
    /// Share of Get Job calls answered 500.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub error_rate: f64,
    /// Seed for the random choices, for repeatable runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Delete a completed job's output files this long after it completed (the job then
    /// reads `cleaned`, and its URLs answer 404), as Pictory's retention does.
    #[arg(long, value_parser = duration)]
    pub clean_after: Option<Duration>,
    /// Serve videos of this many bytes (e.g. 500MB) instead of the small sample MP4.
    #[arg(long, value_parser = size)]
    pub video_size: Option<u64>,
}

fn size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|s| s.as_u64())
        .map_err(|e| format!("`{text}` is not a size like 500MB: {e}"))
}

impl MockArgs {
    pub fn options(&self) -> crate::mock::MockOptions {
        crate::mock::MockOptions {
            api_key: self.api_key.clone(),
            job_duration: self.job_duration,
            failure_rate: self.failure_rate,
            drop_rate: self.drop_rate,
            duplicate_rate: self.duplicate_rate,
            reorder_rate: self.reorder_rate,
            webhook_delay: self.webhook_delay,
            throttle_rate: self.throttle_rate,
            retry_after_secs: (!self.no_retry_after).then_some(self.retry_after),
            error_rate: self.error_rate,
            seed: self.seed,
            clean_after: self.clean_after,
            video_size: self.video_size,
        }
    }
}
