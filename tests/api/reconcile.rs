//! The reconciler driven step by step on injected time, against the fake Pictory over a socket.

use crate::helpers::*;
use jobhook::changes::Changes;
use jobhook::config::ReconcileConfig;
use jobhook::domain::time::{Clock, ManualClock};
use jobhook::domain::{Job, JobStatus};
use jobhook::metrics::Metrics;
use jobhook::mock::{Forced, MockOptions, MockPictory, MockState};
use jobhook::pictory::PictoryClient;
use jobhook::reconcile::{Poller, Reconciler};
use jobhook::store::{self, Store};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

const GRACE: i64 = 120_000;
const INTERVAL: i64 = 15_000;
const MAX_INTERVAL: i64 = 300_000;
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1500);

struct Harness {
    store: Arc<dyn Store>,
    clock: ManualClock,
    mock: MockPictory,
    poller: Arc<Poller>,
    reconciler: Reconciler,
    base_url: String,
    config: ReconcileConfig,
    db: TestDb,
}

fn reconcile_config() -> ReconcileConfig {
    ReconcileConfig {
        grace: Duration::from_millis(GRACE as u64),
        interval: Duration::from_millis(INTERVAL as u64),
        max_interval: Duration::from_millis(MAX_INTERVAL as u64),
        deadline: Duration::from_secs(7200),
        rate: 5,
    }
}

