//! One connection's state, shared by its socket, its timer and its listener's list of
//! connections that wait for a request.
//!
//! The header and idle timeouts are hyper's header read timeout, given a timer of our own.
//! hyper (1.4 and later) starts that timeout each time it begins to wait for a request head:
//! when the connection is accepted, and again as soon as a response is done on a kept-alive
//! connection. When it fires, hyper fails the connection and drops it without an answer (the
//! client reads EOF). Left alone, one duration would then bound both the wait for a first
//! request and the silence between two requests. [`ConnTimer`] tells them apart: the first wait
//! of a connection ends `header_timeout` after it began; a later wait ends `idle_timeout` after
//! it began, unless a byte of the next request arrives first, which gives that request's head
//! `header_timeout` from then. Bytes that trickle in never extend a deadline already running.
//!
//! The same timer calls tell the listener which connections wait for a request (and since
//! when): those are the ones it may close to make room when it is full (see [`Waiting`]).

use crate::sync::lock;
use hyper::rt::{Sleep, Timer};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Which wait a timeout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// A request head did not arrive in time.
    Header,
    /// A kept-alive connection stayed silent too long.
    Idle,
}

/// What one connection's parts share.
#[derive(Default)]
pub(super) struct Conn {
    /// Reads that returned data; a wait compares it to see the next request begin.
    reads: AtomicU64,
    /// The stage whose timeout closed the connection: 0 none, 1 header, 2 idle.
    timed_out: AtomicU8,
    /// This connection's key in [`Waiting`] while it is listed there, 0 otherwise. Changed
    /// only under the list's lock.
    key: AtomicU64,
    /// Set, under the list's lock and for good, when the listener chose to close this
    /// connection; it was waiting for a request then, and can never start one after.
    evicted: AtomicBool,
    /// Cancelled with `evicted`, to wake the connection's task.
    pub(super) evict: CancellationToken,
}

impl Conn {
    pub(super) fn timed_out(&self) -> Option<Stage> {
        match self.timed_out.load(Ordering::Relaxed) {
            1 => Some(Stage::Header),
            2 => Some(Stage::Idle),
            _ => None,
        }
    }

    fn record_timeout(&self, stage: Stage) {
        let code = match stage {
            Stage::Header => 1,
            Stage::Idle => 2,
        };
        self.timed_out.store(code, Ordering::Relaxed);
    }
}

/// A listener's connections that wait for a request head (silent, dribbling, or kept alive
/// between requests), oldest first. None of them has a request in flight, so closing one loses
/// no work; a connection that has one is never listed.
///
/// A connection is listed from the moment hyper first waits for its head, not from accept: one
/// whose request is already in its socket buffer reads it on that same first poll, so a flood
/// of new connections cannot evict it before it has had a chance to be read.
#[derive(Default)]
pub(super) struct Waiting {
    inner: Mutex<WaitingInner>,
}

#[derive(Default)]
struct WaitingInner {
    last_key: u64,
    by_age: BTreeMap<u64, Arc<Conn>>,
}

impl Waiting {
    /// `conn` waits for a request from now on (a no-op when it is listed already).
    pub(super) fn start(&self, conn: &Arc<Conn>) {
        let mut inner = lock(&self.inner);
        if conn.key.load(Ordering::Relaxed) != 0 || conn.evicted.load(Ordering::Relaxed) {
            return;
        }
        inner.last_key += 1;
        let key = inner.last_key;
        inner.by_age.insert(key, conn.clone());
        conn.key.store(key, Ordering::Relaxed);
    }

    /// A request head has arrived on `conn`: it is no longer evictable. False when it was
    /// evicted first (it is closing; the request will not be served).
    pub(super) fn begin_request(&self, conn: &Conn) -> bool {
        let mut inner = lock(&self.inner);
        if conn.evicted.load(Ordering::Relaxed) {
            return false;
        }
        let key = conn.key.swap(0, Ordering::Relaxed);
        if key != 0 {
            inner.by_age.remove(&key);
        }
        true
    }

    /// `conn` is gone.
    pub(super) fn remove(&self, conn: &Conn) {
        let mut inner = lock(&self.inner);
        let key = conn.key.swap(0, Ordering::Relaxed);
        if key != 0 {
            inner.by_age.remove(&key);
        }
    }

    /// Closes the connection that has waited longest; false when none waits.
    pub(super) fn evict_oldest(&self) -> bool {
        let mut inner = lock(&self.inner);
        match inner.by_age.pop_first() {
            Some((_, conn)) => {
                Self::mark_evicted(&conn);
                true
            }
            None => false,
        }
    }

    /// Closes every waiting connection (at shutdown: none of them has work to finish).
    pub(super) fn evict_all(&self) {
        let mut inner = lock(&self.inner);
        for conn in std::mem::take(&mut inner.by_age).into_values() {
            Self::mark_evicted(&conn);
        }
    }

