//! Usage (SPEC §12): recorded in the transaction that makes a job `completed` or `failed`,
//! summed per group when asked.
//!
//! Two tables (migration 0004): `job_usage`, one row per final job, and `usage_daily`, the same
//! figures summed per UTC day, model and status. A question about whole days reads the summary
//! (a few rows per day, whatever the number of jobs); the part of a range that cuts through a
//! day, at either end, is read from `job_usage` through its index on the time, so any range is
//! answered exactly. Grouping by a metadata key needs each job's metadata, so it reads the
//! range's rows of `job_usage` (a narrow table, with the metadata copied in), not the jobs.

use super::writer::execute;
use super::Tx;
use crate::domain::usage::{split_range, RangeSplit, UsageFacts};
use crate::domain::Job;
use crate::store::{StoreError, UsageGroup, UsageGroupBy, UsageQuery, UsageRow};
use rusqlite::params;
use sqlx::{Row, SqlitePool};

/// Records the usage of a job that has just become `completed` or `failed` (nothing for any
/// other status). A job is counted once, whatever calls this again.
pub(super) fn record_usage(tx: &Tx, job: &Job) -> Result<(), StoreError> {
    let Some(facts) = UsageFacts::of(job) else {
        return Ok(());
    };
    let metadata = job.metadata.as_ref().map(ToString::to_string);
    let counted = execute(
        tx,
        "INSERT INTO job_usage (job_pk, at, model, status, credits_milli, video_ms, metadata) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (job_pk) DO NOTHING",
        params![
            job.pk,
            facts.at,
            facts.model,
            facts.status.as_str(),
            facts.credits_milli,
            facts.video_ms,
            metadata
        ],
    )?;
    if counted == 0 {
        return Ok(());
    }
    execute(
        tx,
        "INSERT INTO usage_daily (day, model, status, jobs, credits_milli, video_ms) \
         VALUES (?1, ?2, ?3, 1, ?4, ?5) ON CONFLICT (day, model, status) DO UPDATE SET \
         jobs = jobs + 1, credits_milli = credits_milli + excluded.credits_milli, \
         video_ms = video_ms + excluded.video_ms",
        params![
            facts.day(),
            facts.model,
            facts.status.as_str(),
            facts.credits_milli,
            facts.video_ms
        ],
    )?;
    Ok(())
}

/// [`crate::store::Store::usage`].
pub(super) async fn usage(
    reader: &SqlitePool,
    query: &UsageQuery,
) -> Result<Vec<UsageRow>, StoreError> {
    let Some(range) = split_range(query.from, query.to) else {
        return Ok(Vec::new());
    };
    match &query.group_by {
        UsageGroupBy::Metadata(path) => by_metadata(reader, path, range.from, range.to).await,
        group_by => by_summary(reader, group_by, range).await,
    }
}

/// Day, model or status: whole days from the summary, the cut days at the ends from the jobs.
async fn by_summary(
    reader: &SqlitePool,
    group_by: &UsageGroupBy,
    range: RangeSplit,
) -> Result<Vec<UsageRow>, StoreError> {
    let RangeSplit {
        days, head, tail, ..
    } = range;
    let (summary_key, job_key) = match group_by {
        UsageGroupBy::Day => ("day", "at / 86400000"),
        UsageGroupBy::Model => ("model", "model"),
        UsageGroupBy::Status => ("status", "status"),
        UsageGroupBy::Metadata(_) => {
            return Err(StoreError::Corrupt(
                "a metadata grouping reached the summary".into(),
            ))
        }
    };
    let rows = sqlx::query(&format!(
        "SELECT g, SUM(jobs) AS jobs, SUM(credits_milli) AS credits_milli, \
         SUM(video_ms) AS video_ms FROM ( \
           SELECT {summary_key} AS g, jobs, credits_milli, video_ms FROM usage_daily \
           WHERE day >= $1 AND day < $2 \
           UNION ALL SELECT {job_key} AS g, 1, credits_milli, video_ms FROM job_usage \
           WHERE at >= $3 AND at < $4 \
           UNION ALL SELECT {job_key} AS g, 1, credits_milli, video_ms FROM job_usage \
           WHERE at >= $5 AND at < $6) \
         GROUP BY g ORDER BY g"
    ))
    .bind(days.0)
    .bind(days.1)
    .bind(head.0)
    .bind(head.1)
    .bind(tail.0)
    .bind(tail.1)
    .fetch_all(reader)
    .await?;
    rows.iter()
        .map(|row| {
            let group = match group_by {
                UsageGroupBy::Day => UsageGroup::Day(row.try_get("g")?),
                _ => UsageGroup::Name(row.try_get("g")?),
            };
            figures(row, group)
        })
        .collect()
}

/// A metadata key (a dotted path into nested objects): the range's jobs, one by one.
async fn by_metadata(
    reader: &SqlitePool,
    path: &str,
    from: i64,
    to: i64,
) -> Result<Vec<UsageRow>, StoreError> {
    // `$."a"."b"`: each segment quoted, so a key is never read as path syntax (the API lets
    // only letters, digits, `_` and `-` through anyway). JSON null groups with absent.
    let json_path = path.split('.').fold(String::from("$"), |mut out, segment| {
        out.push_str(&format!(".\"{segment}\""));
        out
    });
    let rows = sqlx::query(
        "SELECT NULLIF(metadata -> $1, 'null') AS g, COUNT(*) AS jobs, \
         SUM(credits_milli) AS credits_milli, SUM(video_ms) AS video_ms FROM job_usage \
         WHERE at >= $2 AND at < $3 GROUP BY g ORDER BY g",
    )
    .bind(json_path)
    .bind(from)
    .bind(to)
    .fetch_all(reader)
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

fn figures(row: &sqlx::sqlite::SqliteRow, group: UsageGroup) -> Result<UsageRow, StoreError> {
    Ok(UsageRow {
        group,
        jobs: row.try_get("jobs")?,
        credits_milli: row.try_get("credits_milli")?,
        video_ms: row.try_get("video_ms")?,
    })
}
