//! The output archive (SPEC §10): copies every completed job's files to storage the user owns,
//! because Pictory deletes them after a while.
//!
//! Tasks live in the database (`archive_files`), written in the transaction that completes the
//! job, so a crash loses none. This loop leases due files (as the reconciler leases polls, so
//! replicas never copy the same file at once), copies each with [`Copier`] while renewing its
//! lease, and records the result; transient failures come back with backoff.

mod copy;
mod location;

pub use copy::{Copied, Copier, CopyError};
pub use location::ArchiveLocation;

use crate::changes::Changes;
use crate::domain::archive::{FileStatus, MAX_ATTEMPTS};
use crate::domain::time::Clock;
use crate::domain::JobStatus;
use crate::metrics::{Metrics, ResultLabel};
use crate::store::{ArchiveResult, ArchiveTask, Store};
use object_store::{ObjectStore, ObjectStoreExt};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long one attempt holds its file before another archiver may take it; renewed every
/// third of it while the download runs, so only a stopped process lets it run out.
const LEASE_MS: i64 = 120_000;
/// The longest the loop sleeps without looking at the schedule (a lost wake-up delays, never
/// loses; a test's clock may also jump).
const LOOK_AGAIN: Duration = Duration::from_secs(1);
/// The shortest pause between two looks (files due but claimed by another replica meanwhile
/// must not make this loop spin).
const MIN_WAIT: Duration = Duration::from_millis(20);
/// The first retry's delay; it doubles per attempt up to [`MAX_RETRY_MS`], with jitter.
const FIRST_RETRY_MS: i64 = 5_000;
const MAX_RETRY_MS: i64 = 30 * 60_000;

/// How long a readiness probe's write to the store is trusted before it is made again (probes
/// come every few seconds; a write per probe would cost money on S3).
const PROBE_FOR: Duration = Duration::from_secs(30);
/// The object readiness probes write.
const PROBE_KEY: &str = ".jobhook-ready";

/// The archive a running service writes to, shared by the loop and the API that serves files.
pub struct Archive {
    pub store: Arc<dyn ObjectStore>,
    pub location: ArchiveLocation,
    /// Wakes the loop (a job archived again, a test's clock moved).
    pub wake: Notify,
    /// The last probe write: when, and what it found.
    probed: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

impl Archive {
    pub fn open(url: &str) -> anyhow::Result<Archive> {
        let location = ArchiveLocation::parse(url).map_err(anyhow::Error::msg)?;
        let store = location
            .open()
            .map_err(|why| anyhow::anyhow!("configuration key `archive.url`: {why}"))?;
        Ok(Archive {
            store,
            location,
            wake: Notify::new(),
            probed: tokio::sync::Mutex::default(),
        })
    }

    /// Whether the store takes a write (for `/readyz`), tried at most every [`PROBE_FOR`].
    pub async fn writable(&self) -> Result<(), String> {
        let mut probed = self.probed.lock().await;
        if let Some((at, found)) = probed.as_ref() {
            if at.elapsed() < PROBE_FOR {
                return found.clone();
            }
        }
        let location = object_store::path::Path::from(PROBE_KEY);
        let write = self.store.put(&location, "ready".into());
        let found = match tokio::time::timeout(Duration::from_secs(10), write).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("no answer within 10 s".to_owned()),
        };
        *probed = Some((std::time::Instant::now(), found.clone()));
        found
    }
}

/// The loop that copies files.
pub struct Archiver {
    pub archive: Arc<Archive>,
    pub copier: Arc<Copier>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub changes: Changes,
    pub metrics: Arc<Metrics>,
    /// Downloads at once (`archive.concurrency`).
    pub concurrency: usize,
}

