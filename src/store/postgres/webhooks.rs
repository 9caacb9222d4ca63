//! Storing one webhook delivery inside a caller's transaction (a group commit batches many).

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
        let reason = "the submission this URL names is not tracked and the body has no job id";
        return archive_rejected(tx, delivery, &sha, reason).await;
    };
    let job_pk = job.pk;
    let accepted = insert_delivery(
        tx,
        delivery,
        &sha,
        Some(job_pk),
        DeliveryOutcome::Accepted,
        None,
        None,
    )
    .await?;
    let (delivery_id, outcome) = match accepted {
        Some(id) => (id, DeliveryOutcome::Accepted),
        None => {
            let original: i64 = sqlx::query_scalar(
                "SELECT id FROM deliveries WHERE job_pk = $1 AND body_sha256 = $2 \
                 AND outcome = 'accepted'",
            )
            .bind(job_pk)
            .bind(&sha[..])
            .fetch_one(tx.db())
            .await?;
            let id = insert_delivery(
                tx,
                delivery,
                &sha,
                Some(job_pk),
                DeliveryOutcome::Duplicate,
                Some("same job and body as an earlier delivery"),
                Some(original),
            )
            .await?
            .ok_or_else(|| corrupt("duplicate delivery was not stored"))?;
            (id, DeliveryOutcome::Duplicate)
        }
    };
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
