//! The dashboard over real sockets (SPEC §11): sign-in and out, the cookie's flags, CSRF,
//! who is kept out, bad forms, actions sent twice, and the search. What a browser does with
//! the pages (live updates, the video, small screens) is tested in a real one:
//! `tests/browser/test_dashboard.py`, run by `.ci/browser`.

use crate::helpers::*;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

/// A browser, as far as the dashboard can tell: keeps its one cookie, follows no redirect.
struct Browser {
    client: Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(app: &TestApp) -> Browser {
        Browser {
            client: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.api_url.clone(),
            cookie: None,
        }
    }

    fn keep(&mut self, response: &Response) {
        if let Some(set) = set_cookie(response) {
            let value = set
                .split(';')
                .next()
                .and_then(|pair| pair.split_once('='))
                .map(|(_, value)| value.to_owned())
                .unwrap();
            self.cookie = (!value.is_empty()).then_some(value);
        }
    }

    fn with_cookie(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cookie {
            Some(value) => request.header(COOKIE, format!("jobhook_session={value}")),
            None => request,
        }
    }

    async fn get(&mut self, path: &str) -> Response {
        let request = self.with_cookie(self.client.get(format!("{}{path}", self.base)));
        let response = request.send().await.unwrap();
        self.keep(&response);
        response
    }

    /// The page's HTML, which must answer 200.
    async fn page(&mut self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.unwrap()
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let body = serde_urlencoded::to_string(fields).unwrap();
        self.post_raw(path, body, "application/x-www-form-urlencoded")
            .await
    }

    async fn post_raw(&mut self, path: &str, body: String, content_type: &str) -> Response {
        let request = self.with_cookie(
            self.client
                .post(format!("{}{path}", self.base))
                .header(CONTENT_TYPE, content_type)
                .body(body),
        );
        let response = request.send().await.unwrap();
        self.keep(&response);
        response
    }

    /// Signs in with `token` through the form, as a person would.
    async fn sign_in(&mut self, token: &str) -> Response {
        let form = self.page("/login").await;
        let csrf = csrf_in(&form);
        self.post(
            "/login",
            &[("csrf", &csrf), ("token", token), ("next", "/")],
        )
        .await
    }
}

