//! Several replicas on one database (SPEC §9): every replica hears every change, event ids
//! never let a resuming reader pass over a change, and claims never hand one job to two pollers.
//! The replicas here are several stores (or whole services) in this process on one PostgreSQL
//! database; on a SQLite run only the event-order test applies.

use crate::helpers::*;
use crate::stream::SseClient;
use jobhook::store::{self, Store};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Two receive-only services on one database: A, and B beside it.
async fn two_replicas() -> (TestApp, TestApp) {
    let a = spawn_app().await;
    let mut options = Options::new(|_| {});
    options.db = Some(a.db.alias());
    options.clock = Some(a.clock.clone());
    let b = spawn(options).await;
    (a, b)
}

fn postgres_only() -> bool {
    if postgres_server().is_none() {
        say_skipped("skipped on SQLite: PostgreSQL only (one process owns a SQLite database)");
        return false;
    }
    true
}

#[tokio::test]
async fn a_long_poll_on_one_replica_is_answered_when_another_records_the_final_status() {
    if !postgres_only() {
        return;
    }
    let (a, b) = two_replicas().await;
    a.register("across-1").await;
    let waiting = {
        let client = a.client.clone();
        let url = format!("{}/v1/jobs/across-1?wait=20s", a.api_url);
        tokio::spawn(async move {
            let started = Instant::now();
            let job: Value = client
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (job, started.elapsed())
        })
    };
    a.wait_for_long_polls(1).await;
    // B, not A, takes the webhook and records the final status.
    let response = b.webhook(completed_body("across-1").to_string()).await;
    assert_eq!(response.status(), 200);
    let (job, waited) = waiting.await.unwrap();
    assert_eq!(job["status"], "completed", "{job}");
    assert!(
        waited < Duration::from_secs(5),
        "answered on B's commit, not at the end of the wait: {waited:?}"
    );
    // A's plain reads see it too (its cache of rendered jobs was told).
    assert_eq!(a.job("across-1").await["status"], "completed");
}

#[tokio::test]
async fn the_event_stream_on_one_replica_carries_changes_made_on_another_and_resumes_anywhere() {
    if !postgres_only() {
        return;
    }
    let (a, b) = two_replicas().await;
    let mut on_a = SseClient::connect(&a, "", None).await;
    b.webhook(in_progress_body("across-2").to_string()).await;
    b.webhook(completed_body("across-2").to_string()).await;
    let events = on_a.next_n(2).await;
    let seen: Vec<(String, String)> = events.iter().map(|e| e.job_status()).collect();
    assert_eq!(
        seen,
        [
            ("across-2".to_owned(), "in_progress".to_owned()),
            ("across-2".to_owned(), "completed".to_owned())
        ]
    );
    assert!(events[0].id < events[1].id);
    // A client that read the first event on A resumes on B with the second, and nothing else.
    let mut on_b = SseClient::connect(&b, "", Some(events[0].id)).await;
    let resumed = on_b.next().await;
    assert_eq!(resumed.id, events[1].id);
    assert_eq!(resumed.job_status().1, "completed");
}

#[tokio::test]
async fn a_change_made_while_a_replicas_listener_is_cut_off_still_reaches_it() {
    if !postgres_only() {
        return;
    }
    let (a, b) = two_replicas().await;
    a.register("cut-off-1").await;
    let waiting = {
        let client = a.client.clone();
        let url = format!("{}/v1/jobs/cut-off-1?wait=20s", a.api_url);
        tokio::spawn(async move {
            let started = Instant::now();
            let job: Value = client
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (job, started.elapsed())
        })
    };
    a.wait_for_long_polls(1).await;
    // For half a second the server ends every listening connection on this database as soon
    // as it is back, and B commits in the middle of it: its announcement goes out while A's
    // listener is (almost surely) away, so only the floor under it can bring the change.
    let url = a.db.url.clone();
    let cutting = tokio::spawn(async move {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut cut = 0;
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            let ended: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = current_database()) AS ended",
            )
            .bind(jobhook::store::postgres::LISTENER_NAME)
            .fetch_one(&mut admin)
            .await
            .unwrap();
            cut += ended;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        admin.close().await.unwrap();
        cut
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        b.webhook(completed_body("cut-off-1").to_string())
            .await
            .status(),
        200
    );
    assert!(cutting.await.unwrap() >= 2, "the listeners were cut off");
    let (job, waited) = waiting.await.unwrap();
    assert_eq!(job["status"], "completed", "{job}");
    assert!(
        waited < Duration::from_secs(10),
        "heard after the listener came back, not at the end of the wait: {waited:?}"
    );
}

