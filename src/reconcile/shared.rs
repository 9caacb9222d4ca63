//! Get Job calls paced by one schedule that every replica shares (PostgreSQL, SPEC §9).
//!
//! `reconcile.rate` counts all replicas' calls together, and a `429`'s hold or an auth pause
//! seen by one replica holds every one. The limiter's state lives in one database row
//! ([`crate::store::pace`]); a replica that has claimed due jobs reserves call slots for them
//! from it, in one short transaction per batch, and starts each call at its slot. The slots
//! come from the same arithmetic as the in-process limiter (even spread, closed one-second
//! window, halving and holds), run on the shared state under the row's lock, so the calls of all
//! replicas form one evenly spread sequence that never puts more than `rate` calls in a window.
//!
//! Why slots rather than a leader that makes every call: no replica is special, so a replica
//! that dies costs no failover delay (the others go on drawing slots), and a manual refresh
//! on any replica takes a slot like any poll.
//!
//! What a shared schedule adds, and how it is kept safe:
//! - A call cannot start exactly at its slot. It may start up to [`WINDOW_MARGIN_MS`] late, and
//!   the window a slot must leave before another takes its place is widened by as much; a call
//!   that would start later than that is not made (the job waits for a new slot). The slot
//!   reservation asks for slots a little ahead of now (as long as the last reservation took),
//!   so its own round trip does not make the first slot late.
//! - The replicas' clocks must agree (NTP keeps them within a millisecond or two; the margin
//!   covers that much).
//! - A `429` or a `401` is written to the row and announced (`NOTIFY`); every replica's loop
//!   wakes, re-reads the row, and drops the slots the hold or the pause covers. Calls already
//!   started are like calls in flight in one process. A lost announcement is caught at the next
//!   reservation, at most [`RESERVE_AHEAD_MS`] later.
//! - A success is not written per call: the next write starts the doubling blind holds over.

use super::limiter::RateLimiter;
use super::{AuthPause, Poller, Reconciler, RefreshError, IDLE_WAKE_MS, MAX_IN_FLIGHT};
use crate::domain::time::millis;
use crate::pictory::GetJob;
use crate::store::{
    Claimed, PaceChange, PaceOutcome, PaceState, PauseState, SharedPace, StoreError,
};
use crate::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How late a call may start after its slot; the shared window is widened by as much. Wide
/// enough for a timer that wakes late on a busy machine and for the replicas' clocks to differ
/// by a few milliseconds; it costs 2.5 % of the rate (`rate` calls per 1,026 ms).
pub const WINDOW_MARGIN_MS: i64 = 25;
/// Slots are reserved at most this far ahead: far enough that three replicas each find slots
/// for a quarter second of calls, near enough that a hold announced meanwhile voids little.
const RESERVE_AHEAD_MS: i64 = 500;
/// The most a reservation asks ahead for its own round trip.
const MAX_LEAD_MS: i64 = WINDOW_MARGIN_MS;

/// This replica's handle on the shared pace.
pub(super) struct Shared {
    pub(super) pace: Arc<dyn SharedPace>,
    /// A call got through since this replica last wrote the row: its next write starts the
    /// blind holds over (a write per successful call would cost a transaction per call).
    succeeded: AtomicBool,
    /// How long the last reservation took (ms): the next one asks for slots that far ahead.
    lead_ms: AtomicI64,
}

impl Shared {
    pub(super) fn new(pace: Arc<dyn SharedPace>) -> Shared {
        Shared {
            pace,
            succeeded: AtomicBool::new(false),
            lead_ms: AtomicI64::new(0),
        }
    }
}

/// A claimed job and the slot its call starts at.
pub(super) struct Slotted {
    pub(super) at: i64,
    pub(super) job: Claimed,
    /// Granted while polling was paused: the one probe, which the pause does not void.
    probe: bool,
}

/// What a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The reconciler's polls: while paused, only one probe per interval, for all replicas.
    Poll,
    /// A manual refresh: inside the rate limit and any `429` hold, as in one process.
    Refresh,
}

impl Poller {
    /// Makes the in-memory limiter and pause mirror the shared state (for `/readyz`, the
    /// metrics, the claim size and when to look again).
    fn mirror(&self, state: &PaceState) {
        *lock(&self.limiter) = self.limiter_over(state);
        *lock(&self.pause) = state.pause.as_ref().map(|p| AuthPause {
            detail: p.detail.clone(),
            next_probe_at: p.next_probe_at,
        });
    }

