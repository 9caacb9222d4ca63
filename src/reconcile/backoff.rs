//! When to ask Pictory again: exponential backoff with full jitter, the deadline, `Retry-After`.

use crate::config::ReconcileConfig;
use crate::domain::time::millis;
use rand::Rng;
use std::time::Duration;

/// The delay before poll number `polls_made + 1`: uniform between `interval` and
/// `min(max_interval, interval * 2^polls_made)`.
pub fn next_delay(config: &ReconcileConfig, polls_made: i64, rng: &mut impl Rng) -> i64 {
    let interval = millis(config.interval).max(1);
    let max = millis(config.max_interval).max(interval);
    let exponent = u32::try_from(polls_made.clamp(0, 32)).unwrap_or(32);
    let ceiling = interval.saturating_mul(1_i64 << exponent).min(max);
    rng.gen_range(interval..=ceiling)
}

/// When the next poll happens after one at `now`, never later than the deadline, never earlier
/// than a `Retry-After` allows.
pub fn next_poll_at(
    config: &ReconcileConfig,
    created_at: i64,
    polls_made: i64,
    now: i64,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> i64 {
    let mut delay = next_delay(config, polls_made, rng);
    if let Some(wait) = retry_after {
        delay = delay.max(millis(wait));
    }
    let deadline = deadline_at(config, created_at);
    now.saturating_add(delay).min(deadline.max(now))
}

pub fn deadline_at(config: &ReconcileConfig, created_at: i64) -> i64 {
    created_at.saturating_add(millis(config.deadline))
}

pub fn first_poll_at(config: &ReconcileConfig, now: i64) -> i64 {
    now.saturating_add(millis(config.grace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn config() -> ReconcileConfig {
        ReconcileConfig {
            grace: Duration::from_secs(120),
            interval: Duration::from_secs(15),
            max_interval: Duration::from_secs(300),
            deadline: Duration::from_secs(7200),
            rate: 5,
        }
    }

    #[test]
    fn delays_grow_exponentially_within_full_jitter_bounds() {
        let config = config();
        let mut rng = StdRng::seed_from_u64(7);
        for polls in 0..12 {
            let ceiling = (15_000_i64 << polls).min(300_000);
            let samples: Vec<i64> = (0..500)
                .map(|_| next_delay(&config, polls, &mut rng))
                .collect();
            assert!(
                samples.iter().all(|&d| (15_000..=ceiling).contains(&d)),
                "poll {polls}"
            );
            // Full jitter: the samples spread over the range, not bunched at one end.
            let max = *samples.iter().max().unwrap();
            if ceiling > 15_000 {
                assert!(
                    max > 15_000 + (ceiling - 15_000) * 8 / 10,
                    "poll {polls}: max {max}"
                );
            }
        }
    }

    #[test]
    fn retry_after_and_deadline_bound_the_next_poll() {
        let config = config();
        let mut rng = StdRng::seed_from_u64(1);
        let next = next_poll_at(
            &config,
            0,
            0,
            1_000,
            Some(Duration::from_secs(600)),
            &mut rng,
        );
        assert_eq!(next, 601_000);
        let near_deadline = 7_200_000 - 5_000;
        let next = next_poll_at(&config, 0, 20, near_deadline, None, &mut rng);
        assert_eq!(next, 7_200_000, "the last poll happens at the deadline");
        let past = next_poll_at(&config, 0, 20, 8_000_000, None, &mut rng);
        assert_eq!(past, 8_000_000);
    }
}
