//! A batch of webhook deliveries writes exactly what the same deliveries stored one by one
//! write. On PostgreSQL a batch goes through its own path (a few statements for the whole
//! batch, `store/postgres/batch.rs`) and falls back to the one-by-one steps when two
//! deliveries concern one job; on SQLite the writer thread stores both the same way. Either
//! way the rows must not differ: same ids, same history, same outbox, same usage, same archive
//! tasks.

use crate::helpers::TestDb;
use jobhook::domain::archive::ArchivePolicy;
use jobhook::pictory::JobReport;
use jobhook::store::{
    DeliveryTarget, Ingested, NewDelivery, NewSubmission, NotifyRoute, Store, SubmitOutcome,
};
use serde_json::{json, Value};
use std::sync::Arc;

const T0: i64 = 1_790_000_000_000;

fn completed(job_id: &str, credits: f64) -> Value {
    json!({"job_id": job_id, "success": true, "data": {
        "status": "completed", "url": format!("https://cdn.example/{job_id}.mp4"),
        "duration": "8s", "thumbnailImageUrl": format!("https://cdn.example/{job_id}.jpg"),
        "aiCreditsUsed": credits}})
}

fn failed(job_id: &str) -> Value {
    json!({"job_id": job_id, "success": false, "data": {"status": "failed",
        "error": {"code": "TEXT_TO_VIDEO_FAILED", "message": "refused"}}})
}

fn in_progress(job_id: &str) -> Value {
    json!({"job_id": job_id, "success": true, "data": {"status": "in-progress"}})
}

/// A delivery of `body` as the public handler makes it; `verify`: Get Job decides (look now).
fn delivery(at: i64, body: &Value, submission: Option<&str>, verify: bool) -> NewDelivery {
    let report = JobReport::from_json(body);
    NewDelivery {
        received_at: at,
        remote_addr: Some("203.0.113.9:4000".into()),
        headers: r#"{"content-type":"application/json"}"#.into(),
        body: body.to_string().into_bytes(),
        target: DeliveryTarget::Job {
            job_id: report.job_id,
            submission_id: submission.map(str::to_owned),
            report: (!verify).then_some(report.state),
            look_now: verify,
            first_poll_at: Some(at + 30_000),
        },
    }
}

fn rejected(at: i64, reason: &str) -> NewDelivery {
    NewDelivery {
        received_at: at,
        remote_addr: None,
        headers: "{}".into(),
        body: b"not json".to_vec(),
        target: DeliveryTarget::Rejected {
            reason: reason.into(),
        },
    }
}

