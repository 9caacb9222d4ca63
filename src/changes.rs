//! In-process fan-out of job changes, and the cache of rendered jobs they invalidate.
//!
//! Every write that touches a job publishes it here after the commit; a long-poll re-reads its
//! job only when that job changed (or when it fell behind and cannot know), the cache of
//! rendered job JSON drops the job before anyone is told, and the reconciler is woken when the
//! job's next poll comes sooner than it planned to look.

use crate::domain::{Job, JobStatus};
use crate::reconcile::wake::PollWake;
use crate::sync::lock;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Changes buffered per subscriber before it is told it lagged.
const CAPACITY: usize = 4096;
/// Rendered jobs kept; past this the cache starts over (cheap, and never wrong).
const CACHE_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobChange {
    pub pk: i64,
    pub status: JobStatus,
}

#[derive(Debug, Clone)]
pub struct Changes {
    sender: broadcast::Sender<JobChange>,
    cache: Arc<RenderedJobs>,
    poll_wake: Arc<PollWake>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes::new()
    }
}

/// Job JSON by the id it was asked for, with the generation it was read at.
#[derive(Debug, Default)]
struct RenderedJobs {
    /// Bumped by every change; a read that saw an older generation is not cached.
    generation: AtomicU64,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_id: HashMap<String, (i64, Bytes)>,
    ids_of: HashMap<i64, Vec<String>>,
}

impl Changes {
    pub fn new() -> Changes {
        Changes {
            sender: broadcast::channel(CAPACITY).0,
            cache: Arc::default(),
            poll_wake: Arc::default(),
        }
    }

    /// What the reconciler sleeps on (see [`PollWake`]).
    pub fn poll_wake(&self) -> Arc<PollWake> {
        self.poll_wake.clone()
    }

    pub fn publish(&self, job: &Job) {
        {
            let mut entries = lock(&self.cache.entries);
            self.cache.generation.fetch_add(1, Ordering::SeqCst);
            // A continuation's parent lists it among its children by its id, which changes
            // when Pictory gives one: the parent's rendering goes too.
            for pk in std::iter::once(job.pk).chain(job.parent_pk) {
                if let Some(ids) = entries.ids_of.remove(&pk) {
                    for id in ids {
                        entries.by_id.remove(&id);
                    }
                }
            }
        }
        if let Some(at) = job.next_poll_at {
            self.poll_wake.due_at(at);
        }
        // No subscriber is fine: nobody is waiting.
        let _ = self.sender.send(JobChange {
            pk: job.pk,
            status: job.status,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobChange> {
        self.sender.subscribe()
    }

    /// The generation to pass to [`Changes::remember`] for a read starting now.
    pub fn generation(&self) -> u64 {
        self.cache.generation.load(Ordering::SeqCst)
    }

    /// The rendered job last remembered under `id`, if nothing changed it since.
    pub fn cached(&self, id: &str) -> Option<Bytes> {
        lock(&self.cache.entries)
            .by_id
            .get(id)
            .map(|(_, json)| json.clone())
    }

    /// Keeps a rendered job, unless any job changed since `generation` (the read may be stale).
    pub fn remember(&self, id: &str, pk: i64, json: Bytes, generation: u64) {
        let mut entries = lock(&self.cache.entries);
        if self.cache.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if entries.by_id.len() >= CACHE_ENTRIES {
            entries.by_id.clear();
            entries.ids_of.clear();
        }
        entries.by_id.insert(id.to_owned(), (pk, json));
        entries.ids_of.entry(pk).or_default().push(id.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Job;

    fn job(pk: i64) -> Job {
        Job::pending_for_tests(pk)
    }

    #[test]
    fn a_change_drops_the_job_under_every_id_it_was_cached_by() {
        let changes = Changes::new();
        let generation = changes.generation();
        changes.remember("j1", 1, Bytes::from_static(b"one"), generation);
        changes.remember("sub-1", 1, Bytes::from_static(b"one"), generation);
        changes.remember("j2", 2, Bytes::from_static(b"two"), generation);
        assert_eq!(changes.cached("sub-1").as_deref(), Some(&b"one"[..]));
        changes.publish(&job(1));
        assert_eq!(changes.cached("j1"), None);
        assert_eq!(changes.cached("sub-1"), None);
        assert_eq!(changes.cached("j2").as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn a_change_of_a_continuation_drops_its_parent_too() {
        let changes = Changes::new();
        let generation = changes.generation();
        changes.remember("parent", 1, Bytes::from_static(b"p"), generation);
        changes.remember("other", 3, Bytes::from_static(b"o"), generation);
        let child = Job {
            parent_pk: Some(1),
            ..job(2)
        };
        changes.publish(&child);
        assert_eq!(changes.cached("parent"), None);
        assert_eq!(changes.cached("other").as_deref(), Some(&b"o"[..]));
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_cached() {
        let changes = Changes::new();
        let generation = changes.generation();
        // A write commits and publishes between the read and its remember().
        changes.publish(&job(1));
        changes.remember("j1", 1, Bytes::from_static(b"stale"), generation);
        assert_eq!(changes.cached("j1"), None);
    }
}
