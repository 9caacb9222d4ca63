//! Operational endpoints of the private listener: `/readyz`, `/metrics`, `/openapi.json`.

use crate::domain::time::rfc3339;
use crate::domain::usage::from_milli;
use crate::domain::JobStatus;
use crate::metrics::StatusLabel;
use crate::state::AppState;
use crate::store::{UsageGroup, UsageGroupBy, UsageQuery};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Ready when the database takes a write and the schema is current.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Not ready, with the reason")))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    // Readiness is about taking webhooks: a Pictory problem is reported, not made a 503, so a
    // load balancer keeps sending deliveries while polling is paused.
    if let Some(poller) = &state.poller {
        // With replicas: a pause or a hold another one saw.
        poller.refresh_pace().await;
    }
    let pictory = state.poller.as_ref().and_then(|p| p.problem());
    let polling = state.poller.as_ref().map(|p| {
        let pace = p.pace(state.now_ms());
        json!({
            "rate": pace.rate,
            "effective_rate": pace.effective_rate,
            "throttled": pace.throttled(),
            "held_until": pace.held_until.map(rfc3339),
        })
    });
    if !state.ingestor.is_running() {
        tracing::error!("the ingest writer has stopped; webhooks cannot be stored");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "the ingest writer has stopped"})),
        )
            .into_response();
    }
    // The archive is reported the same way: a store that refuses writes delays copies (they
    // are retried), it does not stop webhooks.
    let archive = match &state.archive {
        None => None,
        Some(archive) => Some(match archive.writable().await {
            Ok(()) => json!({"writable": true}),
            Err(why) => {
                tracing::warn!(error = %why, "the archive store refuses writes");
                json!({"writable": false, "error": why})
            }
        }),
    };
    match state.store.ready(state.now_ms()).await {
        Ok(()) => Json(
            json!({"status": "ready", "pictory": pictory, "polling": polling,
            "archive": archive}),
        )
        .into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": "database: not writable or schema not current"})),
            )
                .into_response()
        }
    }
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in the OpenMetrics text format", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // Gauges that describe the database are read at scrape time; a failed read leaves them as
    // they were and is logged, so a scrape never fails because of them.
    match state.store.count_by_status().await {
        Ok(counts) => {
            for status in JobStatus::ALL {
                let count = counts
                    .iter()
                    .find(|(s, _)| *s == status)
                    .map_or(0, |(_, n)| *n);
                state
                    .metrics
                    .jobs
                    .get_or_create(&StatusLabel {
                        status: status.as_str().to_owned(),
                    })
                    .set(count);
            }
        }
        Err(err) => tracing::warn!(error = %err, "cannot count jobs for metrics"),
    }
    let all_time = UsageQuery {
        from: 0,
        to: i64::MAX,
        group_by: UsageGroupBy::Model,
    };
    match state.store.usage(&all_time).await {
        Ok(rows) => state.metrics.set_credits_used(
            rows.into_iter()
                .filter_map(|row| match row.group {
                    UsageGroup::Name(model) => Some((model, from_milli(row.credits_milli))),
                    _ => None,
                })
                .collect(),
        ),
        Err(err) => tracing::warn!(error = %err, "cannot sum credits for metrics"),
    }
    let now = state.now_ms();
    if let Some(poller) = &state.poller {
        poller.refresh_pace().await;
        let pace = poller.pace(now);
        state
            .metrics
            .effective_rate
            .set(i64::from(pace.effective_rate));
        state.metrics.throttled.set(i64::from(pace.throttled()));
    }
    match state.store.replicas_alive().await {
        Ok(count) => {
            state.metrics.replicas.set(count);
        }
        Err(err) => tracing::warn!(error = %err, "cannot count the live replicas for metrics"),
    }
    match state.store.overdue(now).await {
        Ok((count, oldest)) => {
            state.metrics.overdue_jobs.set(count);
            let age_secs = oldest.map_or(0, |due| (now - due).max(0) / 1000);
            state.metrics.oldest_overdue_seconds.set(age_secs);
        }
        Err(err) => tracing::warn!(error = %err, "cannot count overdue jobs for metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This listener's OpenAPI 3 description, generated from the handlers.
pub async fn openapi() -> Response {
    Json(super::openapi_document()).into_response()
}
