//! In-process fan-out of job changes, so long-polls wait without asking the database.
//!
//! Every write that touches a job publishes it here after the commit; a waiter re-reads its job
//! only when that job changed (or when it fell behind and cannot know).

use crate::domain::{Job, JobStatus};
use tokio::sync::broadcast;

/// Changes buffered per subscriber before it is told it lagged.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobChange {
    pub pk: i64,
    pub status: JobStatus,
}

#[derive(Debug, Clone)]
pub struct Changes {
    sender: broadcast::Sender<JobChange>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes::new()
    }
}

impl Changes {
    pub fn new() -> Changes {
        Changes {
            sender: broadcast::channel(CAPACITY).0,
        }
    }

    pub fn publish(&self, job: &Job) {
        // No subscriber is fine: nobody is waiting.
        let _ = self.sender.send(JobChange {
            pk: job.pk,
            status: job.status,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobChange> {
        self.sender.subscribe()
    }
}
