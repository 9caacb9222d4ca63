use clap::Parser;
use jobhook::app::{self, Listeners};
use jobhook::cli::{Cli, Command};
use jobhook::config::Config;
use jobhook::domain::time::SystemClock;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("jobhook: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("jobhook: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Check => {
                println!("# configuration is valid; effective values (secrets redacted):");
                print!("{}", config.redacted_toml());
                Ok(())
            }
            Command::Migrate => {
                jobhook::telemetry::init(config.log.format);
                app::migrate(&config).await
            }
            Command::Serve => {
                jobhook::telemetry::init(config.log.format);
                let listeners = Listeners::bind(&config).await?;
                app::run(
                    config,
                    listeners,
                    Arc::new(SystemClock),
                    app::shutdown_signal(),
                )
                .await
            }
            Command::Healthcheck { url } => healthcheck(&config, url).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("jobhook: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn healthcheck(config: &Config, url: Option<String>) -> anyhow::Result<()> {
    let url = url.unwrap_or_else(|| {
        let mut addr = config.server.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}/healthz")
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let response = client.get(&url).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    Ok(())
}