fn set_cookie(response: &Response) -> Option<String> {
    response
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn location(response: &Response) -> String {
    response.headers()[LOCATION].to_str().unwrap().to_owned()
}

/// The page's CSRF token, as its forms carry it.
fn csrf_in(html: &str) -> String {
    let marker = "<meta name=\"csrf-token\" content=\"";
    let start = html.find(marker).expect("every page has its CSRF token") + marker.len();
    let token = &html[start..start + html[start..].find('"').unwrap()];
    if html.contains("name=\"csrf\" value=\"") {
        assert_eq!(
            hidden_field(html, "csrf"),
            token,
            "the forms carry the same token"
        );
    }
    token.to_owned()
}

fn hidden_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

/// The ids the jobs table lists, top first.
fn listed(html: &str) -> Vec<String> {
    html.split("<tr data-job=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn signing_in_keeps_a_signed_http_only_strict_session_and_never_the_token() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);

    // Not signed in: the jobs page sends the browser to the sign-in form, and back after it.
    let first = browser.get("/").await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&first), "/login?next=%2F");

    let refused = browser.sign_in("not-the-token").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(
        set_cookie(&refused).is_none(),
        "no session for a wrong token"
    );
    assert_eq!(browser.get("/").await.status(), StatusCode::SEE_OTHER);

    let signed_in = browser.sign_in(TOKEN).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&signed_in), "/");
    let cookie = set_cookie(&signed_in).unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(flag), "{flag} missing from {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain http on loopback: {cookie}"
    );
    assert!(
        !cookie.contains(TOKEN),
        "the token itself is never in the cookie"
    );
    let html = browser.page("/").await;
    assert!(html.contains("<h1>Jobs</h1>"));
    assert!(html.contains("Sign out"));

    // Behind a TLS proxy the cookie is Secure.
    let mut behind_proxy = Browser::new(&app);
    let form = behind_proxy.page("/login").await;
    let response = behind_proxy
        .with_cookie(behind_proxy.client.post(format!("{}/login", app.api_url)))
        .header("x-forwarded-proto", "https")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([("csrf", csrf_in(&form).as_str()), ("token", TOKEN)])
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(&response).unwrap().contains("; Secure"));

    // The session reads the API (what the browser fetches by itself), and changes nothing.
    let session = browser.cookie.clone().unwrap();
    let read = app
        .client
        .get(format!("{}/v1/jobs", app.api_url))
        .header(COOKIE, format!("jobhook_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let write = app
        .client
        .post(format!("{}/v1/jobs", app.api_url))
        .header(COOKIE, format!("jobhook_session={session}"))
        .json(&json!({"job_id": "by-cookie"}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 401);

    // Signing out clears the cookie; the browser is asked for a token again.
    let page = browser.page("/").await;
    let out = browser.post("/logout", &[("csrf", &csrf_in(&page))]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&out), "/login");
    assert!(set_cookie(&out).unwrap().contains("Max-Age=0"));
    assert_eq!(browser.get("/").await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_session_ends_after_its_time_and_when_its_token_is_removed() {
    let mut app = spawn_app_with(|config| {
        config.dashboard.session_ttl = std::time::Duration::from_secs(600);
        config
            .api
            .tokens
            .push(secrecy::SecretString::from("retired-token"));
    })
    .await;
    let mut browser = Browser::new(&app);
    assert_eq!(browser.sign_in(TOKEN).await.status(), StatusCode::SEE_OTHER);
    browser.page("/").await;
    app.clock.advance_ms(601_000);
    assert_eq!(browser.get("/").await.status(), StatusCode::SEE_OTHER);

    // The same secret, a shorter token list: sessions of the removed token are worth nothing.
    let mut kept = Browser::new(&app);
    assert_eq!(kept.sign_in(TOKEN).await.status(), StatusCode::SEE_OTHER);
    let mut retired = Browser::new(&app);
    assert_eq!(
        retired.sign_in("retired-token").await.status(),
        StatusCode::SEE_OTHER
    );
    retired.page("/").await;
    app.stop().await.unwrap();
    let mut options = Options::new(|_| {});
    options.db = Some(app.db.take());
    options.clock = Some(app.clock.clone());
    let restarted = spawn(options).await;
    for browser in [&mut kept, &mut retired] {
        browser.base = restarted.api_url.clone();
    }
    kept.page("/").await;
    assert_eq!(retired.get("/").await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn unauthorised_requests_are_sent_to_sign_in_or_refused() {
    let app = spawn_app().await;
    app.register("kept-out").await;
    let mut browser = Browser::new(&app);
    let to_job = browser.get("/jobs/kept-out?done=refreshed").await;
    assert_eq!(to_job.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&to_job),
        "/login?next=%2Fjobs%2Fkept-out%3Fdone%3Drefreshed"
    );
    assert_eq!(browser.get("/ops").await.status(), StatusCode::SEE_OTHER);
    // What scripts fetch, and every action, is refused outright.
    assert_eq!(
        browser.get("/live/rows?id=kept-out").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let page = browser.page("/login").await;
    let refresh = browser
        .post("/jobs/kept-out/refresh", &[("csrf", &csrf_in(&page))])
        .await;
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
    // A session that is not signed in reads nothing from the API.
    let anonymous = app
        .client
        .get(format!("{}/v1/jobs", app.api_url))
        .header(
            COOKIE,
            format!("jobhook_session={}", browser.cookie.clone().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // A forged cookie is no cookie.
    browser.cookie = Some("v1.AAAA.0.AAAAAAAAAAAA.AAAA".into());
    assert_eq!(browser.get("/").await.status(), StatusCode::SEE_OTHER);
    // A sign-in form may only send the browser back to this site.
    let mut browser = Browser::new(&app);
    let form = browser.page("/login").await;
    let away = browser
        .post(
            "/login",
            &[
                ("csrf", &csrf_in(&form)),
                ("token", TOKEN),
                ("next", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!(location(&away), "/");
    assert_eq!(app.job("kept-out").await["poll_count"], 0);
}

#[tokio::test]
async fn a_post_without_its_csrf_token_is_refused_and_does_nothing() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let job = app
        .completed_video(&json!({"prompt": "a lighthouse in a storm"}))
        .await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    let polls = app.job(&id).await["poll_count"].as_i64().unwrap();
    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;
    let page = browser.page(&format!("/jobs/{id}")).await;
    let csrf = csrf_in(&page);

    let mut other = Browser::new(&app);
    other.sign_in(TOKEN).await;
    let foreign = csrf_in(&other.page("/").await);

    let refresh = format!("/jobs/{id}/refresh");
    for fields in [
        vec![],
        vec![("csrf", "")],
        vec![("csrf", "forged")],
        vec![("csrf", foreign.as_str())],
    ] {
        let refused = browser.post(&refresh, &fields).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{fields:?}");
        assert!(refused.text().await.unwrap().contains("CSRF"));
    }
    assert_eq!(app.job(&id).await["poll_count"], polls, "nothing was asked");
    let out = browser.post("/logout", &[]).await;
    assert_eq!(
        out.status(),
        StatusCode::FORBIDDEN,
        "signing out needs it too"
    );

    // With its token the same button works: back to the job, one Get Job call more.
    let done = browser.post(&refresh, &[("csrf", &csrf)]).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), format!("/jobs/{id}?done=refreshed"));
    assert_eq!(app.job(&id).await["poll_count"], polls + 1);
    let page = browser.page(&location(&done)).await;
    assert!(page.contains("Asked Pictory"));
}

#[tokio::test]
async fn without_api_tokens_no_sign_in_is_asked_but_actions_still_need_csrf() {
    let app = spawn_app_with(|config| config.api.tokens.clear()).await;
    app.register("open-job").await;
    let mut browser = Browser::new(&app);
    let first = browser.get("/").await;
    assert_eq!(first.status(), 200);
    let cookie = set_cookie(&first).unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let html = first.text().await.unwrap();
    assert!(!html.contains("Sign out"));
    assert_eq!(listed(&html), ["open-job"]);
    assert_eq!(browser.get("/login").await.status(), StatusCode::SEE_OTHER);
    // receive-only: refresh is refused by the API's own rule, after the CSRF check.
    let refused = browser.post("/jobs/open-job/refresh", &[]).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let csrf = csrf_in(&browser.page("/jobs/open-job").await);
    let conflict = browser
        .post("/jobs/open-job/refresh", &[("csrf", &csrf)])
        .await;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    assert!(conflict.text().await.unwrap().contains("receive-only"));
}

#[tokio::test]
async fn malformed_and_oversized_forms_are_refused() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let job = app
        .completed_video(&json!({"prompt": "waves on a rocky shore"}))
        .await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;
    let page = browser.page(&format!("/jobs/{id}")).await;
    let csrf = csrf_in(&page);
    let key = hidden_field(&page, "idempotency_key");
    let path = format!("/jobs/{id}/continue");

    let huge = "x".repeat(100 * 1024);
    let too_big = browser
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("idempotency_key", &key),
                ("prompt", &huge),
            ],
        )
        .await;
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let no_prompt = browser
        .post(&path, &[("csrf", &csrf), ("idempotency_key", &key)])
        .await;
    assert_eq!(no_prompt.status(), StatusCode::BAD_REQUEST);
    let as_json = browser
        .post_raw(
            &path,
            json!({"csrf": csrf, "prompt": "x"}).to_string(),
            "application/json",
        )
        .await;
    assert_eq!(as_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let bad_key = browser
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("idempotency_key", "a\u{1}b"),
                ("prompt", "a long prompt here"),
            ],
        )
        .await;
    assert_eq!(bad_key.status(), StatusCode::BAD_REQUEST);
    // Pictory's rules, as the API applies them: a 422 naming the field.
    let short = browser
        .post(
            &path,
            &[("csrf", &csrf), ("idempotency_key", &key), ("prompt", "hi")],
        )
        .await;
    assert_eq!(short.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(short.text().await.unwrap().contains("prompt"));
    assert_eq!(app.mock().generate_calls(), 1, "nothing reached Pictory");
    // Queries that the API refuses are shown on the page, not as a crash.
    let bad_time = browser.get("/?updated_after=yesterday").await;
    assert_eq!(bad_time.status(), StatusCode::BAD_REQUEST);
    assert!(bad_time.text().await.unwrap().contains("updated_after"));
    let bad_cursor = browser.get("/?cursor=%%%").await;
    assert_eq!(bad_cursor.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        browser.get("/jobs/no-such-job").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_continue_form_sent_twice_makes_one_clip() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let job = app
        .completed_video(
            &json!({"prompt": "a harbour at dawn", "model": "veo3.1_fast", "duration": "4s"}),
        )
        .await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;
    let page = browser.page(&format!("/jobs/{id}")).await;
    assert!(page.contains("Continue: the next clip"));
    let fields = [
        ("csrf", csrf_in(&page)),
        ("idempotency_key", hidden_field(&page, "idempotency_key")),
        ("prompt", "the boats reach the open sea".to_owned()),
        ("model", "veo3.1_fast".to_owned()),
        ("duration", "".to_owned()),
        ("aspectRatio", "".to_owned()),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let path = format!("/jobs/{id}/continue");
    let first = browser.post(&path, &fields).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let again = browser.post(&path, &fields).await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&first),
        location(&again),
        "the same clip both times"
    );
    assert_eq!(
        app.mock().generate_calls(),
        2,
        "one Generate call for the form"
    );
    let child = browser.page(&location(&first)).await;
    assert!(
        child.contains(&format!("href=\"/jobs/{id}\"")),
        "links back to its parent"
    );
    let chain = app.get_json(&format!("/v1/jobs/{id}/chain")).await;
    assert_eq!(chain["data"].as_array().unwrap().len(), 2);

    // Refresh and replay twice: each does its work again, and answers the same page.
    let csrf = csrf_in(&page);
    for _ in 0..2 {
        let done = browser
            .post(&format!("/jobs/{id}/refresh"), &[("csrf", &csrf)])
            .await;
        assert_eq!(location(&done), format!("/jobs/{id}?done=refreshed"));
    }
}

#[tokio::test]
async fn the_search_finds_jobs_by_id_submission_id_or_a_metadata_value() {
    let app = spawn_app().await;
    let register = |id: &'static str, metadata: Value| {
        let app = &app;
        async move {
            let response = app
                .post_json("/v1/jobs", &json!({"job_id": id, "metadata": metadata}))
                .await;
            assert_eq!(response.status(), 201);
        }
    };
    register(
        "order-17",
        json!({"order": "A-17", "customer": {"name": "Acme Corp"}, "n": 42}),
    )
    .await;
    register(
        "order-18",
        json!({"order": "A-18", "customer": {"name": "ACME corp"}, "tags": ["rush"]}),
    )
    .await;
    register(
        "other",
        json!({"order": "B-1", "note": "acme corp is mentioned in passing"}),
    )
    .await;
    app.webhook(in_progress_body("order-18").to_string()).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;

    assert_eq!(listed(&browser.page("/?q=order-17").await), ["order-17"]);
    assert_eq!(
        listed(&browser.page("/?q=a-17").await),
        ["order-17"],
        "values ignore case"
    );
    assert_eq!(
        listed(&browser.page("/?q=42").await),
        ["order-17"],
        "numbers too"
    );
    assert_eq!(
        listed(&browser.page("/?q=rush").await),
        ["order-18"],
        "array elements too"
    );
    assert_eq!(
        listed(&browser.page("/?q=%20Acme%20Corp%20").await),
        ["order-18", "order-17"],
        "nested values, whole, newest change first"
    );
    assert_eq!(
        listed(&browser.page("/?q=acme+corp&status=in_progress").await),
        ["order-18"],
        "with the other filters"
    );
    let nothing = browser.page("/?q=acme").await;
    assert!(listed(&nothing).is_empty(), "a value matches whole");
    assert!(nothing.contains("No jobs found"));

    // The same search is the API's: GET /v1/jobs?q=.
    let api = app.get_json("/v1/jobs?q=ACME%20CORP&limit=1").await;
    assert_eq!(api["data"][0]["job_id"], "order-18");
    let next = api["next_cursor"].as_str().unwrap();
    let page2 = app
        .get_json(&format!("/v1/jobs?q=ACME%20CORP&limit=1&cursor={next}"))
        .await;
    assert_eq!(page2["data"][0]["job_id"], "order-17");
    assert!(page2["next_cursor"].is_null());
    let too_long = app.get(&format!("/v1/jobs?q={}", "x".repeat(300))).await;
    assert_eq!(too_long.status(), 400);
}

#[tokio::test]
async fn a_submission_is_found_by_its_submission_id_and_its_metadata() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let response = app
        .post_json(
            "/v1/videos",
            &json!({"prompt": "a red kite over hills", "metadata": {"campaign": "Spring-24"}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let job: Value = response.json().await.unwrap();
    let submission = job["submission_id"].as_str().unwrap();
    let job_id = job["job_id"].as_str().unwrap();
    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;
    for q in [submission, job_id, "spring-24"] {
        assert_eq!(
            listed(&browser.page(&format!("/?q={q}")).await),
            [job_id],
            "{q}"
        );
    }
}

#[tokio::test]
async fn jobs_recorded_before_the_search_index_existed_are_found_after_the_migration() {
    let app = spawn_app().await;
    app.post_json(
        "/v1/jobs",
        &json!({"job_id": "old-job", "metadata": {"order": "Z-9", "deep": {"list": [true, 7.5]}}}),
    )
    .await;
    let mut app = app;
    app.stop().await.unwrap();
    // Undo the migration, as if the job had been recorded by the version before it.
    let db = app.db.take();
    let version = if db.is_postgres() { 5 } else { 6 };
    {
        let store_url = db.url.clone();
        let undo = [
            "DROP TABLE job_metadata_values".to_owned(),
            format!("DELETE FROM _sqlx_migrations WHERE version = {version}"),
        ];
        if db.is_postgres() {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&store_url).await.unwrap();
            for sql in &undo {
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
            conn.close().await.unwrap();
        } else {
            use sqlx::Connection as _;
            let mut conn = sqlx::SqliteConnection::connect(&store_url).await.unwrap();
            for sql in &undo {
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
            conn.close().await.unwrap();
        }
    }
    let mut options = Options::new(|_| {});
    options.db = Some(db);
    let app = spawn(options).await;
    for q in ["z-9", "true", "7.5", "old-job"] {
        let found = app.get_json(&format!("/v1/jobs?q={q}")).await;
        assert_eq!(found["data"][0]["job_id"], "old-job", "{q}");
    }
}

#[tokio::test]
async fn pages_show_a_job_its_history_and_the_operations() {
    let app = spawn_app_with_pictory(|_| {}).await;
    let job = app
        .completed_video(&json!({"prompt": "a lighthouse at night", "metadata": {"shot": 3}}))
        .await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    let mut browser = Browser::new(&app);
    browser.sign_in(TOKEN).await;

    let jobs = browser.page("/").await;
    assert_eq!(listed(&jobs), [id.as_str()]);
    assert!(jobs.contains(&format!(
        "src=\"{}\"",
        job["output"]["thumbnail_image_url"].as_str().unwrap()
    )));
    let page = browser.page(&format!("/jobs/{id}")).await;
    let video = job["output"]["url"].as_str().unwrap();
    assert!(page.contains(&format!(
        "<video id=\"video\" controls preload=\"metadata\" playsinline src=\"{video}\""
    )));
    for expected in [
        "Webhook",
        "Get Job",
        "Status",
        "pending → completed",
        "a lighthouse at night",
        "&#34;shot&#34;: 3",
        "Replay",
    ] {
        assert!(
            page.contains(expected),
            "{expected} missing from the job page"
        );
    }
    assert!(!page.contains("Archive again"), "archiving is off");
    // Rows for the live table, as the page renders them; unknown ids are left out.
    let rows = browser.page(&format!("/live/rows?id={id}&id=nope")).await;
    assert_eq!(listed(&rows), [id.as_str()]);

    let ops = browser.page("/ops").await;
    for expected in [
        "Get Job calls, last minute",
        "of at most 300",
        "Polling is running",
        "Polls due now",
    ] {
        assert!(
            ops.contains(expected),
            "{expected} missing from the operations page"
        );
    }

    // Every page is private: not cached, not framed, only jobhook's own scripts.
    let response = browser.get("/").await;
    let headers = response.headers();
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    // The assets are embedded and cached for long under names that change with them.
    let css = jobs
        .split("rel=\"stylesheet\" href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let asset = browser.get(css).await;
    assert_eq!(asset.status(), 200);
    assert!(asset.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert_eq!(browser.get("/assets/dashboard.css").await.status(), 404);
}

#[tokio::test]
async fn the_dashboard_can_be_turned_off() {
    let app = spawn_app_with(|config| config.dashboard.enabled = false).await;
    let mut browser = Browser::new(&app);
    assert_eq!(browser.get("/").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(browser.get("/login").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_archived_job_plays_its_kept_copy_with_the_session_and_can_be_archived_again() {
    let archived = crate::archive::start(jobhook::mock::MockOptions::default(), |_| {}).await;
    let app = &archived.app;
    let job = app
        .completed_video(&json!({"prompt": "a lighthouse kept for good"}))
        .await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    let job = app.wait_archived(&id).await;
    assert_eq!(job["archive"]["status"], "done", "{job}");
    let mut browser = Browser::new(app);
    browser.sign_in(TOKEN).await;

    // The kept copies go before Pictory's, in the table and on the job's page.
    let kept_video = format!("/v1/jobs/{id}/files/video");
    let jobs = browser.page("/").await;
    assert!(jobs.contains(&format!("src=\"/v1/jobs/{id}/files/thumbnail\"")));
    let page = browser.page(&format!("/jobs/{id}")).await;
    assert!(page.contains(&format!("playsinline src=\"{kept_video}\"")));
    assert!(page.contains("The archived copy, kept by jobhook."));
    assert!(page.contains("Files kept: <strong>done</strong>"));

    // What the player fetches by itself: the session cookie is enough, and ranges work.
    let video = browser.get(&kept_video).await;
    assert_eq!(video.status(), 200);
    assert_eq!(video.headers()[CONTENT_TYPE], "video/mp4");
    assert!(!video.bytes().await.unwrap().is_empty());
    let part = browser
        .with_cookie(browser.client.get(format!("{}{kept_video}", app.api_url)))
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap().len(), 100);

    // "Archive again" runs POST /v1/jobs/{id}/archive, behind the CSRF token like every button.
    let path = format!("/jobs/{id}/archive");
    assert_eq!(
        browser.post(&path, &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    let again = browser.post(&path, &[("csrf", &csrf_in(&page))]).await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&again), format!("/jobs/{id}?done=archived"));
    assert_eq!(app.wait_archived(&id).await["archive"]["status"], "done");
    assert!(browser
        .page(&location(&again))
        .await
        .contains("copied to the archive again"));
}
