//! The command line (SPEC §1).

use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
}
