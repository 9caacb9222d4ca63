//! The one rate limit all Get Job calls share: at most `rate` calls in any one-second window,
//! bursts included, spread evenly rather than fired in bursts. Time is passed in (unix ms), so
//! the limiter is exact under test.
//!
//! The limit must hold where Pictory counts it, at the calls' arrival, and a call reaches
//! Pictory a few milliseconds after it starts, by an amount that varies (scheduling, a busy
//! machine): `rate` starts spread over exactly one second can arrive within less than one. So
//! the limiter keeps `rate` starts at least [`GUARDED_WINDOW_MS`] apart, and spreads calls over
//! that span: jitter up to the guard cannot push `rate + 1` arrivals into one second, at the cost
//! of 2.5 % of the rate.
//!
//! It adapts when Pictory pushes back (additive increase, multiplicative decrease, as TCP and
//! most API clients do): a `429` halves the effective rate and holds every call back for its
//! `Retry-After`, or, without one, for a hold that doubles with each `429` in a row (from one
//! second up to `max_hold`) until a call gets through. The effective rate then climbs back by
//! one call per second for each second without a `429`, up to the configured rate, which is
//! never exceeded.

use crate::store::PaceState;
use std::collections::VecDeque;

/// Window length; a call exactly one window after another is still inside it (closed window).
const WINDOW_MS: i64 = 1000;
/// The span that `rate` call starts must exceed: the window and a guard against jitter.
const GUARDED_WINDOW_MS: i64 = WINDOW_MS + 25;
/// The first hold for a `429` that does not say how long to wait.
const FIRST_BLIND_HOLD_MS: i64 = 1000;
/// How late a call may start and still keep its slot in the even spread: a timer never wakes
/// exactly on time (tokio's rounds up to the next millisecond), and at 200 calls per second a
/// millisecond lost per call would cost a sixth of the rate.
const LATENESS_MS: i64 = 2;

#[derive(Debug)]
pub struct RateLimiter {
    /// The configured ceiling (`reconcile.rate`).
    rate: usize,
    /// The rate in force since `calm_since`, before the climb since then.
    effective: usize,
    /// Start of the current run of seconds without a `429`.
    calm_since: i64,
    /// When the rate was last halved: `429`s from calls already in flight at that moment are
    /// one signal, not many, so they halve it once.
    halved_at: i64,
    /// Start times of the most recent calls, oldest first, at most `rate` of them.
    recent: VecDeque<i64>,
    /// The slot of the next call in the even spread, in microseconds (at 200 calls per second
    /// the gap is 5.125 ms: whole milliseconds would round it to 6, a sixth of the rate lost).
    next_slot_us: i64,
    /// No call before this (a 429's hold).
    hold_until: i64,
    /// The hold for the next `429` without `Retry-After`.
    blind_hold_ms: i64,
    max_hold_ms: i64,
    /// Added to the window a call must leave before another may take its place: 0 in one
    /// process, where a slot is stamped when its call really starts; a few milliseconds on a
    /// schedule shared by replicas, where a call may start that much after its slot.
    window_margin_ms: i64,
}

impl RateLimiter {
    /// `max_hold_ms` caps the growing hold of repeated `429`s without `Retry-After`.
    pub fn new(rate: u32, max_hold_ms: i64) -> Self {
        let rate = rate.max(1) as usize;
        RateLimiter {
            rate,
            effective: rate,
            calm_since: i64::MIN,
            halved_at: i64::MIN,
            recent: VecDeque::with_capacity(rate),
            next_slot_us: i64::MIN,
            hold_until: i64::MIN,
            blind_hold_ms: FIRST_BLIND_HOLD_MS,
            max_hold_ms: max_hold_ms.max(FIRST_BLIND_HOLD_MS),
            window_margin_ms: 0,
        }
    }

    /// The limiter of several replicas, over their shared `state`: the same arithmetic, with
    /// the closed window widened by `window_margin_ms`, since a replica starts its call a little
    /// after the slot it was given (and a call that would start later than that is not made).
    pub fn shared(rate: u32, max_hold_ms: i64, window_margin_ms: i64, state: &PaceState) -> Self {
        let mut limiter = RateLimiter::new(rate, max_hold_ms);
        limiter.window_margin_ms = window_margin_ms.max(0);
        limiter.effective = state
            .effective
            .and_then(|e| usize::try_from(e).ok())
            .map_or(limiter.rate, |e| e.max(1));
        limiter.calm_since = state.calm_since;
        limiter.halved_at = state.halved_at;
        // A replica with a lower rate than the others keeps the newest of the slots.
        let skip = state.recent.len().saturating_sub(limiter.rate);
        limiter.recent = state.recent.iter().skip(skip).copied().collect();
        limiter.next_slot_us = state.next_slot;
        limiter.hold_until = state.hold_until;
        limiter.blind_hold_ms = state
            .blind_hold_ms
            .unwrap_or(FIRST_BLIND_HOLD_MS)
            .clamp(FIRST_BLIND_HOLD_MS, limiter.max_hold_ms);
        limiter
    }