/// A store with some history: known jobs, an accepted delivery to duplicate, a submission
/// that has its Pictory id, an endpoint for every event, archiving with completions held.
async fn prepared(db: &TestDb) -> Arc<dyn Store> {
    let store = jobhook::store::open(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    store
        .set_notify_routes(&[NotifyRoute {
            url: "https://hooks.example/jobs".into(),
            events: ["job.updated", "job.completed", "job.failed"]
                .map(String::from)
                .to_vec(),
            fingerprint: "f1".into(),
        }])
        .await
        .unwrap();
    let policy = ArchivePolicy {
        files: vec!["video".into(), "thumbnail".into()],
        hold_completed: true,
    };
    store.set_archive_policy(Some(&policy), T0).await.unwrap();
    for (i, id) in ["known-1", "known-2", "known-3"].iter().enumerate() {
        let metadata = json!({"customer": format!("c{i}")});
        store
            .register(id, Some(metadata), Some(T0 + 60_000), T0)
            .await
            .unwrap();
    }
    store
        .ingest(delivery(T0 + 1, &in_progress("known-2"), None, false))
        .await
        .unwrap();
    store
        .begin_submission(
            NewSubmission {
                submission_id: "sub-1".into(),
                request: json!({"prompt": "a fox"}),
                metadata: None,
                idempotency: None,
                parent_pk: None,
            },
            T0 + 2,
        )
        .await
        .unwrap();
    store
        .finish_submission(
            "sub-1",
            SubmitOutcome::Created {
                job_id: "from-sub-1".into(),
            },
            Some(T0 + 60_000),
            Arc::new(|_: &jobhook::domain::Job| (201, "{}".to_owned())),
            T0 + 3,
        )
        .await
        .unwrap();
    store
}

/// What a client sees of an ingest: the delivery, its outcome and its job as stored.
fn seen(ingested: &Ingested) -> Value {
    json!({
        "delivery_id": ingested.delivery_id,
        "outcome": ingested.outcome.as_str(),
        "job": ingested.job.as_ref().map(|job| json!({"view": job.view(), "seq": job.seq})),
    })
}

/// Every row copy-db copies, plus each job as the API shows it (its archive block included).
async fn everything(db: &TestDb, store: &Arc<dyn Store>) -> Value {
    let tables = jobhook::copy_db::dump(&db.url).await.unwrap();
    let mut jobs = Vec::new();
    for pk in 1..=20 {
        if let Some(job) = store.job_by_pk(pk).await.unwrap() {
            jobs.push(json!({"pk": pk, "view": job.view(), "seq": job.seq,
                "next_poll_at": job.next_poll_at}));
        }
    }
    json!({"tables": format!("{tables:?}"), "jobs": jobs})
}

#[tokio::test]
async fn a_batch_writes_exactly_what_the_same_deliveries_write_one_by_one() {
    let (one_db, batch_db) = (TestDb::fresh().await, TestDb::fresh().await);
    let (one, batched) = (prepared(&one_db).await, prepared(&batch_db).await);

    let at = T0 + 10_000;
    // A batch with one delivery per job: on PostgreSQL, the few-statement path.
    let first = vec![
        delivery(at, &completed("new-1", 12.8), None, false),
        delivery(at + 1, &failed("new-2"), None, false),
        delivery(at + 2, &in_progress("new-3"), None, false),
        delivery(at + 3, &completed("known-1", 3.5), None, false),
        // The body known-2 already has: a duplicate of the accepted copy.
        delivery(at + 4, &in_progress("known-2"), None, false),
        rejected(at + 5, "signature: no matching signature"),
        // Verify mode: only a look now, on a known job and on a new one.
        delivery(at + 6, &completed("known-3", 1.0), None, true),
        delivery(at + 7, &completed("new-4", 1.0), None, true),
        // By its submission's key, and a submission nobody tracks without a job id.
        delivery(at + 8, &completed("from-sub-1", 2.0), Some("sub-1"), false),
        delivery(
            at + 9,
            &json!({"success": true}),
            Some("sub-unknown"),
            false,
        ),
    ];
    // Then a batch where jobs come twice (a duplicate and a later report arrive together).
    let second = vec![
        delivery(at + 100, &in_progress("new-5"), None, false),
        delivery(at + 101, &completed("new-5", 4.0), None, false),
        delivery(at + 102, &completed("new-5", 4.0), None, false),
        delivery(at + 103, &completed("new-3", 7.0), None, false),
    ];

    for batch in [first, second] {
        let mut alone = Vec::new();
        for delivery in batch.clone() {
            alone.push(seen(&one.ingest(delivery).await.unwrap()));
        }
        let together: Vec<Value> = batched
            .ingest_batch(batch)
            .await
            .unwrap()
            .into_iter()
            .map(|ingested| seen(&ingested.unwrap()))
            .collect();
        assert_eq!(together, alone);
    }

    let (expected, actual) = (
        everything(&one_db, &one).await,
        everything(&batch_db, &batched).await,
    );
    assert_eq!(actual["jobs"], expected["jobs"]);
    assert_eq!(actual["tables"], expected["tables"]);

    // And what was written is what the deliveries meant (not two copies of the same mistake).
    let job = |id: &str| {
        let jobs = expected["jobs"].as_array().unwrap();
        jobs.iter()
            .find(|j| j["view"]["job_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(job("new-1")["view"]["status"], "completed");
    assert_eq!(job("new-1")["view"]["archive"]["status"], "pending");
    assert_eq!(job("new-2")["view"]["status"], "failed");
    assert_eq!(job("known-1")["view"]["status"], "completed");
    assert_eq!(job("known-2")["view"]["status"], "in_progress");
    assert_eq!(job("known-3")["view"]["status"], "pending");
    assert_eq!(job("known-3")["next_poll_at"], at + 6);
    assert_eq!(job("from-sub-1")["view"]["status"], "completed");
    assert_eq!(job("new-5")["view"]["status"], "completed");
    assert_eq!(job("new-3")["view"]["status"], "completed");
    let tables = expected["tables"].as_str().unwrap();
    for outcome in ["duplicate", "rejected"] {
        assert!(
            tables.contains(outcome),
            "no {outcome} delivery in {tables}"
        );
    }
}

/// Batches handed in one after the other without waiting (as the group committer does) are
/// stored in that order, each answered with its own deliveries' results. On PostgreSQL the
/// writer stores every batch waiting for it in one transaction, up to about a thousand
/// deliveries (so here the first dozen batches together, on the few-statement path), and
/// begins the next transaction while that one commits (here for the rest, where jobs come
/// twice and are stored one by one): the rows and ids must still be those of storing one by
/// one, and a job that comes again in a later batch must see its earlier delivery.
#[tokio::test]
async fn batches_handed_in_together_are_stored_in_order_and_answered_each_their_own() {
    let (one_db, batch_db) = (TestDb::fresh().await, TestDb::fresh().await);
    let (one, batched) = (prepared(&one_db).await, prepared(&batch_db).await);

    let at = T0 + 10_000;
    let mut batches = Vec::new();
    for b in 0..12 {
        let mut batch = Vec::new();
        for d in 0..(90 + b) {
            let at = at + b * 10 + d;
            let id = format!("gathered-{b}-{d}");
            batch.push(match (b + d) % 3 {
                0 => delivery(at, &completed(&id, 1.5), None, false),
                1 => delivery(at, &in_progress(&id), None, false),
                _ => delivery(at, &failed(&id), None, false),
            });
        }
        batches.push(batch);
    }
    // A later batch reports on jobs of earlier ones, and repeats earlier bodies exactly.
    batches.push(vec![
        delivery(at + 500, &completed("gathered-1-0", 2.0), None, false),
        delivery(at + 501, &in_progress("gathered-1-0"), None, false),
        delivery(at + 502, &completed("gathered-3-0", 1.5), None, false),
    ]);
    batches.push(vec![delivery(
        at + 600,
        &completed("known-1", 3.0),
        None,
        false,
    )]);

    let mut alone = Vec::new();
    for batch in &batches {
        let mut answers = Vec::new();
        for delivery in batch.clone() {
            answers.push(seen(&one.ingest(delivery).await.unwrap()));
        }
        alone.push(answers);
    }
    // Every batch handed in before any is awaited.
    let pending: Vec<_> = batches
        .iter()
        .map(|batch| batched.ingest_batch(batch.clone()))
        .collect();
    let mut together = Vec::new();
    for stored in pending {
        let answers: Vec<Value> = stored
            .await
            .unwrap()
            .into_iter()
            .map(|ingested| seen(&ingested.unwrap()))
            .collect();
        together.push(answers);
    }
    assert_eq!(together, alone);
    let sizes: Vec<usize> = together.iter().map(Vec::len).collect();
    assert_eq!(sizes, batches.iter().map(Vec::len).collect::<Vec<_>>());
    let outcomes: Vec<&str> = together[12]
        .iter()
        .map(|answer| answer["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["accepted", "duplicate", "duplicate"]);

    let (expected, actual) = (
        everything(&one_db, &one).await,
        everything(&batch_db, &batched).await,
    );
    assert_eq!(actual["tables"], expected["tables"]);
    assert_eq!(actual["jobs"], expected["jobs"]);
}
