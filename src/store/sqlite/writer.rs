//! The one connection that writes, on a thread of its own.
//!
//! SQLite has one writer at a time anyway, so every write transaction is a closure run in turn
//! on this thread. A closure runs its statements as plain function calls on a connection with
//! cached prepared statements: no round trip to another thread per statement, which is what a
//! pooled async driver pays. That is what lets a group commit of deliveries cost tens of
//! microseconds per delivery rather than hundreds.
//!
//! Durability: a write is answered only after the WAL holding its commit has been flushed to
//! disk, so an answered write survives power loss, as with `synchronous=FULL`. But the flush
//! runs on a second thread: SQLite commits with `synchronous=NORMAL` (the WAL is written, not
//! flushed), the writer goes on with the next transaction, and the syncer flushes the WAL once
//! for every commit written meanwhile, then answers them all. The writer never waits for the
//! disk. The one difference from FULL: readers can see a commit in the millisecond or so before
//! its flush ends, so only a power cut inside that window could show them something then lost;
//! no write is answered (and no ingested change announced) before its flush. Checkpoints still
//! flush the WAL before copying it into the database, and the WAL header when SQLite starts
//! reusing the file, as NORMAL does.

use super::super::StoreError;
use crate::sync::lock;
use rusqlite::{Connection, OpenFlags, Params, Row, Transaction, TransactionBehavior};
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a write waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection (every write statement jobhook has fits).
const STATEMENT_CACHE: usize = 128;

/// A write transaction: runs on the writer thread and gives back how to answer its caller once
/// the WAL has been flushed (or the error the flush gave).
/// No connection is given when an earlier flush failed: the write is then refused.
type Work = Box<dyn FnOnce(Option<&mut Connection>) -> Answer + Send>;
type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

#[derive(Debug)]
pub(super) struct Writer {
    /// None once closed.
    queue: Mutex<Option<mpsc::Sender<Work>>>,
    /// Answers when the thread has closed its connection.
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
    /// Set when a flush failed (see [`sync_and_answer`]).
    broken: Arc<AtomicBool>,
    /// Flushes of the WAL made so far (tests check that an answered write was flushed).
    #[cfg_attr(not(test), allow(dead_code))]
    flushes: Arc<AtomicU64>,
    /// What keeping the log bounded took so far (tests check how the log was kept short).
    #[cfg_attr(not(test), allow(dead_code))]
    wal_counts: WalCounts,
}

