//! Hearing what other replicas change: one `LISTEN` connection per process, and a polling floor.
//!
//! Every write transaction ends with a `NOTIFY` of the jobs it changed (see [`super::write`]),
//! which PostgreSQL delivers when, and only if, it commits. The listener coalesces the pks other
//! processes announce over a few milliseconds (a webhook storm on another replica becomes a few
//! batches, not one wake-up per job) and hands them on; the caller re-reads those jobs and
//! publishes them in-process, as if the change had been made here.
//!
//! A listener that loses its connection misses whatever was announced meanwhile, and a
//! connection can die silently. So once a second the relay reads the history's newest id and
//! then announces a ping to itself on the same channel. PostgreSQL delivers a listener's
//! notifications in commit order, so hearing the ping proves every entry up to that id was
//! heard (`confirmed`). A ping not heard by the next second, or a listener that reports a loss,
//! makes the relay read which jobs have entries after `confirmed` and hand them all on. A lost
//! notification delays a change by a second or two; it is never lost. History ids commit in
//! order (the history lock), so "after `confirmed`" misses nothing.

use super::write::{parse_pace, parse_payload, CHANNEL};
use crate::store::{OthersChanges, StoreError};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long announcements are gathered into one batch after the first arrives.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// A batch this large is handed on at once.
const MAX_BATCH: usize = 512;
/// How often the polling floor looks at the history.
const FALLBACK_EVERY: Duration = Duration::from_secs(1);
/// Pause before listening again after an error (the database may be down).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the listening connection reports.
enum Heard {
    /// Another process changed these jobs.
    Changed(Vec<i64>),
    /// This process's ping came back.
    Ping(u64),
    /// Another process changed the shared Get Job pace (a hold, a pause, a resume).
    Pace,
    /// The connection was lost; announcements may have been missed.
    Lost,
}

/// Starts listening (done when this returns) and returns the batches of other processes'
/// changes. `listen_pool` holds the one listening connection; `pool` serves the floor's reads.
/// `pace` is ticked when another process announces a change to the shared pace, and when
/// announcements may have been lost.
pub(super) async fn watch(
    pool: PgPool,
    listen_pool: PgPool,
    origin: String,
    pace: Arc<watch::Sender<u64>>,
    stop: CancellationToken,
) -> Result<OthersChanges, StoreError> {
    let mut listener = PgListener::connect_with(&listen_pool).await?;
    listener.listen(CHANNEL).await?;
    let mark = newest_entry(&pool).await?;
    let (heard, hearing) = mpsc::unbounded_channel();
    tokio::spawn(listen(listener, origin.clone(), heard, stop.clone()));
    let (changes, others) = mpsc::channel(64);
    tokio::spawn(relay(pool, hearing, changes, origin, mark, pace, stop));
    Ok(others)
}

/// Receives on the listening connection until `stop`, reconnecting after a loss.
async fn listen(
    mut listener: PgListener,
    origin: String,
    heard: mpsc::UnboundedSender<Heard>,
    stop: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = listener.try_recv() => received,
        };
        let report = match received {
            Ok(Some(notification)) => match read_payload(&origin, notification.payload()) {
                Some(report) => report,
                None => continue,
            },
            // Reconnected (or reconnecting on the next call): whatever came meanwhile is gone.
            Ok(None) => Heard::Lost,
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "the change listener lost the database; retrying");
                if heard.send(Heard::Lost).is_err() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_AFTER) => continue,
                }
            }
        };
        if heard.send(report).is_err() {
            return;
        }
    }
}

/// What an announcement says; None for this process's own changes (and unreadable ones).
fn read_payload(origin: &str, payload: &str) -> Option<Heard> {
    if let Some(from) = parse_pace(payload) {
        return (from != origin).then_some(Heard::Pace);
    }
    match (parse_payload(payload), parse_ping(payload)) {
        (Some((from, pks)), _) => (from != origin).then_some(Heard::Changed(pks)),
        // Every replica pings itself on the one channel: the others' pings are not news.
        (None, Some((from, ping))) => (from == origin).then_some(Heard::Ping(ping)),
        (None, None) => {
            tracing::warn!(payload, "unreadable change announcement");
            None
        }
    }
}