    /// Writes this limiter's state into `state` (the pause is not the limiter's).
    pub fn save(&self, state: &mut PaceState) {
        state.effective = i64::try_from(self.effective).ok();
        state.calm_since = self.calm_since;
        state.halved_at = self.halved_at;
        state.recent = self.recent.iter().copied().collect();
        state.next_slot = self.next_slot_us;
        state.hold_until = self.hold_until;
        state.blind_hold_ms = Some(self.blind_hold_ms);
    }

    /// Takes up to `n` slots, the first at or after `from`, none after `until`: the slots
    /// are taken as if each call started exactly on time.
    pub fn reserve(&mut self, from: i64, until: i64, n: usize) -> Vec<i64> {
        let mut slots = Vec::new();
        let mut at = from;
        while slots.len() < n {
            at = self.free_at(at);
            if at > until || !self.try_acquire(at) {
                break;
            }
            slots.push(at);
        }
        slots
    }

    /// Gives back slots taken by [`RateLimiter::reserve`] whose calls were never made: they
    /// no longer count in the window, and when no later slot was taken meanwhile the even
    /// spread resumes at the earliest of them.
    pub fn give_back(&mut self, slots: &[i64]) {
        let Some(&earliest) = slots.iter().min() else {
            return;
        };
        self.recent.retain(|at| !slots.contains(at));
        if self.recent.back().is_none_or(|&last| last < earliest) {
            self.next_slot_us = self.next_slot_us.min(earliest.saturating_mul(1000));
        }
    }

    /// The calls per second allowed at `now`.
    pub fn effective_rate(&self, now: i64) -> usize {
        let calm_seconds = now.saturating_sub(self.calm_since).max(0) / WINDOW_MS;
        let climbed = usize::try_from(calm_seconds).unwrap_or(usize::MAX);
        self.effective.saturating_add(climbed).min(self.rate)
    }

    /// Until when a `429` holds every call back (None when no hold is on).
    pub fn held_until(&self, now: i64) -> Option<i64> {
        (self.hold_until > now).then_some(self.hold_until)
    }

