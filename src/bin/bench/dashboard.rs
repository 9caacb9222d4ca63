//! `jobhook-bench --dashboard`: the dashboard's jobs page over 1,000,000 stored jobs (SPEC §11:
//! "usable at 1,000,000 jobs"). Server time to first byte of the page, signed in, against
//! `GET /v1/jobs` (the same list, as JSON) and `GET /healthz` in the same run, and what the
//! page weighs before thumbnails (the HTML and its CSS and JS).

use super::{jobhook_env, now_ms, wait_ready, Row, Server};
use anyhow::Context as _;
use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use rusqlite::{params, Connection};
use std::path::Path;
use std::time::Instant;

const TOKEN: &str = "bench-dashboard-token";
/// Timed requests per figure (one untimed request first warms the page cache).
const RUNS: usize = 200;

pub async fn print(count: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("jobhook-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let result = figures(&dir, count).await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("\n| measure | jobhook | baseline | ratio | target |\n|---|---|---|---|---|");
    for row in result? {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.what, row.value, row.baseline, row.ratio, row.target
        );
    }
    Ok(())
}

async fn figures(dir: &Path, count: usize) -> anyhow::Result<Vec<Row>> {
    let db = dir.join(format!("dashboard-{count}.db"));
    let seeding = Instant::now();
    seed(&db, count).await?;
    eprintln!(
        "bench: seeded {count} jobs (with requests, metadata, outputs, one history entry each) in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let server = Server::start(
        &["jobhook"],
        &jobhook_env(&db, &[("JOBHOOK_API_TOKENS", TOKEN.to_owned())]),
    )
    .await?;
    wait_ready(&server.api).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = sign_in(&client, &server.api).await?;

    let page = |path: &str| {
        client
            .get(format!("{}{path}", server.api))
            .header(COOKIE, format!("jobhook_session={cookie}"))
    };
    let jobs = time(|| page("/")).await?;
    let api = time(|| {
        client
            .get(format!("{}/v1/jobs", server.api))
            .bearer_auth(TOKEN)
    })
    .await?;
    let health = time(|| client.get(format!("{}/healthz", server.public))).await?;
    let middle = count / 2;
    let by_id = time(|| page(&format!("/?q=seed-{middle}"))).await?;
    let by_value = time(|| page(&format!("/?q=ORDER-{middle}"))).await?;
    let by_common_value = time(|| page("/?q=customer-7")).await?;
    let job_page = time(|| page(&format!("/jobs/seed-{middle}"))).await?;
    let html = page("/").send().await?.text().await?;
    let mut assets = 0;
    for href in asset_hrefs(&html) {
        assets += client
            .get(format!("{}{href}", server.api))
            .send()
            .await?
            .bytes()
            .await?
            .len();
    }
    server.stop().await;

    let weight = html.len() + assets;
    // Row names are static text; a bench run makes a handful of these once.
    let named = |text: String| -> &'static str { Box::leak(text.into_boxed_str()) };
    let ms = |t: &Timing| format!("p50 {:.2} / p99 {:.2}", t.p50, t.p99);
    Ok(vec![
        Row::figure(
            named(format!(
                "dashboard jobs page (50 rows of {count} jobs), server time to first byte, ms"
            )),
            ms(&jobs),
            format!("GET /v1/jobs (same 50, JSON) {}", ms(&api)),
            "< 50 ms",
        ),
        Row::figure(
            "GET /healthz, time to first byte, ms (the floor of a request on this machine)",
            ms(&health),
            "-".into(),
            "(context)",
        ),
        Row::figure(
            "jobs page weight before thumbnails (HTML + CSS + JS), KB",
            format!("{:.1}", weight as f64 / 1000.0),
            format!(
                "HTML {:.1} KB, CSS and JS {:.1} KB (cached a year)",
                html.len() as f64 / 1000.0,
                assets as f64 / 1000.0
            ),
            "< 100 KB",
        ),
        Row::figure(
            "jobs page searching a job id, ms",
            ms(&by_id),
            "-".into(),
            "(context)",
        ),
        Row::figure(
            "jobs page searching a metadata value one job has, ms",
            ms(&by_value),
            "-".into(),
            "(context)",
        ),
        Row::figure(
            named(format!(
                "jobs page searching a metadata value {} jobs share (the newest 1,000 read), ms",
                count / 40
            )),
            ms(&by_common_value),
            "-".into(),
            "(context)",
        ),
        Row::figure("a job's page, ms", ms(&job_page), "-".into(), "(context)"),
    ])
}

