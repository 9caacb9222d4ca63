//! The open-file limit, and the connection caps sized from it.
//!
//! Every connection a listener holds is a file descriptor, and the process has only as many as
//! its open-file limit. The listeners must never take the last ones: the database opens files
//! lazily (each SQLite connection holds three: the database, its WAL and the shared-memory
//! index), every Pictory call and notification opens a socket, and `accept` itself needs a free
//! descriptor even to take a connection only to refuse it. So, for an open-file limit `L`:
//!
//! ```text
//! reserve       = L / 4, at least 64 and at most 256
//! per listener  = (L - reserve) / 2, at most 10,000
//! ```
//!
//! With both listeners full the process holds at most `2 × per listener + reserve ≤ L`
//! descriptors for connections and everything else together. The reserve of 256 covers SQLite
//! (six connections, 18 files), 64 notifications and 64 Get Job calls in flight, submissions and
//! refreshes, the runtime (epoll, eventfd, signal pipe), stdio, the two listening sockets, and
//! room to spare. At L = 1,024 each listener holds 384 connections; at 20,000, 9,872. The
//! ceiling of 10,000 per listener bounds the memory a flood can take (the README gives what an
//! idle connection costs). Below L = 1,024 the reserve shrinks to a quarter of the limit, which
//! still covers the database and a few dozen outbound calls; raise the limit for anything real.

/// Descriptors kept out of the listeners' reach, at most.
pub const RESERVE_MAX: u64 = 256;
/// Descriptors kept out of the listeners' reach, at least (for tiny limits).
pub const RESERVE_MIN: u64 = 64;
/// The most connections a listener holds by default, however high the limit.
pub const CEILING: u64 = 10_000;

/// The descriptors kept for everything but the listeners' connections, at open-file limit `limit`.
pub fn reserve(limit: u64) -> u64 {
    (limit / 4).clamp(RESERVE_MIN, RESERVE_MAX)
}

/// The default `server.max_connections` at open-file limit `limit`.
pub fn connections_per_listener(limit: u64) -> u32 {
    let per_listener = (limit.saturating_sub(reserve(limit)) / 2).clamp(1, CEILING);
    u32::try_from(per_listener).unwrap_or(u32::MAX)
}

/// The process's open-file limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// The process's open-file limits now, when the platform has them.
pub fn open_file_limit() -> Option<OpenFileLimit> {
    #[cfg(unix)]
    {
        rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, hard)| OpenFileLimit { soft, hard })
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the soft open-file limit to the hard one (what `jobhook serve` does first) and logs
/// both. Returns the limits in force afterwards.
pub fn raise_open_file_limit() -> Option<OpenFileLimit> {
    let before = open_file_limit()?;
    #[cfg(unix)]
    if before.soft < before.hard {
        if let Err(err) = rlimit::increase_nofile_limit(before.hard) {
            tracing::warn!(
                soft = before.soft,
                hard = before.hard,
                error = %err,
                "cannot raise the open-file limit; keeping the soft one"
            );
        }
    }
    let after = open_file_limit()?;
    tracing::info!(
        soft_before = before.soft,
        soft = after.soft,
        hard = after.hard,
        "open-file limit: soft {} (was {}), hard {}",
        after.soft,
        before.soft,
        after.hard
    );
    Some(after)
}

/// How many connections each listener holds, and where that number comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub per_listener: u32,
    /// The soft open-file limit it was checked against, when known.
    pub limit: Option<u64>,
    /// Whether `server.max_connections` set it.
    pub configured: bool,
}

impl Sizing {
    /// `configured` when set, else the default for `limit` (or for 1,024 when it is unknown).
    pub fn new(configured: Option<u32>, limit: Option<u64>) -> Sizing {
        match configured {
            Some(per_listener) => Sizing {
                per_listener,
                limit,
                configured: true,
            },
            None => Sizing {
                per_listener: connections_per_listener(limit.unwrap_or(1024)),
                limit,
                configured: false,
            },
        }
    }

    /// Whether full listeners could leave less than the reserve for the database and the calls
    /// jobhook makes (only a configured cap can).
    pub fn crowds_the_reserve(&self) -> bool {
        self.limit
            .is_some_and(|limit| 2 * u64::from(self.per_listener) + reserve(limit) > limit)
    }

    /// Logs the caps at start-up, warning when a configured one leaves too small a reserve.
    pub fn log(&self) {
        let limit = self
            .limit
            .map_or_else(|| "unknown".to_owned(), |l| l.to_string());
        if self.crowds_the_reserve() {
            tracing::warn!(
                max_connections = self.per_listener,
                open_file_limit = %limit,
                "server.max_connections = {} lets the two listeners hold {} descriptors of the \
                 {limit} the process may open, leaving less than the {} the database, the \
                 notifier and Pictory calls need; a flood could make them fail",
                self.per_listener,
                2 * u64::from(self.per_listener),
                self.limit.map_or(RESERVE_MAX, reserve),
            );
        } else {
            tracing::info!(
                max_connections = self.per_listener,
                open_file_limit = %limit,
                configured = self.configured,
                "each listener holds at most {} connections",
                self.per_listener
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listeners_leave_the_reserve_free_at_every_limit() {
        for limit in [64, 100, 256, 512, 1024, 4096, 20_000, 65_536, 1 << 20] {
            let per_listener = u64::from(connections_per_listener(limit));
            assert!(per_listener >= 1);
            if limit >= 2 + RESERVE_MIN {
                assert!(
                    2 * per_listener + reserve(limit) <= limit,
                    "limit {limit}: 2 × {per_listener} + {}",
                    reserve(limit)
                );
            }
        }
        assert_eq!(connections_per_listener(256), 96);
        assert_eq!(connections_per_listener(1024), 384);
        assert_eq!(connections_per_listener(20_000), 9_872);
        assert_eq!(connections_per_listener(1 << 20), 10_000);
    }

    #[test]
    fn a_configured_cap_is_kept_and_checked_against_the_limit() {
        let sizing = Sizing::new(Some(500), Some(1024));
        assert_eq!(sizing.per_listener, 500);
        assert!(sizing.crowds_the_reserve(), "2 × 500 + 256 > 1024");
        assert!(!Sizing::new(Some(384), Some(1024)).crowds_the_reserve());
        assert!(!Sizing::new(None, Some(1024)).crowds_the_reserve());
        assert_eq!(Sizing::new(None, None).per_listener, 384);
    }
}
