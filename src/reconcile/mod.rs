//! The fallback reconciler: asks Pictory's Get Job about every job whose webhook is late, on a
//! durable schedule, under one shared rate limit, and pauses when Pictory refuses the key.
//!
//! The schedule lives in the database (`next_poll_at`), so a restart neither loses a due poll nor
//! polls everything at once: overdue jobs drain at the rate limit, oldest first, after any
//! webhook "look now" requests.

pub mod backoff;
pub mod limiter;

use crate::changes::Changes;
use crate::config::ReconcileConfig;
use crate::domain::time::millis;
use crate::domain::time::Clock;
use crate::domain::{Cause, Job};
use crate::metrics::{Metrics, ResultLabel};
use crate::pictory::{GetJob, PictoryClient};
use crate::store::{Claimed, PollOutcome, PollRecord, Store, StoreError};
use crate::sync::lock;
use limiter::RateLimiter;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Longest sleep with nothing due, so jobs scheduled by another replica are picked up.
const IDLE_WAKE_MS: i64 = 30_000;
/// Most Get Job calls in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// Longest a manual refresh waits for a rate-limit slot.
const REFRESH_WAIT_MS: i64 = 10_000;

/// Why polling is paused, while it is.
#[derive(Debug, Clone)]
struct AuthPause {
    detail: String,
    next_probe_at: i64,
}