    fn limiter_over(&self, state: &PaceState) -> RateLimiter {
        RateLimiter::shared(
            self.config.rate,
            millis(self.config.max_interval),
            WINDOW_MARGIN_MS,
            state,
        )
    }

    /// Reads the shared pace again, so `/readyz` and `/metrics` show what another replica
    /// saw (a no-op when this process alone polls). A failed read keeps the last view.
    pub async fn refresh_pace(&self) {
        if let Some(shared) = &self.shared {
            match shared.pace.read().await {
                Ok(state) => self.mirror(&state),
                Err(err) => tracing::debug!(error = %err, "cannot read the shared Get Job pace"),
            }
        }
    }

    /// Until when a `429`'s hold keeps every call back, as last seen.
    fn held_until(&self, now: i64) -> Option<i64> {
        lock(&self.limiter).held_until(now)
    }

    /// While polling is paused and the next probe is not due: until when, as last seen.
    fn paused_until(&self, now: i64) -> Option<i64> {
        lock(&self.pause)
            .as_ref()
            .map(|p| p.next_probe_at)
            .filter(|&at| at > now)
    }

    /// Until when a hold or an auth pause keeps every call back, as last seen.
    fn blocked_until(&self, now: i64) -> Option<i64> {
        self.held_until(now).max(self.paused_until(now))
    }

    /// The earliest a call could start, as last seen: when to try for a slot again.
    fn free_hint(&self, now: i64) -> i64 {
        let free = lock(&self.limiter).free_at(now);
        free.max(self.blocked_until(now).unwrap_or(now))
    }

    /// Reserves up to `n` slots between now and `now + ahead` from the shared schedule, and
    /// gives back `missed`: slots this replica woke too late for, so made no call at. Given
    /// back they neither count in the window nor hold the even spread back: a reservation slow
    /// enough to miss its own slot (a new process's first, on a cold connection) costs another
    /// reservation, not a whole slot interval (200 ms at the default rate).
    async fn reserve(
        &self,
        shared: &Shared,
        n: usize,
        now: i64,
        ahead: i64,
        purpose: Purpose,
        missed: Vec<i64>,
    ) -> Result<Vec<i64>, StoreError> {
        let lead = shared.lead_ms.load(Ordering::Relaxed);
        let (from, until) = (now + lead, now + ahead.max(lead));
        let interval = millis(self.config.interval);
        let succeeded = shared.succeeded.swap(false, Ordering::Relaxed);
        let (rate, max_hold) = (self.config.rate, millis(self.config.max_interval));
        let change: PaceChange = Box::new(move |state| {
            let mut limiter = RateLimiter::shared(rate, max_hold, WINDOW_MARGIN_MS, state);
            if succeeded {
                limiter.succeeded();
            }
            limiter.give_back(&missed);
            let slots = match (&mut state.pause, purpose) {
                // Paused: one probe per interval, made by whichever replica comes first.
                (Some(pause), Purpose::Poll) => {
                    if from < pause.next_probe_at {
                        Vec::new()
                    } else {
                        let slots = limiter.reserve(from, until, 1);
                        if let Some(&slot) = slots.first() {
                            pause.next_probe_at = slot + interval;
                        }
                        slots
                    }
                }
                _ => limiter.reserve(from, until, n),
            };
            limiter.save(state);
            PaceOutcome {
                slots,
                announce: false,
            }
        });
        let before = self.clock.now_ms();
        let (state, outcome) = shared.pace.update(change).await?;
        let took = self.clock.now_ms() - before;
        shared
            .lead_ms
            .store(took.clamp(0, MAX_LEAD_MS), Ordering::Relaxed);
        self.mirror(&state);
        Ok(outcome.slots)
    }

    /// Returns slots no call was made for (a shutdown, a long hold), so they do not count.
    pub(super) async fn give_back_slots(&self, shared: &Shared, slots: Vec<i64>) {
        if slots.is_empty() {
            return;
        }
        let (rate, max_hold) = (self.config.rate, millis(self.config.max_interval));
        let change: PaceChange = Box::new(move |state| {
            let mut limiter = RateLimiter::shared(rate, max_hold, WINDOW_MARGIN_MS, state);
            limiter.give_back(&slots);
            limiter.save(state);
            PaceOutcome::default()
        });
        match shared.pace.update(change).await {
            Ok((state, _)) => self.mirror(&state),
            // They only make the others wait a little longer.
            Err(err) => tracing::debug!(error = %err, "cannot give back unused call slots"),
        }
    }

