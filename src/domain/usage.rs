//! What a finished job cost, as the exact integers `GET /v1/usage` sums (SPEC §12).
//!
//! Credits are decimals (12.8, 8, 1.6 per second), and summing them as floating point drifts:
//! 12.8 + 12.8 + 12.8 is 38.400000000000006. So every figure is kept as an integer of
//! thousandths (milli-credits, milliseconds of video) from the moment the job is recorded
//! final, summed as integers, and only turned back into a decimal number for the JSON. Pictory
//! reports credits with one decimal at most (credits per second times whole seconds), so
//! thousandths keep every figure it sends exactly.

use super::{Job, JobStatus};
use serde_json::Value;

/// Milliseconds in a UTC day: usage is grouped by days counted from 1970-01-01.
pub const DAY_MS: i64 = 86_400_000;
/// The model of a job not submitted through jobhook: Pictory's job answers do not name it.
pub const UNKNOWN_MODEL: &str = "unknown";
/// Pictory's default model, used when a submission named none.
pub const DEFAULT_MODEL: &str = crate::pictory::rules::DEFAULT_MODEL;

/// The usage of one job that became `completed` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageFacts {
    /// When jobhook recorded the final status (`completed_at`).
    pub at: i64,
    pub model: String,
    pub status: JobStatus,
    /// `aiCreditsUsed` in thousandths of a credit (0 when Pictory reported none).
    pub credits_milli: i64,
    /// The video's duration in milliseconds (0 when Pictory reported none).
    pub video_ms: i64,
}

impl UsageFacts {
    /// The usage of `job` once it is `completed` or `failed`; None for any other status (a
    /// `submit_failed` job never reached Pictory, so it used nothing).
    pub fn of(job: &Job) -> Option<UsageFacts> {
        if !counts_for_usage(job.status) {
            return None;
        }
        let output = job.output.as_ref();
        Some(UsageFacts {
            at: job.completed_at?,
            model: model_of(job.request.as_ref()),
            status: job.status,
            credits_milli: output
                .and_then(|o| o.ai_credits_used)
                .map_or(0, credits_milli),
            video_ms: output
                .and_then(|o| o.duration.as_deref())
                .and_then(duration_ms)
                .unwrap_or(0),
        })
    }

    /// The UTC day it counts for.
    pub fn day(&self) -> i64 {
        day_of(self.at)
    }
}

/// The statuses whose jobs `GET /v1/usage` counts: the final answers from Pictory.
pub fn counts_for_usage(status: JobStatus) -> bool {
    matches!(status, JobStatus::Completed | JobStatus::Failed)
}

/// The UTC day (days since 1970-01-01) of a unix-millisecond time.
/// The latest time usage is asked about: 10000-01-01. Keeps day arithmetic far from overflow.
const END_OF_TIME: i64 = 253_402_300_800_000;

/// A usage range `[from, to)` as both stores read it: the whole UTC days the daily summary
/// answers, and the two pieces at the ends (days the range cuts through) that the per-job rows
/// answer. Each is a half-open pair; an empty piece is `(0, 0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeSplit {
    /// The whole range, clamped, in unix milliseconds.
    pub from: i64,
    pub to: i64,
    /// Days since 1970-01-01, `[first, end)`.
    pub days: (i64, i64),
    /// Unix milliseconds.
    pub head: (i64, i64),
    pub tail: (i64, i64),
}

/// Splits `[from, to)` (clamped to the years 1970–9999); None when it is empty.
pub fn split_range(from: i64, to: i64) -> Option<RangeSplit> {
    let from = from.clamp(0, END_OF_TIME);
    let to = to.clamp(0, END_OF_TIME);
    if from >= to {
        return None;
    }
    let first_day = from.div_euclid(DAY_MS) + i64::from(from.rem_euclid(DAY_MS) != 0);
    let end_day = to.div_euclid(DAY_MS);
    Some(if first_day < end_day {
        RangeSplit {
            from,
            to,
            days: (first_day, end_day),
            head: (from, first_day * DAY_MS),
            tail: (end_day * DAY_MS, to),
        }
    } else {
        RangeSplit {
            from,
            to,
            days: (0, 0),
            head: (from, to),
            tail: (0, 0),
        }
    })
}

pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The model a job was generated with: the one its request named, Pictory's default when a
/// submission named none, or [`UNKNOWN_MODEL`] for a job submitted outside jobhook.
pub fn model_of(request: Option<&Value>) -> String {
    match request {
        None => UNKNOWN_MODEL.to_owned(),
        Some(request) => request
            .get("model")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .unwrap_or(DEFAULT_MODEL)
            .to_owned(),
    }
}

/// Credits in thousandths, rounded to the nearest (the parse of `12.8` is a hair off 12.8,
/// and rounding takes it back). Negative or non-finite figures count as nothing.
pub fn credits_milli(credits: f64) -> i64 {
    let milli = (credits * 1000.0).round();
    if milli.is_finite() && milli > 0.0 {
        // Saturates at i64::MAX, far beyond any account.
        milli as i64
    } else {
        0
    }
}