impl Writer {
    /// Opens the writer connection and starts its thread. The WAL is checkpointed into the
    /// database whenever it grows past `wal_limit` bytes (see [`WalBound`]).
    pub(super) fn open(path: &Path, wal_limit: u64) -> Result<Writer, StoreError> {
        let path = path.to_path_buf();
        let connection = open_connection(&path, wal_limit)?;
        let (queue, waiting) = mpsc::channel::<Work>();
        let (to_sync, unsynced) = mpsc::channel::<Answer>();
        let (done, stopped) = oneshot::channel();
        let wal = wal_path(&path);
        let broken = Arc::new(AtomicBool::new(false));
        let flush_failed = broken.clone();
        let flushes = Arc::new(AtomicU64::new(0));
        let flushed = flushes.clone();
        let syncer = std::thread::Builder::new()
            .name("jobhook-wal-sync".into())
            .spawn(move || sync_and_answer(&wal, &unsynced, &flush_failed, &flushed))
            .map_err(|err| StoreError::Batch(format!("cannot start the WAL syncer: {err}")))?;
        let refuse = broken.clone();
        let wal_counts = WalCounts::default();
        let checkpointer = start_checkpointer(&path, wal_limit, wal_counts.passes.clone())?;
        let mut wal_bound = WalBound::new(&path, wal_limit, checkpointer, wal_counts.clone());
        std::thread::Builder::new()
            .name("jobhook-writer".into())
            .spawn(move || {
                let mut connection = connection;
                for work in waiting {
                    // A panic in one write (a bug) fails that write alone: its caller hears
                    // that the writer stopped mid-write, its transaction is rolled back as the
                    // panic unwinds, and the writer goes on with the next.
                    let usable = !refuse.load(Ordering::SeqCst);
                    let answer = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        work(usable.then_some(&mut connection))
                    }));
                    if !connection.is_autocommit() {
                        connection = recover(connection, &path, wal_limit);
                    }
                    wal_bound.check(&connection);
                    if let Ok(answer) = answer {
                        if to_sync.send(answer).is_err() {
                            break;
                        }
                    }
                }
                drop(connection);
                drop(to_sync);
                let _ = syncer.join();
                let _ = done.send(());
            })
            .map_err(|err| StoreError::Batch(format!("cannot start the writer thread: {err}")))?;
        Ok(Writer {
            queue: Mutex::new(Some(queue)),
            stopped: Mutex::new(Some(stopped)),
            broken,
            flushes,
            wal_counts,
        })
    }

    /// How many times the WAL has been flushed to disk.
    #[cfg(test)]
    pub(super) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Runs `work` in one write transaction and commits it; returns once it is committed and
    /// flushed (or rolled back, when `work` or the commit fails).
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.submit(work).await
    }

    /// [`Writer::write`], queued for the writer at once (writes run in the order they are
    /// submitted), with a future for its answer: a caller can submit the next write while this
    /// one is being flushed.
    pub(super) fn submit<T, F>(
        &self,
        work: F,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Work = Box::new(move |connection| {
            let written = match connection {
                Some(connection) => in_transaction(connection, work),
                None => Err(refused_after_a_failed_flush()),
            };
            Box::new(move |synced: Result<(), StoreError>| {
                let _ = reply.send(written.and_then(|value| synced.map(|()| value)));
            })
        });
        // Refused at once when a flush has failed (the thread refuses anything queued anyway).
        let broken = self.broken.load(Ordering::SeqCst);
        let sent = match lock(&self.queue).as_ref() {
            Some(queue) if !broken => queue.send(job).is_ok(),
            _ => false,
        };
        async move {
            if broken {
                return Err(refused_after_a_failed_flush());
            }
            if !sent {
                return Err(StoreError::Batch("the database writer is closed".into()));
            }
            answer
                .await
                .map_err(|_| StoreError::Batch("the database writer stopped mid-write".into()))?
        }
    }

    /// Lets queued writes finish, then closes the connection.
    pub(super) async fn close(&self) {
        lock(&self.queue).take();
        let stopped = lock(&self.stopped).take();
        if let Some(stopped) = stopped {
            let _ = stopped.await;
        }
    }
}

/// The syncer: waits for answers, flushes the WAL once for all that are waiting (every one of
/// their commits was written before the flush starts), then gives them out.
fn sync_and_answer(
    wal: &Path,
    unsynced: &mpsc::Receiver<Answer>,
    broken: &AtomicBool,
    flushes: &AtomicU64,
) {
    let mut file: Option<File> = None;
    while let Ok(first) = unsynced.recv() {
        let mut answers = vec![first];
        answers.extend(unsynced.try_iter());
        let synced = flush(wal, &mut file)
            .inspect(|()| {
                flushes.fetch_add(1, Ordering::SeqCst);
            })
            .map_err(|err| {
            // After a failed flush the kernel may have dropped the pages it could not write
            // and report success next time, so nothing committed since the last good flush can
            // be trusted: every later write is refused until a restart lets SQLite recover the
            // database from what the disk really holds (what PostgreSQL does after a failed
            // fsync).
            broken.store(true, Ordering::SeqCst);
            tracing::error!(error = %err, "cannot flush the WAL; refusing every write until jobhook is restarted");
            err.to_string()
        });
        for answer in answers {
            answer(synced.clone().map_err(StoreError::NotDurable));
        }
    }
}

/// fdatasync on the WAL: the same flush SQLite makes at commit under `synchronous=FULL`. (The
/// WAL file is never replaced while the writer's connection is open, so one handle serves.)
fn flush(wal: &Path, file: &mut Option<File>) -> std::io::Result<()> {
    let handle = match file {
        Some(handle) => handle,
        None => file.insert(File::open(wal)?),
    };
    handle.sync_data()
}

fn refused_after_a_failed_flush() -> StoreError {
    StoreError::NotDurable("a flush of the database failed earlier; restart jobhook".into())
}

