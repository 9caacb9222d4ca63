//! The public listener under hostile traffic, over real sockets: connections that never send a
//! request, send it a byte at a time, or sit idle between requests; more connections than the
//! cap; and a process that runs out of file descriptors.

use crate::helpers::*;
use serde_json::Value;
use std::collections::HashSet;
use std::io::ErrorKind;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// `host:port` of a `http://host:port` URL.
fn address(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// The path part of the app's webhook URL.
fn webhook_path(webhook_url: &str, public_url: &str) -> String {
    webhook_url.trim_start_matches(public_url).to_owned()
}

/// Reads until jobhook closes the connection; how long that took, and whether it was a clean
/// close (EOF) rather than a reset.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> (Duration, bool) {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return false,
                Err(err) => panic!("read failed: {err}"),
            }
        }
    })
    .await
    .expect("jobhook closes the connection in time");
    (started.elapsed(), closed)
}

/// Sends one `GET /healthz` on `stream` and reads its whole answer.
async fn healthz_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: jobhook\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).ends_with("{\"status\":\"ok\"}") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn public_metric(metrics: &str, name: &str, extra: &str) -> f64 {
    metric_value(metrics, &format!("{name}{{listener=\"Public\"{extra}}}")).unwrap_or(0.0)
}

#[tokio::test]
async fn every_stage_before_a_request_has_its_timeout() {
    let app = spawn_app_with(|config| {
        config.server.header_timeout = Duration::from_secs(1);
        config.server.idle_timeout = Duration::from_secs(3);
    })
    .await;
    let public = address(&app.public_url);

    // A connection that never sends a byte is closed after the header timeout.
    let mut silent = TcpStream::connect(&public).await.unwrap();
    // One that dribbles its request line a byte every 300 ms is closed just the same: bytes
    // that trickle in do not extend the deadline.
    let mut dribbling = TcpStream::connect(&public).await.unwrap();
    let dribble = tokio::spawn(async move {
        let started = Instant::now();
        for byte in b"POST /webhooks/pictory/x HTTP/1.1\r\nHost: j\r\nX-Slow: aaaaaaaaaaaaaa" {
            if dribbling.write_all(&[*byte]).await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("the dribbling connection was never closed");
    });
    let (after, clean) = until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(clean, "a silent connection ends with EOF");
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_secs(3),
        "closed after {after:?}, header_timeout is 1 s"
    );
    let dribbled = dribble.await.unwrap();
    assert!(
        dribbled < Duration::from_secs(3),
        "the dribbling connection lived {dribbled:?}"
    );

    // A kept-alive connection may stay silent longer than the header timeout between
    // requests...
    let mut kept = TcpStream::connect(&public).await.unwrap();
    assert!(healthz_on(&mut kept).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        healthz_on(&mut kept).await.starts_with("HTTP/1.1 200"),
        "still open 1.5 s after its last answer"
    );
    // ...and is closed after the idle timeout.
    let (after, clean) = until_closed(&mut kept, Duration::from_secs(8)).await;
    assert!(clean);
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_secs(5),
        "closed {after:?} after its last answer, idle_timeout is 3 s"
    );

    // Once the next request's first byte is in, its head gets the header timeout, not more.
    let mut stalled = TcpStream::connect(&public).await.unwrap();
    assert!(healthz_on(&mut stalled).await.starts_with("HTTP/1.1 200"));
    stalled.write_all(b"GET /healthz HTT").await.unwrap();
    let (after, _) = until_closed(&mut stalled, Duration::from_secs(8)).await;
    assert!(
        after < Duration::from_millis(2500),
        "a half-sent second request lived {after:?}, header_timeout is 1 s"
    );

    let metrics = app.metrics().await;
    let closed = "jobhook_connections_closed_total";
    assert_eq!(
        public_metric(&metrics, closed, ",reason=\"header_timeout\""),
        3.0,
        "silent, dribbling, stalled\n{metrics}"
    );
    assert_eq!(
        public_metric(&metrics, closed, ",reason=\"idle_timeout\""),
        1.0
    );
    assert_eq!(public_metric(&metrics, closed, ",reason=\"evicted\""), 0.0);
}

