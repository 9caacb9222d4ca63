//! The fallback reconciler: asks Pictory's Get Job about every job whose webhook is late, on a
//! durable schedule, under one shared rate limit, and pauses when Pictory refuses the key.
//!
//! The schedule lives in the database (`next_poll_at`), so a restart neither loses a due poll nor
//! polls everything at once: overdue jobs drain at the rate limit, oldest first, after any
//! webhook "look now" requests.

pub mod backoff;
pub mod limiter;
mod shared;
pub mod wake;

pub use shared::WINDOW_MARGIN_MS as SHARED_WINDOW_MARGIN_MS;

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
use shared::Shared;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wake::PollWake;

/// Longest sleep with nothing due. Every path that schedules a poll wakes the loop itself (see
/// [`PollWake`]); this is only a floor under a missed wake-up.
const IDLE_WAKE_MS: i64 = 30_000;
/// Most Get Job calls in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// A claim takes the jobs due for about this long at the effective rate, in one transaction:
/// one commit (and one disk flush) per batch rather than per call is what lets the loop keep
/// up with high rates. Short, so a webhook's "look now" never queues long behind a batch.
const CLAIM_AHEAD_MS: usize = 250;
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
    /// The rate limit of this process; with `shared`, a mirror of the shared one as last seen.
    limiter: Mutex<RateLimiter>,
    /// Why polling is paused; with `shared`, as last seen in the shared state.
    pause: Mutex<Option<AuthPause>>,
    /// The pace every replica shares (PostgreSQL); None when this process alone polls.
    shared: Option<Shared>,
    rng: Mutex<StdRng>,
    /// Wakes the loop when a poll becomes due sooner than it planned.
    wake: Arc<PollWake>,
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
            shared: store.shared_pace().map(Shared::new),
            wake: changes.poll_wake(),
            changes,
            limiter: Mutex::new(RateLimiter::new(config.rate, millis(config.max_interval))),
            store,
            clock,
            metrics,
            client,
            client_timeout,
            config,
            pause: Mutex::new(None),
            rng: Mutex::new(StdRng::from_entropy()),
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

    /// How Get Job calls are paced at `now`, for `/readyz` and `/metrics`.
    pub fn pace(&self, now: i64) -> Pace {
        let limiter = lock(&self.limiter);
        Pace {
            rate: self.config.rate,
            effective_rate: u32::try_from(limiter.effective_rate(now)).unwrap_or(u32::MAX),
            held_until: limiter.held_until(now),
        }
    }

    /// The earliest time (≥ `now`) a call may start: the rate limit, a `429`'s hold, or, while
    /// polling is paused, the next probe (one per interval, with a real due job, to find out
    /// when to resume).
    fn next_start(&self, now: i64) -> i64 {
        let free_at = lock(&self.limiter).free_at(now);
        let mut pause = lock(&self.pause);
        match pause.as_mut() {
            Some(p) if now < p.next_probe_at => p.next_probe_at.max(free_at),
            Some(p) if free_at <= now => {
                p.next_probe_at = now + millis(self.config.interval);
                now
            }
            _ => free_at,
        }
    }

    /// How many due jobs one claim takes: about [`CLAIM_AHEAD_MS`] of calls at the effective
    /// rate, at least one (and only one while paused: the probe).
    fn claim_size(&self, now: i64, room: usize) -> usize {
        if lock(&self.pause).is_some() {
            return 1;
        }
        let rate = lock(&self.limiter).effective_rate(now);
        (rate * CLAIM_AHEAD_MS / 1000).clamp(1, room.max(1))
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
        self.metrics.get_job_calls_recent.record(now);
        match &self.shared {
            Some(shared) => {
                self.observe_shared(shared, &answer, now, &claimed.job_id)
                    .await
            }
            None => self.observe(&answer, now, &claimed.job_id),
        }
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

    /// Pause on auth failure, resume on success, slow everyone down on 429.
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
                let mut limiter = lock(&self.limiter);
                limiter.throttled(now, retry_after.map(millis));
                tracing::warn!(
                    held_ms = limiter.held_until(now).map_or(0, |until| until - now),
                    effective_rate = limiter.effective_rate(now),
                    "Pictory answered 429; slowing all polls down"
                );
            }
            _ => {}
        }
        if answer.key_works() {
            lock(&self.limiter).succeeded();
            if lock(&self.pause).take().is_some() {
                tracing::info!("Pictory accepted the API key again; polling resumed");
            }
        }
    }

    /// `POST /v1/jobs/{id}/refresh`: one Get Job call now, inside the shared rate limit.
    pub async fn refresh(&self, job: &Job) -> Result<Job, RefreshError> {
        let job_id = job.job_id.clone().ok_or(RefreshError::NoJobId)?;
        let give_up_at = self.clock.now_ms() + REFRESH_WAIT_MS;
        if let Some(shared) = &self.shared {
            self.shared_slot_for_refresh(shared, give_up_at).await?;
        } else {
            self.local_slot_for_refresh(give_up_at).await?;
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

    /// Waits for a slot of this process's own limiter, until `give_up_at` at most.
    async fn local_slot_for_refresh(&self, give_up_at: i64) -> Result<(), RefreshError> {
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
        Ok(())
    }
}

/// How Get Job calls are paced right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// `reconcile.rate`, the ceiling.
    pub rate: u32,
    /// The rate in force after Pictory's `429`s (equal to `rate` when none came lately).
    pub effective_rate: u32,
    /// While a `429` holds every call back: until when.
    pub held_until: Option<i64>,
}