fn in_transaction<T>(
    connection: &mut Connection,
    work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // IMMEDIATE: the write lock is taken up front, so a transaction never fails half-way
    // because another process wrote first.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = work(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// After a failed statement or COMMIT (a full disk, say) SQLite may keep the transaction open;
/// a connection reused in that state would nest every later transaction inside one that never
/// commits, so they would be acknowledged and lost. Roll back, and when even that fails, start
/// over on a new connection.
fn recover(connection: Connection, path: &Path, wal_limit: u64) -> Connection {
    if connection.execute_batch("ROLLBACK").is_ok() && connection.is_autocommit() {
        return connection;
    }
    tracing::warn!("the writer connection is stuck inside a transaction; reopening it");
    match open_connection(path, wal_limit) {
        // Dropping the old connection closes it, which rolls its transaction back.
        Ok(fresh) => fresh,
        Err(err) => {
            tracing::error!(error = %err, "cannot reopen the writer connection");
            connection
        }
    }
}

fn open_connection(path: &Path, wal_limit: u64) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // The syncer's flush of the WAL is what makes an answered write durable.
        return Err(StoreError::Corrupt(format!(
            "the database cannot use a write-ahead log here (journal mode {mode})"
        )));
    }
    // NORMAL: commits write the WAL without flushing it; the syncer flushes it before anyone
    // is answered (see the module's comment).
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "foreign_keys", true)?;
    // Statement journals (a statement that may fail half-way inside a transaction keeps one)
    // live in memory rather than in a temporary file opened and closed each time.
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    // The writer never checkpoints: a checkpoint in the commit path stalls every delivery
    // waiting on that commit. `Store::maintain` checkpoints from a connection of its own.
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    // When SQLite starts the WAL over after a checkpoint, it cuts a file larger than the limit
    // back to it, so a file past the limit is a log that has not started over (see
    // [`WalBound`]).
    let limit = i64::try_from(wal_limit).unwrap_or(i64::MAX);
    connection.pragma_update(None, "journal_size_limit", limit)?;
    Ok(connection)
}

/// Keeps the write-ahead log within `limit` bytes (plus the transaction that crossed it), and
/// keeps the writer from stalling on it.
///
/// `Store::maintain` checkpoints once a second off the commit path, but that alone does not
/// bound the log: under a steady stream of writes a checkpoint never catches up with the end
/// of the log, so SQLite never starts it over, and a process killed before its first second
/// leaves everything behind (a crash test once found 423 MB). SQLite starts the log over from
/// its beginning only when a write transaction begins with every frame of it copied into the
/// database. So, after each transaction, the writer:
/// - asks the checkpointer thread for a passive checkpoint every [`PASS_EVERY`] while it
///   writes, and whenever the log's file has grown by an eighth of the limit: that copies the
///   log, as it was when the pass began, into the database beside the writer, without
///   blocking it;
/// - after each such pass, copies the few frames written during it itself, between two
///   transactions (a passive checkpoint too): then the whole log is in the database, and the
///   next transaction starts the log over from its beginning. The file keeps its size and is
///   written over in place, so it neither grows nor has to be cut back;
/// - past the limit (readers kept the log from starting over) it checkpoints and truncates the
///   log itself. That holds up writes, but only for the little the checkpointer has not copied
///   yet.
///
/// Before the second step the log was only ever cut back past the limit: under a storm it
/// filled 64 MiB about once a second and the writer stalled for tens of milliseconds to
/// truncate it, which held the p99 acknowledgement latency at half load near 30 ms.
///
/// A truncation can fail to finish when a reader holds an old snapshot (it waits at most
/// [`CHECKPOINT_WAIT`]); the next try comes once the log has grown by another tenth of the
/// limit, so a stuck reader costs one short stall per tenth, not one per write.
struct WalBound {
    wal: PathBuf,
    limit: u64,
    /// Truncate when the log is larger than this.
    try_above: u64,
    /// Ask for a pass when the log is larger than this.
    copy_above: u64,
    /// When the last pass was asked for.
    asked_at: Instant,
    /// How often to ask for a pass while writing ([`PASS_EVERY`]; tests change it).
    pass_every: Duration,
    checkpointer: Checkpointer,
    /// The checkpointer's passes that the writer has followed with its own copy of the rest.
    followed: u64,
    counts: WalCounts,
}

/// How often the checkpointer copies the log while writes go on (each pass copies every page
/// written since the last, so passes far apart copy a page written often only once).
const PASS_EVERY: Duration = Duration::from_millis(100);

