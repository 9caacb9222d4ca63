//! `GET /v1/usage` and `jobhook_ai_credits_used_total`: exact sums of what Pictory reported.

use crate::helpers::*;
use jobhook::mock::MockState;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// What the test expects of one group: jobs, milli-credits, video milliseconds.
type Sums = BTreeMap<String, (i64, i64, i64)>;

/// One job as the fake ran it and jobhook recorded it.
struct Done {
    completed_at: i64,
    model: String,
    status: String,
    customer: Value,
    /// The fake's own figures.
    credits_milli: i64,
    video_ms: i64,
}

impl TestApp {
    async fn usage(&self, query: &str) -> Value {
        self.get_json(&format!("/v1/usage?{query}")).await
    }
}

/// The `data` of a usage answer as group -> (jobs, milli-credits, video ms), read back from the
/// JSON numbers (a drifted sum like 38.400000000000006 reads back as 38400.000000000004 and
/// fails the comparison with the exact integer).
fn groups(usage: &Value) -> Sums {
    usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let group = match &entry["group"] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (group, figures(entry))
        })
        .collect()
}

fn figures(entry: &Value) -> (i64, i64, i64) {
    let thousandths = |value: &Value| {
        let scaled = value.as_f64().unwrap() * 1000.0;
        assert_eq!(
            scaled,
            scaled.round(),
            "{value} is not exact in thousandths"
        );
        scaled as i64
    };
    (
        entry["jobs"].as_i64().unwrap(),
        thousandths(&entry["credits"]),
        thousandths(&entry["video_seconds"]),
    )
}

fn expect(done: &[Done], from: i64, to: i64, key: impl Fn(&Done) -> String) -> Sums {
    let mut sums = Sums::new();
    for job in done.iter().filter(|j| (from..to).contains(&j.completed_at)) {
        let entry = sums.entry(key(job)).or_default();
        entry.0 += 1;
        entry.1 += job.credits_milli;
        entry.2 += job.video_ms;
    }
    sums
}

fn rfc3339(ms: i64) -> String {
    jobhook::domain::time::rfc3339(ms)
}