/// Coalesces what was heard into batches, and runs the polling floor.
async fn relay(
    pool: PgPool,
    mut hearing: mpsc::UnboundedReceiver<Heard>,
    changes: mpsc::Sender<Vec<i64>>,
    origin: String,
    mark: i64,
    pace: Arc<watch::Sender<u64>>,
    stop: CancellationToken,
) {
    let mut pending = BTreeSet::new();
    let mut flush_at: Option<Instant> = None;
    let mut floor = Floor {
        origin,
        confirmed: mark,
        ping: None,
        pings: 0,
        doubt: false,
    };
    let mut every = tokio::time::interval(FALLBACK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flush_due = flush_at.unwrap_or_else(|| Instant::now() + FALLBACK_EVERY);
        tokio::select! {
            _ = stop.cancelled() => return,
            heard = hearing.recv() => match heard {
                Some(Heard::Changed(pks)) => {
                    pending.extend(pks);
                    flush_at.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                    if pending.len() < MAX_BATCH {
                        continue;
                    }
                }
                Some(Heard::Ping(ping)) => {
                    floor.answered(ping);
                    continue;
                }
                Some(Heard::Pace) => {
                    pace.send_modify(|n| *n = n.wrapping_add(1));
                    continue;
                }
                Some(Heard::Lost) => {
                    floor.doubt = true;
                    // A hold or a pause may have been announced meanwhile: look at the row.
                    pace.send_modify(|n| *n = n.wrapping_add(1));
                    continue;
                }
                None => return,
            },
            _ = tokio::time::sleep_until(flush_due), if flush_at.is_some() => {}
            _ = every.tick() => pending.extend(floor.look(&pool).await),
        }
        flush_at = None;
        if pending.is_empty() {
            continue;
        }
        let batch: Vec<i64> = std::mem::take(&mut pending).into_iter().collect();
        if changes.send(batch).await.is_err() {
            return;
        }
    }
}

/// The polling floor under the listener.
struct Floor {
    origin: String,
    /// Every history entry up to this id was heard, or handed on by the floor.
    confirmed: i64,
    /// The ping in flight, and the newest entry id read just before it was sent.
    ping: Option<(u64, i64)>,
    pings: u64,
    /// The listener reported a loss, or the floor could not look: hand on everything after
    /// `confirmed` at the next look.
    doubt: bool,
}

impl Floor {
    fn answered(&mut self, ping: u64) {
        if let Some((sent, newest)) = self.ping {
            if sent == ping {
                self.confirmed = self.confirmed.max(newest);
                self.ping = None;
            }
        }
    }

    /// Once a period: when the last ping went unanswered (or in doubt), the jobs with entries
    /// after `confirmed`; then a new ping.
    async fn look(&mut self, pool: &PgPool) -> Vec<i64> {
        match self.try_look(pool).await {
            Ok(missed) => missed,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the history for missed changes");
                self.doubt = true;
                Vec::new()
            }
        }
    }

    async fn try_look(&mut self, pool: &PgPool) -> Result<Vec<i64>, StoreError> {
        let newest = newest_entry(pool).await?;
        let mut missed = Vec::new();
        if self.doubt || self.ping.is_some() {
            missed = sqlx::query_scalar(
                "SELECT DISTINCT job_pk FROM job_events WHERE id > $1 AND id <= $2",
            )
            .bind(self.confirmed)
            .bind(newest)
            .fetch_all(pool)
            .await?;
            if !missed.is_empty() {
                tracing::info!(
                    jobs = missed.len(),
                    "re-reading jobs whose change announcements may have been missed"
                );
            }
            self.confirmed = newest;
            self.doubt = false;
        }
        self.pings = self.pings.wrapping_add(1);
        self.ping = None;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(ping_payload(&self.origin, self.pings))
            .execute(pool)
            .await?;
        self.ping = Some((self.pings, newest));
        Ok(missed)
    }
}

fn ping_payload(origin: &str, ping: u64) -> String {
    format!("{origin}!{ping}")
}

/// The origin and number of a payload made by [`ping_payload`].
fn parse_ping(payload: &str) -> Option<(&str, u64)> {
    let (from, ping) = payload.split_once('!')?;
    Some((from, ping.parse().ok()?))
}

async fn newest_entry(pool: &PgPool) -> Result<i64, StoreError> {
    let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM job_events")
        .fetch_one(pool)
        .await?;
    Ok(newest.unwrap_or(0))
}