async fn harness(configure: impl FnOnce(&mut ReconcileConfig)) -> Harness {
    let db = TestDb::fresh().await;
    let clock = ManualClock::new(START_MS);
    let mock = MockPictory::new(MockOptions::default(), Arc::new(clock.clone()));
    let base_url = mock.spawn().await.unwrap();
    let mut config = reconcile_config();
    configure(&mut config);
    let store = store::open(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let (poller, reconciler) = machinery(&store, &clock, &base_url, &config);
    Harness {
        store,
        clock,
        mock,
        poller,
        reconciler,
        base_url,
        config,
        db,
    }
}

fn machinery(
    store: &Arc<dyn Store>,
    clock: &ManualClock,
    base_url: &str,
    config: &ReconcileConfig,
) -> (Arc<Poller>, Reconciler) {
    let client =
        PictoryClient::new(base_url, &SecretString::from("pictai_test"), CLIENT_TIMEOUT).unwrap();
    let poller = Arc::new(Poller::new(
        store.clone(),
        Arc::new(clock.clone()),
        Arc::new(Metrics::new()),
        Changes::new(),
        client,
        CLIENT_TIMEOUT,
        config.clone(),
    ));
    let reconciler = Reconciler::new(poller.clone());
    (poller, reconciler)
}

impl Harness {
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn register(&self, id: &str, state: MockState) -> Job {
        self.mock.set_state(id, state);
        let now = self.now();
        self.store
            .register(id, None, Some(self.poller.first_poll_at(now)), now)
            .await
            .unwrap()
            .job
    }

    /// One reconciler step at the current time, waiting for the calls it started.
    async fn step(&mut self) -> i64 {
        let next = self.reconciler.step(self.now()).await.unwrap();
        self.reconciler.drain().await;
        next
    }

    /// Steps at every wake-up time until `until`.
    async fn run_until(&mut self, until: i64) {
        loop {
            let next = self.step().await;
            if next > until {
                self.clock.set_ms(until);
                return;
            }
            self.clock.set_ms(next);
        }
    }

    async fn job(&self, id: &str) -> Job {
        self.store.job(id).await.unwrap().unwrap()
    }

    fn calls_for(&self, id: &str) -> Vec<i64> {
        self.mock
            .get_calls()
            .into_iter()
            .filter(|c| c.job_id == id)
            .map(|c| c.at_ms)
            .collect()
    }

    /// A new poller and reconciler over a reopened store: what a restart gives.
    async fn restart(&mut self) {
        self.store.close().await;
        self.store = store::open(&self.db.url).await.unwrap();
        self.store.migrate().await.unwrap();
        let (poller, reconciler) =
            machinery(&self.store, &self.clock, &self.base_url, &self.config);
        self.poller = poller;
        self.reconciler = reconciler;
    }
}

#[tokio::test]
async fn first_poll_waits_for_the_grace_period() {
    let mut h = harness(|_| {}).await;
    let job = h.register("g1", MockState::InProgress).await;
    assert_eq!(job.next_poll_at, Some(START_MS + GRACE));
    let wake = h.step().await;
    // Nothing is due before the grace period; the loop still looks every 30 s for work that
    // another replica may have scheduled.
    assert_eq!(wake, START_MS + 30_000);
    h.clock.set_ms(START_MS + GRACE - 1);
    h.step().await;
    assert!(h.calls_for("g1").is_empty());
    h.clock.set_ms(START_MS + GRACE);
    h.step().await;
    assert_eq!(h.calls_for("g1"), [START_MS + GRACE]);
    let job = h.job("g1").await;
    assert_eq!(job.status, JobStatus::InProgress);
    assert_eq!(job.poll_count, 1);
    assert_eq!(job.last_polled_at, Some(START_MS + GRACE));
    let next = job.next_poll_at.unwrap() - (START_MS + GRACE);
    assert!((INTERVAL..=2 * INTERVAL).contains(&next), "{next}");
    let events = h.store.job_events(job.pk).await.unwrap();
    let polled = events.iter().find(|e| e.kind == "polled").unwrap();
    assert_eq!(polled.detail["http_status"], 200);
    assert_eq!(polled.detail["outcome"], "in_progress");
    assert_eq!(polled.detail["cause"], "poll");
}

#[tokio::test]
async fn polls_back_off_exponentially_with_jitter_up_to_the_maximum() {
    let mut h = harness(|_| {}).await;
    h.register("b1", MockState::InProgress).await;
    h.run_until(START_MS + 3_600_000).await;
    let calls = h.calls_for("b1");
    assert!(calls.len() > 10, "{calls:?}");
    for (k, gap) in calls.windows(2).map(|w| w[1] - w[0]).enumerate() {
        let ceiling = (INTERVAL << (k + 1).min(20)).min(MAX_INTERVAL);
        assert!(
            (INTERVAL..=ceiling).contains(&gap),
            "gap {k} = {gap} ms, allowed {INTERVAL}..={ceiling}"
        );
    }
    let late_gaps: Vec<i64> = calls.windows(2).skip(6).map(|w| w[1] - w[0]).collect();
    assert!(
        late_gaps.iter().any(|&g| g > 4 * INTERVAL),
        "the interval grows: {late_gaps:?}"
    );
}

#[tokio::test]
async fn a_thousand_overdue_jobs_drain_at_the_rate_limit_oldest_first() {
    let mut h = harness(|_| {}).await;
    for n in 0..1000 {
        h.register(&format!("o{n:04}"), MockState::Completed).await;
        h.clock.advance_ms(1);
    }
    // Everything is overdue, as after a long outage.
    h.clock.set_ms(START_MS + 3_600_000);
    let started = h.now();
    while h.mock.get_calls().len() < 1000 {
        let next = h.step().await;
        h.clock.set_ms(next);
    }
    let calls = h.mock.get_calls();
    let busiest = calls
        .iter()
        .map(|c| {
            calls
                .iter()
                .filter(|d| d.at_ms >= c.at_ms && d.at_ms <= c.at_ms + 1000)
                .count()
        })
        .max()
        .unwrap();
    assert_eq!(
        busiest, 5,
        "never more than reconcile.rate calls in any one-second window"
    );
    // Five calls 205 ms apart (rate starts span the guarded 1.025 s window), then the window:
    // the sixth 1,026 ms after the first. On a schedule replicas share (PostgreSQL) the window
    // is wider by the margin a late start may take.
    let window = match h.db.is_postgres() {
        true => 1_026 + jobhook::reconcile::SHARED_WINDOW_MARGIN_MS,
        false => 1_026,
    };
    let expected = 199 * window + 4 * 205;
    let elapsed = calls.last().unwrap().at_ms - started;
    assert!(
        (expected - 1_000..=expected + 1_000).contains(&elapsed),
        "the rate is sustained: {elapsed} ms, not {expected}"
    );
    let order: Vec<&str> = calls.iter().map(|c| c.job_id.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "oldest due first");
    assert_eq!(
        h.store.next_due().await.unwrap(),
        None,
        "all completed, nothing left to poll"
    );
}

#[tokio::test]
async fn retry_after_on_429_holds_every_poll_back() {
    let mut h = harness(|c| c.rate = 1).await;
    h.register("t1", MockState::InProgress).await;
    h.clock.advance_ms(10);
    h.register("t2", MockState::InProgress).await;
    h.mock.force_next(Forced {
        status: 429,
        retry_after: Some("30".into()),
        body: String::new(),
        ..Default::default()
    });
    h.clock.set_ms(START_MS + GRACE + 10);
    let wake = h.step().await;
    assert_eq!(h.calls_for("t1").len(), 1);
    h.clock.set_ms(wake);
    let wake = h.step().await;
    assert!(h.calls_for("t2").is_empty());
    assert!(
        wake >= START_MS + GRACE + 30_000,
        "the loop waits out Retry-After: {wake}"
    );
    h.clock.set_ms(START_MS + GRACE + 29_000);
    h.step().await;
    assert!(
        h.calls_for("t2").is_empty(),
        "no call while Pictory asked us to wait"
    );
    h.run_until(START_MS + GRACE + 31_000).await;
    assert_eq!(h.calls_for("t2").len(), 1);
    let t1 = h.job("t1").await;
    assert!(t1.next_poll_at.unwrap() >= START_MS + GRACE + 30_000);
    let events = h.store.job_events(t1.pk).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "polled"
        && e.detail["http_status"] == 429
        && e.detail["outcome"] == "throttled"));
}