/// A duration as Pictory may send it, in milliseconds: `"8s"`, `"8"`, `"31.5s"`, `"8 sec"`,
/// `"8 seconds"`, or a clock form `"00:08"` / `"1:02:03"`. None when it is none of these.
pub fn duration_ms(text: &str) -> Option<i64> {
    let text = text.trim().to_ascii_lowercase();
    let seconds = if text.contains(':') {
        let mut total = 0.0;
        for part in text.split(':') {
            let part: f64 = part.trim().parse().ok()?;
            total = total * 60.0 + part;
        }
        total
    } else {
        let number = ["seconds", "second", "secs", "sec", "s"]
            .iter()
            .find_map(|unit| text.strip_suffix(unit))
            .unwrap_or(&text);
        number.trim().parse().ok()?
    };
    let ms = (seconds * 1000.0).round();
    (ms.is_finite() && ms >= 0.0).then_some(ms as i64)
}

/// A sum of thousandths as the decimal number it is, for JSON: 38400 is 38.4. Exact for any
/// total below 2^53 thousandths (9 trillion credits): the shortest decimal that reads back as
/// the same floating-point number is the one meant.
pub fn from_milli(milli: i64) -> f64 {
    milli as f64 / 1000.0
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_range_splits_into_whole_days_and_the_cut_ends() {
        let day = DAY_MS;
        assert_eq!(
            split_range(day + 5, 4 * day + 7),
            Some(RangeSplit {
                from: day + 5,
                to: 4 * day + 7,
                days: (2, 4),
                head: (day + 5, 2 * day),
                tail: (4 * day, 4 * day + 7),
            })
        );
        assert_eq!(
            split_range(day, 2 * day),
            Some(RangeSplit {
                from: day,
                to: 2 * day,
                days: (1, 2),
                head: (day, day),
                tail: (2 * day, 2 * day),
            }),
            "whole days only"
        );
        assert_eq!(
            split_range(day + 1, day + 9),
            Some(RangeSplit {
                from: day + 1,
                to: day + 9,
                days: (0, 0),
                head: (day + 1, day + 9),
                tail: (0, 0),
            }),
            "inside one day"
        );
        assert_eq!(split_range(5, 5), None);
        assert_eq!(split_range(-10, -1), None, "before 1970: nothing");
    }

    use super::*;
    use crate::pictory::JobOutput;
    use serde_json::json;

    #[test]
    fn thousandths_sum_exactly_where_floating_point_drifts() {
        let reported = [12.8, 12.8, 12.8, 0.1, 0.2];
        let float: f64 = reported.iter().sum();
        assert_ne!(float.to_string(), "38.7", "floating point drifts: {float}");
        let exact: i64 = reported.iter().map(|c| credits_milli(*c)).sum();
        assert_eq!(exact, 38_700);
        assert_eq!(json!(from_milli(exact)).to_string(), "38.7");
        assert_eq!(json!(from_milli(8_000)).to_string(), "8.0");
        assert_eq!(credits_milli(1.6 * 8.0), 12_800);
        assert_eq!(credits_milli(-3.0), 0);
        assert_eq!(credits_milli(f64::NAN), 0);
    }

    #[test]
    fn durations_are_read_tolerantly() {
        for (text, ms) in [
            ("8s", 8_000),
            ("8", 8_000),
            (" 10S ", 10_000),
            ("31.5s", 31_500),
            ("8 sec", 8_000),
            ("6 seconds", 6_000),
            ("00:08", 8_000),
            ("1:02:03", 3_723_000),
        ] {
            assert_eq!(duration_ms(text), Some(ms), "{text}");
        }
        for text in ["", "eight", "-4s", "s", "1:xx"] {
            assert_eq!(duration_ms(text), None, "{text}");
        }
    }

    #[test]
    fn the_model_is_the_requests_or_pictorys_default_or_unknown() {
        assert_eq!(model_of(Some(&json!({"model": "veo3.1"}))), "veo3.1");
        assert_eq!(model_of(Some(&json!({"prompt": "p"}))), "pixverse5.5");
        assert_eq!(model_of(None), "unknown");
    }

    #[test]
    fn only_completed_and_failed_jobs_count() {
        let mut job = Job::pending_for_tests(1);
        job.request = Some(json!({"model": "veo3.1_fast"}));
        job.completed_at = Some(3 * DAY_MS + 5);
        assert_eq!(UsageFacts::of(&job), None);
        job.status = JobStatus::SubmitFailed;
        assert_eq!(UsageFacts::of(&job), None);
        job.status = JobStatus::Completed;
        job.output = Some(JobOutput {
            duration: Some("8s".into()),
            ai_credits_used: Some(80.0),
            ..JobOutput::default()
        });
        let facts = UsageFacts::of(&job).unwrap();
        assert_eq!(
            (facts.model.as_str(), facts.credits_milli, facts.video_ms),
            ("veo3.1_fast", 80_000, 8_000)
        );
        assert_eq!(facts.day(), 3);
        job.status = JobStatus::Failed;
        job.output = None;
        let failed = UsageFacts::of(&job).unwrap();
        assert_eq!((failed.credits_milli, failed.video_ms), (0, 0));
    }
}
