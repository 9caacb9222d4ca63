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

/// The first key of every lease-owner advisory lock ("jh").
pub(super) const LEASE_CLASS: i32 = 0x6a68;

/// This process's lease-owner lock, held on a connection of its own.
#[derive(Debug)]
pub(super) struct Owner {
    pub(super) number: i64,
    connection: PgConnection,
}

impl Owner {
    /// Takes an owner number no live process holds.
    pub(super) async fn take(options: &PgConnectOptions) -> Result<Owner, StoreError> {
        let mut connection = PgConnection::connect_with(options).await?;
        loop {
            let number = rand::random::<i32>().saturating_abs().max(1);
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(LEASE_CLASS)
                .bind(number)
                .fetch_one(&mut connection)
                .await?;
            if taken {
                return Ok(Owner {
                    number: i64::from(number),
                    connection,
                });
            }
        }
    }

    /// Ends the lock (and its connection).
    pub(super) async fn release(self) {
        if let Err(err) = self.connection.close().await {
            tracing::debug!(error = %err, "closing the lease-owner connection");
        }
    }
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