#[tokio::test]
async fn server_errors_reschedule_after_their_retry_after() {
    let mut h = harness(|_| {}).await;
    h.register("s1", MockState::InProgress).await;
    h.mock.force_next(Forced {
        status: 503,
        retry_after: Some("200".into()),
        body: String::new(),
        ..Default::default()
    });
    h.clock.set_ms(START_MS + GRACE);
    h.step().await;
    let job = h.job("s1").await;
    assert_eq!(job.status, JobStatus::Pending);
    assert_eq!(job.next_poll_at, Some(START_MS + GRACE + 200_000));
}

#[tokio::test]
async fn auth_failure_pauses_all_polling_until_a_probe_succeeds() {
    let mut h = harness(|c| c.rate = 1).await;
    for id in ["a1", "a2", "a3"] {
        h.register(id, MockState::InProgress).await;
    }
    h.mock.force_next(Forced {
        status: 403,
        retry_after: None,
        body: "error code: 1010".into(),
        ..Default::default()
    });
    let paused_at = START_MS + GRACE;
    h.clock.set_ms(paused_at);
    h.step().await;
    let problem = h.poller.problem().expect("paused");
    assert!(problem.contains("1010"), "{problem}");
    assert_eq!(h.mock.get_calls().len(), 1);
    for at in [
        paused_at + 1_001,
        paused_at + 5_000,
        paused_at + INTERVAL - 1,
    ] {
        h.clock.set_ms(at);
        h.step().await;
    }
    assert_eq!(h.mock.get_calls().len(), 1, "no polls while paused");
    // The probe, one interval later, fails again: still paused, one call only.
    h.mock.force_next(Forced {
        status: 401,
        retry_after: None,
        body: "{\"message\":\"Unauthorized\"}".into(),
        ..Default::default()
    });
    h.clock.set_ms(paused_at + INTERVAL);
    h.step().await;
    h.clock.set_ms(paused_at + INTERVAL + 1_001);
    h.step().await;
    assert_eq!(h.mock.get_calls().len(), 2);
    assert!(h.poller.problem().unwrap().contains("401"));
    // The next probe succeeds and polling resumes for everyone, at the rate limit.
    h.clock.set_ms(paused_at + 2 * INTERVAL);
    h.step().await;
    assert!(
        h.poller.problem().is_none(),
        "resumed after a successful call"
    );
    h.run_until(paused_at + 2 * INTERVAL + 3_000).await;
    for id in ["a1", "a2", "a3"] {
        assert_eq!(
            h.job(id).await.status,
            JobStatus::InProgress,
            "{id} was polled after resuming"
        );
    }
}

#[tokio::test]
async fn three_404s_in_a_row_make_a_job_not_found_and_new_evidence_revives_it() {
    let mut h = harness(|_| {}).await;
    h.register("n1", MockState::Gone).await;
    h.clock.set_ms(START_MS + GRACE);
    for poll in 1..=3 {
        let next = h.step().await;
        let job = h.job("n1").await;
        if poll < 3 {
            assert_eq!(job.status, JobStatus::Pending, "after {poll} 404s");
            h.clock.set_ms(job.next_poll_at.unwrap().max(next));
        } else {
            assert_eq!(job.status, JobStatus::NotFound);
            assert_eq!(job.next_poll_at, None, "polling stops");
        }
    }
    h.run_until(START_MS + 3_600_000).await;
    assert_eq!(h.calls_for("n1").len(), 3);
    // Pictory knows the job after all (eventual consistency): a refresh moves it on.
    h.mock.set_state("n1", MockState::Completed);
    let job = h.poller.refresh(&h.job("n1").await).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.resolved_by.as_deref(), Some("refresh"));
}

