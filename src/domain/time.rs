//! Wall-clock time as unix milliseconds, injectable so tests control it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The source of "now" for everything stored.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let now = OffsetDateTime::now_utc();
        (now.unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// A clock tests move by hand: frozen, or running with real time plus the jumps made.
#[derive(Debug, Clone)]
pub struct ManualClock {
    manual: Arc<AtomicI64>,
    /// When set, real time since this instant is added (for tests of loops that wait).
    running_since: Option<std::time::Instant>,
}

impl ManualClock {
    /// A frozen clock at `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        ManualClock {
            manual: Arc::new(AtomicI64::new(start_ms)),
            running_since: None,
        }
    }

    /// A clock that starts at `start_ms` and runs with real time.
    pub fn running(start_ms: i64) -> Self {
        ManualClock {
            manual: Arc::new(AtomicI64::new(start_ms)),
            running_since: Some(std::time::Instant::now()),
        }
    }

    pub fn advance_ms(&self, ms: i64) {
        self.manual.fetch_add(ms, Ordering::SeqCst);
    }

    /// Moves a frozen clock to `ms`, never backwards.
    pub fn set_ms(&self, ms: i64) {
        self.manual.fetch_max(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        let real = self
            .running_since
            .map_or(0, |since| millis(since.elapsed()));
        self.manual.load(Ordering::SeqCst).saturating_add(real)
    }
}

/// A duration in whole milliseconds, saturating (stored times are unix milliseconds).
pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 UTC, always with three fractional digits, so timestamps sort as text too.
const MILLIS_UTC: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// RFC 3339 UTC with millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(MILLIS_UTC).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Parses an RFC 3339 timestamp (any offset) into unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

/// Parses a calendar date (`2025-11-29`) as the unix milliseconds of its midnight, UTC.
pub fn parse_date(text: &str) -> Option<i64> {
    let date = time::Date::parse(text, DATE).ok()?;
    let midnight = date.midnight().assume_utc();
    i64::try_from(midnight.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The calendar date (`2025-11-29`) of a UTC day counted from 1970-01-01.
pub fn date_of_day(day: i64) -> String {
    day.checked_mul(86_400)
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| t.date().format(DATE).ok())
        .unwrap_or_else(|| day.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_midnights_and_days_print_as_dates() {
        let ms = parse_date("2025-11-29").unwrap();
        assert_eq!(rfc3339(ms), "2025-11-29T00:00:00.000Z");
        assert_eq!(date_of_day(ms / 86_400_000), "2025-11-29");
        assert_eq!(date_of_day(0), "1970-01-01");
        assert_eq!(parse_date("2025-02-30"), None);
        assert_eq!(parse_date("2025-11-29T00:00:00Z"), None);
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let ms = 1_764_400_000_123;
        let text = rfc3339(ms);
        assert_eq!(text, "2025-11-29T07:06:40.123Z");
        assert_eq!(parse_rfc3339(&text), Some(ms));
        assert_eq!(parse_rfc3339("2025-11-29T08:06:40.123+01:00"), Some(ms));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(rfc3339(1_764_400_000_000), "2025-11-29T07:06:40.000Z");
    }
}
