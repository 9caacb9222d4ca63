//! Group commit for webhook deliveries.
//!
//! Every delivery must be durable before it is acknowledged, and with SQLite each commit costs an
//! fsync. One writer task takes whatever deliveries are waiting (up to [`MAX_BATCH`]), stores them
//! in one transaction, and answers each only after that commit is flushed to disk. Nothing waits
//! on purpose: a batch is simply what queued up while the previous ones were written, so a lone
//! delivery is committed at once and a storm shares its commits and flushes. Up to
//! [`Store::batches_in_flight`] batches are under way at once: on SQLite two, so the database
//! writes one while the disk flushes another; on PostgreSQL many, since its writer stores every
//! batch waiting for it in one transaction. After each commit the writer counts and announces
//! what the batch concerns (see [`Announce`]); the announcement also wakes the reconciler for a
//! "look now".

use crate::changes::Changes;
use crate::metrics::Metrics;
use crate::store::{DeliveryOutcome, Ingested, NewDelivery, Store, StoreError};
use futures::stream::{FuturesOrdered, StreamExt};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most deliveries in one transaction (bounds the latency a batch adds).
pub const MAX_BATCH: usize = 256;
/// Deliveries waiting for the writer before senders wait too (backpressure).
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Ingested, StoreError>>;

/// Who hears about a committed batch: the writer tells them itself, so a delivery is counted,
/// announced and verified even when the request that brought it went away meanwhile.
pub struct Announce {
    pub changes: Changes,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct Ingestor {
    queue: mpsc::Sender<(NewDelivery, Reply)>,
}

impl Ingestor {
    /// Starts the writer task over `store`. It ends when every `Ingestor` clone is dropped.
    /// After each commit it announces the jobs that changed on `changes` (which wakes the
    /// reconciler for a delivery that asked for a Get Job call): the writer does it, so an
    /// acknowledged delivery is announced even if its request went away meanwhile.
    pub fn start(store: Arc<dyn Store>, announce: Announce) -> Ingestor {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, waiting, announce));
        Ingestor { queue }
    }

    /// False once the writer task has stopped (then nothing can be stored).
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Stores a delivery; returns once it is committed.
    pub async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((delivery, reply))
            .await
            .map_err(|_| StoreError::Batch("the ingest writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Batch("the ingest writer stopped mid-batch".into()))?
    }
}

async fn write_batches(
    store: Arc<dyn Store>,
    mut waiting: mpsc::Receiver<(NewDelivery, Reply)>,
    announce: Announce,
) {
    // Batches in flight, answered in the order they were queued.
    let mut in_flight = FuturesOrdered::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut open = true;
    let most_in_flight = store.batches_in_flight().max(1);
    while open || !in_flight.is_empty() {
        tokio::select! {
            // Finished batches first: their senders are waiting.
            biased;
            Some((stored, replies)) = in_flight.next(), if !in_flight.is_empty() => {
                answer(stored, replies, &announce);
            }
            taken = waiting.recv_many(&mut batch, MAX_BATCH),
                if open && in_flight.len() < most_in_flight =>
            {
                if taken == 0 {
                    open = false;
                    continue;
                }
                let (deliveries, replies): (Vec<NewDelivery>, Vec<Reply>) =
                    batch.drain(..).unzip();
                // Queued for the database now, in order; flushed while the next batch forms.
                let stored = store.ingest_batch(deliveries);
                in_flight.push_back(async move { (stored.await, replies) });
            }
        }
    }
}

/// Counts, announces and answers a batch once it is durable.
fn answer(
    stored: Result<Vec<Result<Ingested, StoreError>>, StoreError>,
    replies: Vec<Reply>,
    announce: &Announce,
) {
    match stored {
        Ok(results) => {
            for ingested in results.iter().flatten() {
                announce.metrics.count_delivery(ingested.outcome.as_str());
                if ingested.outcome == DeliveryOutcome::Duplicate {
                    announce.metrics.duplicates.inc();
                }
                if let Some(job) = &ingested.job {
                    announce.changes.publish(job);
                }
            }
            for (reply, result) in replies.into_iter().zip(results) {
                // The requester may have gone away; its delivery is stored all the same.
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            let message = err.to_string();
            tracing::error!(error = %message, size = replies.len(), "a delivery batch was not committed");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Batch(message.clone())));
            }
        }
    }
}
