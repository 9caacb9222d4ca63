//! How the reconciler learns that a poll became due sooner than it planned to wake up.
//!
//! Every write that touches a job is announced through [`crate::changes::Changes`] with the
//! job as it now is, `next_poll_at` included, whatever path made it (a registration, a
//! submission, a webhook's "look now", a replay, a poll, a revival). So the announcement is the
//! one place to catch them all: when a job's next poll is earlier than the wake-up the loop is
//! sleeping towards, the loop is woken. No path can forget to do it.

use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::Notify;

#[derive(Debug)]
pub struct PollWake {
    /// When the loop plans to look next; `i64::MAX` while it is working out that time, so
    /// anything scheduled meanwhile wakes it again rather than slipping between its read of the
    /// schedule and its sleep.
    planned: AtomicI64,
    notify: Notify,
}

impl Default for PollWake {
    fn default() -> Self {
        PollWake {
            planned: AtomicI64::new(i64::MAX),
            notify: Notify::new(),
        }
    }
}

impl PollWake {
    /// A job's next poll is now at `at`: wakes the loop when that is before its planned look.
    pub fn due_at(&self, at: i64) {
        if at < self.planned.load(Ordering::SeqCst) {
            // A permit is kept when the loop is not waiting yet, so the wake-up is never lost.
            self.notify.notify_one();
        }
    }

    /// Wakes the loop whatever it planned.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// The loop is reading the schedule: every change from now on wakes it.
    pub fn reading(&self) {
        self.planned.store(i64::MAX, Ordering::SeqCst);
    }

    /// The loop will sleep until `at` unless woken.
    pub fn plan(&self, at: i64) {
        self.planned.store(at, Ordering::SeqCst);
    }

    /// When the loop plans to look next; None while it is reading the schedule.
    pub fn planned(&self) -> Option<i64> {
        Some(self.planned.load(Ordering::SeqCst)).filter(|&at| at != i64::MAX)
    }

    /// Resolves when [`PollWake::due_at`] found a poll due before the plan.
    pub async fn woken(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// Whether the loop's wait would end at once (a wake-up is pending).
    fn woke(wake: &PollWake) -> bool {
        wake.woken().now_or_never().is_some()
    }

    #[test]
    fn a_poll_due_before_the_plan_wakes_the_loop_and_a_later_one_does_not() {
        let wake = PollWake::default();
        wake.plan(1_000);
        wake.due_at(5_000);
        assert!(!woke(&wake), "later than planned: no wake-up");
        wake.due_at(999);
        assert!(woke(&wake), "sooner than planned: woken");
        assert!(!woke(&wake), "one wake-up per nudge");
    }

    #[test]
    fn a_change_while_the_loop_reads_the_schedule_is_not_lost() {
        let wake = PollWake::default();
        wake.plan(1_000);
        wake.reading();
        // Announced after the loop read the schedule, before it chose its next wake-up.
        wake.due_at(50_000);
        wake.plan(60_000);
        assert!(woke(&wake));
    }
}
