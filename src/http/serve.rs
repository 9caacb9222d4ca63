//! Serving one listener: accepting connections within a cap, timing out the ones that send no
//! request, and draining on shutdown. Both listeners run this, each with its own cap.
//!
//! - Each connection is served by hyper's HTTP/1 connection with a header read timeout on a
//!   timer of our own (see [`conn`]): a request line and headers must arrive within
//!   `server.header_timeout`, and a kept-alive connection may stay silent between requests for
//!   `server.idle_timeout`. A request body has its own timeout in the webhook handler.
//! - A listener holds at most `server.max_connections` connections. When it is full, a new
//!   connection makes room by closing the one that has waited longest for a request (silent,
//!   dribbling its headers, or idle between requests), so a flood of connections that never
//!   send a request cannot lock out real ones. Only when every connection has a request in
//!   flight is the new one refused: `503` with `Retry-After`, written without waiting, then
//!   closed. Nothing waits in a queue.
//! - Running out of descriptors on accept (`EMFILE`, `ENFILE`) is counted, logged once per
//!   burst, answered by closing the longest-waiting connection and a short back-off, and the
//!   loop goes on accepting.
//! - On shutdown the listener stops accepting, closes the connections that wait for a request,
//!   and lets hyper finish every request in flight (hyper-util's `GracefulShutdown`).

mod conn;
pub mod fd;

use crate::config::ServerConfig;
use crate::metrics::{AcceptErrorLabels, ClosedLabels, Listener, ListenerLabel, Metrics};
use axum::extract::ConnectInfo;
use axum::Router;
use conn::{Conn, ConnTimer, Stage, Waiting, Watched};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

/// What every connection of a listener gets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: u32,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn new(server: &ServerConfig, max_connections: u32) -> Limits {
        Limits {
            max_connections,
            header_timeout: server.header_timeout,
            idle_timeout: server.idle_timeout,
        }
    }
}

/// How long a new connection waits for the one it evicted to release its place.
const EVICTION_WAIT: Duration = Duration::from_secs(1);
/// A run of failures (accept errors, refusals) is logged once; it ends after this long without one.
const QUIET: Duration = Duration::from_secs(5);
/// The first and the longest pause after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// What a full listener answers, in the API's error format, before closing.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 88\r\n\
\r\n\
{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections in flight; retry later\"}}";

/// Serves `router` on `listener` until `stop`, then drains its connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    which: Listener,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let label = ListenerLabel { listener: which };
    metrics
        .connections_max
        .get_or_create(&label)
        .set(i64::from(limits.max_connections));
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let waiting = Arc::new(Waiting::default());
    let graceful = GracefulShutdown::new();
    let mut accept_failures = Burst::default();
    let mut refusals = Burst::default();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                let pause = on_accept_error(&err, which, &metrics, &mut accept_failures);
                // A descriptor freed here is the one the next accept needs.
                if matches!(error_name(&err), "emfile" | "enfile") {
                    waiting.evict_oldest();
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        if let Some((failures, over)) = accept_failures.succeeded() {
            tracing::info!(
                listener = ?which,
                failures,
                "accepting connections again after {failures} failed accepts over {} ms",
                over.as_millis()
            );
        }
        let Some(permit) = admit(&slots, &waiting).await else {
            refuse(
                stream,
                which,
                limits.max_connections,
                &metrics,
                &mut refusals,
            );
            continue;
        };
        let connection = Connection {
            which,
            limits,
            metrics: metrics.clone(),
            waiting: waiting.clone(),
            conn: Arc::new(Conn::default()),
            stopping: stop.clone(),
        };
        tokio::spawn(connection.run(stream, remote, router.clone(), graceful.watcher(), permit));
    }
    drop(listener);
    // Nothing to finish on a connection that waits for a request; hyper finishes the others.
    waiting.evict_all();
    graceful.shutdown().await;
}

/// A place for a new connection: a free one, or one made by evicting the connection that has
/// waited longest for a request. None when every connection has a request in flight.
async fn admit(slots: &Arc<Semaphore>, waiting: &Waiting) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return Some(permit);
    }
    if !waiting.evict_oldest() {
        return None;
    }
    tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

fn refuse(
    stream: TcpStream,
    which: Listener,
    max_connections: u32,
    metrics: &Metrics,
    refusals: &mut Burst,
) {
    metrics
        .connections_refused
        .get_or_create(&ListenerLabel { listener: which })
        .inc();
    if refusals.failed() {
        tracing::warn!(
            listener = ?which,
            max_connections,
            "listener is full ({max_connections} connections, each with a request in flight): \
             new connections get 503 (counted in jobhook_connections_refused_total)"
        );
    }
    // A new socket's send buffer always has room for this, so the write never has to wait.
    let _ = stream.try_write(REFUSAL);
}