#[tokio::test]
async fn a_full_listener_makes_room_by_closing_the_longest_waiting_connection() {
    let app = spawn_app_with(|config| {
        config.server.max_connections = Some(2);
    })
    .await;
    let public = address(&app.public_url);
    let mut oldest = TcpStream::connect(&public).await.unwrap();
    let newer = TcpStream::connect(&public).await.unwrap();
    // Both places are taken by connections that send nothing (once served, they are open and
    // waiting for a request); a webhook still gets in.
    let deadline = Instant::now() + Duration::from_secs(5);
    while public_metric(&app.state.metrics.render(), "jobhook_connections_open", "") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the two connections were never served"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = client
        .post(&app.webhook_url)
        .body(completed_body("room").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, clean) = until_closed(&mut oldest, Duration::from_secs(5)).await;
    assert!(clean, "the oldest silent connection was closed for it");
    let mut buf = [0u8; 16];
    assert_eq!(
        newer.try_read(&mut buf).map_err(|e| e.kind()),
        Err(ErrorKind::WouldBlock),
        "the newer one is still open"
    );
    assert_eq!(app.job("room").await["status"], "completed");
    let metrics = app.metrics().await;
    assert_eq!(
        public_metric(
            &metrics,
            "jobhook_connections_closed_total",
            ",reason=\"evicted\""
        ),
        1.0
    );
    assert_eq!(public_metric(&metrics, "jobhook_connections_max", ""), 2.0);
}

#[tokio::test]
async fn a_listener_full_of_requests_in_flight_answers_new_connections_503_at_once() {
    let app = spawn_app_with(|config| {
        config.server.max_connections = Some(2);
    })
    .await;
    let public = address(&app.public_url);
    let path = webhook_path(&app.webhook_url, &app.public_url);
    // Two webhooks whose bodies are still coming: requests in flight, never evicted. The
    // handler asking for the body is what sends `100 Continue`.
    let mut in_flight = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&public).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: j\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"));
        stream.write_all(b"{\"job_id\"").await.unwrap();
        in_flight.push(stream);
    }

    let started = Instant::now();
    let mut refused = TcpStream::connect(&public).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), refused.read_to_string(&mut answer))
        .await
        .expect("answered and closed at once")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");

    // The private listener has its own places.
    let metrics = app.metrics().await;
    assert_eq!(
        public_metric(&metrics, "jobhook_connections_refused_total", ""),
        1.0
    );
    assert_eq!(public_metric(&metrics, "jobhook_connections_open", ""), 2.0);

    // When a request finishes, its place serves the next one.
    let full = completed_body("after-full").to_string();
    let body = format!("{{\"job_id\":\"after-full\",{}", &full[1..]);
    let mut first = in_flight.remove(0);
    let rest = format!("{:<991}", &body["{\"job_id\"".len()..]);
    first.write_all(rest.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(first);
    assert_eq!(app.job("after-full").await["status"], "completed");
    let response = app.webhook(completed_body("next").to_string()).await;
    assert_eq!(response.status(), 200);
}

// ---------- the real binary with a low open-file limit ----------

/// `jobhook serve` run under `prlimit --nofile=N:N`, with its JSON log kept.
struct Limited {
    /// Killed when the test drops it.
    _child: Child,
    public: String,
    api: String,
    webhook_url: String,
    log: Arc<Mutex<Vec<Value>>>,
    _dir: tempfile::TempDir,
}

impl Limited {
    async fn start(nofile: u64, env: &[(&str, &str)]) -> Limited {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_jobhook"))
            .arg("serve");
        for (key, _) in std::env::vars() {
            if key.starts_with("JOBHOOK_") {
                command.env_remove(key);
            }
        }
        let db = dir.path().join("limited.db");
        let mut child = command
            .env("JOBHOOK_WEBHOOK_SECRET", SECRET)
            .env("JOBHOOK_API_TOKENS", TOKEN)
            .env("JOBHOOK_DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("JOBHOOK_SERVER_LISTEN", "127.0.0.1:0")
            .env("JOBHOOK_SERVER_API_LISTEN", "127.0.0.1:0")
            .env("JOBHOOK_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("prlimit (util-linux) runs jobhook");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (public, api) = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("jobhook exited before it was listening");
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            log.lock().unwrap().push(entry.clone());
            if entry["message"] == "jobhook is listening" {
                break (
                    entry["public"].as_str().unwrap().to_owned(),
                    entry["api"].as_str().unwrap().to_owned(),
                );
            }
        };
        let keep = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(entry) = serde_json::from_str::<Value>(&line) {
                    keep.lock().unwrap().push(entry);
                }
            }
        });
        let api = format!("http://{api}");
        let url: Value = reqwest::Client::new()
            .get(format!("{api}/v1/webhook-url"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let webhook_url = url["url"]
            .as_str()
            .unwrap()
            .replace("http://localhost:8080", &format!("http://{public}"));
        Limited {
            _child: child,
            public,
            api,
            webhook_url,
            log,
            _dir: dir,
        }
    }

    fn logged(&self, needle: &str) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|entry| entry["message"].as_str().unwrap_or("").contains(needle))
            .cloned()
            .collect()
    }

    async fn api_get(&self, client: &reqwest::Client, path: &str) -> reqwest::Response {
        client
            .get(format!("{}{path}", self.api))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
    }

    async fn metrics(&self) -> String {
        let response = self.api_get(&reqwest::Client::new(), "/metrics").await;
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }
}

