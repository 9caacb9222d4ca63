//! Write transactions on PostgreSQL: the history lock that makes event ids commit in order, and
//! the `NOTIFY` that tells other replicas which jobs a commit changed.
//!
//! # Why a lock
//! History entries (`job_events`) take their ids from a sequence when they are inserted, but
//! transactions commit in their own order: without care, a transaction holding id 41 can commit
//! after another committed 42. A reader that saw 42 and asks for `id > 42` next would pass over
//! 41 for good, and so would `Last-Event-ID: 42` and the job list's cursor (a job's `seq` is the
//! id of its newest entry). So every transaction that writes history takes one transaction-level
//! advisory lock ([`HISTORY_LOCK`]) before anything else. Ids are then drawn, and committed, by
//! one transaction at a time, in id order: once any id is visible, every smaller id is either
//! visible too or was rolled back and will never appear. Readers need nothing special.
//!
//! The lock is taken first, before any row lock, so a transaction never holds a row another
//! one wants while it waits for the lock (no deadlock). It serialises jobhook's writes across
//! replicas, as SQLite's single writer does in one process; a webhook storm still shares
//! commits, since a whole ingest batch is one transaction. The claims, which only take rows
//! with `SKIP LOCKED` and never wait, and the heartbeat do not take it.

use super::super::StoreError;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// The advisory lock key of the history ("jobhook" in ASCII).
const HISTORY_LOCK: i64 = 0x006a_6f62_686f_6f6b;
/// The channel changes are announced on.
pub(super) const CHANNEL: &str = "jobhook_changes";
/// Largest `NOTIFY` payload sent (PostgreSQL refuses 8000 bytes and more).
const PAYLOAD_LIMIT: usize = 7000;

/// A write transaction holding the history lock, with the jobs it changed.
pub(super) struct Tx {
    inner: Transaction<'static, Postgres>,
    touched: Vec<i64>,
}

impl Tx {
    /// Begins a transaction and takes the history lock.
    pub(super) async fn begin(pool: &PgPool) -> Result<Tx, StoreError> {
        Tx::begin_with(pool, "").await
    }

    /// [`Tx::begin`] for a batch of deliveries (see `batch.rs`), whose few large statements
    /// are planned once per connection rather than at each execution (planning them cost more
    /// than running them for a batch of twenty), and planned to find rows by their indexes:
    /// the batch looks up a few jobs by unique keys, and a plan made while a new database's
    /// tables were nearly empty would otherwise scan them whole for as long as it is cached.
    /// No JIT: a batch is far too small to repay a compilation.
    pub(super) async fn begin_batch(pool: &PgPool) -> Result<Tx, StoreError> {
        Tx::begin_with(
            pool,
            "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off; \
             SET LOCAL jit = off; ",
        )
        .await
    }

    async fn begin_with(pool: &PgPool, settings: &str) -> Result<Tx, StoreError> {
        // One round trip: the lock is taken by the statement that opens the transaction.
        let inner = pool
            .begin_with(format!(
                "BEGIN; {settings}SELECT pg_advisory_xact_lock({HISTORY_LOCK})"
            ))
            .await?;
        Ok(Tx {
            inner,
            touched: Vec::new(),
        })
    }

    pub(super) fn db(&mut self) -> &mut PgConnection {
        &mut self.inner
    }

    /// Notes that job `pk` changed, for the announcement at commit.
    pub(super) fn touched(&mut self, pk: i64) {
        self.touched.push(pk);
    }

    /// Ends the transaction without writing anything.
    pub(super) async fn rollback(self) -> Result<(), StoreError> {
        self.inner.rollback().await?;
        Ok(())
    }

    /// Announces the changed jobs to the other replicas (delivered only if the commit happens)
    /// and commits. `origin` names this process, so its own announcements are skipped.
    pub(super) async fn commit(mut self, origin: &str) -> Result<(), StoreError> {
        self.touched.sort_unstable();
        self.touched.dedup();
        for payload in payloads(origin, &self.touched) {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&mut *self.inner)
                .await?;
        }
        self.inner.commit().await?;
        Ok(())
    }
}

/// `origin:pk,pk,...` in as few payloads as fit under the limit.
pub(super) fn payloads(origin: &str, pks: &[i64]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for pk in pks {
        let pk = pk.to_string();
        if !current.is_empty() && current.len() + 1 + pk.len() > PAYLOAD_LIMIT {
            payloads.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(origin);
            current.push(':');
        } else {
            current.push(',');
        }
        current.push_str(&pk);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

/// The announcement of a change to the shared Get Job pace (see [`super::pace`]).
pub(super) fn pace_payload(origin: &str) -> String {
    format!("{origin}~pace")
}

/// The origin of a payload made by [`pace_payload`]; None when it is not one.
pub(super) fn parse_pace(payload: &str) -> Option<&str> {
    payload.strip_suffix("~pace")
}

/// The origin and job pks of a payload made by [`payloads`]; None when it is not one.
pub(super) fn parse_payload(payload: &str) -> Option<(&str, Vec<i64>)> {
    let (origin, list) = payload.split_once(':')?;
    let pks = list
        .split(',')
        .map(|pk| pk.parse().ok())
        .collect::<Option<Vec<i64>>>()?;
    Some((origin, pks))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn payloads_stay_under_the_limit_and_carry_every_pk_once() {
        let pks: Vec<i64> = (1_000_000_000..1_000_003_000).collect();
        let sent = payloads("a1b2", &pks);
        assert!(sent.len() > 1, "3000 ids do not fit one payload");
        let mut received = Vec::new();
        for payload in &sent {
            assert!(payload.len() <= PAYLOAD_LIMIT, "{} bytes", payload.len());
            let (origin, pks) = parse_payload(payload).unwrap();
            assert_eq!(origin, "a1b2");
            received.extend(pks);
        }
        assert_eq!(received, pks);
        assert!(payloads("a1b2", &[]).is_empty());
        assert_eq!(parse_payload("x:1,oops"), None);
        assert_eq!(parse_pace(&pace_payload("a1b2")), Some("a1b2"));
        assert_eq!(parse_payload(&pace_payload("a1b2")), None);
        assert_eq!(parse_pace("a1b2:1,2"), None);
    }
}
