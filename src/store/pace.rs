//! The Get Job pace several replicas share (SPEC §9: `reconcile.rate` is global).
//!
//! On PostgreSQL the rate limiter's state lives in one row, `pictory_pace`: the recent call
//! slots, the next slot of the even spread, a `429`'s hold, the halved rate and its climb, and an
//! auth pause. A replica changes it only inside a transaction that holds the row's lock, so the
//! replicas draw their call slots from one schedule, and a `429` or a `401` seen by one holds
//! every one of them. The arithmetic is the in-process limiter's own
//! ([`crate::reconcile::limiter`]); the store only keeps the state and runs a change under the
//! lock. SQLite has no such row: one process owns the database, and its limiter is in memory.

use super::StoreError;
use async_trait::async_trait;

/// The shared limiter state (see [`crate::reconcile::limiter::RateLimiter`] for the meaning of
/// each field). Times are unix milliseconds; `i64::MIN` means "never".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaceState {
    /// The rate in force since `calm_since` (None: never lowered, the configured rate).
    pub effective: Option<i64>,
    pub calm_since: i64,
    pub halved_at: i64,
    /// The most recent call slots, oldest first.
    pub recent: Vec<i64>,
    pub next_slot: i64,
    pub hold_until: i64,
    /// The hold for the next `429` without `Retry-After` (None: the first, one second).
    pub blind_hold_ms: Option<i64>,
    /// Set while Pictory refuses the API key: every replica stops polling but for one probe
    /// per interval.
    pub pause: Option<PauseState>,
}

impl Default for PaceState {
    fn default() -> Self {
        PaceState {
            effective: None,
            calm_since: i64::MIN,
            halved_at: i64::MIN,
            recent: Vec::new(),
            next_slot: i64::MIN,
            hold_until: i64::MIN,
            blind_hold_ms: None,
            pause: None,
        }
    }
}

/// Why polling is paused, and when the next probe may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseState {
    pub detail: String,
    pub next_probe_at: i64,
}

/// What a change to the shared state produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaceOutcome {
    /// Call slots granted to the caller.
    pub slots: Vec<i64>,
    /// Tell the other replicas at once (a hold, a pause, a resume), rather than letting them
    /// find out at their next reservation.
    pub announce: bool,
}

/// A change applied to the shared state under its lock.
pub type PaceChange = Box<dyn FnOnce(&mut PaceState) -> PaceOutcome + Send>;

/// The shared pace of a database several replicas use.
#[async_trait]
pub trait SharedPace: Send + Sync {
    /// The state as it is now.
    async fn read(&self) -> Result<PaceState, StoreError>;
    /// Runs `change` on the state under the row's lock and commits; returns the state after it
    /// and what the change produced.
    async fn update(&self, change: PaceChange) -> Result<(PaceState, PaceOutcome), StoreError>;
    /// Ticks whenever another replica announces a change (or announcements may have been
    /// lost), so a waiting reconciler looks again.
    fn announcements(&self) -> tokio::sync::watch::Receiver<u64>;
}