impl Pace {
    /// Slowed down by Pictory: held back, or below the configured rate.
    pub fn throttled(&self) -> bool {
        self.held_until.is_some() || self.effective_rate < self.rate
    }
}

/// The loop that starts due polls; owns the claimed jobs and the in-flight calls.
pub struct Reconciler {
    poller: Arc<Poller>,
    /// Claimed (leased) jobs waiting for a rate-limit slot, oldest due first.
    ready: VecDeque<Claimed>,
    /// With a shared pace: claimed jobs holding a slot of the shared schedule, earliest first.
    slotted: VecDeque<shared::Slotted>,
    /// With a shared pace: ticks when another replica announces a hold, a pause or a resume.
    pace_news: Option<watch::Receiver<u64>>,
    in_flight: JoinSet<()>,
    /// Claims made, for the share given to the regular schedule.
    claims: u64,
}

impl Reconciler {
    pub fn new(poller: Arc<Poller>) -> Self {
        Reconciler {
            pace_news: poller.shared.as_ref().map(|s| s.pace.announcements()),
            poller,
            ready: VecDeque::new(),
            slotted: VecDeque::new(),
            in_flight: JoinSet::new(),
            claims: 0,
        }
    }

    /// Starts the next poll that is due and allowed at `now`; returns when to step again.
    pub async fn step(&mut self, now: i64) -> Result<i64, StoreError> {
        if self.poller.shared.is_some() {
            return self.step_shared(now).await;
        }
        while self.in_flight.try_join_next().is_some() {}
        let poller = self.poller.clone();
        let start_at = poller.next_start(now);
        if start_at > now {
            if start_at - now > 1_000 {
                // A long hold or a pause: the claimed jobs must not outlive their leases here.
                self.give_back().await;
            }
            return Ok(start_at);
        }
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
        if room == 0 {
            // The run loop wakes as soon as a call finishes.
            return Ok(now + IDLE_WAKE_MS);
        }
        if self.ready.is_empty() {
            self.claim(now, room).await?;
        }
        if self.ready.is_empty() {
            return self.idle_until(now).await;
        }
        // The claim waited for the disk: the slot is stamped when the call really starts, so
        // the limit holds for the calls as they are sent.
        let started = poller.clock.now_ms().max(now);
        if !lock(&poller.limiter).try_acquire(started) {
            // A manual refresh took the slot meanwhile.
            return Ok(lock(&poller.limiter).free_at(started).max(now + 1));
        }
        if let Some(job) = self.ready.pop_front() {
            let poller = poller.clone();
            self.in_flight.spawn(async move {
                if let Err(err) = poller.poll(&job).await {
                    tracing::error!(error = %err, job_id = %job.job_id, "cannot record a poll");
                }
            });
        }
        // More may be due: come back as soon as the limiter allows.
        Ok(poller.next_start(started).max(now + 1))
    }