/// Longest a checkpoint past the limit waits for readers, holding up writes meanwhile.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(100);

/// What the bound has done. `passes` is how the writer learns that a pass ended (it then
/// copies the rest); the other two are kept for tests.
#[derive(Clone, Default, Debug)]
pub(super) struct WalCounts {
    /// Passes the checkpointer has finished.
    pub(super) passes: Arc<AtomicU64>,
    /// Times the writer copied the rest of the log after a pass and found all of it copied,
    /// so that the next transaction starts the log over.
    pub(super) copied_whole: Arc<AtomicU64>,
    /// Times the writer had to checkpoint and truncate the log itself, past the limit.
    pub(super) truncated: Arc<AtomicU64>,
}

impl WalBound {
    fn new(path: &Path, limit: u64, checkpointer: Checkpointer, counts: WalCounts) -> WalBound {
        WalBound {
            wal: wal_path(path),
            limit,
            try_above: limit,
            copy_above: limit / 8,
            asked_at: Instant::now(),
            pass_every: PASS_EVERY,
            checkpointer,
            followed: 0,
            counts,
        }
    }

    fn check(&mut self, connection: &Connection) {
        self.follow_the_checkpointer(connection);
        let size = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        if size + self.limit / 8 < self.copy_above {
            // SQLite cut the file back (a truncation, or a start-over past the limit).
            self.copy_above = self.limit / 8;
        }
        if size > self.copy_above || self.asked_at.elapsed() >= self.pass_every {
            // The checkpointer may be busy with the last one: a request is never queued twice.
            let _ = self.checkpointer.asks.send(());
            self.asked_at = Instant::now();
            self.copy_above = self.copy_above.max(size + self.limit / 8);
        }
        if size <= self.try_above {
            return;
        }
        // Wait for the checkpointer's copy to end (it holds SQLite's checkpoint lock, which is
        // not waited for): then only the rest is left to copy here.
        let _copying = lock(&self.checkpointer.copying);
        let finished = connection
            .busy_timeout(CHECKPOINT_WAIT)
            .and_then(|()| checkpoint_truncate(connection));
        if let Err(err) = connection.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(error = %err, "cannot restore the writer's busy timeout");
        }
        match finished {
            Ok(true) => {
                self.try_above = self.limit;
                self.copy_above = self.limit / 8;
                self.counts.truncated.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(size, "the write-ahead log passed its limit; checkpointed");
            }
            Ok(false) => {
                self.try_above = size + self.limit / 10;
                tracing::debug!(
                    size,
                    "a checkpoint of the write-ahead log could not finish yet"
                );
            }
            Err(err) => {
                self.try_above = size + self.limit / 10;
                tracing::warn!(error = %err, size, "cannot checkpoint the write-ahead log");
            }
        }
    }

    /// After a pass of the checkpointer, copies what was written during it (no transaction is
    /// open here, so nothing is written meanwhile): when that leaves the whole log copied, the
    /// next transaction starts it over. A passive checkpoint waits for nothing; when another
    /// checkpoint or a reader's snapshot is in the way it copies less, and the log simply goes
    /// on until the next pass.
    fn follow_the_checkpointer(&mut self, connection: &Connection) {
        let passes = self.counts.passes.load(Ordering::Acquire);
        if passes == self.followed {
            return;
        }
        self.followed = passes;
        match checkpoint_passive(connection) {
            Ok(true) => {
                self.counts.copied_whole.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "cannot checkpoint the write-ahead log"),
        }
    }
}

/// The checkpointer thread's side of the bound.
struct Checkpointer {
    /// Asks for a pass.
    asks: mpsc::Sender<()>,
    /// Held by the checkpointer while it copies.
    copying: Arc<Mutex<()>>,
}

