//! Prunes raw webhook bodies older than `retention.deliveries`, in small batches so the single
//! SQLite writer is never held long enough to delay ingest. Jobs and their history are kept.

use crate::domain::time::millis;
use crate::http::api::videos::{render_response, twin_wait};
use crate::state::AppState;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Bodies cleared per transaction.
pub const BATCH: u32 = 500;
/// Pause between sweeps once nothing is left to prune.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// How long an Idempotency-Key is remembered.
pub const IDEMPOTENCY_KEY_TTL_MS: i64 = 24 * 3600 * 1000;

/// Forgets idempotency keys older than a day.
pub async fn sweep_keys(state: &AppState) -> u64 {
    let before = state.now_ms().saturating_sub(IDEMPOTENCY_KEY_TTL_MS);
    match state.store.prune_idempotency_keys(before).await {
        Ok(pruned) => pruned,
        Err(err) => {
            tracing::warn!(error = %err, "pruning idempotency keys failed; will retry");
            0
        }
    }
}

/// Settles submissions whose request died before recording the Generate outcome (the process
/// lived on, so start-up recovery did not see them): older than any request can take, they
/// become `submit_unknown`.
pub async fn sweep_submissions(state: &AppState) -> usize {
    let now = state.now_ms();
    // Longer than any request can take: every Generate attempt, then every try at recording
    // the outcome (each may wait for the writer connection), then a margin.
    let longest = twin_wait(state.config.pictory.timeout) + Duration::from_secs(3 * 10 + 60);
    let before = now.saturating_sub(millis(longest));
    match state
        .store
        .recover_submissions(Arc::new(|job| render_response(job, &[])), before, now)
        .await
    {
        Ok(jobs) => {
            for job in &jobs {
                tracing::warn!(
                    submission_id = job.submission_id.as_deref().unwrap_or("-"),
                    "a submission's outcome was never recorded; it is submit_unknown"
                );
                state.changes.publish(job);
            }
            jobs.len()
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot settle stale submissions; will retry");
            0
        }
    }
}

/// Clears every body older than the retention period; returns how many.
pub async fn sweep(state: &AppState) -> u64 {
    let retention = millis(state.config.retention.deliveries);
    let before = state.now_ms().saturating_sub(retention);
    let mut total = 0;
    loop {
        match state.store.prune_delivery_bodies(before, BATCH).await {
            Ok(pruned) => {
                total += pruned;
                state.metrics.pruned_bodies.inc_by(pruned);
                if pruned < u64::from(BATCH) {
                    return total;
                }
                // Let waiting writers in between batches.
                tokio::task::yield_now().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "pruning delivery bodies failed; will retry");
                return total;
            }
        }
    }
}

pub async fn run(state: AppState, shutdown: CancellationToken) {
    loop {
        let pruned = sweep(&state).await;
        if pruned > 0 {
            tracing::info!(pruned, "pruned old delivery bodies");
        }
        sweep_submissions(&state).await;
        let keys = sweep_keys(&state).await;
        if keys > 0 {
            tracing::info!(keys, "forgot idempotency keys older than a day");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}