struct Timing {
    p50: f64,
    p99: f64,
}

/// Time to the response's head, `RUNS` times one after another: axum renders a page whole
/// before it answers, so this is the server's time to first byte plus a loopback round trip.
async fn time(request: impl Fn() -> reqwest::RequestBuilder) -> anyhow::Result<Timing> {
    let mut timings = Vec::with_capacity(RUNS);
    for run in 0..=RUNS {
        let sent = Instant::now();
        let response = request().send().await?;
        let elapsed = sent.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(response.status().is_success(), "{}", response.status());
        response.bytes().await?;
        if run > 0 {
            timings.push(elapsed);
        }
    }
    timings.sort_by(|a, b| a.total_cmp(b));
    Ok(Timing {
        p50: timings[timings.len() / 2],
        p99: timings[timings.len() * 99 / 100],
    })
}

/// Signs in through the form, as a browser does; returns the session cookie's value.
async fn sign_in(client: &reqwest::Client, api: &str) -> anyhow::Result<String> {
    let form = client.get(format!("{api}/login")).send().await?;
    let anonymous = cookie_of(&form).context("no cookie with the sign-in form")?;
    let html = form.text().await?;
    let marker = "<meta name=\"csrf-token\" content=\"";
    let start = html.find(marker).context("no CSRF token")? + marker.len();
    let csrf = &html[start..start + html[start..].find('"').context("CSRF token")?];
    let signed = client
        .post(format!("{api}/login"))
        .header(COOKIE, format!("jobhook_session={anonymous}"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([
            ("csrf", csrf),
            ("token", TOKEN),
        ])?)
        .send()
        .await?;
    cookie_of(&signed).context("sign-in gave no session")
}

fn cookie_of(response: &reqwest::Response) -> Option<String> {
    let set = response.headers().get(SET_COOKIE)?.to_str().ok()?;
    let (_, value) = set.split(';').next()?.split_once('=')?;
    Some(value.to_owned())
}

fn asset_hrefs(html: &str) -> Vec<&str> {
    html.split(['"', '\''])
        .filter(|part| part.starts_with("/assets/"))
        .collect()
}

/// `count` completed jobs as jobhook stores them: a request, metadata (an order number of its
/// own and one of 40 customers), Pictory's outputs, one history entry, and the metadata
/// values search reads. SQL, in one transaction: submitting a million jobs through the API
/// would take the bench longer than everything else together.
async fn seed(db: &Path, count: usize) -> anyhow::Result<()> {
    let url = format!("sqlite://{}", db.display());
    let store = jobhook::store::open(&url).await?;
    store.migrate().await?;
    store.close().await;
    let start = now_ms() - 30 * 86_400_000;
    let mut connection = Connection::open(db)?;
    let tx = connection.transaction()?;
    tx.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO jobs (id, job_id, status, request, metadata, output, resolved_by, \
           poll_count, created_at, updated_at, completed_at, webhook_received_at, seq) \
         SELECT i, 'seed-' || i, 'completed', \
           json_object('prompt', 'a seeded clip, number ' || i || ', of boats in a harbour', \
             'model', 'pixverse5.5', 'duration', '8s'), \
           json_object('order', 'order-' || i, 'customer', 'customer-' || (i % 40)), \
           json_object('url', 'https://cdn.example/' || i || '/video.mp4', 'duration', '8s', \
             'width', 1280, 'height', 720, \
             'thumbnail_image_url', 'https://cdn.example/' || i || '/thumbnail.jpg', \
             'last_frame_image_url', 'https://cdn.example/' || i || '/last-frame.png', \
             'preview_image_url', 'https://cdn.example/' || i || '/preview.jpg', \
             'ai_credits_used', 12.8), \
           'webhook', 1, ?2 + i * 2000, ?2 + i * 2000 + 1000, ?2 + i * 2000 + 1000, \
           ?2 + i * 2000 + 500, i FROM n",
        params![count as i64, start],
    )?;
    tx.execute(
        "INSERT INTO job_events (id, job_pk, at, kind, detail) \
         SELECT id, id, updated_at, 'registered', '{\"cause\":\"api\"}' FROM jobs",
        [],
    )?;
    tx.execute(
        "INSERT INTO job_metadata_values (value, job_pk) \
         SELECT 'order-' || id, id FROM jobs UNION ALL \
         SELECT 'customer-' || (id % 40), id FROM jobs",
        [],
    )?;
    tx.commit()?;
    Ok(())
}
