//! `jobhook copy-db --from URL --to URL` (SPEC §9): every job, delivery, history entry,
//! notification and idempotency key, from one database to another, SQLite to PostgreSQL and
//! back.
//!
//! - Both databases are migrated first, so the copy runs between identical schemas.
//! - The source is read inside one snapshot (a read transaction), so a copy taken while a
//!   service still writes is consistent, if not the latest (stop the service for the latest).
//! - The target is written in one transaction, in batches of [`BATCH`] rows per statement:
//!   a copy that fails leaves the target as it was.
//! - Ids are kept: event ids (`Last-Event-ID`, the job list's cursors) and delivery ids mean the
//!   same in the copy, and PostgreSQL's sequences are moved past them.
//! - A target that already holds jobhook's state is refused, unless `replace` says to delete it
//!   first.

mod conn;
mod tables;

pub use conn::Cell;
use conn::{After, Conn};
use tables::{RAW_DELIVERY, TABLES};

use crate::store::{self, Backend, StoreOptions};
use anyhow::Context as _;
use indicatif::ProgressBar;

/// Rows per `INSERT` (22 columns at most: well under SQLite's 32,766 bound parameters).
const BATCH: i64 = 500;

#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    /// Delete what the target holds first, instead of refusing a target that is not empty.
    pub replace: bool,
}

/// How many rows of each table were copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub tables: Vec<(&'static str, u64)>,
}

impl Copied {
    pub fn total(&self) -> u64 {
        self.tables.iter().map(|(_, rows)| rows).sum()
    }
}

/// Copies everything from `from` to `to`, advancing `progress` by rows (its length is set to
/// the number of rows to copy).
pub async fn copy_db(
    from: &str,
    to: &str,
    options: CopyOptions,
    progress: &ProgressBar,
) -> anyhow::Result<Copied> {
    for (flag, url) in [("--from", from), ("--to", to)] {
        anyhow::ensure!(
            Backend::of_url(url).is_some(),
            "{flag} must be a sqlite:// or postgres:// URL"
        );
    }
    anyhow::ensure!(from != to, "--from and --to name the same database");
    migrate(from).await.context("cannot open --from")?;
    migrate(to).await.context("cannot open --to")?;

    let mut source = Conn::open(from).await.context("cannot connect to --from")?;
    let mut target = Conn::open(to).await.context("cannot connect to --to")?;
    source.begin_snapshot().await?;
    target.begin().await?;
    let copied = copy_tables(&mut source, &mut target, options, progress).await;
    match copied {
        Ok(copied) => {
            target.commit().await.context("cannot commit the copy")?;
            source.commit().await?;
            source.close().await;
            target.close().await;
            Ok(copied)
        }
        // Dropping the connections rolls both transactions back.
        Err(err) => Err(err),
    }
}

/// Applies pending migrations (creating a SQLite file that is missing).
async fn migrate(url: &str) -> anyhow::Result<()> {
    let store = store::open_with(url, &StoreOptions::default()).await?;
    let migrated = store.migrate().await;
    store.close().await;
    Ok(migrated?)
}

async fn copy_tables(
    source: &mut Conn,
    target: &mut Conn,
    options: CopyOptions,
    progress: &ProgressBar,
) -> anyhow::Result<Copied> {
    let mut held = Vec::new();
    for table in TABLES {
        let rows = target.count(table).await?;
        if rows > 0 {
            held.push(format!("{rows} rows in {}", table.name));
        }
    }
    if !held.is_empty() {
        anyhow::ensure!(
            options.replace,
            "--to already holds jobhook state ({}); pass --replace to delete it first",
            held.join(", ")
        );
        target.delete_all().await.context("cannot empty --to")?;
    }

    let mut total = 0;
    for table in TABLES {
        total += u64::try_from(source.count(table).await?).unwrap_or(0);
    }
    progress.set_length(total);

    let mut copied = Copied::default();
    // `jobs.raw_delivery` is set once the deliveries it names are in.
    let mut raw_deliveries: Vec<(i64, i64)> = Vec::new();
    for table in TABLES {
        progress.set_message(table.name);
        let raw_column = (table.name == "jobs")
            .then(|| table.position(RAW_DELIVERY))
            .flatten();
        let mut after = After::Start;
        let mut count = 0u64;
        loop {
            let mut rows = source
                .read(table, &after, BATCH)
                .await
                .with_context(|| format!("cannot read {} from --from", table.name))?;
            let Some(last) = rows.last() else { break };
            after = After::of(table, last);
            if let Some(column) = raw_column {
                for row in &mut rows {
                    if let (Cell::Int(Some(id)), Cell::Int(Some(delivery))) =
                        (&row[0], &row[column])
                    {
                        raw_deliveries.push((*id, *delivery));
                    }
                    row[column] = Cell::Int(None);
                }
            }
            target
                .insert(table, &rows)
                .await
                .with_context(|| format!("cannot write {} to --to", table.name))?;
            let n = rows.len() as u64;
            count += n;
            progress.inc(n);
            if matches!(after, After::Start) {
                // A table read whole, in one page.
                break;
            }
        }
        copied.tables.push((table.name, count));
    }
    for pairs in raw_deliveries.chunks(usize::try_from(BATCH).unwrap_or(500)) {
        target
            .set_raw_deliveries(pairs)
            .await
            .context("cannot link jobs to the deliveries that hold their last answer")?;
    }
    target.fix_sequences().await?;
    progress.finish_with_message("done");
    Ok(copied)
}

/// Every row `copy-db` copies, table by table in a stable order: for comparing two databases
/// (the tests check a round trip with it).
pub async fn dump(url: &str) -> anyhow::Result<Vec<(&'static str, Vec<Vec<Cell>>)>> {
    let mut db = Conn::open(url).await?;
    db.begin_snapshot().await?;
    let mut dumped = Vec::new();
    for table in TABLES {
        let mut rows = Vec::new();
        let mut after = After::Start;
        loop {
            let page = db.read(table, &after, BATCH).await?;
            let Some(last) = page.last() else { break };
            after = After::of(table, last);
            rows.extend(page);
            if matches!(after, After::Start) {
                break;
            }
        }
        dumped.push((table.name, rows));
    }
    db.commit().await?;
    db.close().await;
    Ok(dumped)
}
