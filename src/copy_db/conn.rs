//! One connection to either backend, with the few statements `copy-db` needs, in each dialect.

use super::tables::{Kind, Order, Table, TABLES};
use crate::store::Backend;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Postgres, QueryBuilder, Row, Sqlite};
use std::str::FromStr;
use std::time::Duration;

/// One value of a row being copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Bool(bool),
}

/// Where a page of rows starts.
#[derive(Debug, Clone)]
pub enum After {
    Start,
    Id(i64),
    Key(String),
    TextInt(String, i64),
    IntText(i64, String),
}

impl After {
    /// The position after `row`, the last row of a page of `table`.
    pub fn of(table: &Table, row: &[Cell]) -> After {
        match (table.order, row.first()) {
            (Order::Id | Order::IntKey(_), Some(Cell::Int(Some(id)))) => After::Id(*id),
            (Order::Key(_), Some(Cell::Text(Some(key)))) => After::Key(key.clone()),
            (Order::TextInt(..), Some(Cell::Text(Some(text)))) => match row.get(1) {
                Some(Cell::Int(Some(n))) => After::TextInt(text.clone(), *n),
                _ => After::Start,
            },
            (Order::IntText(..), Some(Cell::Int(Some(n)))) => match row.get(1) {
                Some(Cell::Text(Some(text))) => After::IntText(*n, text.clone()),
                _ => After::Start,
            },
            _ => After::Start,
        }
    }
}

pub enum Conn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

/// Decodes a row into cells, by the table's column kinds. SQLite keeps booleans as 0/1.
macro_rules! decode_row {
    ($row:expr, $table:expr, $bool_as_int:expr) => {{
        let mut cells = Vec::with_capacity($table.columns.len());
        for (index, (_, kind)) in $table.columns.iter().enumerate() {
            cells.push(match kind {
                Kind::Int => Cell::Int($row.try_get::<Option<i64>, _>(index)?),
                Kind::Text => Cell::Text($row.try_get::<Option<String>, _>(index)?),
                Kind::Bytes => Cell::Bytes($row.try_get::<Option<Vec<u8>>, _>(index)?),
                Kind::Bool if $bool_as_int => Cell::Bool($row.try_get::<i64, _>(index)? != 0),
                Kind::Bool => Cell::Bool($row.try_get::<bool, _>(index)?),
            });
        }
        cells
    }};
}

/// Appends one `(…)` of values per row to an `INSERT`.
macro_rules! push_rows {
    ($query:expr, $rows:expr, $bool_as_int:expr) => {{
        $query.push_values($rows, |mut values, row| {
            for cell in row {
                match cell {
                    Cell::Int(value) => values.push_bind(*value),
                    Cell::Text(value) => values.push_bind(value.clone()),
                    Cell::Bytes(value) => values.push_bind(value.clone()),
                    Cell::Bool(value) if $bool_as_int => values.push_bind(i64::from(*value)),
                    Cell::Bool(value) => values.push_bind(*value),
                };
            }
        });
    }};
}

