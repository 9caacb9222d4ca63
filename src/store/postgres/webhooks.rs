//! Storing one webhook delivery inside a caller's transaction (a group commit batches many).

use super::batch::{DUPLICATE, NOT_TRACKED};
use super::corrupt;
use super::history::{insert_delivery, record_webhook, resolve_job, WebhookOnJob};
use super::write::Tx;
use crate::store::{DeliveryOutcome, DeliveryTarget, Ingested, NewDelivery, StoreError};
use sha2::{Digest, Sha256};

/// `notify`: whether any notification endpoint is configured.
pub(super) async fn ingest_one(
    tx: &mut Tx,
    delivery: &NewDelivery,
    notify: bool,
) -> Result<Ingested, StoreError> {
    let now = delivery.received_at;
    let sha = Sha256::digest(&delivery.body);
    let (job_id, submission_id, report, look_now, first_poll_at) = match &delivery.target {
        DeliveryTarget::Rejected { reason } => {
            return archive_rejected(tx, delivery, &sha, reason).await;
        }
        DeliveryTarget::Job {
            job_id,
            submission_id,
            report,
            look_now,
            first_poll_at,
        } => (
            job_id.as_deref(),
            submission_id.as_deref(),
            report.as_ref(),
            *look_now,
            *first_poll_at,
        ),
    };
    let Some((job, created)) = resolve_job(tx, job_id, submission_id, first_poll_at, now).await?
    else {
        return archive_rejected(tx, delivery, &sha, NOT_TRACKED).await;
    };
    let job_pk = job.pk;
    // The history lock is held, so the look cannot be overtaken; the partial unique index stays
    // the last word all the same. Looking first keeps a duplicate from drawing an id it would
    // not use (the batched path, `batch.rs`, looks first too, and both write the same ids).
    let original: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM deliveries WHERE job_pk = $1 AND body_sha256 = $2 \
         AND outcome = 'accepted'",
    )
    .bind(job_pk)
    .bind(&sha[..])
    .fetch_optional(tx.db())
    .await?;
    let (outcome, reason) = match original {
        Some(_) => (DeliveryOutcome::Duplicate, Some(DUPLICATE)),
        None => (DeliveryOutcome::Accepted, None),
    };
    let delivery_id = insert_delivery(tx, delivery, &sha, Some(job_pk), outcome, reason, original)
        .await?
        .ok_or_else(|| corrupt("an accepted copy of this delivery appeared under the lock"))?;
    let webhook = WebhookOnJob {
        job,
        created,
        delivery_id,
        duplicate: outcome == DeliveryOutcome::Duplicate,
        replay: false,
        report,
        look_now,
        // A duplicate's body lives in its original, and a duplicate never sets `/raw`.
        body_delivery_id: delivery_id,
        notify,
    };
    let job = record_webhook(tx, webhook, now).await?;
    Ok(Ingested {
        delivery_id,
        outcome,
        job: Some(job),
    })
}

/// Archives a delivery that is not applied to any job.
async fn archive_rejected(
    tx: &mut Tx,
    delivery: &NewDelivery,
    sha: &[u8],
    reason: &str,
) -> Result<Ingested, StoreError> {
    let id = insert_delivery(
        tx,
        delivery,
        sha,
        None,
        DeliveryOutcome::Rejected,
        Some(reason),
        None,
    )
    .await?
    .ok_or_else(|| corrupt("rejected delivery was not stored"))?;
    Ok(Ingested {
        delivery_id: id,
        outcome: DeliveryOutcome::Rejected,
        job: None,
    })
}
