//! How long a background loop waits after a round that failed (the database is away): one
//! second, doubling up to a few, so an outage is neither hammered nor waited out for long.

/// The first wait after a failure, in ms.
const FIRST_MS: i64 = 1_000;
/// The longest wait: once the database is back, a loop resumes within this.
const MOST_MS: i64 = 5_000;

/// Failures in a row, and the wait they call for.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Another failure: how long to wait (ms) before the next round.
    pub fn failed(&mut self) -> i64 {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(8);
        (FIRST_MS << doublings).min(MOST_MS)
    }

    /// A round went through: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_to_a_cap_and_start_over_after_a_success() {
        let mut backoff = Backoff::default();
        let waits: Vec<i64> = (0..5).map(|_| backoff.failed()).collect();
        assert_eq!(waits, [1_000, 2_000, 4_000, 5_000, 5_000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), 1_000);
    }
}