impl Archiver {
    /// Copies due files until `stop`; downloads still running then are dropped (their leases
    /// free them for the next start, which copies them again from the beginning).
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.concurrency));
        let mut running = JoinSet::new();
        let mut completions = this.changes.subscribe();
        let mut listening = true;
        loop {
            let free = slots.available_permits();
            let now = this.clock.now_ms();
            if free > 0 {
                match this
                    .store
                    .claim_archive_files(now, now + LEASE_MS, free as u32)
                    .await
                {
                    Ok(tasks) => {
                        for task in tasks {
                            let Ok(slot) = slots.clone().try_acquire_owned() else {
                                break;
                            };
                            let this = this.clone();
                            running.spawn(async move {
                                this.attempt(task).await;
                                drop(slot);
                            });
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot claim archive files"),
                }
            }
            // With every slot taken, a finished download is what to wait for.
            let wait = match this.store.next_archive_due().await {
                Ok(Some(due)) if slots.available_permits() > 0 => Duration::from_millis(
                    u64::try_from(due.saturating_sub(this.clock.now_ms())).unwrap_or(0),
                )
                .clamp(MIN_WAIT, LOOK_AGAIN),
                _ => LOOK_AGAIN,
            };
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = stop.cancelled() => {
                        running.shutdown().await;
                        return;
                    }
                    () = &mut sleep => break,
                    () = this.archive.wake.notified() => break,
                    Some(_) = running.join_next(), if !running.is_empty() => break,
                    change = completions.recv(), if listening => match change {
                        // A completed job has files to copy; other changes are not this loop's.
                        Ok(c) if c.status != JobStatus::Completed => {}
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        // The service is going away; the timer keeps the loop going meanwhile.
                        Err(RecvError::Closed) => listening = false,
                    },
                }
            }
        }
    }

    /// One download: copies while holding the lease, then records what happened.
    async fn attempt(&self, task: ArchiveTask) {
        let mut received = 0;
        let copied = tokio::select! {
            copied = self.copier.copy(&task.job_ref, &task.name, &task.source_url, &mut received) => copied,
            () = self.hold_lease(&task) => {
                tracing::info!(job = %task.job_ref, file = %task.name,
                    "archive attempt lost its lease (archived again meanwhile?); dropped");
                return;
            }
        };
        let now = self.clock.now_ms();
        let result = result_of(&task, copied, now, &mut rand::thread_rng());
        let label = ResultLabel {
            result: result_label(&result).to_owned(),
        };
        self.metrics.archive_files.get_or_create(&label).inc();
        self.metrics
            .archive_bytes
            .get_or_create(&label)
            .inc_by(received);
        match &result {
            ArchiveResult::Done { size, .. } => {
                tracing::info!(job = %task.job_ref, file = %task.name, size, "archived")
            }
            ArchiveResult::RetryAt { error, .. } => {
                tracing::warn!(job = %task.job_ref, file = %task.name, attempt = task.attempt,
                    %error, "archive attempt failed; will try again")
            }
            ArchiveResult::GaveUp { status, error } => {
                tracing::warn!(job = %task.job_ref, file = %task.name, status = status.as_str(),
                    %error, "file not archived")
            }
        }
        match self.store.record_archive_file(&task, result, now).await {
            Ok(Some(job)) => self.changes.publish(&job),
            Ok(None) => {}
            // The lease runs out and another attempt copies the file again.
            Err(err) => tracing::warn!(error = %err, "cannot record an archive attempt"),
        }
    }

    /// Renews the lease every third of its length; returns only when it is lost.
    async fn hold_lease(&self, task: &ArchiveTask) {
        loop {
            tokio::time::sleep(Duration::from_millis((LEASE_MS / 3) as u64)).await;
            let until = self.clock.now_ms() + LEASE_MS;
            match self.store.extend_archive_lease(task, until).await {
                Ok(true) => {}
                Ok(false) => return,
                // The database is away: keep copying; recording will tell.
                Err(err) => tracing::warn!(error = %err, "cannot renew an archive lease"),
            }
        }
    }
}

