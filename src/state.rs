//! The shared, cheaply cloned state every handler and background task gets.

use crate::archive::Archive;
use crate::changes::Changes;
use crate::config::{decode_whsec, Config};
use crate::domain::time::Clock;
use crate::http::dashboard::session::Sessions;
use crate::ingest::{Announce, Ingestor};
use crate::metrics::Metrics;
use crate::pictory::PictoryClient;
use crate::quota::QuotaCache;
use crate::reconcile::Poller;
use crate::store::Store;
use crate::webhook_key::WebhookKeys;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The Get Job machinery; None in receive-only mode (no API key).
    pub poller: Option<Arc<Poller>>,
    /// The group committer webhook deliveries go through.
    pub ingestor: Ingestor,
    /// Pictory's `GET /v1/quota` answer, cached for `GET /v1/quota`.
    pub quota: QuotaCache,
    /// Job changes, for long-polls.
    pub changes: Changes,
    /// The output archive, when `archive.url` is set.
    pub archive: Option<Arc<Archive>>,
    /// Nudges the notifier when work was queued outside a job change (manual retries).
    pub outbox_wake: Arc<tokio::sync::Notify>,
    /// Cancelled when the service starts shutting down.
    pub stopping: CancellationToken,
    pub webhook_keys: WebhookKeys,
    /// Decoded `webhook.signing_secrets`; empty means deliveries are not signature-checked.
    pub signing_keys: Vec<Vec<u8>>,
    /// SHA-256 of each API token, so comparing never leaks a token's length or prefix.
    api_token_digests: Vec<[u8; 32]>,
    /// The dashboard's signed sessions (they also let the browser read `/v1` with GETs).
    pub sessions: Sessions,
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state from a validated configuration.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<AppState> {
        let secret = config
            .webhook
            .secret
            .clone()
            .ok_or_else(|| anyhow::anyhow!("configuration key `webhook.secret` is required"))?;
        let api_token_digests: Vec<[u8; 32]> = config.api.tokens.iter().map(digest).collect();
        let sessions = Sessions::new(
            &secret,
            &api_token_digests,
            i64::try_from(config.dashboard.session_ttl.as_millis()).unwrap_or(i64::MAX),
        );
        let webhook_keys = WebhookKeys::new(secret, &config.webhook.previous_secrets);
        let signing_keys = config
            .webhook
            .signing_secrets
            .iter()
            .map(|s| decode_whsec(s.expose_secret()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| anyhow::anyhow!("configuration key `webhook.signing_secrets`: {why}"))?;
        let metrics = Arc::new(Metrics::new());
        let archive = config
            .archive
            .url
            .as_deref()
            .map(Archive::open)
            .transpose()?
            .map(Arc::new);
        let store_for_ingest = store.clone();
        let changes = Changes::new();
        let poller = match &config.pictory.api_key {
            None => None,
            Some(key) => {
                let client =
                    PictoryClient::new(&config.pictory.base_url, key, config.pictory.timeout)?;
                Some(Arc::new(Poller::new(
                    store.clone(),
                    clock.clone(),
                    metrics.clone(),
                    changes.clone(),
                    client,
                    config.pictory.timeout,
                    config.reconcile.clone(),
                )))
            }
        };
        let ingestor = Ingestor::start(
            store_for_ingest,
            Announce {
                changes: changes.clone(),
                metrics: metrics.clone(),
            },
        );
        Ok(AppState(Arc::new(Inner {
            config,
            store,
            clock,
            metrics,
            poller,
            changes,
            ingestor,
            quota: QuotaCache::default(),
            archive,
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
            stopping: CancellationToken::new(),
            webhook_keys,
            signing_keys,
            api_token_digests,
            sessions,
        })))
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Verify mode: a webhook only says "look now"; the state comes from Get Job.
    pub fn verify_webhooks(&self) -> bool {
        self.poller.is_some() && self.config.pictory.verify_webhooks
    }

    /// When a job tracked from `now` on is first polled; None when jobhook cannot poll.
    pub fn first_poll_at(&self, now: i64) -> Option<i64> {
        self.poller.as_ref().map(|p| p.first_poll_at(now))
    }

    /// Makes the archiver look at its schedule now (a clock that jumped, in tests).
    pub fn wake_archiver(&self) {
        if let Some(archive) = &self.archive {
            archive.wake.notify_one();
        }
    }

    /// Makes the reconciler look at its schedule now (a clock that jumped, in tests).
    pub fn wake_reconciler(&self) {
        self.changes.poll_wake().wake();
    }

    /// Whether `/v1` needs a bearer token at all.
    pub fn api_requires_token(&self) -> bool {
        !self.api_token_digests.is_empty()
    }

    /// Constant-time check of a presented bearer token against every configured one.
    pub fn api_token_matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let presented = Sha256::digest(presented.as_bytes());
        let mut matched = subtle::Choice::from(0);
        for known in &self.api_token_digests {
            matched |= known.ct_eq(presented.as_slice());
        }
        bool::from(matched)
    }

    /// The URL to hand Pictory for jobs submitted outside jobhook.
    pub fn generic_webhook_url(&self) -> String {
        self.webhook_url(&self.webhook_keys.generic_key())
    }

    pub fn webhook_url(&self, key: &str) -> String {
        format!(
            "{}/webhooks/pictory/{key}",
            self.config.server.public_url.trim_end_matches('/')
        )
    }
}

fn digest(token: &SecretString) -> [u8; 32] {
    Sha256::digest(token.expose_secret().as_bytes()).into()
}
