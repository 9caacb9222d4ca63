//! Locking shared in-process state.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, keeping on with its data if a panic poisoned it: every mutex in jobhook
/// guards plain data (caches, counters, queues) that stays usable after a panic elsewhere.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
