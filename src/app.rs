//! Running the service: both listeners and the background tasks, under one shutdown signal.

use crate::archive::{Archiver, Copier};
use crate::changes::Changes;
use crate::config::Config;
use crate::domain::archive::ArchivePolicy;
use crate::domain::time::Clock;
use crate::http::api::videos::render_response;
use crate::http::serve::fd::{self, Sizing};
use crate::http::serve::{self, Limits};
use crate::http::{api_app, public_app};
use crate::metrics::Listener;
use crate::notify::Notifier;
use crate::reconcile::Reconciler;
use crate::state::AppState;
use crate::store::{NotifyRoute, OthersChanges, Store};
use crate::{retention, store};
use anyhow::Context as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// The two already-bound listeners (tests bind port 0 and read the address back).
pub struct Listeners {
    pub public: TcpListener,
    pub api: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let public = listen(config.server.listen)
            .with_context(|| format!("cannot listen on server.listen {}", config.server.listen))?;
        let api = listen(config.server.api_listen).with_context(|| {
            format!(
                "cannot listen on server.api_listen {}",
                config.server.api_listen
            )
        })?;
        Ok(Listeners { public, api })
    }
}

/// Connections the kernel completes before jobhook accepts them. tokio's default (1,024) is
/// soon full under a burst of connections, and a connection the queue has no room for is left
/// half-open (the client thinks it is connected, the kernel retries the handshake for a minute):
/// a client sending a webhook then waits that long. Linux caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As tokio's `TcpListener::bind` does: a restart can bind while old connections linger.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Applies migrations and returns; what `jobhook migrate` does.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let store = store::open_with(&config.database.url, &config.database.store_options())
        .await
        .context("cannot open the database (database.url)")?;
    store.migrate().await.context("cannot apply migrations")?;
    store.close().await;
    Ok(())
}

/// Runs the service until `shutdown` resolves, then drains in-flight requests and exits.
pub async fn run(
    config: Config,
    listeners: Listeners,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = store::open_with(&config.database.url, &config.database.store_options())
        .await
        .context("cannot open the database (database.url)")?;
    Service::start(config, store, clock)
        .await?
        .run(listeners, shutdown)
        .await
}

/// A migrated, configured service, ready to run (tests keep its state to look inside).
pub struct Service {
    state: AppState,
}

