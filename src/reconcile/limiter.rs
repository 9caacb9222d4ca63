//! The one rate limit all Get Job calls share: at most `rate` calls in any one-second window,
//! bursts included, spread evenly (one every `1/rate` s) rather than fired in bursts. Time is
//! passed in (unix ms), so the limiter is exact under test.

use std::collections::VecDeque;

/// Window length; a call exactly one window after another is still inside it (closed window).
const WINDOW_MS: i64 = 1000;

#[derive(Debug)]
pub struct RateLimiter {
    rate: usize,
    /// Calls are spread evenly: at least this long between two starts.
    spacing_ms: i64,
    /// Start times of the most recent calls, oldest first, at most `rate` of them.
    recent: VecDeque<i64>,
    /// No call before this (a 429's Retry-After holds everyone back).
    hold_until: i64,
}

impl RateLimiter {
    pub fn new(rate: u32) -> Self {
        let rate = rate.max(1) as usize;
        RateLimiter {
            rate,
            spacing_ms: WINDOW_MS / rate as i64,
            recent: VecDeque::with_capacity(rate),
            hold_until: i64::MIN,
        }
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
        true
    }

    /// How many calls could start at `now`: at most one, since calls are spread evenly.
    pub fn available(&self, now: i64) -> usize {
        usize::from(self.free_at(now) <= now)
    }

    /// The earliest time (≥ now) at which a call may start.
    pub fn free_at(&self, now: i64) -> i64 {
        let window_free = if self.recent.len() < self.rate {
            now
        } else {
            // The oldest of the last `rate` calls must have left the closed window.
            self.recent
                .front()
                .map_or(now, |&oldest| (oldest + WINDOW_MS + 1).max(now))
        };
        let spaced = self
            .recent
            .back()
            .map_or(now, |&last| last + self.spacing_ms);
        window_free.max(spaced).max(self.hold_until)
    }

    /// Moves the slot taken at `taken_at` to `started_at`, when its call really starts. The
    /// limit holds for the calls as they are sent: work between taking a slot and sending (a
    /// database write that waits for the disk) would otherwise let two calls land closer than
    /// the limiter counted.
    pub fn restamp(&mut self, taken_at: i64, started_at: i64) {
        if let Some(last) = self.recent.back_mut().filter(|last| **last == taken_at) {
            *last = started_at.max(taken_at);
        }
    }

    /// Returns a slot taken at `at` that was not used.
    pub fn give_back(&mut self, at: i64) {
        if self.recent.back() == Some(&at) {
            self.recent.pop_back();
        }
    }

    /// Holds every call back until `until` (a 429's Retry-After).
    pub fn hold(&mut self, until: i64) {
        self.hold_until = self.hold_until.max(until);
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
        let mut limiter = RateLimiter::new(5);
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
        // And the rate is sustained: 1000 calls at 5 per second take about 200 seconds.
        let elapsed = calls.last().unwrap() - calls.first().unwrap();
        assert!((199_000..=200_500).contains(&elapsed), "{elapsed} ms");
    }

    #[test]
    fn calls_that_start_late_are_counted_when_they_start() {
        let mut limiter = RateLimiter::new(5);
        let mut sent = Vec::new();
        let mut now = 0;
        for delay in [0, 90, 0, 0, 0, 0, 0, 0, 0, 0, 0] {
            now = limiter.free_at(now);
            assert!(limiter.try_acquire(now));
            // The call goes out `delay` ms after its slot (a claim that waited for the disk).
            limiter.restamp(now, now + delay);
            sent.push(now + delay);
        }
        assert_eq!(busiest_window(&sent), 5, "sent at {sent:?}");
        assert!(sent.windows(2).all(|w| w[1] - w[0] >= 200), "{sent:?}");
    }

    #[test]
    fn hold_blocks_everyone_until_it_ends() {
        let mut limiter = RateLimiter::new(5);
        limiter.hold(10_000);
        assert_eq!(limiter.available(9_999), 0);
        assert!(!limiter.try_acquire(9_999));
        assert_eq!(limiter.free_at(0), 10_000);
        assert!(limiter.try_acquire(10_000));
    }

    proptest! {
        #[test]
        fn any_call_pattern_stays_within_the_rate(
            rate in 1u32..20,
            attempts in proptest::collection::vec(0i64..400, 1..300)
        ) {
            let mut limiter = RateLimiter::new(rate);
            let mut now = 0;
            let mut calls = Vec::new();
            for gap in attempts {
                now += gap;
                if limiter.try_acquire(now) {
                    calls.push(now);
                }
            }
            prop_assert!(busiest_window(&calls) <= rate as usize);
        }
    }
}
