//! `GET /v1/usage`: the credits, jobs and video seconds of the jobs Pictory finished, per
//! group, summed exactly from what Pictory reported (SPEC §12).

use crate::domain::time::{date_of_day, parse_date, parse_rfc3339, rfc3339};
use crate::domain::usage::{from_milli, DAY_MS};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::ApiQuery;
use crate::state::AppState;
use crate::store::{UsageGroup, UsageGroupBy, UsageQuery, UsageRow};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The range asked for when `from` is not given: this long before `to`.
const DEFAULT_DAYS: i64 = 30;
/// Longest segment of a `metadata.KEY` path, and most segments.
const KEY_LIMIT: usize = 64;
const PATH_SEGMENTS: usize = 8;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Start of the range, inclusive: RFC 3339, or a date (`2025-11-01`, midnight UTC).
    /// Default: 30 days before `to`.
    pub from: Option<String>,
    /// End of the range, exclusive: RFC 3339, or a date (midnight UTC). Default: now.
    pub to: Option<String>,
    /// `day` (UTC, the default), `model`, `status`, or `metadata.KEY` (a top-level key of the
    /// jobs' metadata, or a dotted path into nested objects; letters, digits, `_` and `-`).
    #[param(
        pattern = r"^(day|model|status|metadata\.[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7})$"
    )]
    pub group_by: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// The range, as read: `from` inclusive, `to` exclusive.
    pub from: String,
    pub to: String,
    pub group_by: String,
    /// One entry per group with at least one job, in group order.
    pub data: Vec<UsageEntry>,
    /// The whole range.
    pub total: UsageFigures,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageEntry {
    /// The day (`2025-11-29`), model, status (`completed`, `failed`) or metadata value (any
    /// JSON; null when the key is absent).
    pub group: Value,
    #[serde(flatten)]
    pub figures: UsageFigures,
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct UsageFigures {
    /// Jobs that became `completed` or `failed` (by `completed_at`).
    pub jobs: i64,
    /// Sum of Pictory's `aiCreditsUsed`, exact.
    pub credits: f64,
    /// Sum of the videos' durations, in seconds.
    pub video_seconds: f64,
}

impl UsageFigures {
    fn of(jobs: i64, credits_milli: i64, video_ms: i64) -> UsageFigures {
        UsageFigures {
            jobs,
            credits: from_milli(credits_milli),
            video_seconds: from_milli(video_ms),
        }
    }
}

/// Credits, jobs and video seconds per day, model, status or metadata value.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageParams),
    responses((status = 200, body = Usage),
        (status = 400, description = "A bad time, range or group_by", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_usage(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<Usage>, ApiError> {
    let to = match params.to.as_deref() {
        Some(text) => parse_time("to", text)?,
        None => state.now_ms(),
    };
    let from = match params.from.as_deref() {
        Some(text) => parse_time("from", text)?,
        None => to.saturating_sub(DEFAULT_DAYS * DAY_MS).max(0),
    };
    if from >= to {
        return Err(ApiError::bad_request(
            "invalid_query",
            "from: must be before to",
        ));
    }
    let group_name = params.group_by.unwrap_or_else(|| "day".to_owned());
    let group_by = parse_group_by(&group_name)?;
    let query = UsageQuery { from, to, group_by };
    let rows = state.store.usage(&query).await?;
    Ok(Json(report(&query, group_name, &rows)))
}

fn report(query: &UsageQuery, group_by: String, rows: &[UsageRow]) -> Usage {
    let (mut jobs, mut credits, mut video) = (0i64, 0i64, 0i64);
    let data = rows
        .iter()
        .map(|row| {
            jobs += row.jobs;
            credits += row.credits_milli;
            video += row.video_ms;
            let group = match &row.group {
                UsageGroup::Day(day) => Value::String(date_of_day(*day)),
                UsageGroup::Name(name) => Value::String(name.clone()),
                UsageGroup::Value(value) => value.clone().unwrap_or(Value::Null),
            };
            UsageEntry {
                group,
                figures: UsageFigures::of(row.jobs, row.credits_milli, row.video_ms),
            }
        })
        .collect();
    Usage {
        from: rfc3339(query.from),
        to: rfc3339(query.to),
        group_by,
        data,
        total: UsageFigures::of(jobs, credits, video),
    }
}

/// An RFC 3339 time or a date, between 1970 and 9999.
fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    let text = text.trim();
    parse_rfc3339(text)
        .or_else(|| parse_date(text))
        .filter(|ms| (0..253_402_300_800_000).contains(ms))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "{field}: `{}` is not an RFC 3339 time or a date like 2025-11-29 (1970 to 9999)",
                    shorten(text)
                ),
            )
        })
}

fn parse_group_by(text: &str) -> Result<UsageGroupBy, ApiError> {
    match text {
        "day" => return Ok(UsageGroupBy::Day),
        "model" => return Ok(UsageGroupBy::Model),
        "status" => return Ok(UsageGroupBy::Status),
        _ => {}
    }
    let invalid = || {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "group_by: `{}` is not day, model, status or metadata.KEY (KEY: up to \
                 {PATH_SEGMENTS} dot-separated keys of 1 to {KEY_LIMIT} letters, digits, `_` or `-`)",
                shorten(text)
            ),
        )
    };
    let path = text.strip_prefix("metadata.").ok_or_else(invalid)?;
    let segments: Vec<&str> = path.split('.').collect();
    let valid = segments.len() <= PATH_SEGMENTS
        && segments.iter().all(|segment| {
            (1..=KEY_LIMIT).contains(&segment.len())
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !valid {
        return Err(invalid());
    }
    Ok(UsageGroupBy::Metadata(path.to_owned()))
}

/// Client text quoted back in an error, cut short.
fn shorten(text: &str) -> String {
    const SHOWN: usize = 80;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_names_a_dimension_or_a_metadata_path() {
        assert_eq!(parse_group_by("day").unwrap(), UsageGroupBy::Day);
        assert_eq!(parse_group_by("model").unwrap(), UsageGroupBy::Model);
        assert_eq!(parse_group_by("status").unwrap(), UsageGroupBy::Status);
        assert_eq!(
            parse_group_by("metadata.customer_id").unwrap(),
            UsageGroupBy::Metadata("customer_id".into())
        );
        assert_eq!(
            parse_group_by("metadata.team.name").unwrap(),
            UsageGroupBy::Metadata("team.name".into())
        );
        for bad in [
            "",
            "week",
            "metadata",
            "metadata.",
            "metadata.a..b",
            "metadata.a\"]",
            "metadata.$.x",
            "metadata.with space",
            &format!("metadata.{}", "k".repeat(65)),
            &format!("metadata.{}", ["a"; 9].join(".")),
        ] {
            assert!(parse_group_by(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339_or_dates() {
        assert_eq!(parse_time("from", "1970-01-02").unwrap(), DAY_MS);
        assert_eq!(parse_time("from", "1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert!(parse_time("from", "1969-12-31").is_err());
        assert!(parse_time("from", "yesterday").is_err());
    }
}