/// Counts a failed accept, logs the first of a burst, and says how long to pause.
fn on_accept_error(
    err: &io::Error,
    which: Listener,
    metrics: &Metrics,
    failures: &mut Burst,
) -> Duration {
    let error = error_name(err);
    metrics
        .accept_errors
        .get_or_create(&AcceptErrorLabels {
            listener: which,
            error,
        })
        .inc();
    if failures.failed() {
        let why = match error {
            "emfile" => "the process is out of file descriptors (EMFILE)",
            "enfile" => "the system is out of file descriptors (ENFILE)",
            _ => "accept failed",
        };
        tracing::error!(
            listener = ?which,
            error = %err,
            "{why}: closing the connection that waited longest for a request and retrying; \
             further failures are counted in jobhook_accept_errors_total and logged again \
             after {} s without one",
            QUIET.as_secs()
        );
    }
    failures.backoff()
}

fn error_name(err: &io::Error) -> &'static str {
    #[cfg(unix)]
    match err.raw_os_error() {
        Some(libc::EMFILE) => return "emfile",
        Some(libc::ENFILE) => return "enfile",
        _ => {}
    }
    let _ = err;
    "other"
}

/// Errors about one connection that went away before it was accepted: nothing to do.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A run of failures: logged when it starts, over after [`QUIET`] without one.
#[derive(Default)]
struct Burst {
    started: Option<Instant>,
    last: Option<Instant>,
    count: u64,
    /// Failures since the last success, for the back-off.
    in_a_row: u32,
}

impl Burst {
    /// Records a failure; true when it starts a burst (log it).
    fn failed(&mut self) -> bool {
        let now = Instant::now();
        let starts = self
            .last
            .is_none_or(|last| now.duration_since(last) > QUIET);
        if starts {
            self.started = Some(now);
            self.count = 0;
        }
        self.count += 1;
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.last = Some(now);
        starts
    }

    /// The pause after the latest failure: 5 ms, doubling with each failure in a row, 500 ms
    /// at most.
    fn backoff(&self) -> Duration {
        let doublings = self.in_a_row.saturating_sub(1).min(10);
        BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX)
    }

    /// Records a success. Ends the burst if it has been quiet long enough, returning how many
    /// failures it had over how long.
    fn succeeded(&mut self) -> Option<(u64, Duration)> {
        self.in_a_row = 0;
        let (started, last) = (self.started?, self.last?);
        if last.elapsed() <= QUIET {
            return None;
        }
        self.started = None;
        self.last = None;
        Some((self.count, last.duration_since(started)))
    }
}

/// One accepted connection and what it reports to.
struct Connection {
    which: Listener,
    limits: Limits,
    metrics: Arc<Metrics>,
    waiting: Arc<Waiting>,
    conn: Arc<Conn>,
    stopping: CancellationToken,
}

impl Connection {
    async fn run(
        self,
        stream: TcpStream,
        remote: SocketAddr,
        router: Router,
        watcher: Watcher,
        permit: OwnedSemaphorePermit,
    ) {
        let label = ListenerLabel {
            listener: self.which,
        };
        let open = self.metrics.connections_open.get_or_create(&label).clone();
        open.inc();
        let service = {
            let conn = self.conn.clone();
            let waiting = self.waiting.clone();
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                // The head is in: a request is in flight, so this connection is not evictable
                // (unless it was evicted just before; then it is closing and this is dropped).
                waiting.begin_request(&conn);
                request.extensions_mut().insert(ConnectInfo(remote));
                router.clone().call(request)
            })
        };
        let mut builder = http1::Builder::new();
        builder
            .timer(ConnTimer::new(
                self.conn.clone(),
                self.waiting.clone(),
                self.limits.header_timeout,
                self.limits.idle_timeout,
            ))
            .header_read_timeout(self.limits.header_timeout);
        let io = TokioIo::new(Watched::new(stream, self.conn.clone()));
        let served = watcher.watch(builder.serve_connection(io, service));
        let reason = tokio::select! {
            result = served => match result {
                Err(err) if err.is_timeout() => match self.conn.timed_out() {
                    Some(Stage::Idle) => Some("idle_timeout"),
                    _ => Some("header_timeout"),
                },
                Err(err) => {
                    tracing::debug!(listener = ?self.which, error = %err, "connection failed");
                    None
                }
                Ok(()) => None,
            },
            () = self.conn.evict.cancelled() => {
                (!self.stopping.is_cancelled()).then_some("evicted")
            }
        };
        if let Some(reason) = reason {
            self.metrics
                .connections_closed
                .get_or_create(&ClosedLabels {
                    listener: self.which,
                    reason,
                })
                .inc();
        }
        self.waiting.remove(&self.conn);
        open.dec();
        drop(permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_503_in_the_api_error_format() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("\r\nretry-after: 1"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let error: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(error["error"]["code"], "unavailable");
    }

    #[test]
    fn a_burst_of_failures_is_reported_once_and_backs_off_more_each_time() {
        let mut burst = Burst::default();
        assert!(burst.failed(), "the first failure starts a burst");
        assert_eq!(burst.backoff(), BACKOFF_MIN);
        assert!(!burst.failed());
        assert_eq!(burst.backoff(), BACKOFF_MIN * 2);
        for _ in 0..20 {
            assert!(!burst.failed());
        }
        assert_eq!(burst.backoff(), BACKOFF_MAX);
        assert_eq!(burst.succeeded(), None, "not quiet yet");
        assert!(!burst.failed(), "the same burst goes on");
        assert_eq!(
            burst.backoff(),
            BACKOFF_MIN,
            "a success resets the back-off"
        );
    }
}