/// Installs a trigger that sleeps a random 0-20 ms after each history entry is inserted: the
/// transaction that drew an id then takes a while to commit, which is when a later id could
/// commit first.
async fn slow_history_commits(url: &str) {
    use sqlx::Connection as _;
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION jobhook_test_dawdle() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(random() * 0.02); RETURN NEW; END $$; \
         CREATE TRIGGER dawdle AFTER INSERT ON job_events \
         FOR EACH ROW EXECUTE FUNCTION jobhook_test_dawdle();",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_resuming_reader_sees_every_change_once_in_order_while_many_connections_commit() {
    const WRITERS: usize = 4;
    const JOBS_PER_WRITER: usize = 12;
    let db = TestDb::fresh().await;
    let first = store::open(&db.url).await.unwrap();
    first.migrate().await.unwrap();
    // Several stores (connection pools, as replicas have), each writing from several tasks.
    let mut stores: Vec<Arc<dyn Store>> = vec![first.clone()];
    if db.is_postgres() {
        slow_history_commits(&db.url).await;
        stores.push(store::open(&db.url).await.unwrap());
    }
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = stores[writer % stores.len()].clone();
        writers.push(tokio::spawn(async move {
            for n in 0..JOBS_PER_WRITER {
                let id = format!("race-{writer}-{n}");
                for body in [in_progress_body(&id), completed_body(&id)] {
                    let now = START_MS + n as i64;
                    store.ingest(delivery(&body, now, false)).await.unwrap();
                }
            }
        }));
    }
    // The reader resumes after the last id it saw, as a client with Last-Event-ID does.
    let mut seen: Vec<i64> = Vec::new();
    let mut last = 0;
    loop {
        let done = writers.iter().all(|w| w.is_finished());
        let changes = first.changes_after(last, 7).await.unwrap();
        for change in &changes {
            assert!(change.id > last, "{} after {last}", change.id);
            last = change.id;
            seen.push(change.id);
        }
        if changes.is_empty() {
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = first.changes_after(after, 500).await.unwrap();
        let Some(newest) = page.last() else { break };
        after = newest.id;
        all.extend(page.iter().map(|c| c.id));
    }
    assert_eq!(
        all.len(),
        WRITERS * JOBS_PER_WRITER * 2,
        "every change is stored"
    );
    assert_eq!(
        seen, all,
        "the reader saw every change exactly once, in order"
    );
    for store in &stores {
        store.close().await;
    }
}