    /// Pause on auth failure, resume on success, hold everyone back on 429: in the shared
    /// row, announced to every replica.
    pub(super) async fn observe_shared(
        &self,
        shared: &Shared,
        answer: &GetJob,
        now: i64,
        job_id: &str,
    ) {
        match answer {
            GetJob::Unauthorized {
                http_status,
                detail,
            } => {
                let was_paused = lock(&self.pause).is_some();
                let pause = PauseState {
                    detail: format!("{detail} (HTTP {http_status})"),
                    next_probe_at: now + millis(self.config.interval),
                };
                if !was_paused {
                    tracing::error!(
                        http_status,
                        job_id,
                        "{detail}; all polling is paused, on every replica, until a Get Job call succeeds"
                    );
                }
                let paused = pause.clone();
                let change: PaceChange = Box::new(move |state| {
                    state.pause = Some(paused);
                    PaceOutcome {
                        slots: Vec::new(),
                        announce: true,
                    }
                });
                if let Err(err) = self.write_shared(shared, change).await {
                    tracing::warn!(error = %err, "cannot tell the other replicas that polling is paused");
                    *lock(&self.pause) = Some(AuthPause {
                        detail: pause.detail,
                        next_probe_at: pause.next_probe_at,
                    });
                }
            }
            GetJob::Throttled { retry_after } => {
                let retry_after = retry_after.map(millis);
                let succeeded = shared.succeeded.swap(false, Ordering::Relaxed);
                let (rate, max_hold) = (self.config.rate, millis(self.config.max_interval));
                let change: PaceChange = Box::new(move |state| {
                    let mut limiter = RateLimiter::shared(rate, max_hold, WINDOW_MARGIN_MS, state);
                    if succeeded {
                        limiter.succeeded();
                    }
                    limiter.throttled(now, retry_after);
                    limiter.save(state);
                    PaceOutcome {
                        slots: Vec::new(),
                        announce: true,
                    }
                });
                if let Err(err) = self.write_shared(shared, change).await {
                    tracing::warn!(error = %err, "cannot tell the other replicas about a 429");
                    lock(&self.limiter).throttled(now, retry_after);
                }
                let limiter = lock(&self.limiter);
                tracing::warn!(
                    held_ms = limiter.held_until(now).map_or(0, |until| until - now),
                    effective_rate = limiter.effective_rate(now),
                    "Pictory answered 429; slowing all polls of every replica down"
                );
            }
            _ => {}
        }
        if answer.key_works() {
            shared.succeeded.store(true, Ordering::Relaxed);
            if lock(&self.pause).is_some() {
                self.resume_shared(shared).await;
            }
        }
    }

    /// A call succeeded while polling was paused: resume on every replica.
    async fn resume_shared(&self, shared: &Shared) {
        let resumed = Arc::new(AtomicBool::new(false));
        let flag = resumed.clone();
        let change: PaceChange = Box::new(move |state| {
            let was_paused = state.pause.take().is_some();
            flag.store(was_paused, Ordering::Relaxed);
            PaceOutcome {
                slots: Vec::new(),
                announce: was_paused,
            }
        });
        match self.write_shared(shared, change).await {
            Ok(()) if resumed.load(Ordering::Relaxed) => {
                tracing::info!(
                    "Pictory accepted the API key again; polling resumed on every replica"
                );
            }
            Ok(()) => {}
            Err(err) => {
                tracing::warn!(error = %err, "cannot tell the other replicas that polling resumed");
                *lock(&self.pause) = None;
            }
        }
    }

    async fn write_shared(&self, shared: &Shared, change: PaceChange) -> Result<(), StoreError> {
        let (state, _) = shared.pace.update(change).await?;
        self.mirror(&state);
        Ok(())
    }

