//! Property tests of the state machine through the real store: whatever Pictory sends, in whatever
//! order, a final status never moves and every change is in the history.

use crate::helpers::*;
use jobhook::domain::JobStatus;
use proptest::prelude::*;
use serde_json::{json, Value};

fn body() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(in_progress_body("pj")),
        Just(completed_body("pj")),
        Just(failed_body("pj")),
        Just(json!({"job_id": "pj", "data": {"status": "cleaned"}})),
        Just(json!({"job_id": "pj", "success": false, "error_message": "JOB_NOT_FOUND"})),
        Just(json!({"job_id": "pj", "data": {"status": "brand-new-status"}})),
        (0u32..1000)
            .prop_map(|n| json!({"job_id": "pj", "data": {"status": "in-progress", "n": n}})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn no_delivery_sequence_moves_a_final_status_and_every_change_is_recorded(
        bodies in proptest::collection::vec(body(), 1..16)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let db = TestDb::fresh().await;
            let store = jobhook::store::open(&db.url).await.unwrap();
            store.migrate().await.unwrap();
            for (n, body) in bodies.iter().enumerate() {
                store.ingest(delivery(body, START_MS + n as i64, false)).await.unwrap();
            }
            let job = store.job("pj").await.unwrap().unwrap();
            let events = store.job_events(job.pk).await.unwrap();
            let changes: Vec<(JobStatus, JobStatus)> = events
                .iter()
                .filter(|e| e.kind == "status_changed")
                .map(|e| (
                    e.detail["from"].as_str().unwrap().parse().unwrap(),
                    e.detail["to"].as_str().unwrap().parse().unwrap(),
                ))
                .collect();
            let mut status = JobStatus::Pending;
            for (from, to) in &changes {
                assert_eq!(*from, status, "the history is a chain");
                assert!(from.can_move_to(*to), "{from} -> {to} is not a legal move");
                assert!(!from.is_final(), "a final status moved: {changes:?}");
                status = *to;
            }
            assert_eq!(job.status, status, "the job's status is where its history ends");
            let received = events.iter().filter(|e| e.kind == "webhook_received").count();
            assert_eq!(received, bodies.len(), "every delivery is in the history");
            store.close().await;
        });
    }
}