/// The Get Job machinery shared by the reconciler loop and manual refreshes.
pub struct Poller {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    changes: Changes,
    client: PictoryClient,
    client_timeout: Duration,
    config: ReconcileConfig,
    limiter: Mutex<RateLimiter>,
    pause: Mutex<Option<AuthPause>>,
    rng: Mutex<StdRng>,
    /// Nudged when a poll becomes due sooner than the loop planned (a webhook's "look now").
    pub wake: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the job has no Pictory id yet")]
    NoJobId,
    #[error("the Get Job rate limit has no free slot; try again shortly")]
    RateLimited,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Poller {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        changes: Changes,
        client: PictoryClient,
        client_timeout: Duration,
        config: ReconcileConfig,
    ) -> Poller {
        Poller {
            changes,
            limiter: Mutex::new(RateLimiter::new(config.rate)),
            store,
            clock,
            metrics,
            client,
            client_timeout,
            config,
            pause: Mutex::new(None),
            rng: Mutex::new(StdRng::from_entropy()),
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn client(&self) -> &PictoryClient {
        &self.client
    }

    /// When the reconciler should first ask about a job tracked from `now` on.
    pub fn first_poll_at(&self, now: i64) -> i64 {
        backoff::first_poll_at(&self.config, now)
    }

    /// Why polling is paused, for `/readyz`.
    pub fn problem(&self) -> Option<String> {
        lock(&self.pause)
            .as_ref()
            .map(|p| format!("polling paused: {}", p.detail))
    }

    /// How many polls may start at `now`, and when to look again if none may.
    fn allowance(&self, now: i64) -> (usize, i64) {
        let limiter = lock(&self.limiter);
        let free_at = limiter.free_at(now);
        let mut pause = lock(&self.pause);
        match pause.as_mut() {
            // Paused: one probe per interval, with a real due job, to find out when to resume.
            Some(p) if now < p.next_probe_at => (0, p.next_probe_at.max(free_at)),
            Some(p) => {
                if free_at > now {
                    return (0, free_at);
                }
                p.next_probe_at = now + millis(self.config.interval);
                (1, p.next_probe_at)
            }
            None => (limiter.available(now), free_at),
        }
    }

    /// Makes one Get Job call for a claimed job and records what it said.
    pub async fn poll(&self, claimed: &Claimed) -> Result<Job, StoreError> {
        let answer = self.client.get_job(&claimed.job_id).await;
        let now = self.clock.now_ms();
        let label = answer.label();
        self.metrics
            .get_job_calls
            .get_or_create(&ResultLabel {
                result: label.clone(),
            })
            .inc();
        self.observe(&answer, now, &claimed.job_id);
        let retry_after = match &answer {
            GetJob::Throttled { retry_after } | GetJob::ServerError { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        };
        let next_poll_at = {
            let mut rng = lock(&self.rng);
            backoff::next_poll_at(
                &self.config,
                claimed.created_at,
                claimed.poll_count,
                now,
                retry_after,
                &mut *rng,
            )
        };
        let http_status = answer.http_status();
        let outcome = match answer {
            GetJob::Report { report, raw, .. } => PollOutcome::Report {
                state: report.state,
                raw,
            },
            GetJob::NotFound { .. } => PollOutcome::NotFound,
            _ => PollOutcome::NoAnswer,
        };
        // Only the schedule enforces the deadline; a webhook or a refresh is new evidence.
        let deadline_passed = claimed.cause == Cause::Poll
            && now >= backoff::deadline_at(&self.config, claimed.created_at);
        let record = PollRecord {
            cause: claimed.cause,
            http_status,
            label,
            outcome,
            next_poll_at,
            deadline_passed,
        };
        let job = self.store.record_poll(claimed.pk, record, now).await?;
        self.changes.publish(&job);
        Ok(job)
    }

    /// Pause on auth failure, resume on success, hold everyone back on 429.
    fn observe(&self, answer: &GetJob, now: i64, job_id: &str) {
        match answer {
            GetJob::Unauthorized {
                http_status,
                detail,
            } => {
                let mut pause = lock(&self.pause);
                if pause.is_none() {
                    tracing::error!(
                        http_status,
                        job_id,
                        "{detail}; all polling is paused until a Get Job call succeeds"
                    );
                }
                *pause = Some(AuthPause {
                    detail: format!("{detail} (HTTP {http_status})"),
                    next_probe_at: now + millis(self.config.interval),
                });
            }
            GetJob::Throttled { retry_after } => {
                let wait = retry_after.map_or(millis(self.config.interval), millis);
                lock(&self.limiter).hold(now.saturating_add(wait));
                tracing::warn!(
                    wait_ms = wait,
                    "Pictory answered 429; holding all polls back"
                );
            }
            _ => {}
        }
        if answer.key_works() && lock(&self.pause).take().is_some() {
            tracing::info!("Pictory accepted the API key again; polling resumed");
        }
    }

    /// `POST /v1/jobs/{id}/refresh`: one Get Job call now, inside the shared rate limit.
    pub async fn refresh(&self, job: &Job) -> Result<Job, RefreshError> {
        let job_id = job.job_id.clone().ok_or(RefreshError::NoJobId)?;
        let give_up_at = self.clock.now_ms() + REFRESH_WAIT_MS;
        loop {
            let now = self.clock.now_ms();
            let free_at = {
                let mut limiter = lock(&self.limiter);
                if limiter.try_acquire(now) {
                    break;
                }
                limiter.free_at(now)
            };
            if free_at > give_up_at {
                return Err(RefreshError::RateLimited);
            }
            let wait = u64::try_from((free_at - now).max(1)).unwrap_or(1);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let claimed = Claimed {
            pk: job.pk,
            job_id,
            cause: Cause::Refresh,
            created_at: job.created_at,
            poll_count: job.poll_count,
        };
        Ok(self.poll(&claimed).await?)
    }
}

/// The loop that starts due polls; owns the in-flight calls.
pub struct Reconciler {
    poller: Arc<Poller>,
    in_flight: JoinSet<()>,
    /// Claims made, for the share given to the regular schedule.
    claims: u64,
}

impl Reconciler {
    pub fn new(poller: Arc<Poller>) -> Self {
        Reconciler {
            poller,
            in_flight: JoinSet::new(),
            claims: 0,
        }
    }

    /// Starts every poll that is due and allowed at `now`; returns when to step again.
    pub async fn step(&mut self, now: i64) -> Result<i64, StoreError> {
        while self.in_flight.try_join_next().is_some() {}
        let poller = &self.poller;
        let (allowed, retry_at) = poller.allowance(now);
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
        if room == 0 {
            // The run loop wakes as soon as a call finishes.
            return Ok(now + IDLE_WAKE_MS);
        }
        if allowed > 0 {
            // Take the slot before claiming, so a manual refresh racing for it cannot push the
            // calls above the rate; give it back if nothing turns out to be due.
            if !lock(&poller.limiter).try_acquire(now) {
                return Ok(lock(&poller.limiter).free_at(now).max(now + 1));
            }
            // The lease outlives the call's timeout; after a crash, start-up releases it.
            let lease_until = now + millis(poller.client_timeout) + 60_000;
            // Every fourth call serves the regular schedule first, so a flood of webhook
            // "look now" requests cannot starve jobs whose webhook never came.
            self.claims = self.claims.wrapping_add(1);
            let scheduled_first = self.claims % 4 == 0;
            let claimed = poller
                .store
                .claim_due(now, lease_until, 1, scheduled_first)
                .await?;
            if let Some(job) = claimed.into_iter().next() {
                lock(&poller.limiter).restamp(now, poller.clock.now_ms());
                let poller = poller.clone();
                self.in_flight.spawn(async move {
                    if let Err(err) = poller.poll(&job).await {
                        tracing::error!(error = %err, job_id = %job.job_id, "cannot record a poll");
                    }
                });
                // More may be due: come back as soon as the limiter allows.
                return Ok(lock(&self.poller.limiter).free_at(now).max(now + 1));
            }
            lock(&poller.limiter).give_back(now);
        }
        let next_due = poller.store.next_due().await?.unwrap_or(i64::MAX);
        let wake = next_due.max(if allowed == 0 { retry_at } else { now });
        Ok(wake.min(now + IDLE_WAKE_MS).max(now + 1))
    }

    /// Waits for every call in flight to finish and be recorded.
    pub async fn drain(&mut self) {
        while self.in_flight.join_next().await.is_some() {}
    }

    /// Runs until `shutdown`, then lets the calls in flight finish.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let clock = self.poller.clock.clone();
        loop {
            let now = clock.now_ms();
            let wake_at = match self.step(now).await {
                Ok(at) => at,
                Err(err) => {
                    tracing::warn!(error = %err, "reconciler cannot read its schedule; retrying");
                    now + 1_000
                }
            };
            let wait = Duration::from_millis(u64::try_from(wake_at - now).unwrap_or(0));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.poller.wake.notified() => {}
                Some(_) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {}
            }
        }
        self.drain().await;
    }
}