    /// Waits for a slot of the shared schedule for a manual refresh, until `give_up_at`.
    pub(super) async fn shared_slot_for_refresh(
        &self,
        shared: &Shared,
        give_up_at: i64,
    ) -> Result<(), RefreshError> {
        let mut missed = Vec::new();
        loop {
            let now = self.clock.now_ms();
            if now >= give_up_at {
                self.give_back_slots(shared, missed).await;
                return Err(RefreshError::RateLimited);
            }
            let slots = self
                .reserve(
                    shared,
                    1,
                    now,
                    give_up_at - now,
                    Purpose::Refresh,
                    std::mem::take(&mut missed),
                )
                .await?;
            let Some(&slot) = slots.first() else {
                return Err(RefreshError::RateLimited);
            };
            let wait = slot - self.clock.now_ms();
            if wait > 0 {
                let wait = u64::try_from(wait).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            if self.clock.now_ms() - slot <= WINDOW_MARGIN_MS {
                return Ok(());
            }
            // Woke too late for the slot (the window counts the call at its slot): another,
            // and this one given back.
            missed.push(slot);
        }
    }
}

impl Reconciler {
    /// [`Reconciler::step`] on a shared schedule: claims due jobs, reserves slots for them,
    /// and starts each call at its slot.
    pub(super) async fn step_shared(&mut self, now: i64) -> Result<i64, StoreError> {
        while self.in_flight.try_join_next().is_some() {}
        let poller = self.poller.clone();
        let Some(shared) = poller.shared.as_ref() else {
            return Ok(now + 1);
        };
        let announced = self
            .pace_news
            .as_mut()
            .is_some_and(|news| news.has_changed().unwrap_or(false));
        if announced {
            if let Some(news) = self.pace_news.as_mut() {
                news.borrow_and_update();
            }
            poller.refresh_pace().await;
        }
        if let Some(until) = poller.blocked_until(now) {
            // A 429's hold voids the slots held here that it covers; a pause voids every slot
            // but the probe it granted itself.
            let held = poller.held_until(now);
            let paused = poller.paused_until(now).is_some();
            self.void_slots(held, paused);
            if self.slotted.is_empty() {
                if until - now > 1_000 {
                    // The claimed jobs must not outlive their leases here.
                    self.give_back().await;
                }
                return Ok(until);
            }
        }
        // A few rounds at most: a slot missed, then a new reservation. Slots missed on the way
        // are given back with that reservation, or once the step ends.
        let mut missed = Vec::new();
        let wake = 'step: {
            for _ in 0..3 {
                if let Some(slot) = self.slotted.front().map(|s| s.at) {
                    if slot > now {
                        break 'step Ok(slot);
                    }
                    let started = poller.clock.now_ms().max(now);
                    if started - slot > WINDOW_MARGIN_MS {
                        // Too late for its slot: no call; the job waits for another slot.
                        if let Some(late) = self.slotted.pop_front() {
                            missed.push(late.at);
                            self.ready.push_front(late.job);
                        }
                        continue;
                    }
                    if self.in_flight.len() >= MAX_IN_FLIGHT {
                        break 'step Ok(now + IDLE_WAKE_MS);
                    }
                    if let Some(Slotted { job, .. }) = self.slotted.pop_front() {
                        let poller = poller.clone();
                        self.in_flight.spawn(async move {
                            if let Err(err) = poller.poll(&job).await {
                                tracing::error!(error = %err, job_id = %job.job_id, "cannot record a poll");
                            }
                        });
                    }
                    let next = self
                        .slotted
                        .front()
                        .map_or_else(|| poller.free_hint(started), |s| s.at);
                    break 'step Ok(next.max(now + 1));
                }
                let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight.len());
                if room == 0 {
                    // The run loop wakes as soon as a call finishes.
                    break 'step Ok(now + IDLE_WAKE_MS);
                }
                if self.ready.is_empty() {
                    self.claim(now, room).await?;
                }
                if self.ready.is_empty() {
                    break 'step self.idle_until(now).await;
                }
                let slots = poller
                    .reserve(
                        shared,
                        self.ready.len(),
                        poller.clock.now_ms().max(now),
                        RESERVE_AHEAD_MS,
                        Purpose::Poll,
                        std::mem::take(&mut missed),
                    )
                    .await?;
                if slots.is_empty() {
                    let free_at = poller.free_hint(now);
                    if free_at - now > 1_000 {
                        self.give_back().await;
                    }
                    break 'step Ok(free_at.max(now + 1));
                }
                // Still paused after the reservation: what it granted is the probe.
                let probe = lock(&poller.pause).is_some();
                for at in slots {
                    if let Some(job) = self.ready.pop_front() {
                        self.slotted.push_back(Slotted { at, job, probe });
                    }
                }
            }
            Ok(now + 1)
        };
        poller.give_back_slots(shared, missed).await;
        wake
    }

    /// Takes from their jobs the slots inside a hold (before `held`) and, while `paused`,
    /// every slot but a probe; the jobs wait for new slots, first in line.
    fn void_slots(&mut self, held: Option<i64>, paused: bool) {
        let mut kept = std::collections::VecDeque::new();
        let mut freed = Vec::new();
        for slotted in self.slotted.drain(..) {
            let void = held.is_some_and(|until| slotted.at < until) || (paused && !slotted.probe);
            if void {
                freed.push(slotted.job);
            } else {
                kept.push_back(slotted);
            }
        }
        self.slotted = kept;
        for job in freed.into_iter().rev() {
            self.ready.push_front(job);
        }
    }
}