#[tokio::test]
async fn usage_sums_the_fakes_own_figures_per_day_model_status_and_metadata_across_days() {
    let app = spawn_app_with_pictory(|_| {}).await;
    // (hours after START_MS the job ends, model, duration, customer, fails)
    let plan = [
        (1, "pixverse5.5", "8s", json!("acme"), false),
        (5, "pixverse5.5", "8s", json!("acme"), false),
        (22, "veo3.1_fast", "4s", json!("globex"), false),
        (23, "veo3.1", "6s", json!(7), true),
        (30, "pixverse5.5", "8s", json!("acme"), false),
        (34, "veo3.1", "8s", Value::Null, false),
        (47, "veo3.1_fast", "6s", json!("globex"), false),
        (52, "pixverse5.5", "10s", json!(7), false),
        (70, "pixverse5.5", "5s", json!("acme"), true),
    ];
    let mut done = Vec::new();
    for (hours, model, duration, customer, fails) in plan {
        let mut metadata = json!({"batch": "usage-test"});
        if !customer.is_null() {
            metadata["customer"] = customer.clone();
        }
        // Submitted and finished at that hour, so no poll falls due in between.
        app.clock.set_ms(START_MS + hours * HOUR);
        // The reconciler planned its next look by the clock before the jump.
        app.state.wake_reconciler();
        let body = json!({"prompt": format!("a clip of {duration} by {model}"), "model": model,
            "duration": duration, "metadata": metadata});
        let response = app.post_json("/v1/videos", &body).await;
        assert_eq!(response.status(), 201);
        let job: Value = response.json().await.unwrap();
        let id = job["job_id"].as_str().unwrap().to_owned();
        let state = if fails {
            MockState::Failed
        } else {
            MockState::Completed
        };
        let finished = app.finish(&id, state).await;
        let completed_at =
            jobhook::domain::time::parse_rfc3339(finished["completed_at"].as_str().unwrap())
                .unwrap();
        let fake = app.mock().job(&id).unwrap();
        let (credits_milli, video_ms) = if fails {
            (0, 0)
        } else {
            let seconds: i64 = duration.trim_end_matches('s').parse().unwrap();
            ((fake.credits * 1000.0).round() as i64, seconds * 1000)
        };
        done.push(Done {
            completed_at,
            model: model.to_owned(),
            status: finished["status"].as_str().unwrap().to_owned(),
            customer,
            credits_milli,
            video_ms,
        });
    }
    let start = START_MS;
    let end = START_MS + 4 * DAY;

    // Per UTC day over whole days: three days with jobs, from the daily summary.
    let by_day = app
        .usage(&format!("from=2025-11-29&to={}&group_by=day", rfc3339(end)))
        .await;
    let day_of = |job: &Done| jobhook::domain::time::rfc3339(job.completed_at)[..10].to_owned();
    assert_eq!(groups(&by_day), expect(&done, start, end, day_of));
    assert_eq!(groups(&by_day).len(), 3);
    // Three 8 s pixverse clips at 12.8 each: 38.4, not 38.400000000000006.
    let first_day = &by_day["data"][0];
    assert_eq!(first_day["group"], "2025-11-29");

    // Ranges that cut days at both ends, at one end, and inside one day: summary and jobs.
    for (from, to) in [
        (start + 3 * HOUR, start + 50 * HOUR),
        (start, start + 30 * HOUR + 1),
        (start + 22 * HOUR, start + 47 * HOUR),
        (start + 2 * HOUR, start + 23 * HOUR),
        (start + DAY, start + 2 * DAY),
    ] {
        let query = format!("from={}&to={}", rfc3339(from), rfc3339(to));
        let by_model = app.usage(&format!("{query}&group_by=model")).await;
        assert_eq!(
            groups(&by_model),
            expect(&done, from, to, |j| j.model.clone()),
            "{query}"
        );
        let by_status = app.usage(&format!("{query}&group_by=status")).await;
        assert_eq!(
            groups(&by_status),
            expect(&done, from, to, |j| j.status.clone()),
            "{query}"
        );
        let by_customer = app
            .usage(&format!("{query}&group_by=metadata.customer"))
            .await;
        assert_eq!(
            groups(&by_customer),
            expect(&done, from, to, |j| match &j.customer {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            }),
            "{query}"
        );
        let by_day = app.usage(&format!("{query}&group_by=day")).await;
        assert_eq!(groups(&by_day), expect(&done, from, to, day_of), "{query}");
        let total = expect(&done, from, to, |_| String::new());
        let total = total.values().next().copied().unwrap_or_default();
        assert_eq!(figures(&by_day["total"]), total, "{query}");
        assert_eq!(by_day["from"], rfc3339(from));
        assert_eq!(by_day["to"], rfc3339(to));
    }
    let pixverse = &app
        .usage(&format!(
            "from=2025-11-29&to={}&group_by=model",
            rfc3339(end)
        ))
        .await["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "pixverse5.5")
        .unwrap()
        .clone();
    // 12.8 x 3 + 16 (the 5 s clip failed): exact.
    assert_eq!(pixverse["credits"], json!(54.4));
    assert_eq!(pixverse["jobs"], 5);

    // A key no job has: one group, null.
    let absent = app
        .usage(&format!(
            "from=2025-11-29&to={}&group_by=metadata.nothing.here",
            rfc3339(end)
        ))
        .await;
    assert_eq!(absent["data"].as_array().unwrap().len(), 1);
    assert_eq!(absent["data"][0]["group"], Value::Null);
    assert_eq!(absent["data"][0]["jobs"], done.len());

    // The metric: the same exact totals, by model, for all time.
    let metrics = app.metrics().await;
    for (model, (_, credits_milli, _)) in expect(&done, 0, i64::MAX, |j| j.model.clone()) {
        let line = format!("jobhook_ai_credits_used_total{{model=\"{model}\"}}");
        assert_eq!(
            metric_value(&metrics, &line),
            Some(credits_milli as f64 / 1000.0),
            "{line} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn usage_is_exact_for_decimal_credits_tolerant_of_durations_and_counts_a_job_once() {
    let app = spawn_app().await;
    let completed = |id: &str, credits: Value, duration: Value| {
        json!({"job_id": id, "success": true, "data": {"status": "completed",
            "url": "https://cdn.example/v.mp4", "duration": duration,
            "lastFrameImageUrl": "https://cdn.example/l.png", "aiCreditsUsed": credits}})
    };
    app.post_json(
        "/v1/jobs",
        &json!({"job_id": "d1", "metadata": {"team": {"name": "ads"}}}),
    )
    .await;
    for body in [
        completed("d1", json!(0.1), json!("8s")),
        completed("d2", json!(0.2), json!(5)),
        completed("d3", json!("0.7"), json!("10.5s")),
        failed_body("d4"),
    ] {
        assert_eq!(app.webhook(body.to_string()).await.status(), 200);
    }
    let day = app.usage("from=2025-11-29&to=2025-11-30").await;
    // 0.1 + 0.2 + 0.7 in floating point is 0.9999999999999999.
    assert_eq!(
        day["total"],
        json!({"jobs": 4, "credits": 1.0, "video_seconds": 23.5})
    );
    assert_eq!(day["data"][0]["group"], "2025-11-29");
    let by_model = app
        .usage("from=2025-11-29&to=2025-11-30&group_by=model")
        .await;
    assert_eq!(
        by_model["data"][0]["group"], "unknown",
        "not submitted through jobhook"
    );
    let by_team = app
        .usage("from=2025-11-29&to=2025-11-30&group_by=metadata.team.name")
        .await;
    assert_eq!(
        groups(&by_team),
        Sums::from([
            ("null".to_owned(), (3, 900, 15_500)),
            ("ads".to_owned(), (1, 100, 8_000)),
        ])
    );

    // Nothing that leaves a job's status alone counts: a late webhook, a duplicate, a replay.
    app.webhook(in_progress_body("d1").to_string()).await;
    app.webhook(completed("d2", json!(0.2), json!(5)).to_string())
        .await;
    app.webhook(completed("d3", json!(9.9), json!("1s")).to_string())
        .await;
    let deliveries = app.deliveries("?job_id=d1").await;
    for delivery in deliveries {
        let id = delivery["id"].as_i64().unwrap();
        app.post_empty(&format!("/v1/deliveries/{id}/replay")).await;
    }
    // A job still in progress counts for nothing yet.
    app.webhook(in_progress_body("d5").to_string()).await;
    let again = app.usage("from=2025-11-29&to=2025-11-30").await;
    assert_eq!(again["total"], day["total"]);

    // The day boundary: a job ending just after midnight counts for the next day.
    app.clock.set_ms(START_MS + DAY + 1);
    app.webhook(completed("d6", json!(2), json!("4s")).to_string())
        .await;
    let days = app.usage("from=2025-11-29&to=2025-12-01").await;
    assert_eq!(
        groups(&days),
        Sums::from([
            ("2025-11-29".to_owned(), (4, 1_000, 23_500)),
            ("2025-11-30".to_owned(), (1, 2_000, 4_000)),
        ])
    );
    let first_day_only = app
        .usage(&format!("from=2025-11-29&to={}", rfc3339(START_MS + DAY)))
        .await;
    assert_eq!(first_day_only["total"]["jobs"], 4, "`to` is exclusive");
}

#[tokio::test]
async fn usage_defaults_to_the_last_30_days_by_day_and_refuses_bad_queries() {
    let app = spawn_app().await;
    app.webhook(completed_body("recent").to_string()).await;
    let usage = app.usage("").await;
    assert_eq!(usage["group_by"], "day");
    assert_eq!(usage["to"], rfc3339(START_MS));
    assert_eq!(usage["from"], rfc3339(START_MS - 30 * DAY));
    // `to` is now, exclusive: a job completed this very millisecond is not in yet.
    assert_eq!(usage["total"]["jobs"], 0);
    let later = app.usage(&format!("to={}", rfc3339(START_MS + 1))).await;
    assert_eq!(
        later["total"],
        json!({"jobs": 1, "credits": 12.8, "video_seconds": 8.0})
    );
    // The same question twice: the same answer, nothing changed.
    assert_eq!(
        app.usage(&format!("to={}", rfc3339(START_MS + 1))).await,
        later
    );

    let long_key = format!("group_by=metadata.{}", "k".repeat(65));
    let huge = format!("group_by={}", "x".repeat(5000));
    for query in [
        "from=yesterday",
        "to=2025-13-01",
        "from=1969-12-31",
        "from=2025-11-30&to=2025-11-29",
        "from=2025-11-29&to=2025-11-29",
        "group_by=week",
        "group_by=metadata.",
        "group_by=metadata.a%22%5D",
        "group_by=metadata.a b",
        long_key.as_str(),
        huge.as_str(),
        "from=%FF",
    ] {
        let response = app.get(&format!("/v1/usage?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_query", "{query}");
        assert!(
            error["error"]["message"].as_str().unwrap().len() < 400,
            "client input is not echoed at length: {error}"
        );
    }
    let unauthorised = app
        .client
        .get(format!("{}/v1/usage", app.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);
}

#[tokio::test]
async fn jobs_final_before_the_usage_tables_existed_are_counted() {
    if skip_on_postgres("builds a database at SQLite's schema from before migration 0004") {
        return;
    }
    // A database at the schema before usage was kept, with jobs already final.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let old_migrations = dir.path().join("migrations");
    std::fs::create_dir(&old_migrations).unwrap();
    for entry in std::fs::read_dir("migrations/sqlite").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0004" {
            std::fs::copy(&path, old_migrations.join(name)).unwrap();
        }
    }
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(old_migrations.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        for (id, status, output, request, completed_at) in [
            (
                "old-1",
                "completed",
                Some(r#"{"duration":"8s","ai_credits_used":12.8}"#),
                Some(r#"{"prompt":"p","model":"veo3.1"}"#),
                START_MS - DAY + 5,
            ),
            (
                "old-2",
                "completed",
                Some(r#"{"duration":"5","ai_credits_used":8.0}"#),
                Some(r#"{"prompt":"p"}"#),
                START_MS - DAY + 6,
            ),
            ("old-3", "failed", None, None, START_MS - 10),
            ("old-4", "in_progress", None, None, START_MS - 10),
        ] {
            sqlx::query(
                "INSERT INTO jobs (job_id, status, output, request, created_at, updated_at, \
                 completed_at) VALUES ($1, $2, $3, $4, $5, $5, $5)",
            )
            .bind(id)
            .bind(status)
            .bind(output)
            .bind(request)
            .bind(completed_at)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let mut options = Options::new(|_| {});
    options.db = Some(TestDb::sqlite_at(&db, Some(dir)));
    let app = spawn(options).await;
    let usage = app
        .usage("from=2025-11-28&to=2025-11-30&group_by=model")
        .await;
    assert_eq!(
        groups(&usage),
        Sums::from([
            ("pixverse5.5".to_owned(), (1, 8_000, 5_000)),
            ("unknown".to_owned(), (1, 0, 0)),
            ("veo3.1".to_owned(), (1, 12_800, 8_000)),
        ])
    );
    let by_day = app.usage("from=2025-11-28&to=2025-11-30").await;
    assert_eq!(by_day["data"][0]["group"], "2025-11-28");
    assert_eq!(by_day["data"][0]["jobs"], 3);
}
