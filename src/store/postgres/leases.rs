//! Who holds a lease, so that a replica starting up can free the leases of a process that died
//! without touching those of replicas still running.
//!
//! Each process picks an owner number and holds the session advisory lock
//! `(LEASE_CLASS, owner)` on a connection of its own for as long as it runs. Its claims write
//! the number into `lease_owner`. PostgreSQL drops a session's locks when its connection ends,
//! which a killed process's does at once, so "the owner holds no lock" means "the owner is
//! gone". A lease whose time has run out is free whoever held it (a claim takes it anyway).

use super::super::StoreError;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::time::Duration;

/// The first key of every lease-owner advisory lock ("jh").
pub(super) const LEASE_CLASS: i32 = 0x6a68;

/// This process's lease-owner lock, held on a connection of its own.
#[derive(Debug)]
pub(super) struct Owner {
    pub(super) number: i64,
    /// None after the connection was lost, until [`Owner::beat`] takes the lock again.
    connection: Option<PgConnection>,
}

impl Owner {
    /// Takes an owner number no live process holds.
    pub(super) async fn take(
        options: &PgConnectOptions,
        timeout: Duration,
    ) -> Result<Owner, StoreError> {
        let mut connection = connect(options, timeout).await?;
        loop {
            let number = rand::random::<i32>().saturating_abs().max(1);
            if try_lock(&mut connection, number).await? {
                return Ok(Owner {
                    number: i64::from(number),
                    connection: Some(connection),
                });
            }
        }
    }

    /// Marks this replica alive in `replicas` (stamped with the database's clock), on the
    /// lock's own connection. A connection that was lost (the database restarted, the network
    /// cut it) took the lock with it: it is opened again and the same number locked again, so
    /// a replica starting up meanwhile cannot take this one's leases for a dead process's for
    /// longer than the outage. While the old session still holds the lock on the server (it
    /// has not noticed the loss yet), this fails and is tried again at the next beat.
    /// Each step is bounded by `timeout`: a database that does not answer at all (a network
    /// that drops packets) must not hold the upkeep for minutes.
    pub(super) async fn beat(
        &mut self,
        options: &PgConnectOptions,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        if let Some(connection) = self.connection.as_mut() {
            let marked = tokio::time::timeout(timeout, mark_alive(connection, self.number)).await;
            match marked {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "the lease-owner connection was lost; taking the lock again");
                }
                Err(_) => tracing::warn!(
                    "the lease-owner connection stopped answering; taking the lock again"
                ),
            }
            self.connection = None;
        }
        let mut connection = connect(options, timeout).await?;
        let number = i32::try_from(self.number).map_err(super::corrupt)?;
        let relocked = tokio::time::timeout(timeout, async {
            if !try_lock(&mut connection, number).await? {
                return Err(StoreError::Corrupt(format!(
                    "lease-owner lock {number} is still held by this replica's old session"
                )));
            }
            mark_alive(&mut connection, self.number).await
        })
        .await;
        match relocked {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
        self.connection = Some(connection);
        tracing::info!("the lease-owner lock is held again");
        Ok(())
    }

    /// Ends the lock (and its connection), and this replica's row in `replicas`.
    pub(super) async fn release(self) {
        let Some(mut connection) = self.connection else {
            return;
        };
        let gone = sqlx::query("DELETE FROM replicas WHERE owner = $1")
            .bind(self.number)
            .execute(&mut connection)
            .await;
        if let Err(err) = gone {
            tracing::debug!(error = %err, "removing this replica from the replicas table");
        }
        if let Err(err) = connection.close().await {
            tracing::debug!(error = %err, "closing the lease-owner connection");
        }
    }
}

async fn connect(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, StoreError> {
    match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
    }
}

async fn try_lock(connection: &mut PgConnection, number: i32) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LEASE_CLASS)
        .bind(number)
        .fetch_one(connection)
        .await?)
}

/// The database's clock in unix milliseconds, as SQL: replicas' clocks need not agree for the
/// liveness count.
pub(super) const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Rows older than this are removed (a replica that died long ago).
const FORGET_AFTER_MS: i64 = 3_600_000;

async fn mark_alive(connection: &mut PgConnection, number: i64) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO replicas (owner, seen_at) VALUES ($1, {DB_NOW_MS}) \
         ON CONFLICT (owner) DO UPDATE SET seen_at = EXCLUDED.seen_at"
    ))
    .bind(number)
    .execute(&mut *connection)
    .await?;
    sqlx::query(&format!(
        "DELETE FROM replicas WHERE seen_at < {DB_NOW_MS} - $1"
    ))
    .bind(FORGET_AFTER_MS)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// SQL that is true for a row whose lease owner is no longer alive (`owner_class` names the
/// parameter bound to [`LEASE_CLASS`] as a BIGINT).
pub(super) fn owner_gone(column: &str, owner_class: &str) -> String {
    format!(
        "({column} IS NULL OR {column} NOT IN (SELECT l.objid::BIGINT FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.classid::BIGINT = {owner_class} AND l.objsubid = 2 \
         AND l.granted AND l.database = (SELECT oid FROM pg_database \
         WHERE datname = current_database())))"
    )
}
