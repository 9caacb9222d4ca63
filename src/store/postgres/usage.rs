//! Usage (SPEC §12) on PostgreSQL: the same two tables and the same reading as SQLite's (see
//! `sqlite/usage.rs`): whole days from `usage_daily`, the cut days at the ends and metadata
//! groupings from `job_usage`.

use super::write::Tx;
use crate::domain::usage::{split_range, RangeSplit, UsageFacts};
use crate::domain::Job;
use crate::store::{StoreError, UsageGroup, UsageGroupBy, UsageQuery, UsageRow};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

/// Records the usage of a job that has just become `completed` or `failed` (nothing for any
/// other status). A job is counted once, whatever calls this again.
pub(super) async fn record_usage(tx: &mut Tx, job: &Job) -> Result<(), StoreError> {
    let Some(facts) = UsageFacts::of(job) else {
        return Ok(());
    };
    let counted = sqlx::query(
        "INSERT INTO job_usage (job_pk, at, model, status, credits_milli, video_ms, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job_pk) DO NOTHING",
    )
    .bind(job.pk)
    .bind(facts.at)
    .bind(&facts.model)
    .bind(facts.status.as_str())
    .bind(facts.credits_milli)
    .bind(facts.video_ms)
    .bind(job.metadata.as_ref().map(ToString::to_string))
    .execute(tx.db())
    .await?
    .rows_affected();
    if counted == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO usage_daily (day, model, status, jobs, credits_milli, video_ms) \
         VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (day, model, status) DO UPDATE SET \
         jobs = usage_daily.jobs + 1, \
         credits_milli = usage_daily.credits_milli + excluded.credits_milli, \
         video_ms = usage_daily.video_ms + excluded.video_ms",
    )
    .bind(facts.day())
    .bind(&facts.model)
    .bind(facts.status.as_str())
    .bind(facts.credits_milli)
    .bind(facts.video_ms)
    .execute(tx.db())
    .await?;
    Ok(())
}

/// [`crate::store::Store::usage`].
pub(super) async fn usage(pool: &PgPool, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    let Some(range) = split_range(query.from, query.to) else {
        return Ok(Vec::new());
    };
    match &query.group_by {
        UsageGroupBy::Metadata(path) => by_metadata(pool, path, range.from, range.to).await,
        group_by => by_summary(pool, group_by, range).await,
    }
}

/// Day, model or status: whole days from the summary, the cut days at the ends from the jobs.
async fn by_summary(
    pool: &PgPool,
    group_by: &UsageGroupBy,
    range: RangeSplit,
) -> Result<Vec<UsageRow>, StoreError> {
    let RangeSplit {
        days, head, tail, ..
    } = range;
    // Days are grouped as numbers, names as text; both come back as text and are read back.
    let (summary_key, job_key) = match group_by {
        UsageGroupBy::Day => ("day::text", "(at / 86400000)::text"),
        UsageGroupBy::Model => ("model", "model"),
        UsageGroupBy::Status => ("status", "status"),
        UsageGroupBy::Metadata(_) => {
            return Err(StoreError::Corrupt(
                "a metadata grouping reached the summary".into(),
            ))
        }
    };
    let order = match group_by {
        UsageGroupBy::Day => "g::bigint",
        _ => "g COLLATE \"C\"",
    };
    let rows = sqlx::query(&format!(
        "SELECT * FROM ( \
         SELECT g, SUM(jobs)::bigint AS jobs, SUM(credits_milli)::bigint AS credits_milli, \
         SUM(video_ms)::bigint AS video_ms FROM ( \
           SELECT {summary_key} AS g, jobs, credits_milli, video_ms FROM usage_daily \
           WHERE day >= $1 AND day < $2 \
           UNION ALL SELECT {job_key} AS g, 1, credits_milli, video_ms FROM job_usage \
           WHERE at >= $3 AND at < $4 \
           UNION ALL SELECT {job_key} AS g, 1, credits_milli, video_ms FROM job_usage \
           WHERE at >= $5 AND at < $6) AS parts \
         GROUP BY g) AS grouped ORDER BY {order}"
    ))
    .bind(days.0)
    .bind(days.1)
    .bind(head.0)
    .bind(head.1)
    .bind(tail.0)
    .bind(tail.1)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let key: String = row.try_get("g")?;
            let group = match group_by {
                UsageGroupBy::Day => UsageGroup::Day(
                    key.parse()
                        .map_err(|_| StoreError::Corrupt(format!("usage day {key}")))?,
                ),
                _ => UsageGroup::Name(key),
            };
            figures(row, group)
        })
        .collect()
}

/// A metadata key (a dotted path into nested objects): the range's jobs, one by one.
async fn by_metadata(
    pool: &PgPool,
    path: &str,
    from: i64,
    to: i64,
) -> Result<Vec<UsageRow>, StoreError> {
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    // JSON null groups with absent, as on SQLite.
    let rows = sqlx::query(
        "SELECT * FROM ( \
         SELECT NULLIF((metadata::jsonb #> $1)::text, 'null') AS g, COUNT(*)::bigint AS jobs, \
         SUM(credits_milli)::bigint AS credits_milli, SUM(video_ms)::bigint AS video_ms \
         FROM job_usage WHERE at >= $2 AND at < $3 GROUP BY g) AS grouped \
         ORDER BY g COLLATE \"C\" NULLS FIRST",
    )
    .bind(&segments)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let value: Option<String> = row.try_get("g")?;
            let value = value
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|err| StoreError::Corrupt(format!("job_usage.metadata: {err}")))?;
            figures(row, UsageGroup::Value(value))
        })
        .collect()
}

fn figures(row: &PgRow, group: UsageGroup) -> Result<UsageRow, StoreError> {
    Ok(UsageRow {
        group,
        jobs: row.try_get("jobs")?,
        credits_milli: row.try_get("credits_milli")?,
        video_ms: row.try_get("video_ms")?,
    })
}
