//! The notifier: delivers the outbox to `[[notify.endpoints]]` as signed Standard Webhooks
//! requests, with retries over hours, and never under two different ids.
//!
//! Notifications are written in the same transaction as the change they announce, so a crash
//! cannot lose one; a crash mid-send only means the same message (same `webhook-id`) is sent again
//! after its lease runs out.

use crate::changes::Changes;
use crate::config::{decode_whsec, Config};
use crate::domain::time::millis;
use crate::domain::time::Clock;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::pictory::client::{retry_after, USER_AGENT_VALUE};
use crate::signature;
use crate::store::{Attempt, AttemptOutcome, Notification, Store, StoreError};
use rand::Rng;
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Request timeout for one delivery (Standard Webhooks suggests 15 to 30 s).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// Notifications claimed per step.
const BATCH: usize = 32;
/// Most deliveries in flight at once, so a backlog never floods an endpoint or our sockets.
const MAX_IN_FLIGHT: usize = 64;
/// Longest sleep with nothing due, so work queued by another replica is picked up.
const IDLE_WAKE_MS: i64 = 30_000;

pub struct Notifier {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    changes: Changes,
    wake: Arc<Notify>,
    http: reqwest::Client,
    /// Decoded signing key per endpoint URL.
    keys: Arc<HashMap<String, Vec<u8>>>,
    schedule: Arc<Vec<Duration>>,
    in_flight: JoinSet<()>,
}

impl Notifier {
    /// None when no endpoint is configured.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        changes: Changes,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Option<Notifier>> {
        if config.notify.endpoints.is_empty() {
            return Ok(None);
        }
        let mut keys = HashMap::new();
        for endpoint in &config.notify.endpoints {
            let key = decode_whsec(endpoint.secret.expose_secret())
                .map_err(|why| anyhow::anyhow!("notify endpoint {}: secret {why}", endpoint.url))?;
            keys.insert(endpoint.url.clone(), key);
        }
        let http = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            // A redirect is a failure, never followed (Standard Webhooks).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT_VALUE)
            .build()?;
        Ok(Some(Notifier {
            store,
            clock,
            metrics,
            changes,
            wake,
            http,
            keys: Arc::new(keys),
            schedule: Arc::new(config.notify.retry_schedule.clone()),
            in_flight: JoinSet::new(),
        }))
    }

    /// Starts every delivery due at `now`; returns when to step again.
    pub async fn step(&mut self, now: i64) -> Result<i64, StoreError> {
        while self.in_flight.try_join_next().is_some() {}
        let room = MAX_IN_FLIGHT
            .saturating_sub(self.in_flight.len())
            .min(BATCH);
        if room == 0 {
            // The run loop wakes as soon as a delivery finishes.
            return Ok(now + IDLE_WAKE_MS);
        }
        let lease_until = now + millis(SEND_TIMEOUT) + 30_000;
        let limit = u32::try_from(room).unwrap_or(u32::MAX);
        let claimed = self
            .store
            .claim_notifications(now, lease_until, limit)
            .await?;
        let full = claimed.len() == room;
        for notification in claimed {
            let send = Delivery {
                changes: self.changes.clone(),
                store: self.store.clone(),
                clock: self.clock.clone(),
                metrics: self.metrics.clone(),
                http: self.http.clone(),
                keys: self.keys.clone(),
                schedule: self.schedule.clone(),
            };
            self.in_flight
                .spawn(async move { send.deliver(notification).await });
        }
        if full {
            return Ok(now + 1);
        }
        let due = self
            .store
            .next_notification_due()
            .await?
            .unwrap_or(i64::MAX);
        Ok(due.min(now + IDLE_WAKE_MS).max(now + 1))
    }

    /// Waits for every delivery in flight to be recorded.
    pub async fn drain(&mut self) {
        while self.in_flight.join_next().await.is_some() {}
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut changes = self.changes.subscribe();
        let mut backoff = crate::retry::Backoff::default();
        loop {
            let now = self.clock.now_ms();
            let wake_at = match self.step(now).await {
                Ok(at) => {
                    backoff.succeeded();
                    at
                }
                Err(err) => {
                    let wait = backoff.failed();
                    tracing::warn!(error = %err, wait_ms = wait, "notifier cannot read the outbox; retrying");
                    now + wait
                }
            };
            let wait = Duration::from_millis(u64::try_from(wake_at - now).unwrap_or(0));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                // Any job change may have queued a notification.
                change = changes.recv() => {
                    if let Err(RecvError::Closed) = change {
                        break;
                    }
                    // One look at the outbox serves every change already waiting, so a storm
                    // of webhooks costs one round, not one per change.
                    while !matches!(
                        changes.try_recv(),
                        Err(TryRecvError::Empty | TryRecvError::Closed)
                    ) {}
                }
                _ = self.wake.notified() => {}
                Some(_) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {}
            }
        }
        self.drain().await;
    }
}