/// What an attempt's outcome means for the file: kept, tried again later, or given up.
fn result_of(
    task: &ArchiveTask,
    copied: Result<Copied, CopyError>,
    now: i64,
    rng: &mut impl Rng,
) -> ArchiveResult {
    match copied {
        Ok(copied) => ArchiveResult::Done {
            key: copied.key,
            size: i64::try_from(copied.size).unwrap_or(i64::MAX),
            sha256: copied.sha256,
            content_type: copied.content_type,
        },
        Err(CopyError::Gone(error)) => ArchiveResult::GaveUp {
            status: FileStatus::Gone,
            error,
        },
        Err(CopyError::TooLarge(error)) => ArchiveResult::GaveUp {
            status: FileStatus::TooLarge,
            error,
        },
        Err(CopyError::Refused(error)) => ArchiveResult::GaveUp {
            status: FileStatus::Failed,
            error,
        },
        Err(CopyError::Transient(error)) if task.attempt >= MAX_ATTEMPTS => ArchiveResult::GaveUp {
            status: FileStatus::Failed,
            error: format!("gave up after {} attempts: {error}", task.attempt),
        },
        Err(CopyError::Transient(error)) => ArchiveResult::RetryAt {
            at: now + retry_delay(task.attempt, rng),
            error,
        },
    }
}

/// The delay after failed attempt number `attempt`: between half and all of
/// `FIRST_RETRY_MS * 2^(attempt-1)`, at most [`MAX_RETRY_MS`].
fn retry_delay(attempt: i64, rng: &mut impl Rng) -> i64 {
    let exponent = u32::try_from((attempt - 1).clamp(0, 20)).unwrap_or(20);
    let ceiling = FIRST_RETRY_MS
        .saturating_mul(1_i64 << exponent)
        .min(MAX_RETRY_MS);
    rng.gen_range(ceiling / 2..=ceiling)
}

fn result_label(result: &ArchiveResult) -> &'static str {
    match result {
        ArchiveResult::Done { .. } => "done",
        ArchiveResult::RetryAt { .. } => "retrying",
        ArchiveResult::GaveUp { status, .. } => status.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn task(attempt: i64) -> ArchiveTask {
        ArchiveTask {
            job_pk: 1,
            job_ref: "j".into(),
            name: "video".into(),
            source_url: "http://cdn/v.mp4".into(),
            attempt,
            claim: "c".into(),
        }
    }

    #[test]
    fn retries_back_off_and_stop_after_the_last_attempt() {
        let mut rng = StdRng::seed_from_u64(7);
        let transient = || Err(CopyError::Transient("503".into()));
        let ArchiveResult::RetryAt { at, .. } = result_of(&task(1), transient(), 1000, &mut rng)
        else {
            panic!("a first failure is tried again")
        };
        assert!((1000 + 2_500..=1000 + 5_000).contains(&at), "{at}");
        let ArchiveResult::RetryAt { at, .. } = result_of(&task(3), transient(), 0, &mut rng)
        else {
            panic!("a third failure is tried again")
        };
        assert!((10_000..=20_000).contains(&at), "{at}");
        assert!(retry_delay(30, &mut rng) <= MAX_RETRY_MS);
        let ArchiveResult::GaveUp { status, error } =
            result_of(&task(MAX_ATTEMPTS), transient(), 0, &mut rng)
        else {
            panic!("the last attempt gives up")
        };
        assert_eq!(status, FileStatus::Failed);
        assert!(error.contains("gave up after 8 attempts"), "{error}");
    }

    #[test]
    fn gone_and_too_large_are_final_at_once() {
        let mut rng = StdRng::seed_from_u64(7);
        for (error, expected) in [
            (CopyError::Gone("404".into()), FileStatus::Gone),
            (CopyError::TooLarge("big".into()), FileStatus::TooLarge),
            (CopyError::Refused("403".into()), FileStatus::Failed),
        ] {
            let ArchiveResult::GaveUp { status, .. } = result_of(&task(1), Err(error), 0, &mut rng)
            else {
                panic!("not retried")
            };
            assert_eq!(status, expected);
        }
    }
}