    /// Takes a slot at `now` if one is free.
    pub fn try_acquire(&mut self, now: i64) -> bool {
        if self.free_at(now) > now {
            return false;
        }
        if self.recent.len() == self.rate {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        // A call a little late takes the slot it was meant for; a call after a pause starts
        // the spread again from now.
        let now_us = now.saturating_mul(1000);
        let slot = if now_us.saturating_sub(self.next_slot_us) <= LATENESS_MS * 1000 {
            self.next_slot_us
        } else {
            now_us
        };
        self.next_slot_us = slot + self.spacing_us(now);
        true
    }

    /// The gap between two calls at the effective rate: `effective` of them span the guarded
    /// window.
    fn spacing_us(&self, now: i64) -> i64 {
        let effective = self.effective_rate(now).max(1) as i64;
        GUARDED_WINDOW_MS * 1000 / effective
    }

    /// The earliest time (≥ now) at which a call may start.
    pub fn free_at(&self, now: i64) -> i64 {
        let window_free = if self.recent.len() < self.rate {
            now
        } else {
            // The oldest of the last `rate` calls must have left the guarded window.
            self.recent.front().map_or(now, |&oldest| {
                (oldest + GUARDED_WINDOW_MS + 1 + self.window_margin_ms).max(now)
            })
        };
        // The next slot, rounded up to the millisecond.
        let slot = self.next_slot_us.saturating_add(999).div_euclid(1000);
        window_free.max(slot).max(self.hold_until).max(now)
    }

    /// Pictory answered `429` at `now`: halve the rate and hold every call back.
    pub fn throttled(&mut self, now: i64, retry_after_ms: Option<i64>) {
        let current = self.effective_rate(now);
        if now.saturating_sub(self.halved_at) >= WINDOW_MS {
            self.effective = (current / 2).max(1);
            self.halved_at = now;
        } else {
            self.effective = current;
        }
        self.calm_since = now;
        let hold = match retry_after_ms {
            Some(wait) => wait,
            None => {
                let hold = self.blind_hold_ms;
                self.blind_hold_ms = (hold * 2).min(self.max_hold_ms);
                hold
            }
        };
        self.hold_until = self.hold_until.max(now.saturating_add(hold));
    }

    /// A call got through: the next `429` without `Retry-After` starts the holds over.
    pub fn succeeded(&mut self) {
        self.blind_hold_ms = FIRST_BLIND_HOLD_MS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Most calls in any closed one-second window.
    fn busiest_window(calls: &[i64]) -> usize {
        calls
            .iter()
            .map(|&start| {
                calls
                    .iter()
                    .filter(|&&t| t >= start && t <= start + WINDOW_MS)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn a_thousand_calls_never_exceed_the_rate_in_any_window() {
        let mut limiter = RateLimiter::new(5, 3_000);
        let mut now = 0;
        let mut calls = Vec::new();
        while calls.len() < 1000 {
            if limiter.try_acquire(now) {
                calls.push(now);
            } else {
                now = limiter.free_at(now);
            }
        }
        assert_eq!(busiest_window(&calls), 5);
        assert!(
            calls.windows(2).all(|w| w[1] - w[0] >= 200),
            "spread evenly, no bursts"
        );
        // And the rate is sustained: 1000 calls at 5 per guarded window (1.025 s) take about
        // 205 seconds.
        let elapsed = calls.last().unwrap() - calls.first().unwrap();
        assert!((204_000..=205_500).contains(&elapsed), "{elapsed} ms");
    }

    #[test]
    fn calls_that_wake_late_keep_the_rate_without_exceeding_it() {
        // A timer that always fires a millisecond late, at 200 calls per second.
        let mut limiter = RateLimiter::new(200, 3_000);
        let mut now = 0;
        let mut calls = Vec::new();
        while calls.len() < 2_000 {
            if limiter.try_acquire(now) {
                calls.push(now);
            }
            now = limiter.free_at(now) + 1;
        }
        let elapsed = calls.last().unwrap() - calls.first().unwrap();
        // 200 per guarded window: 5.125 ms apart, 2,000 calls in about 10.25 s.
        assert!(
            elapsed <= 10_350,
            "2,000 calls took {elapsed} ms, not ~10.25 s"
        );
        assert!(busiest_window(&calls) <= 200);
        assert!(calls.windows(2).all(|w| w[1] - w[0] >= 5 - LATENESS_MS));
    }

    #[test]
    fn a_429_with_retry_after_holds_everyone_and_halves_the_rate() {
        let mut limiter = RateLimiter::new(20, 3_000);
        assert_eq!(limiter.effective_rate(0), 20);
        limiter.throttled(0, Some(10_000));
        assert_eq!(limiter.held_until(9_999), Some(10_000));
        assert!(!limiter.try_acquire(9_999));
        assert_eq!(limiter.free_at(0), 10_000);
        // Ten calm seconds passed during the hold: 10 + 10 = 20 again, never above.
        assert_eq!(limiter.effective_rate(10_000), 20);
        assert!(limiter.try_acquire(10_000));
        assert_eq!(limiter.held_until(10_000), None);
    }

    #[test]
    fn the_rate_halves_on_a_429_and_climbs_back_one_call_per_clean_second() {
        let mut limiter = RateLimiter::new(20, 3_000);
        limiter.throttled(0, Some(0));
        assert_eq!(limiter.effective_rate(0), 10);
        assert_eq!(limiter.effective_rate(999), 10);
        assert_eq!(limiter.effective_rate(1_000), 11);
        assert_eq!(limiter.effective_rate(5_500), 15);
        // Calls in flight when the first 429 came back are one signal: no second halving.
        limiter.throttled(300, Some(0));
        assert_eq!(limiter.effective_rate(300), 10);
        limiter.throttled(5_500, Some(0));
        assert_eq!(limiter.effective_rate(5_500), 7, "half of 15, rounded down");
        assert_eq!(
            limiter.effective_rate(60_000),
            20,
            "capped at the configured rate"
        );
        // Two 429s a second apart: 20 → 10, climbed to 11 → 5 calls per second.
        let mut limiter = RateLimiter::new(20, 3_000);
        limiter.throttled(0, Some(0));
        limiter.throttled(1_000, Some(0));
        assert!(limiter.try_acquire(1_000));
        assert_eq!(
            limiter.free_at(1_000),
            1_000 + 205,
            "5 calls per second: 205 ms apart (the guarded window)"
        );
        let mut limiter = RateLimiter::new(1, 3_000);
        limiter.throttled(0, Some(0));
        assert_eq!(
            limiter.effective_rate(0),
            1,
            "never below one call per second"
        );
    }

    #[test]
    fn a_429_without_retry_after_holds_for_a_doubling_time_until_a_success() {
        let mut limiter = RateLimiter::new(20, 3_000);
        let mut holds = Vec::new();
        let mut now = 0;
        for _ in 0..4 {
            limiter.throttled(now, None);
            let until = limiter.held_until(now).unwrap();
            holds.push(until - now);
            now = until;
        }
        assert_eq!(
            holds,
            [1_000, 2_000, 3_000, 3_000],
            "doubling, capped at max_interval"
        );
        limiter.succeeded();
        limiter.throttled(now, None);
        assert_eq!(
            limiter.held_until(now),
            Some(now + 1_000),
            "a success starts over"
        );
    }

    #[test]
    fn calls_under_a_storm_of_429s_never_exceed_the_rate_in_any_window() {
        let mut limiter = RateLimiter::new(20, 3_000);
        let mut now = 0;
        let mut calls = Vec::new();
        while calls.len() < 2_000 {
            if limiter.try_acquire(now) {
                calls.push(now);
                // Every third call is refused without Retry-After, the rest get through.
                if calls.len() % 3 == 0 {
                    limiter.throttled(now + 40, None);
                } else {
                    limiter.succeeded();
                }
            } else {
                now = limiter.free_at(now);
            }
        }
        assert!(busiest_window(&calls) <= 20);
    }

    #[test]
    fn the_shared_state_round_trips_and_a_rate_lowered_keeps_the_newest_slots() {
        let mut limiter = RateLimiter::new(4, 3_000);
        // Four calls per guarded window (1.025 s): 256.25 ms apart, rounded up to the ms.
        assert_eq!(limiter.reserve(0, 2_000, 3), [0, 257, 513]);
        limiter.throttled(600, None);
        let mut state = PaceState::default();
        limiter.save(&mut state);
        let again = RateLimiter::shared(4, 3_000, 0, &state);
        let mut saved_again = PaceState::default();
        again.save(&mut saved_again);
        assert_eq!(saved_again, state);
        assert_eq!(again.free_at(600), limiter.free_at(600));
        let lower = RateLimiter::shared(2, 3_000, 0, &state);
        let mut lowered = PaceState::default();
        lower.save(&mut lowered);
        assert_eq!(lowered.recent, [257, 513]);
    }

    #[test]
    fn reserved_slots_follow_the_spread_and_given_back_ones_are_taken_again() {
        let mut limiter = RateLimiter::new(5, 3_000);
        // Five calls per guarded window (1.025 s): 205 ms apart.
        assert_eq!(
            limiter.reserve(0, 500, 10),
            [0, 205, 410],
            "none after `until`"
        );
        // The last two are given back (never called): the spread resumes at the first of them.
        limiter.give_back(&[205, 410]);
        assert_eq!(limiter.reserve(100, 1_000, 2), [205, 410]);
        // A slot given back with a later one kept leaves the spread where it is.
        limiter.give_back(&[205]);
        assert_eq!(limiter.reserve(100, 1_000, 1), [615]);
    }

    proptest! {
        /// Replicas that each reserve slots from one shared state, in any order, and start each
        /// call up to the margin after its slot, never put more than `rate` calls in a window.
        #[test]
        fn replicas_sharing_one_state_stay_within_the_rate(
            rate in 1u32..30,
            rounds in proptest::collection::vec((0usize..3, 1usize..8, 0i64..300, 0i64..=4), 1..200)
        ) {
            let margin = 4;
            let mut state = PaceState::default();
            let mut clocks = [0i64; 3];
            let mut starts = Vec::new();
            for (replica, wanted, gap, late) in rounds {
                clocks[replica] += gap;
                let now = clocks[replica];
                let mut limiter = RateLimiter::shared(rate, 3_000, margin, &state);
                let slots = limiter.reserve(now, now + 500, wanted);
                if wanted % 3 == 0 {
                    limiter.throttled(now, Some(gap));
                }
                limiter.save(&mut state);
                for slot in slots {
                    starts.push(slot + late.min(margin));
                    clocks[replica] = clocks[replica].max(slot);
                }
            }
            starts.sort_unstable();
            prop_assert!(busiest_window(&starts) <= rate as usize);
        }

        #[test]
        fn any_call_pattern_stays_within_the_rate(
            rate in 1u32..20,
            attempts in proptest::collection::vec(0i64..400, 1..300)
        ) {
            let mut limiter = RateLimiter::new(rate, 3_000);
            let mut now = 0;
            let mut calls = Vec::new();
            for (n, gap) in attempts.into_iter().enumerate() {
                now += gap;
                if limiter.try_acquire(now) {
                    calls.push(now);
                    if n % 5 == 0 {
                        limiter.throttled(now, Some((gap % 3) * 100));
                    }
                }
            }
            prop_assert!(busiest_window(&calls) <= rate as usize);
        }
    }
}