#[tokio::test]
async fn a_404_streak_is_broken_by_any_answer() {
    let mut h = harness(|_| {}).await;
    h.register("n2", MockState::Gone).await;
    h.clock.set_ms(START_MS + GRACE);
    h.step().await;
    h.step_at_next_poll("n2").await;
    h.mock.set_state("n2", MockState::InProgress);
    h.step_at_next_poll("n2").await;
    h.mock.set_state("n2", MockState::Gone);
    h.step_at_next_poll("n2").await;
    h.step_at_next_poll("n2").await;
    assert_eq!(
        h.job("n2").await.status,
        JobStatus::InProgress,
        "only two 404s since the last answer"
    );
    h.step_at_next_poll("n2").await;
    assert_eq!(h.job("n2").await.status, JobStatus::NotFound);
}

impl Harness {
    async fn step_at_next_poll(&mut self, id: &str) {
        let due = self.job(id).await.next_poll_at.expect("scheduled");
        self.clock.set_ms(due);
        self.step().await;
    }
}

#[tokio::test]
async fn the_deadline_times_a_job_out_and_stops_polling() {
    let mut h = harness(|c| c.deadline = Duration::from_secs(600)).await;
    h.register("d1", MockState::InProgress).await;
    h.run_until(START_MS + 3_600_000).await;
    let job = h.job("d1").await;
    assert_eq!(job.status, JobStatus::TimedOut);
    assert_eq!(job.next_poll_at, None);
    let calls = h.calls_for("d1");
    assert!(
        calls.iter().all(|&at| at <= START_MS + 600_000),
        "no call after the deadline: {calls:?}"
    );
    let events = h.store.job_events(job.pk).await.unwrap();
    let last_poll = events.iter().rev().find(|e| e.kind == "polled").unwrap();
    assert_eq!(
        last_poll.at,
        START_MS + 600_000,
        "the last poll is at the deadline"
    );
    let last_change = events
        .iter()
        .rev()
        .find(|e| e.kind == "status_changed")
        .unwrap();
    assert_eq!(last_change.detail["to"], "timed_out");
    assert_eq!(last_change.detail["cause"], "deadline");
    // New evidence still moves it.
    h.mock.set_state("d1", MockState::Failed);
    let job = h.poller.refresh(&job).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.error.unwrap().code, "TEXT_TO_VIDEO_FAILED");
}

#[tokio::test]
async fn a_restart_keeps_the_schedule_where_it_was() {
    let mut h = harness(|_| {}).await;
    h.register("r1", MockState::InProgress).await;
    h.clock.set_ms(START_MS + GRACE);
    h.step().await;
    let due = h.job("r1").await.next_poll_at.unwrap();
    h.restart().await;
    h.clock.set_ms(due - 1);
    h.step().await;
    assert_eq!(
        h.calls_for("r1").len(),
        1,
        "no extra poll because of the restart"
    );
    h.clock.set_ms(due);
    h.step().await;
    assert_eq!(h.calls_for("r1").len(), 2, "the due poll is not lost");
}

#[tokio::test]
async fn a_job_leased_by_a_crashed_poller_is_polled_after_the_lease() {
    let mut h = harness(|_| {}).await;
    h.register("l1", MockState::InProgress).await;
    h.clock.set_ms(START_MS + GRACE);
    // A poller claimed it and died before recording anything.
    let lease_until = h.now() + 65_000;
    let claimed = h
        .store
        .claim_due(h.now(), lease_until, 10, false)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    h.restart().await;
    h.clock.set_ms(lease_until - 1);
    h.step().await;
    assert!(h.calls_for("l1").is_empty());
    h.clock.set_ms(lease_until);
    h.step().await;
    assert_eq!(h.calls_for("l1").len(), 1);
}

#[tokio::test]
async fn idle_reconciler_sleeps_until_the_next_due_poll() {
    let mut h = harness(|c| c.grace = Duration::from_secs(10)).await;
    assert_eq!(
        h.step().await,
        START_MS + 30_000,
        "nothing scheduled: wake up to look again later"
    );
    h.register("i1", MockState::InProgress).await;
    h.clock.advance_ms(1);
    assert_eq!(
        h.step().await,
        START_MS + 10_000,
        "a poll due sooner than the idle wake-up is the next wake-up"
    );
    assert!(h.calls_for("i1").is_empty());
}