/// A thread with a connection of its own that copies the log into the database when asked
/// (a passive checkpoint: it takes no lock the writer needs). It ends with the writer.
/// It counts its passes in `passes`.
fn start_checkpointer(
    path: &Path,
    wal_limit: u64,
    passes: Arc<AtomicU64>,
) -> Result<Checkpointer, StoreError> {
    let connection = open_connection(path, wal_limit)?;
    let (asks, asked) = mpsc::channel::<()>();
    let copying = Arc::new(Mutex::new(()));
    let held = copying.clone();
    std::thread::Builder::new()
        .name("jobhook-checkpointer".into())
        .spawn(move || {
            while asked.recv().is_ok() {
                // Requests that came meanwhile are served by this one checkpoint.
                while asked.try_recv().is_ok() {}
                let _copying = lock(&held);
                match checkpoint_passive(&connection) {
                    Ok(_) => {
                        passes.fetch_add(1, Ordering::Release);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot checkpoint the write-ahead log")
                    }
                }
            }
        })
        .map_err(|err| StoreError::Batch(format!("cannot start the checkpointer: {err}")))?;
    Ok(Checkpointer { asks, copying })
}

/// Copies what it can of the WAL into the database without waiting for any lock; true when
/// that was all of it (the next write transaction then starts the log over).
fn checkpoint_passive(connection: &Connection) -> Result<bool, rusqlite::Error> {
    let (busy, frames, copied): (i64, i64, i64) =
        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    Ok(busy == 0 && frames == copied)
}

/// Copies the whole WAL into the database and truncates it to nothing; false when readers
/// kept it from finishing.
pub(super) fn checkpoint_truncate(connection: &Connection) -> Result<bool, rusqlite::Error> {
    let busy: i64 =
        connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
    Ok(busy == 0)
}

pub(super) fn wal_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", path.display()))
}

/// The first row `sql` gives, decoded; an error when there is none.
pub(super) fn query_one<T>(
    tx: &Connection,
    sql: &str,
    params: impl Params,
    decode: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    query_optional(tx, sql, params, decode)?
        .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
}

/// The first row `sql` gives, decoded, if there is one.
pub(super) fn query_optional<T>(
    tx: &Connection,
    sql: &str,
    params: impl Params,
    decode: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut statement = tx.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    match rows.next()? {
        Some(row) => Ok(Some(decode(row)?)),
        None => Ok(None),
    }
}

/// Every row `sql` gives, decoded.
pub(super) fn query_all<T>(
    tx: &Connection,
    sql: &str,
    params: impl Params,
    decode: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = tx.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut all = Vec::new();
    while let Some(row) = rows.next()? {
        all.push(decode(row)?);
    }
    Ok(all)
}

