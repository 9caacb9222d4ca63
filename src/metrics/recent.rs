//! Calls counted per second over the last minute: what the dashboard shows as "Get Job calls
//! per minute" beside `reconcile.rate`. A Prometheus counter only ever grows, and its rate
//! needs a scraper; this answers "how many in the last 60 s, and the busiest second" at once.

use crate::sync::lock;
use std::sync::Mutex;

const SECONDS: usize = 60;

/// One slot per second of the last minute, reused as time goes round: `(second, calls)`.
#[derive(Debug)]
pub struct RecentCalls(Mutex<[(i64, u32); SECONDS]>);

impl Default for RecentCalls {
    fn default() -> Self {
        // Second -1 is never "now": every slot starts out of the window.
        RecentCalls(Mutex::new([(-1, 0); SECONDS]))
    }
}

/// What the last minute held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastMinute {
    pub calls: u32,
    pub busiest_second: u32,
}

impl RecentCalls {
    /// Counts one call made at `now_ms`.
    pub fn record(&self, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        let mut slots = lock(&self.0);
        let slot = &mut slots[slot_of(second)];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 = slot.1.saturating_add(1);
    }

    /// The calls of the 60 seconds up to `now_ms` (this one included).
    pub fn last_minute(&self, now_ms: i64) -> LastMinute {
        let now = now_ms.div_euclid(1000);
        let slots = lock(&self.0);
        let recent = slots
            .iter()
            .filter(|(second, _)| *second <= now && now - *second < SECONDS as i64)
            .map(|(_, calls)| *calls);
        let (calls, busiest_second) = recent.fold((0u32, 0u32), |(sum, max), n| {
            (sum.saturating_add(n), max.max(n))
        });
        LastMinute {
            calls,
            busiest_second,
        }
    }
}

fn slot_of(second: i64) -> usize {
    // rem_euclid of a positive modulus is in 0..60.
    usize::try_from(second.rem_euclid(SECONDS as i64)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_sixty_seconds_and_forgets_older_ones() {
        let recent = RecentCalls::default();
        for at in [1_000, 1_100, 1_900, 2_000, 59_999] {
            recent.record(at);
        }
        assert_eq!(
            recent.last_minute(60_000),
            LastMinute {
                calls: 5,
                busiest_second: 3
            }
        );
        // At 61.5 s the second 1 (1.0 to 1.9 s) has left the window; 61 has come in.
        recent.record(61_500);
        assert_eq!(
            recent.last_minute(61_500),
            LastMinute {
                calls: 3,
                busiest_second: 1
            }
        );
        assert_eq!(recent.last_minute(500_000).calls, 0);
    }
}