#[tokio::test]
async fn a_look_now_that_arrives_during_a_scheduled_poll_is_not_lost() {
    let mut h = harness(|_| {}).await;
    h.register("ln", MockState::InProgress).await;
    h.clock.set_ms(START_MS + GRACE);
    // The scheduled poll is slow, so it is surely in flight...
    h.mock.force_next(Forced {
        status: 200,
        body: h.mock.job_body("ln").unwrap().to_string(),
        delay: Duration::from_millis(400),
        ..Default::default()
    });
    h.reconciler.step(h.now()).await.unwrap();
    // ...when a webhook asks for a look now.
    h.store
        .ingest(delivery(
            &serde_json::json!({"job_id": "ln"}),
            h.now(),
            true,
        ))
        .await
        .unwrap();
    let during = h.job("ln").await;
    assert_eq!(during.poll_count, 0, "the poll had not answered yet");
    assert!(h.calls_for("ln").is_empty());
    h.reconciler.drain().await;
    assert_eq!(h.job("ln").await.poll_count, 1);
    assert_eq!(
        h.job("ln").await.next_poll_at,
        Some(START_MS + GRACE),
        "still due now"
    );
    h.mock.set_state("ln", MockState::Completed);
    h.clock.advance_ms(1_000);
    h.step().await;
    let job = h.job("ln").await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.resolved_by.as_deref(), Some("webhook"));
}

#[tokio::test]
async fn a_job_revived_after_its_deadline_is_not_timed_out_again() {
    let mut h = harness(|c| c.deadline = Duration::from_secs(600)).await;
    h.register("rv", MockState::InProgress).await;
    h.run_until(START_MS + 700_000).await;
    assert_eq!(h.job("rv").await.status, JobStatus::TimedOut);
    let job = h.poller.refresh(&h.job("rv").await).await.unwrap();
    assert_eq!(
        job.status,
        JobStatus::InProgress,
        "new evidence moves it on"
    );
    assert_eq!(
        job.next_poll_at, None,
        "and the schedule, long past its deadline, stays stopped"
    );
    let calls = h.calls_for("rv").len();
    h.run_until(START_MS + 3_600_000).await;
    assert_eq!(h.job("rv").await.status, JobStatus::InProgress);
    assert_eq!(h.calls_for("rv").len(), calls);
}

#[tokio::test]
async fn a_slow_or_garbled_pictory_is_retried_later_and_changes_nothing() {
    let mut h = harness(|_| {}).await;
    h.register("sg", MockState::Completed).await;
    h.clock.set_ms(START_MS + GRACE);
    // Slower than the client's timeout.
    h.mock.force_next(Forced {
        status: 200,
        body: "{}".into(),
        delay: Duration::from_secs(3),
        ..Default::default()
    });
    h.step().await;
    let job = h.job("sg").await;
    assert_eq!(job.status, JobStatus::Pending);
    assert_eq!(job.poll_count, 1);
    let events = h.store.job_events(job.pk).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "polled" && e.detail["outcome"] == "network_error"),
        "{events:?}"
    );
    // Garbage with a 200: an answer that cannot be read is a server error, not a state.
    h.mock.force_next(Forced {
        status: 200,
        body: "<html>oops</html>".into(),
        ..Default::default()
    });
    h.step_at_next_poll("sg").await;
    let job = h.job("sg").await;
    assert_eq!(job.status, JobStatus::Pending);
    assert!(job.next_poll_at.is_some(), "still scheduled");
    // Then Pictory is well again.
    h.step_at_next_poll("sg").await;
    assert_eq!(h.job("sg").await.status, JobStatus::Completed);
}

#[tokio::test]
async fn webhook_look_nows_cannot_starve_the_regular_schedule() {
    let mut h = harness(|c| c.rate = 1).await;
    h.register("scheduled", MockState::InProgress).await;
    h.clock.set_ms(START_MS + GRACE);
    // A stream of webhooks keeps asking for looks at other jobs.
    for n in 0..20 {
        let id = format!("hot-{n}");
        h.mock.set_state(&id, MockState::InProgress);
        h.store
            .ingest(delivery(&serde_json::json!({"job_id": id}), h.now(), true))
            .await
            .unwrap();
    }
    for _ in 0..4 {
        let next = h.step().await;
        h.clock.set_ms(next);
    }
    assert_eq!(
        h.calls_for("scheduled").len(),
        1,
        "one call in four goes to the schedule"
    );
    assert_eq!(h.mock.get_calls().len(), 4);
}
