use clap::Parser;
use jobhook::app::{self, Listeners};
use jobhook::cli::{Cli, Command};
use jobhook::config::Config;
use jobhook::domain::time::SystemClock;
use jobhook::http::serve::fd;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Healthcheck { url } = &cli.command {
        // The probe must work even where the full configuration does not load: it only needs
        // to know where the public listener is.
        let listen = Config::load(cli.config.as_deref())
            .map(|config| config.server.listen)
            .unwrap_or_else(|_| Config::default().server.listen);
        return match healthcheck(listen, url.clone()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("jobhook: healthcheck failed: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::MockPictory(args) = &cli.command {
        return run_mock(args);
    }
    if let Command::Demo = &cli.command {
        return run_demo();
    }
    if let Command::CopyDb(args) = &cli.command {
        // Needs no configuration: both databases are named on the command line.
        return run_copy_db(args);
    }
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
                if config.server.max_connections.is_none() {
                    // What `serve` would pick: it first raises the soft limit to the hard one.
                    let limit = fd::open_file_limit().map(|limit| limit.hard);
                    let sizing = fd::Sizing::new(None, limit);
                    println!(
                        "# server.max_connections is unset: each listener will hold at most {} \
                         connections (open-file limit {})",
                        sizing.per_listener,
                        limit.map_or_else(|| "unknown".to_owned(), |l| l.to_string())
                    );
                }
                Ok(())
            }
            Command::Migrate => {
                jobhook::telemetry::init(config.log.format);
                app::migrate(&config).await
            }
            Command::Serve => {
                jobhook::telemetry::init(config.log.format);
                fd::raise_open_file_limit();
                let listeners = Listeners::bind(&config).await?;
                app::run(
                    config,
                    listeners,
                    Arc::new(SystemClock),
                    app::shutdown_signal(),
                )
                .await
            }
            Command::Healthcheck { .. }
            | Command::MockPictory(_)
            | Command::Demo
            | Command::CopyDb(_) => Ok(()),
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

fn healthcheck(listen: SocketAddr, url: Option<String>) -> anyhow::Result<()> {
    let url = url.unwrap_or_else(|| {
        let mut addr = listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}/healthz")
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
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
    })
}

fn run_mock(args: &jobhook::cli::MockArgs) -> ExitCode {
    jobhook::telemetry::init(jobhook::config::LogFormat::Text);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(args.listen).await?;
                let addr = listener.local_addr()?;
                let mock = jobhook::mock::MockPictory::new(args.options(), Arc::new(SystemClock));
                println!(
                    "fake Pictory listening; set pictory.base_url = \"http://{addr}/pictoryapis\""
                );
                mock.serve(listener, app::shutdown_signal()).await?;
                Ok(())
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("jobhook: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_copy_db(args: &jobhook::cli::CopyDbArgs) -> ExitCode {
    jobhook::telemetry::init_with_default(jobhook::config::LogFormat::Text, "warn");
    // Drawn on stderr when it is a terminal, hidden otherwise.
    let progress = indicatif::ProgressBar::new(0);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>16} [{bar:40}] {pos}/{len} rows ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let options = jobhook::copy_db::CopyOptions {
        replace: args.replace,
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(jobhook::copy_db::copy_db(
                &args.from, &args.to, options, &progress,
            ))
        });
    match result {
        Ok(copied) => {
            for (table, rows) in &copied.tables {
                println!("{table:<17} {rows:>10} rows");
            }
            println!("copied {} rows", copied.total());
            ExitCode::SUCCESS
        }
        Err(err) => {
            progress.abandon();
            eprintln!("jobhook copy-db: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo() -> ExitCode {
    // The tour prints its own story; only warnings from the service itself.
    jobhook::telemetry::init_with_default(jobhook::config::LogFormat::Text, "warn");
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(jobhook::demo::run()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("jobhook demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}