impl Conn {
    /// Connects to a database `jobhook` has migrated (the store opens and migrates it first).
    pub async fn open(url: &str) -> Result<Conn, sqlx::Error> {
        match Backend::of_url(url) {
            Some(Backend::Sqlite) => {
                let options = SqliteConnectOptions::from_str(url)?
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5));
                Ok(Conn::Sqlite(
                    SqliteConnection::connect_with(&options).await?,
                ))
            }
            Some(Backend::Postgres) => {
                let options = PgConnectOptions::from_str(url)?.application_name("jobhook-copy-db");
                Ok(Conn::Postgres(PgConnection::connect_with(&options).await?))
            }
            None => Err(sqlx::Error::Configuration(
                format!("not a sqlite:// or postgres:// URL: {url:?}").into(),
            )),
        }
    }

    async fn run(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            Conn::Sqlite(db) => sqlx::raw_sql(sql).execute(db).await.map(drop),
            Conn::Postgres(db) => sqlx::raw_sql(sql).execute(db).await.map(drop),
        }
    }

    /// Begins a read-only transaction that sees one moment of the database throughout.
    pub async fn begin_snapshot(&mut self) -> Result<(), sqlx::Error> {
        match self {
            // A read transaction in WAL mode sees the database as of its first read.
            Conn::Sqlite(_) => self.run("BEGIN").await,
            Conn::Postgres(_) => {
                self.run("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await
            }
        }
    }

    pub async fn begin(&mut self) -> Result<(), sqlx::Error> {
        match self {
            // Takes the write lock now, not at the first write.
            Conn::Sqlite(_) => self.run("BEGIN IMMEDIATE").await,
            Conn::Postgres(_) => self.run("BEGIN").await,
        }
    }

    pub async fn commit(&mut self) -> Result<(), sqlx::Error> {
        self.run("COMMIT").await
    }

    pub async fn close(self) {
        let closed = match self {
            Conn::Sqlite(db) => db.close().await,
            Conn::Postgres(db) => db.close().await,
        };
        if let Err(err) = closed {
            tracing::debug!(error = %err, "closing a copy-db connection");
        }
    }

    pub async fn count(&mut self, table: &Table) -> Result<i64, sqlx::Error> {
        let sql = format!("SELECT COUNT(*) FROM {}", table.name);
        match self {
            Conn::Sqlite(db) => sqlx::query_scalar(&sql).fetch_one(db).await,
            Conn::Postgres(db) => sqlx::query_scalar(&sql).fetch_one(db).await,
        }
    }

    /// Up to `limit` rows of `table` after `after`, in the table's order (a table read whole
    /// ignores both).
    pub async fn read(
        &mut self,
        table: &Table,
        after: &After,
        limit: i64,
    ) -> Result<Vec<Vec<Cell>>, sqlx::Error> {
        let (columns, name) = (table.column_list(), table.name);
        let sql = match (table.order, after) {
            (Order::All(order), _) => format!("SELECT {columns} FROM {name} ORDER BY {order}"),
            (Order::Id, _) => {
                format!("SELECT {columns} FROM {name} WHERE id > $1 ORDER BY id LIMIT $2")
            }
            (Order::IntKey(key), _) => {
                format!("SELECT {columns} FROM {name} WHERE {key} > $1 ORDER BY {key} LIMIT $2")
            }
            (Order::Key(key), After::Key(_)) => {
                format!("SELECT {columns} FROM {name} WHERE {key} > $1 ORDER BY {key} LIMIT $2")
            }
            (Order::Key(key), _) => {
                format!("SELECT {columns} FROM {name} ORDER BY {key} LIMIT $1")
            }
            (Order::TextInt(text, int), After::TextInt(..)) => format!(
                "SELECT {columns} FROM {name} WHERE ({text}, {int}) > ($1, $2) \
                 ORDER BY {text}, {int} LIMIT $3"
            ),
            (Order::TextInt(text, int), _) => {
                format!("SELECT {columns} FROM {name} ORDER BY {text}, {int} LIMIT $1")
            }
            (Order::IntText(int, text), After::IntText(..)) => format!(
                "SELECT {columns} FROM {name} WHERE ({int}, {text}) > ($1, $2) \
                 ORDER BY {int}, {text} LIMIT $3"
            ),
            (Order::IntText(int, text), _) => {
                format!("SELECT {columns} FROM {name} ORDER BY {int}, {text} LIMIT $1")
            }
        };
        macro_rules! fetch {
            ($db:expr, $bool_as_int:expr) => {{
                let query = sqlx::query(&sql);
                let query = match (table.order, after) {
                    (Order::All(_), _) => query,
                    (Order::Id | Order::IntKey(_), After::Id(id)) => query.bind(*id).bind(limit),
                    (Order::Id | Order::IntKey(_), _) => query.bind(i64::MIN).bind(limit),
                    (Order::Key(_), After::Key(key)) => query.bind(key.clone()).bind(limit),
                    (Order::Key(_), _) => query.bind(limit),
                    (Order::TextInt(..), After::TextInt(text, n)) => {
                        query.bind(text.clone()).bind(*n).bind(limit)
                    }
                    (Order::TextInt(..), _) => query.bind(limit),
                    (Order::IntText(..), After::IntText(n, text)) => {
                        query.bind(*n).bind(text.clone()).bind(limit)
                    }
                    (Order::IntText(..), _) => query.bind(limit),
                };
                let rows = query.fetch_all($db).await?;
                let mut decoded = Vec::with_capacity(rows.len());
                for row in &rows {
                    decoded.push(decode_row!(row, table, $bool_as_int));
                }
                Ok(decoded)
            }};
        }
        match self {
            Conn::Sqlite(db) => fetch!(&mut *db, true),
            Conn::Postgres(db) => fetch!(&mut *db, false),
        }
    }

    /// Inserts rows into `table` in one statement, ids as they are.
    pub async fn insert(&mut self, table: &Table, rows: &[Vec<Cell>]) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let columns = table.column_list();
        match self {
            Conn::Sqlite(db) => {
                let mut query =
                    QueryBuilder::<Sqlite>::new(format!("INSERT INTO {} ({columns}) ", table.name));
                push_rows!(query, rows, true);
                query.build().execute(&mut *db).await?;
            }
            Conn::Postgres(db) => {
                let overriding = if table.identity {
                    "OVERRIDING SYSTEM VALUE "
                } else {
                    ""
                };
                let mut query = QueryBuilder::<Postgres>::new(format!(
                    "INSERT INTO {} ({columns}) {overriding}",
                    table.name
                ));
                push_rows!(query, rows, false);
                query.build().execute(&mut *db).await?;
            }
        }
        Ok(())
    }

    /// Sets `jobs.raw_delivery` for `(job id, delivery id)` pairs, in one statement.
    pub async fn set_raw_deliveries(&mut self, pairs: &[(i64, i64)]) -> Result<(), sqlx::Error> {
        if pairs.is_empty() {
            return Ok(());
        }
        // The same SQL on both: a CTE of VALUES and a correlated subquery.
        macro_rules! update {
            ($db:expr, $backend:ty) => {{
                let mut query = QueryBuilder::<$backend>::new("WITH v (id, d) AS (");
                query.push_values(pairs, |mut values, (id, delivery)| {
                    values.push_bind(*id).push_bind(*delivery);
                });
                query.push(
                    ") UPDATE jobs SET raw_delivery = (SELECT d FROM v WHERE v.id = jobs.id) \
                     WHERE id IN (SELECT id FROM v)",
                );
                query.build().execute($db).await?;
            }};
        }
        match self {
            Conn::Sqlite(db) => update!(&mut *db, Sqlite),
            Conn::Postgres(db) => update!(&mut *db, Postgres),
        }
        Ok(())
    }

    /// Deletes every row `copy-db` would copy (`--replace`), children first.
    pub async fn delete_all(&mut self) -> Result<(), sqlx::Error> {
        self.run("UPDATE jobs SET raw_delivery = NULL").await?;
        for table in TABLES.iter().rev() {
            self.run(&format!("DELETE FROM {}", table.name)).await?;
        }
        Ok(())
    }

    /// Moves PostgreSQL's id sequences past the copied ids, so new rows continue after them.
    /// (SQLite does it by itself: an `AUTOINCREMENT` table remembers the largest id inserted.)
    pub async fn fix_sequences(&mut self) -> Result<(), sqlx::Error> {
        if let Conn::Postgres(_) = self {
            for table in TABLES.iter().filter(|t| t.identity) {
                self.run(&format!(
                    "SELECT setval(pg_get_serial_sequence('{name}', 'id'), \
                     COALESCE((SELECT MAX(id) FROM {name}), 0) + 1, false)",
                    name = table.name
                ))
                .await?;
            }
        }
        Ok(())
    }
}