#[tokio::test]
async fn concurrent_claims_hand_each_due_job_to_one_replica_and_respect_their_limit() {
    if !postgres_only() {
        return;
    }
    let db = TestDb::fresh().await;
    let a = store::open(&db.url).await.unwrap();
    a.migrate().await.unwrap();
    let b = store::open(&db.url).await.unwrap();
    for n in 0..60 {
        a.register(&format!("due-{n}"), None, Some(START_MS), START_MS)
            .await
            .unwrap();
    }
    let now = START_MS + 1;
    let lease_until = now + 90_000;
    let claims: Vec<_> = (0..12)
        .map(|n| {
            let store = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { store.claim_due(now, lease_until, 7, n % 3 == 0).await })
        })
        .collect();
    let mut claimed = HashSet::new();
    for claim in claims {
        let jobs = claim.await.unwrap().unwrap();
        assert!(
            jobs.len() <= 7,
            "a claim took {} jobs for a limit of 7",
            jobs.len()
        );
        for job in jobs {
            assert!(
                claimed.insert(job.pk),
                "job {} was claimed twice",
                job.job_id
            );
        }
    }
    assert_eq!(claimed.len(), 60, "every due job was claimed once");
    assert!(a
        .claim_due(now, lease_until, 100, false)
        .await
        .unwrap()
        .is_empty());
    // The leases run out: the jobs are due again, for any replica.
    let later = lease_until;
    assert_eq!(
        b.claim_due(later, later + 90_000, 100, false)
            .await
            .unwrap()
            .len(),
        60
    );
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn start_up_frees_the_leases_of_a_replica_that_died_but_never_of_a_live_one() {
    if !postgres_only() {
        return;
    }
    let db = TestDb::fresh().await;
    let live = store::open(&db.url).await.unwrap();
    live.migrate().await.unwrap();
    let dying = store::open(&db.url).await.unwrap();
    for n in 0..10 {
        live.register(&format!("lease-{n}"), None, Some(START_MS), START_MS)
            .await
            .unwrap();
    }
    let now = START_MS + 1;
    let lease_until = now + 90_000;
    let held_by_live = live.claim_due(now, lease_until, 4, false).await.unwrap();
    let held_by_dying = dying.claim_due(now, lease_until, 6, false).await.unwrap();
    assert_eq!((held_by_live.len(), held_by_dying.len()), (4, 6));

    // A third replica starts while both are alive: nothing is taken from them.
    let starting = store::open(&db.url).await.unwrap();
    assert_eq!(starting.release_leases(now + 10).await.unwrap(), 0);
    assert!(starting
        .claim_due(now + 10, lease_until, 100, false)
        .await
        .unwrap()
        .is_empty());

    // One dies (its connections end): its leases are freed at the next start, the live
    // replica's are not.
    dying.close().await;
    // The server ends the closed session's locks as its backend exits: a moment, at most.
    let mut freed = 0;
    for _ in 0..100 {
        freed = starting.release_leases(now + 20).await.unwrap();
        if freed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        freed, 6,
        "the dead replica's leases, and only those, are freed"
    );
    let retaken = starting
        .claim_due(now + 20, lease_until, 100, false)
        .await
        .unwrap();
    let retaken: HashSet<i64> = retaken.iter().map(|job| job.pk).collect();
    let expected: HashSet<i64> = held_by_dying.iter().map(|job| job.pk).collect();
    assert_eq!(retaken, expected);
    // Given back unpolled (a shutdown): due at once, for anyone.
    let pks: Vec<i64> = held_by_live.iter().map(|job| job.pk).collect();
    live.release_claims(&pks, now + 30).await.unwrap();
    assert_eq!(
        starting
            .claim_due(now + 30, lease_until, 100, false)
            .await
            .unwrap()
            .len(),
        4
    );
    for store in [live, starting] {
        store.close().await;
    }
}

#[tokio::test]
async fn start_up_gives_up_the_submissions_of_a_replica_that_died_but_never_of_a_live_one() {
    use jobhook::store::{Begun, NewSubmission};
    if !postgres_only() {
        return;
    }
    let db = TestDb::fresh().await;
    let live = store::open(&db.url).await.unwrap();
    live.migrate().await.unwrap();
    let dying = store::open(&db.url).await.unwrap();
    let submit = |store: Arc<dyn Store>, id: &'static str| async move {
        let submission = NewSubmission {
            submission_id: id.to_owned(),
            request: serde_json::json!({"prompt": id}),
            metadata: None,
            idempotency: None,
            parent_pk: None,
        };
        let begun = store.begin_submission(submission, START_MS).await.unwrap();
        assert!(matches!(begun, Begun::Started(_)));
    };
    submit(live.clone(), "in-flight-on-a-live-replica").await;
    submit(dying.clone(), "in-flight-on-a-dying-replica").await;
    let render: Arc<jobhook::store::RenderResponse> = Arc::new(|_| (202, "{}".to_owned()));

    let starting = store::open(&db.url).await.unwrap();
    let recovered = starting
        .recover_submissions(render.clone(), i64::MAX, START_MS + 1)
        .await
        .unwrap();
    assert!(
        recovered.is_empty(),
        "both Generate calls are still in flight"
    );

    dying.close().await;
    let mut recovered = Vec::new();
    for _ in 0..100 {
        recovered = starting
            .recover_submissions(render.clone(), i64::MAX, START_MS + 2)
            .await
            .unwrap();
        if !recovered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<_> = recovered.iter().map(|j| j.submission_id.clone()).collect();
    assert_eq!(ids, [Some("in-flight-on-a-dying-replica".to_owned())]);
    let kept = starting
        .job("in-flight-on-a-live-replica")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.status.as_str(), "submitting");
    for store in [live, starting] {
        store.close().await;
    }
}