    fn mark_evicted(conn: &Conn) {
        conn.key.store(0, Ordering::Relaxed);
        conn.evicted.store(true, Ordering::Relaxed);
        conn.evict.cancel();
    }
}

/// The timer hyper runs one connection's header read timeout on (see the module comment).
pub(super) struct ConnTimer {
    conn: Arc<Conn>,
    waiting: Arc<Waiting>,
    header_timeout: Duration,
    idle_timeout: Duration,
    waits: AtomicU64,
}

impl ConnTimer {
    pub(super) fn new(
        conn: Arc<Conn>,
        waiting: Arc<Waiting>,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> ConnTimer {
        ConnTimer {
            conn,
            waiting,
            header_timeout,
            idle_timeout,
            waits: AtomicU64::new(0),
        }
    }
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        hyper_util::rt::TokioTimer::new().sleep(duration)
    }

    /// tokio's clock, so that deadlines hyper computes and ours agree (also under paused time).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// hyper's HTTP/1 server uses its timer for one thing only, the header read timeout, and
    /// asks for it each time it begins to wait for a request head, with
    /// `deadline = now + header_timeout`.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.waiting.start(&self.conn);
        let first = self.waits.fetch_add(1, Ordering::Relaxed) == 0;
        let (stage, deadline) = if first {
            (Stage::Header, deadline)
        } else {
            (Stage::Idle, self.now() + self.idle_timeout)
        };
        Box::pin(HeadWait {
            conn: self.conn.clone(),
            reads_at_start: self.conn.reads.load(Ordering::Relaxed),
            header_timeout: self.header_timeout,
            stage,
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
        })
    }
}

/// One wait for a request head.
struct HeadWait {
    conn: Arc<Conn>,
    reads_at_start: u64,
    header_timeout: Duration,
    stage: Stage,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        // hyper polls this after every read that leaves the head incomplete, so the first byte
        // of the next request is seen as it comes.
        if this.stage == Stage::Idle
            && this.conn.reads.load(Ordering::Relaxed) != this.reads_at_start
        {
            this.stage = Stage::Header;
            let deadline = tokio::time::Instant::now() + this.header_timeout;
            this.sleep.as_mut().reset(deadline);
        }
        ready!(this.sleep.as_mut().poll(cx));
        this.conn.record_timeout(this.stage);
        Poll::Ready(())
    }
}

impl Sleep for HeadWait {}

/// The connection's socket, counting the reads that bring data.
pub(super) struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl Watched {
    pub(super) fn new(stream: TcpStream, conn: Arc<Conn>) -> Watched {
        Watched { stream, conn }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.reads.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_waiting_connection_is_evicted_first_and_busy_ones_never() {
        let waiting = Waiting::default();
        let [a, b, c] = [(); 3].map(|()| Arc::new(Conn::default()));
        waiting.start(&a);
        waiting.start(&b);
        waiting.start(&c);
        waiting.start(&a); // already waiting: keeps its place
        assert!(waiting.begin_request(&b)); // a request arrived
        assert!(waiting.evict_oldest());
        assert!(a.evict.is_cancelled());
        assert!(
            !waiting.begin_request(&a),
            "an evicted connection starts no request"
        );
        waiting.start(&a);
        assert!(waiting.evict_oldest());
        assert!(c.evict.is_cancelled());
        assert!(!b.evict.is_cancelled());
        assert!(!waiting.evict_oldest(), "b has a request in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_gets_the_idle_timeout_until_its_next_request_begins() {
        let conn = Arc::new(Conn::default());
        let timer = ConnTimer::new(
            conn.clone(),
            Arc::new(Waiting::default()),
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        // The first wait is hyper's own deadline: header_timeout from accept.
        let first = timer.sleep_until(timer.now() + Duration::from_secs(10));
        tokio::time::timeout(Duration::from_secs(11), first)
            .await
            .expect("the first wait ends after header_timeout");
        assert_eq!(conn.timed_out(), Some(Stage::Header));

        // A later wait: silent for longer than header_timeout, still open.
        let mut idle = timer.sleep_until(timer.now() + Duration::from_secs(10));
        assert!(
            tokio::time::timeout(Duration::from_secs(30), &mut idle)
                .await
                .is_err(),
            "idle, not yet timed out after 30 s"
        );
        // A byte of the next request: its head now has header_timeout from here.
        conn.reads.fetch_add(1, Ordering::Relaxed);
        assert!(tokio::time::timeout(Duration::from_secs(9), &mut idle)
            .await
            .is_err());
        tokio::time::timeout(Duration::from_secs(2), &mut idle)
            .await
            .expect("the head's deadline is 10 s after its first byte");
        assert_eq!(conn.timed_out(), Some(Stage::Header));

        let silent = timer.sleep_until(timer.now() + Duration::from_secs(10));
        tokio::time::timeout(Duration::from_secs(61), silent)
            .await
            .expect("a silent kept-alive connection times out after idle_timeout");
        assert_eq!(conn.timed_out(), Some(Stage::Idle));
    }
}