    /// Claims due jobs into `ready`: about a quarter second of calls, at most `room`.
    async fn claim(&mut self, now: i64, room: usize) -> Result<(), StoreError> {
        let poller = &self.poller;
        // The lease outlives the call's timeout (and the wait for a slot); after a crash,
        // start-up releases it.
        let lease_until = now + millis(poller.client_timeout) + 60_000;
        // Every fourth claim serves the regular schedule first, so a flood of webhook
        // "look now" requests cannot starve jobs whose webhook never came.
        self.claims = self.claims.wrapping_add(1);
        let scheduled_first = self.claims % 4 == 0;
        let size = poller.claim_size(now, room);
        let limit = u32::try_from(size).unwrap_or(u32::MAX);
        let claimed = poller
            .store
            .claim_due(now, lease_until, limit, scheduled_first)
            .await?;
        self.ready.extend(claimed);
        Ok(())
    }

    /// Nothing is due: when the next poll is (the floor wakes the loop in any case).
    async fn idle_until(&self, now: i64) -> Result<i64, StoreError> {
        let next_due = self.poller.store.next_due().await?.unwrap_or(i64::MAX);
        Ok(next_due.min(now + IDLE_WAKE_MS).max(now + 1))
    }

    /// Waits for every call in flight to finish and be recorded, and gives back the claimed
    /// jobs no call was made for, so they are due again at once (for another replica too).
    pub async fn drain(&mut self) {
        while self.in_flight.join_next().await.is_some() {}
        self.give_back().await;
    }

    /// Releases the claimed jobs no call was made for: due again at once.
    async fn give_back(&mut self) {
        if !self.slotted.is_empty() {
            let slots: Vec<i64> = self.slotted.iter().map(|s| s.at).collect();
            self.ready.extend(self.slotted.drain(..).map(|s| s.job));
            if let Some(shared) = &self.poller.shared {
                self.poller.give_back_slots(shared, slots).await;
            }
        }
        if self.ready.is_empty() {
            return;
        }
        let pks: Vec<i64> = self.ready.drain(..).map(|job| job.pk).collect();
        let now = self.poller.clock.now_ms();
        if let Err(err) = self.poller.store.release_claims(&pks, now).await {
            // Their leases run out by themselves; only the wait is longer.
            tracing::warn!(error = %err, jobs = pks.len(), "cannot give back claimed polls");
        }
    }

    /// Runs until `shutdown`, then lets the calls in flight finish.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let clock = self.poller.clock.clone();
        let wake = self.poller.wake.clone();
        // Another replica's hold, pause or resume wakes the loop, which then looks at it.
        let mut pace_news = self.poller.shared.as_ref().map(|s| s.pace.announcements());
        let mut backoff = crate::retry::Backoff::default();
        loop {
            // Anything scheduled from here on wakes the sleep below, even if it lands between
            // the step's read of the schedule and the sleep.
            wake.reading();
            let now = clock.now_ms();
            let wake_at = match self.step(now).await {
                Ok(at) => {
                    if backoff.failures() > 0 {
                        tracing::info!("the reconciler reads its schedule again");
                    }
                    backoff.succeeded();
                    at
                }
                Err(err) => {
                    let wait = backoff.failed();
                    tracing::warn!(error = %err, wait_ms = wait, "reconciler cannot read its schedule; retrying");
                    now + wait
                }
            };
            wake.plan(wake_at);
            // From the time the step ended: it may have waited for the database.
            let wait = wake_at - clock.now_ms();
            let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = wake.woken() => {}
                _ = announced(&mut pace_news) => {}
                Some(_) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {}
            }
        }
        self.drain().await;
    }
}

/// Resolves when another replica announces a change to the shared pace; never without one.
async fn announced(news: &mut Option<watch::Receiver<u64>>) {
    if let Some(news) = news {
        if news.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}