/// Everything one delivery needs, cheap to clone into its task.
struct Delivery {
    changes: Changes,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
    keys: Arc<HashMap<String, Vec<u8>>>,
    schedule: Arc<Vec<Duration>>,
}

impl Delivery {
    async fn deliver(self, notification: Notification) {
        let attempt = match self.keys.get(&notification.endpoint) {
            Some(key) => self.send(key, &notification).await,
            None => Attempt {
                outcome: AttemptOutcome::Exhausted,
                http_status: None,
                error: Some("the endpoint is no longer configured".into()),
            },
        };
        let label = match &attempt.outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::RetryAt(_) => "failed",
            AttemptOutcome::Exhausted => "exhausted",
            AttemptOutcome::Gone => "gone",
        };
        self.metrics
            .notification_attempts
            .get_or_create(&OutcomeLabel {
                outcome: label.to_owned(),
            })
            .inc();
        if attempt.outcome == AttemptOutcome::Gone {
            tracing::warn!(endpoint = %notification.endpoint, "endpoint answered 410 Gone; it is disabled until re-enabled");
        }
        let now = self.clock.now_ms();
        if let Err(err) = self
            .store
            .record_attempt(notification.id, attempt, now)
            .await
        {
            // The lease runs out and the same message is sent again later.
            tracing::error!(error = %err, id = notification.id, "cannot record a notification attempt");
            return;
        }
        // The attempt is in the job's history: a change of the job for whoever waits on it.
        if let Ok(Some(job)) = self.store.job_by_pk(notification.job_pk).await {
            self.changes.publish(&job);
        }
    }

    async fn send(&self, key: &[u8], notification: &Notification) -> Attempt {
        let timestamp = self.clock.now_ms().div_euclid(1000);
        let body = notification.payload.as_bytes();
        let signature = signature::sign(key, &notification.message_id, timestamp, body);
        let sent = self
            .http
            .post(&notification.endpoint)
            .header("content-type", "application/json")
            .header("webhook-id", &notification.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(notification.payload.clone())
            .send()
            .await;
        let (status, wait, error) = match sent {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    return Attempt {
                        outcome: AttemptOutcome::Delivered,
                        http_status: Some(status.as_u16()),
                        error: None,
                    };
                }
                if status == reqwest::StatusCode::GONE {
                    return Attempt {
                        outcome: AttemptOutcome::Gone,
                        http_status: Some(410),
                        error: Some("endpoint answered 410 Gone".into()),
                    };
                }
                let wait = retry_after(response.headers());
                (Some(status.as_u16()), wait, format!("HTTP {status}"))
            }
            Err(err) if err.is_timeout() => (None, None, "timed out".to_owned()),
            Err(err) if err.is_connect() => (None, None, "could not connect".to_owned()),
            Err(err) => (None, None, err.to_string()),
        };
        Attempt {
            outcome: self.after_failure(notification.round_attempts, wait),
            http_status: status,
            error: Some(error),
        }
    }

    /// The next attempt per `notify.retry_schedule` (with up to 10% jitter), or exhaustion.
    fn after_failure(&self, round_attempts: i64, retry_after: Option<Duration>) -> AttemptOutcome {
        let position = usize::try_from(round_attempts).unwrap_or(usize::MAX);
        let Some(delay) = self.schedule.get(position) else {
            return AttemptOutcome::Exhausted;
        };
        let base = millis(*delay);
        let jitter = rand::thread_rng().gen_range(0..=base / 10);
        let wait = (base + jitter).max(retry_after.map_or(0, millis));
        AttemptOutcome::RetryAt(self.clock.now_ms().saturating_add(wait))
    }
}
