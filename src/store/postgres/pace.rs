//! The shared Get Job pace on PostgreSQL: the `pictory_pace` row (see [`crate::store::pace`]).
//!
//! A change reads the row `FOR UPDATE`, runs in this process, writes the row back and commits:
//! four short statements on one connection, with the row locked for about a millisecond. It
//! does not take the history lock (nothing here is history), so a webhook storm never waits for
//! it, nor it for the storm. A reservation is made per batch of claimed jobs (a quarter second
//! of calls), not per call, so three replicas at 20 calls per second make about a dozen of
//! these transactions a second between them.

use super::write::{pace_payload, CHANNEL};
use crate::store::{PaceChange, PaceOutcome, PaceState, PauseState, SharedPace, StoreError};
use async_trait::async_trait;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use tokio::sync::watch;

pub(super) struct PgPace {
    pub(super) pool: PgPool,
    /// Names this process in its announcements.
    pub(super) origin: String,
    /// Ticked by the listener when another replica announces a change.
    pub(super) heard: Arc<watch::Sender<u64>>,
}

const COLUMNS: &str = "effective, calm_since, halved_at, recent, next_slot, hold_until, \
    blind_hold_ms, paused_detail, next_probe_at";

fn state_from_row(row: &sqlx::postgres::PgRow) -> Result<PaceState, StoreError> {
    let detail: Option<String> = row.try_get("paused_detail")?;
    let next_probe_at: Option<i64> = row.try_get("next_probe_at")?;
    Ok(PaceState {
        effective: row.try_get("effective")?,
        calm_since: row.try_get("calm_since")?,
        halved_at: row.try_get("halved_at")?,
        recent: row.try_get("recent")?,
        next_slot: row.try_get("next_slot")?,
        hold_until: row.try_get("hold_until")?,
        blind_hold_ms: row.try_get("blind_hold_ms")?,
        pause: detail.map(|detail| PauseState {
            detail,
            next_probe_at: next_probe_at.unwrap_or(i64::MIN),
        }),
    })
}

#[async_trait]
impl SharedPace for PgPace {
    async fn read(&self) -> Result<PaceState, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM pictory_pace WHERE id = 1"))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map_or_else(|| Ok(PaceState::default()), state_from_row)
    }

    async fn update(&self, change: PaceChange) -> Result<(PaceState, PaceOutcome), StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM pictory_pace WHERE id = 1 FOR UPDATE"
        ))
        .fetch_one(&mut *tx)
        .await?;
        let mut state = state_from_row(&row)?;
        let outcome = change(&mut state);
        let (detail, next_probe_at) = match &state.pause {
            Some(pause) => (Some(pause.detail.as_str()), Some(pause.next_probe_at)),
            None => (None, None),
        };
        sqlx::query(
            "UPDATE pictory_pace SET effective = $1, calm_since = $2, halved_at = $3, \
             recent = $4, next_slot = $5, hold_until = $6, blind_hold_ms = $7, \
             paused_detail = $8, next_probe_at = $9 WHERE id = 1",
        )
        .bind(state.effective)
        .bind(state.calm_since)
        .bind(state.halved_at)
        .bind(&state.recent)
        .bind(state.next_slot)
        .bind(state.hold_until)
        .bind(state.blind_hold_ms)
        .bind(detail)
        .bind(next_probe_at)
        .execute(&mut *tx)
        .await?;
        if outcome.announce {
            // Delivered on commit, to every replica's listener.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(pace_payload(&self.origin))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((state, outcome))
    }

    fn announcements(&self) -> watch::Receiver<u64> {
        self.heard.subscribe()
    }
}
