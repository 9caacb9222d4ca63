//! The cache behind `GET /v1/quota`: Pictory's answer to its own `GET /v1/quota`, kept for a
//! minute, so clients can look at the credits left as often as they like (and without the
//! API key) while Pictory is asked once a minute at most.

use crate::domain::time::Clock;
use crate::pictory::{PictoryClient, QuotaFailure};
use bytes::Bytes;

/// How long an answer is served before Pictory is asked again.
pub const QUOTA_TTL_MS: i64 = 60_000;

/// Pictory's answer and when it was fetched.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Pictory's JSON, verbatim.
    pub body: Bytes,
    /// The injected clock's time of the answer.
    pub fetched_at: i64,
}

#[derive(Debug)]
pub struct QuotaCache {
    ttl_ms: i64,
    /// Held while Pictory is asked, so requests that find the cache stale together make one
    /// call and share its answer.
    last: tokio::sync::Mutex<Option<Fetched>>,
}

impl Default for QuotaCache {
    fn default() -> Self {
        QuotaCache::new(QUOTA_TTL_MS)
    }
}

impl QuotaCache {
    pub fn new(ttl_ms: i64) -> QuotaCache {
        QuotaCache {
            ttl_ms,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached answer while it is younger than the TTL, else a fresh one from Pictory.
    /// Failures are not cached: the next request asks again.
    pub async fn get(
        &self,
        client: &PictoryClient,
        clock: &dyn Clock,
    ) -> Result<Fetched, QuotaFailure> {
        let mut last = self.last.lock().await;
        let now = clock.now_ms();
        // A clock that went back makes the answer stale rather than fresh for longer.
        if let Some(fetched) = last
            .as_ref()
            .filter(|f| (f.fetched_at..f.fetched_at + self.ttl_ms).contains(&now))
        {
            return Ok(fetched.clone());
        }
        let body = client.quota().await?;
        let fetched = Fetched {
            body: Bytes::from(body),
            fetched_at: clock.now_ms(),
        };
        *last = Some(fetched.clone());
        Ok(fetched)
    }

    /// How long `fetched` stays fresh after `now`, in whole seconds.
    pub fn fresh_for_secs(&self, fetched: &Fetched, now: i64) -> i64 {
        ((fetched.fetched_at + self.ttl_ms - now).max(0)) / 1000
    }
}
