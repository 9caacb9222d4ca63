//! What `Store::usage` is asked and answers (`GET /v1/usage`).

/// What the figures are grouped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageGroupBy {
    /// The UTC day of `completed_at`.
    Day,
    /// The model (see `domain::usage::model_of`).
    Model,
    /// `completed` or `failed`.
    Status,
    /// The value of this top-level key of the job's metadata (null when absent).
    Metadata(String),
}

/// Usage of the jobs that became `completed` or `failed` at or after `from` and before `to`
/// (unix milliseconds, by `completed_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub from: i64,
    pub to: i64,
    pub group_by: UsageGroupBy,
}

/// One group's figures, exact: integers summed as integers.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub group: UsageGroup,
    pub jobs: i64,
    /// Sum of `ai_credits_used`, in thousandths of a credit.
    pub credits_milli: i64,
    /// Sum of the videos' durations, in milliseconds.
    pub video_ms: i64,
}

/// The value a row is grouped under.
#[derive(Debug, Clone, PartialEq)]
pub enum UsageGroup {
    /// Days since 1970-01-01, UTC.
    Day(i64),
    /// A model or a status.
    Name(String),
    /// A metadata value (any JSON), or None when the key is absent or null.
    Value(Option<serde_json::Value>),
}