/// Runs a statement that returns no rows; gives how many rows it changed.
pub(super) fn execute(tx: &Connection, sql: &str, params: impl Params) -> Result<u64, StoreError> {
    Ok(tx.prepare_cached(sql)?.execute(params)? as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn writer_with_table() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::open(&dir.path().join("test.db"), 64 * 1024 * 1024).unwrap();
        writer
            .write(|tx| execute(tx, "CREATE TABLE t (v INTEGER NOT NULL UNIQUE)", []))
            .await
            .unwrap();
        (dir, writer)
    }

    async fn values(writer: &Writer) -> Vec<i64> {
        writer
            .write(|tx| query_all(tx, "SELECT v FROM t ORDER BY v", [], |r| Ok(r.get(0)?)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_write_keeps_none_of_its_statements_and_the_next_write_commits() {
        let (_dir, writer) = writer_with_table().await;
        let failed = writer
            .write(|tx| {
                execute(tx, "INSERT INTO t (v) VALUES (1)", [])?;
                // Violates UNIQUE: the whole transaction goes, the first insert with it.
                execute(tx, "INSERT INTO t (v) VALUES (1)", [])
            })
            .await;
        assert!(failed.is_err());
        writer
            .write(|tx| execute(tx, "INSERT INTO t (v) VALUES (2)", []))
            .await
            .unwrap();
        assert_eq!(values(&writer).await, vec![2]);
    }

    #[tokio::test]
    async fn writes_run_in_the_order_they_are_submitted() {
        let (_dir, writer) = writer_with_table().await;
        // Submitted before either is awaited; the second sees the first.
        let first = writer.submit(|tx| execute(tx, "INSERT INTO t (v) VALUES (10)", []));
        let second = writer.submit(|tx| {
            query_one(
                tx,
                "SELECT COUNT(*) FROM t",
                [],
                |r| Ok(r.get::<_, i64>(0)?),
            )
        });
        let (count, inserted) = tokio::join!(second, first);
        assert_eq!(inserted.unwrap(), 1);
        assert_eq!(count.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_write_that_panics_fails_alone() {
        let (_dir, writer) = writer_with_table().await;
        let panicked = writer
            .write(|tx| -> Result<(), StoreError> {
                execute(tx, "INSERT INTO t (v) VALUES (4)", [])?;
                panic!("a bug in a write");
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Batch(m)) if m.contains("mid-write")));
        writer
            .write(|tx| execute(tx, "INSERT INTO t (v) VALUES (5)", []))
            .await
            .unwrap();
        assert_eq!(values(&writer).await, vec![5]);
    }

    #[tokio::test]
    async fn a_write_after_close_is_refused() {
        let (_dir, writer) = writer_with_table().await;
        writer.close().await;
        let refused = writer
            .write(|tx| execute(tx, "INSERT INTO t (v) VALUES (3)", []))
            .await;
        assert!(matches!(refused, Err(StoreError::Batch(m)) if m.contains("closed")));
    }

    #[test]
    fn a_failed_flush_answers_every_waiting_write_with_an_error() {
        let (to_sync, unsynced) = mpsc::channel::<Answer>();
        let (answers, answered) = mpsc::channel();
        for _ in 0..3 {
            let answers = answers.clone();
            to_sync
                .send(Box::new(move |synced| answers.send(synced).unwrap()))
                .unwrap();
        }
        drop(to_sync);
        // No WAL file there: the flush cannot happen, so nothing may be answered as durable.
        let broken = AtomicBool::new(false);
        let flushes = AtomicU64::new(0);
        sync_and_answer(
            Path::new("/nonexistent/jobhook-test.db-wal"),
            &unsynced,
            &broken,
            &flushes,
        );
        assert_eq!(flushes.load(Ordering::SeqCst), 0);
        drop(answers);
        let results: Vec<_> = answered.iter().collect();
        assert_eq!(results.len(), 3);
        assert!(results
            .iter()
            .all(|r| matches!(r, Err(StoreError::NotDurable(_)))));
        assert!(
            broken.load(Ordering::SeqCst),
            "later writes must be refused"
        );
    }

    #[tokio::test]
    async fn after_a_failed_flush_every_write_is_refused_and_none_runs() {
        let (_dir, writer) = writer_with_table().await;
        writer.broken.store(true, Ordering::SeqCst);
        let refused = writer
            .write(|tx| execute(tx, "INSERT INTO t (v) VALUES (6)", []))
            .await;
        assert!(matches!(refused, Err(StoreError::NotDurable(_))));
        writer.broken.store(false, Ordering::SeqCst);
        assert_eq!(values(&writer).await, Vec::<i64>::new());
    }

    #[tokio::test]
    async fn a_write_is_answered_only_after_the_wal_holding_it_was_flushed() {
        let (dir, writer) = writer_with_table().await;
        for v in 7..10 {
            let before = writer.flushes();
            writer
                .write(move |tx| execute(tx, "INSERT INTO t (v) VALUES (?1)", [v]))
                .await
                .unwrap();
            // One flush at least, between the commit and the answer.
            assert!(writer.flushes() > before, "write {v} answered unflushed");
        }
        // The commits went to the WAL (no checkpoint ran), which is the file flushed.
        let wal = std::fs::metadata(dir.path().join("test.db-wal")).unwrap();
        assert!(wal.len() > 0);
        assert_eq!(values(&writer).await, vec![7, 8, 9]);
    }

    #[tokio::test]
    async fn the_wal_never_grows_past_its_limit() {
        const LIMIT: u64 = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::open(&dir.path().join("test.db"), LIMIT).unwrap();
        writer
            .write(|tx| execute(tx, "CREATE TABLE b (v BLOB NOT NULL)", []))
            .await
            .unwrap();
        let wal = dir.path().join("test.db-wal");
        for _ in 0..100 {
            writer
                .write(|tx| execute(tx, "INSERT INTO b (v) VALUES (zeroblob(8000))", []))
                .await
                .unwrap();
            let size = std::fs::metadata(&wal).unwrap().len();
            // Checked after every transaction, before it is answered.
            assert!(size <= LIMIT, "WAL at {size} bytes");
        }
        let counts = &writer.wal_counts;
        let started_over =
            counts.truncated.load(Ordering::Relaxed) + counts.copied_whole.load(Ordering::Relaxed);
        // About 1.2 MB went through a 64 KiB log.
        assert!(
            started_over >= 5,
            "the log started over {started_over} times"
        );
        let rows = writer
            .write(|tx| {
                query_one(
                    tx,
                    "SELECT COUNT(*) FROM b",
                    [],
                    |r| Ok(r.get::<_, i64>(0)?),
                )
            })
            .await
            .unwrap();
        assert_eq!(rows, 100);
    }

    /// A bound whose checkpointer the test plays: it sees the requests and makes the passes.
    struct PlayedCheckpointer {
        _dir: tempfile::TempDir,
        wal: PathBuf,
        writer: Connection,
        bound: WalBound,
        asked: mpsc::Receiver<()>,
        own: Connection,
        counts: WalCounts,
    }

    impl PlayedCheckpointer {
        fn new(limit: u64) -> PlayedCheckpointer {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("test.db");
            let writer = open_connection(&path, limit).unwrap();
            writer
                .execute_batch("CREATE TABLE b (v BLOB NOT NULL)")
                .unwrap();
            let (asks, asked) = mpsc::channel();
            let checkpointer = Checkpointer {
                asks,
                copying: Arc::new(Mutex::new(())),
            };
            let counts = WalCounts::default();
            let mut bound = WalBound::new(&path, limit, checkpointer, counts.clone());
            // Every transaction asks for a pass: the test decides when one is made.
            bound.pass_every = Duration::ZERO;
            PlayedCheckpointer {
                wal: wal_path(&path),
                own: open_connection(&path, limit).unwrap(),
                _dir: dir,
                writer,
                bound,
                asked,
                counts,
            }
        }

        /// One 8,000-byte row in its own transaction, then the bound's check; the log's size.
        fn write_one(&mut self) -> u64 {
            self.writer
                .execute("INSERT INTO b (v) VALUES (zeroblob(8000))", [])
                .unwrap();
            self.bound.check(&self.writer);
            std::fs::metadata(&self.wal).unwrap().len()
        }

        /// A pass, with one transaction written while it copies (as under steady writes):
        /// the pass leaves that transaction's frames uncopied. The log's size after it.
        fn pass_beside_a_write(&mut self) -> u64 {
            assert!(self.asked.try_recv().is_ok(), "no pass was asked for");
            while self.asked.try_recv().is_ok() {}
            assert!(
                checkpoint_passive(&self.own).unwrap(),
                "the pass copied all"
            );
            let size = self.write_one();
            self.counts.passes.fetch_add(1, Ordering::Release);
            size
        }

        fn rows(&self) -> i64 {
            self.writer
                .query_row("SELECT COUNT(*) FROM b", [], |r| r.get(0))
                .unwrap()
        }
    }

    #[test]
    fn after_each_pass_the_log_starts_over_in_place_and_is_never_truncated() {
        const LIMIT: u64 = 1024 * 1024;
        let mut played = PlayedCheckpointer::new(LIMIT);
        let mut largest = 0;
        for _ in 0..40 {
            for _ in 0..16 {
                largest = largest.max(played.write_one());
            }
            largest = largest.max(played.pass_beside_a_write());
        }
        // 680 rows of 8,000 bytes: about five times the limit went through the log, which
        // started over after every pass, in the file it already had.
        assert_eq!(played.rows(), 680);
        assert_eq!(played.counts.truncated.load(Ordering::Relaxed), 0);
        let whole = played.counts.copied_whole.load(Ordering::Relaxed);
        assert!(whole >= 39, "the log was copied whole {whole} times");
        assert!(largest <= LIMIT / 2, "WAL at {largest} bytes");
    }

    #[test]
    fn a_log_the_checkpointer_does_not_keep_up_with_is_truncated_past_its_limit() {
        const LIMIT: u64 = 64 * 1024;
        let mut played = PlayedCheckpointer::new(LIMIT);
        for _ in 0..100 {
            let size = played.write_one();
            assert!(size <= LIMIT, "WAL at {size} bytes");
        }
        assert_eq!(played.rows(), 100);
        assert_eq!(played.counts.copied_whole.load(Ordering::Relaxed), 0);
        // About 1.2 MB went through a 64 KiB log with no pass made.
        let truncated = played.counts.truncated.load(Ordering::Relaxed);
        assert!(truncated >= 10, "truncated {truncated} times");
    }
}