impl Service {
    /// Applies migrations and builds the shared state over `store`.
    pub async fn start(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Service> {
        store.migrate().await.context("cannot apply migrations")?;
        if config.receive_only() {
            tracing::warn!(
                "no pictory.api_key: running receive-only (no submissions, no polls); \
                 job state comes from webhook bodies"
            );
        } else if !config.pictory.verify_webhooks {
            tracing::warn!(
                "pictory.verify_webhooks is off: job state is taken from unauthenticated webhook bodies"
            );
        }
        let routes: Vec<NotifyRoute> = config
            .notify
            .endpoints
            .iter()
            .map(|e| NotifyRoute {
                url: e.url.clone(),
                events: e.events.clone(),
                fingerprint: e.fingerprint(),
            })
            .collect();
        store
            .set_notify_routes(&routes)
            .await
            .context("cannot store the notification routes")?;
        let policy = config.archive.url.as_ref().map(|_| ArchivePolicy {
            files: config.archive.files.clone(),
            hold_completed: config.notify.after_archive,
        });
        store
            .set_archive_policy(policy.as_ref(), clock.now_ms())
            .await
            .context("cannot store the archive policy")?;
        // Leases a dead process left: on SQLite (one process) all of them are due now; on
        // PostgreSQL only expired ones are freed, since a live replica may hold the others.
        let released = store
            .release_leases(clock.now_ms())
            .await
            .context("cannot release the leases of a previous run")?;
        if released > 0 {
            tracing::info!(
                released,
                "polls, notifications and archive copies interrupted by the last stop are due again"
            );
        }
        // Upkeep once before serving: with replicas, this one counts itself alive from now on.
        if let Err(err) = store.maintain(clock.now_ms()).await {
            tracing::warn!(error = %err, "database upkeep failed; will retry");
        }
        let state = AppState::new(config, store, clock)?;
        // Other replicas' changes reach this one's long-polls, event streams, cache and
        // reconciler as if they had been made here. Listening starts before start() returns.
        if let Some(others) = state
            .store
            .watch_others()
            .await
            .context("cannot listen for other replicas' changes")?
        {
            tokio::spawn(relay_others(
                others,
                state.store.clone(),
                state.changes.clone(),
            ));
        }
        // A crash mid-submission leaves records whose Generate call may have reached Pictory.
        let recovered = state
            .store
            .recover_submissions(
                Arc::new(|job| render_response(job, &[])),
                i64::MAX,
                state.now_ms(),
            )
            .await
            .context("cannot recover interrupted submissions")?;
        for job in &recovered {
            tracing::warn!(
                submission_id = job.submission_id.as_deref().unwrap_or("-"),
                "submission was interrupted by a restart; it is submit_unknown and will not be retried"
            );
        }
        Ok(Service { state })
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves both listeners and runs the background tasks until `shutdown` resolves.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state;
        let store = state.store.clone();
        let stop = state.stopping.clone();
        let mut tasks = vec![
            tokio::spawn(retention::run(state.clone(), stop.child_token())),
            tokio::spawn(maintain(
                store.clone(),
                state.clock.clone(),
                stop.child_token(),
            )),
        ];
        if let Some(poller) = &state.poller {
            let reconciler = Reconciler::new(poller.clone());
            tasks.push(tokio::spawn(reconciler.run(stop.child_token())));
        }
        let notifier = Notifier::new(
            &state.config,
            state.store.clone(),
            state.clock.clone(),
            state.metrics.clone(),
            state.changes.clone(),
            state.outbox_wake.clone(),
        )?;
        if let Some(notifier) = notifier {
            tasks.push(tokio::spawn(notifier.run(stop.child_token())));
        }
        if let Some(archive) = &state.archive {
            let archiver = Archiver {
                archive: archive.clone(),
                copier: Arc::new(Copier::new(
                    archive.store.clone(),
                    state.config.archive.max_size.as_u64(),
                    state.config.pictory.timeout,
                )?),
                store: state.store.clone(),
                clock: state.clock.clone(),
                changes: state.changes.clone(),
                metrics: state.metrics.clone(),
                concurrency: state.config.archive.concurrency as usize,
            };
            tasks.push(tokio::spawn(archiver.run(stop.child_token())));
        }

        tracing::info!(
            public = %listeners.public.local_addr()?,
            api = %listeners.api.local_addr()?,
            "jobhook is listening"
        );
        let sizing = Sizing::new(
            state.config.server.max_connections,
            fd::open_file_limit().map(|limit| limit.soft),
        );
        sizing.log();
        let limits = Limits::new(&state.config.server, sizing.per_listener);
        let public = serve::serve(
            listeners.public,
            public_app(state.clone()),
            Listener::Public,
            limits,
            state.metrics.clone(),
            stop.clone(),
        );
        let api = serve::serve(
            listeners.api,
            api_app(state.clone()),
            Listener::Api,
            limits,
            state.metrics.clone(),
            stop.clone(),
        );
        let trigger = stop.clone();
        let watcher = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            trigger.cancel();
        });

        tokio::join!(public, api);
        stop.cancel();
        watcher.abort();
        for task in tasks {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "background task failed");
            }
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Publishes, in this process, the jobs other processes changed: re-read, then announced as
/// every local write announces its job. Ends when the store closes.
async fn relay_others(mut others: OthersChanges, store: Arc<dyn Store>, changes: Changes) {
    const TRIES: u32 = 10;
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(500);
    while let Some(pks) = others.recv().await {
        for pk in pks {
            for attempt in 1..=TRIES {
                match store.job_by_pk(pk).await {
                    Ok(Some(job)) => changes.publish(&job),
                    Ok(None) => {}
                    // The database is away for a moment: this change must still be heard.
                    Err(err) if attempt < TRIES => {
                        tracing::debug!(error = %err, pk, "cannot read a changed job yet");
                        tokio::time::sleep(PAUSE).await;
                        continue;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, pk, "cannot read a job another replica changed")
                    }
                }
                break;
            }
        }
    }
}

/// Runs the database's upkeep about once a second until `stop`.
async fn maintain(store: Arc<dyn Store>, clock: Arc<dyn Clock>, stop: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(err) = store.maintain(clock.now_ms()).await {
            tracing::warn!(error = %err, "database upkeep failed; will retry");
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