/// Keeps `count` connections open on `public`: when jobhook closes one, another takes its place,
/// until `stop`; then waits for jobhook to close the last ones. Each connection sends `prefix`,
/// then one byte every `dribble` when set. Returns how long each connection lived (jobhook
/// closing it), with 999 s for one it never closed.
fn hold(
    public: String,
    count: usize,
    prefix: &'static [u8],
    dribble: Option<Duration>,
    opened: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut holders = tokio::task::JoinSet::new();
        for _ in 0..count {
            let public = public.clone();
            let stop = stop.clone();
            let opened = opened.clone();
            holders.spawn(async move {
                let mut lives = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = TcpStream::connect(&public).await else {
                        continue;
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    let since = Instant::now();
                    let held = tokio::time::timeout(Duration::from_secs(10), async {
                        if stream.write_all(prefix).await.is_err() {
                            return;
                        }
                        let mut buf = [0u8; 256];
                        loop {
                            let tick = dribble.unwrap_or(Duration::from_secs(3600));
                            tokio::select! {
                                read = stream.read(&mut buf) => match read {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) => continue,
                                },
                                () = tokio::time::sleep(tick) => {
                                    let _ = stream.write_all(b"a").await;
                                }
                            }
                        }
                    })
                    .await;
                    lives.push(match held {
                        Ok(()) => since.elapsed(),
                        Err(_) => Duration::from_secs(999),
                    });
                    // Back for more after a moment (at once would only measure how fast two
                    // processes can open and close sockets on two cores).
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                lives
            });
        }
        let mut lives = Vec::new();
        while let Some(done) = holders.join_next().await {
            lives.extend(done.unwrap());
        }
        lives
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_and_dribbling_connections_at_twice_the_fd_limit_loses_no_webhook() {
    const NOFILE: usize = 256;
    let service = Limited::start(NOFILE as u64, &[("JOBHOOK_SERVER_HEADER_TIMEOUT", "2s")]).await;
    let limit = service.logged("open-file limit");
    assert_eq!(
        (&limit[0]["soft"], &limit[0]["hard"]),
        (&Value::from(NOFILE), &Value::from(NOFILE)),
        "{limit:?}"
    );
    let cap = service.logged("each listener holds at most");
    assert_eq!(cap[0]["max_connections"], 96, "{cap:?}");

    // 2 × the open-file limit of connections that send nothing, and as many that send half a
    // request line and then a header byte a second: each one jobhook closes is reopened.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let silent = hold(
        service.public.clone(),
        2 * NOFILE,
        b"",
        None,
        opened.clone(),
        stop.clone(),
    );
    let dribbling = hold(
        service.public.clone(),
        2 * NOFILE,
        b"POST /webhooks/pictory/k HTTP/1.1\r\nHost: j\r\nX-Slow: ",
        Some(Duration::from_secs(1)),
        opened.clone(),
        stop.clone(),
    );
    // The flood is on once every holder has connected.
    let deadline = Instant::now() + Duration::from_secs(10);
    while opened.load(Ordering::Relaxed) < 4 * NOFILE {
        assert!(Instant::now() < deadline, "the flood could not connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Meanwhile the private API answers, and real webhooks are acknowledged, each on a
    // connection of its own.
    let api_client = reqwest::Client::new();
    let webhooks = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let flood_started = Instant::now();
    let mut acknowledged = HashSet::new();
    let mut most_open = 0.0f64;
    let mut n = 0;
    let mut resent = 0;
    while flood_started.elapsed() < Duration::from_secs(6) {
        n += 1;
        let job = format!("flood-{n}");
        // A new connection can be closed by the flood's evictions before its request is read
        // (it waited longest: the flood turns the whole listener over in a fraction of a
        // second). The sender then sees a connection error, nothing was stored, and it sends
        // again, as any webhook sender does; what must never happen is a lost acknowledgement.
        let mut attempts = 0;
        let response = loop {
            attempts += 1;
            let sent = webhooks
                .post(&service.webhook_url)
                .body(completed_body(&job).to_string())
                .send()
                .await;
            match sent {
                Ok(response) => break response,
                Err(err) if attempts < 3 && (err.is_request() || err.is_connect()) => {
                    resent += 1;
                }
                Err(err) => panic!("webhook {job} during the flood: {err:?}"),
            }
        };
        assert_eq!(response.status(), 200, "{job}");
        acknowledged.insert(job);
        let healthz = loop {
            // The same race for the probe's own new connection.
            match webhooks
                .get(format!("http://{}/healthz", service.public))
                .send()
                .await
            {
                Ok(healthz) => break healthz,
                Err(err) if err.is_request() || err.is_connect() => resent += 1,
                Err(err) => panic!("/healthz during the flood: {err:?}"),
            }
        };
        assert_eq!(healthz.status(), 200);
        let asked = Instant::now();
        let jobs = service.api_get(&api_client, "/v1/jobs?limit=1").await;
        assert_eq!(jobs.status(), 200);
        assert!(asked.elapsed() < Duration::from_secs(2), "the API was slow");
        let metrics = service.metrics().await;
        most_open = most_open.max(public_metric(&metrics, "jobhook_connections_open", ""));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let silent = silent.await.unwrap();
    let dribbling = dribbling.await.unwrap();

    assert!(acknowledged.len() >= 10, "{} webhooks", acknowledged.len());
    assert!(
        resent * 5 <= acknowledged.len(),
        "{resent} requests sent again for {} webhooks",
        acknowledged.len()
    );
    assert!(
        most_open <= 96.0,
        "the public listener held {most_open} connections"
    );
    // jobhook closed every connection of the flood, the last ones (no longer replaced) after
    // the header timeout, dribbling or not.
    assert!(silent.len() > 2 * NOFILE, "{} silent closes", silent.len());
    assert!(dribbling.len() > 2 * NOFILE);
    for life in silent.iter().chain(&dribbling) {
        assert!(
            *life < Duration::from_secs(5),
            "a connection lived {life:?}"
        );
    }
    // Every acknowledged webhook is stored.
    let deliveries: HashSet<String> = {
        let mut ids = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/deliveries?limit=500&cursor={c}"),
                None => "/v1/deliveries?limit=500".to_owned(),
            };
            let page: Value = service
                .api_get(&api_client, &path)
                .await
                .json()
                .await
                .unwrap();
            for delivery in page["data"].as_array().unwrap() {
                ids.insert(delivery["job_id"].as_str().unwrap_or("").to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break ids,
            }
        }
    };
    for job in &acknowledged {
        assert!(deliveries.contains(job), "{job} was acknowledged and lost");
    }
    let metrics = service.metrics().await;
    let closed = "jobhook_connections_closed_total";
    assert!(public_metric(&metrics, closed, ",reason=\"header_timeout\"") > 0.0);
    assert!(public_metric(&metrics, closed, ",reason=\"evicted\"") > 0.0);
    assert_eq!(
        public_metric(&metrics, "jobhook_accept_errors_total", ",error=\"emfile\""),
        0.0,
        "the cap keeps the process clear of its fd limit"
    );
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_counted_logged_once_and_recovered_from() {
    // A cap above what the process can open: accept itself fails with EMFILE.
    let service = Limited::start(
        64,
        &[
            ("JOBHOOK_SERVER_MAX_CONNECTIONS", "1000"),
            ("JOBHOOK_SERVER_HEADER_TIMEOUT", "3s"),
        ],
    )
    .await;
    assert_eq!(
        service.logged("leaving less than").len(),
        1,
        "warned at start-up"
    );
    let mut flood = Vec::new();
    for _ in 0..150 {
        flood.push(TcpStream::connect(&service.public).await.unwrap());
    }
    // While the process is out of descriptors, a webhook still gets through: each failed
    // accept closes the connection that has waited longest.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let response = client
        .post(&service.webhook_url)
        .body(completed_body("emfile").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let closed = Arc::new(AtomicUsize::new(0));
    for mut stream in flood {
        let closed = closed.clone();
        let mut buf = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await
        {
            closed.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert_eq!(
        closed.load(Ordering::Relaxed),
        150,
        "every flood connection was closed"
    );

    let metrics = service.metrics().await;
    let failures = public_metric(&metrics, "jobhook_accept_errors_total", ",error=\"emfile\"");
    assert!(failures > 1.0, "{metrics}");
    let logged = service.logged("out of file descriptors (EMFILE)");
    assert_eq!(
        logged.len(),
        1,
        "{failures} failed accepts, logged {logged:?}"
    );
    let client = reqwest::Client::new();
    let job = service.api_get(&client, "/v1/jobs/emfile").await;
    assert_eq!(job.status(), 200);
    let response = client
        .post(&service.webhook_url)
        .body(completed_body("after").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
