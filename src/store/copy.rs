//! `state copy`: moves the state of an SQLite file into an empty PostgreSQL
//! database, the way from one instance to two or more.
//!
//! The source is opened read-only (no daemon needed, none changed) and read
//! in one read transaction, a consistent snapshot. The target's schema is
//! created or migrated by the daemon's own code ([`PgStore::open`]); then one
//! transaction locks the state tables against writers, refuses a target that
//! holds any cursor, seen id, outbox row or dead letter, and inserts every
//! row in batches of [`BATCH`]: a copy that fails leaves the target as empty
//! as it found it. Outbox and dead-letter numbers are kept (so the outbox's
//! order and the numbers `dead-letters list` showed), and their sequences
//! moved past them. Leases and instances are not state: not copied.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use super::{Instance, PgStore, SCHEMA_VERSION, StoreError};
use crate::config::DatabaseUrl;

/// Rows per insert.
const BATCH: usize = 5_000;

/// Rows of one table (its index in [`TABLES`]), column by column; `None`
/// once every table was read.
type Batch = Option<(usize, Vec<Column>)>;

/// The type of a column, the same in both schemas.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    OptText,
    Int,
    OptInt,
}

/// A batch of one column's values.
#[derive(Debug)]
enum Column {
    Text(Vec<String>),
    OptText(Vec<Option<String>>),
    Int(Vec<i64>),
    OptInt(Vec<Option<i64>>),
}

impl Column {
    fn new(kind: Kind) -> Column {
        match kind {
            Kind::Text => Column::Text(Vec::new()),
            Kind::OptText => Column::OptText(Vec::new()),
            Kind::Int => Column::Int(Vec::new()),
            Kind::OptInt => Column::OptInt(Vec::new()),
        }
    }

    fn push(&mut self, row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<()> {
        match self {
            Column::Text(v) => v.push(row.get(i)?),
            Column::OptText(v) => v.push(row.get(i)?),
            Column::Int(v) => v.push(row.get(i)?),
            Column::OptInt(v) => v.push(row.get(i)?),
        }
        Ok(())
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Text(v) => v,
            Column::OptText(v) => v,
            Column::Int(v) => v,
            Column::OptInt(v) => v,
        }
    }
}

fn pg_array(kind: Kind) -> &'static str {
    match kind {
        Kind::Text | Kind::OptText => "text[]",
        Kind::Int | Kind::OptInt => "bigint[]",
    }
}

/// A state table, as both backends spell it.
struct Table {
    name: &'static str,
    /// What the summary calls its rows.
    label: &'static str,
    columns: &'static [(&'static str, Kind)],
    order_by: &'static str,
    /// Its rows make a target "not empty".
    state: bool,
}

const TABLES: &[Table] = &[
    Table {
        name: "cursor",
        label: "cursors",
        columns: &[
            ("subscription_id", Kind::Text),
            ("watermark_ns", Kind::Int),
            ("pruned_before_ns", Kind::Int),
            ("last_poll_at_ns", Kind::OptInt),
            ("last_result", Kind::OptText),
        ],
        order_by: "subscription_id",
        state: true,
    },
    Table {
        name: "seen",
        label: "seen ids",
        columns: &[
            ("subscription_id", Kind::Text),
            ("event_data_id", Kind::Text),
            ("event_ts_ns", Kind::Int),
        ],
        order_by: "subscription_id, event_data_id",
        state: true,
    },
    Table {
        name: "outbox",
        label: "outbox events",
        columns: &[
            ("seq", Kind::Int),
            ("subscription_id", Kind::Text),
            ("event_data_id", Kind::Text),
            ("event_ts_ns", Kind::Int),
            ("entry", Kind::Text),
            ("attempts", Kind::Int),
            ("last_error", Kind::OptText),
        ],
        order_by: "seq",
        state: true,
    },
    Table {
        name: "dead_letter",
        label: "dead letters",
        columns: &[
            ("seq", Kind::Int),
            ("subscription_id", Kind::Text),
            ("event_data_id", Kind::Text),
            ("event_ts_ns", Kind::OptInt),
            ("entry", Kind::Text),
            ("reason", Kind::Text),
            ("failed_at_ns", Kind::Int),
        ],
        order_by: "seq",
        state: true,
    },
    // A daemon that started on the target and was refused may have noted a
    // detection without any state: its newer note is kept.
    Table {
        name: "detection",
        label: "detection notes",
        columns: &[
            ("subscription_id", Kind::Text),
            ("state", Kind::Text),
            ("detail", Kind::Text),
            ("checked_at_ns", Kind::Int),
        ],
        order_by: "subscription_id",
        state: false,
    },
];

/// Tables whose numbers (`seq`) are kept, and whose sequences move past them.
const NUMBERED: &[&str] = &["outbox", "dead_letter"];

/// Rows copied, per table, in [`TABLES`] order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Copied {
    pub tables: Vec<(String, u64)>,
}

impl Copied {
    /// One line per table.
    pub fn render(&self) -> String {
        let width = self.tables.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        self.tables
            .iter()
            .map(|(t, n)| format!("  {t:<width$}  {n}\n"))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("--from {0}: expected sqlite:PATH")]
    Source(String),
    #[error("no state database at {0}: nothing to copy")]
    NoSource(PathBuf),
    #[error("--to-env {0}: not set (or not UTF-8)")]
    Env(String),
    #[error("--to-file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The URL's form; the message never holds the password.
    #[error("the target database URL: {0}")]
    Url(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CopyError {
    /// A problem with what was asked (exit 78), not with I/O (74).
    pub fn is_config(&self) -> bool {
        match self {
            CopyError::Store(e) => e.is_config(),
            _ => true,
        }
    }
}

/// Where the target URL comes from: the command line, an environment
/// variable or a file (a URL with a password is better kept off the command
/// line, where `ps` shows it).
#[derive(Debug)]
pub enum Target {
    Url(String),
    Env(String),
    File(PathBuf),
}

impl Target {
    pub fn resolve(&self) -> Result<DatabaseUrl, CopyError> {
        let text = match self {
            Target::Url(u) => u.clone(),
            Target::Env(var) => std::env::var(var).map_err(|_| CopyError::Env(var.clone()))?,
            Target::File(path) => {
                std::fs::read_to_string(path).map_err(|source| CopyError::File {
                    path: path.clone(),
                    source,
                })?
            }
        };
        DatabaseUrl::parse(&text).map_err(CopyError::Url)
    }
}

/// `sqlite:PATH` to its path.
pub fn parse_source(from: &str) -> Result<PathBuf, CopyError> {
    match from.strip_prefix("sqlite:") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(CopyError::Source(from.to_string())),
    }
}

/// Copies the SQLite state at `from` into the empty PostgreSQL database `to`.
pub async fn copy(from: &Path, to: &DatabaseUrl) -> Result<Copied, CopyError> {
    if !from.exists() {
        return Err(CopyError::NoSource(from.to_path_buf()));
    }
    let source = {
        let from = from.to_path_buf();
        tokio::task::spawn_blocking(move || open_source(&from))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??
    };
    let held = std::sync::Arc::new(tokio::sync::watch::channel(Default::default()).0);
    let target = PgStore::open(to, &Instance::new(), held, true).await?;
    let (tx, rx) = mpsc::channel::<Batch>(2);
    let reader = tokio::task::spawn_blocking(move || read_source(source, &tx));
    let written = write_target(&target, rx).await;
    // The reader stops once the writer is gone; its error, if any, is the cause.
    let read = reader.await.map_err(|e| StoreError::Task(e.to_string()))?;
    match (read, written) {
        (Err(e), _) => Err(e.into()),
        (Ok(()), w) => w.map_err(CopyError::from),
    }
}

fn sqlite_err(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { context, source }
}

fn open_source(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sqlite_err("opening the source"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => StoreError::NotADatabase {
                path: path.to_path_buf(),
            },
            _ => StoreError::Sqlite {
                context: "reading the source's schema version",
                source: e,
            },
        })?;
    if version == 0 {
        return Err(StoreError::NoSchema {
            location: path.display().to_string(),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            location: path.display().to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

/// Reads every table in one read transaction (a snapshot), sending batches
/// of columns; stops early, without error, when the writer has gone.
fn read_source(mut conn: Connection, tx: &mpsc::Sender<Batch>) -> Result<(), StoreError> {
    let snapshot = conn
        .transaction()
        .map_err(sqlite_err("reading the source"))?;
    for (t, table) in TABLES.iter().enumerate() {
        let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            names.join(", "),
            table.name,
            table.order_by
        );
        let mut stmt = snapshot
            .prepare(&sql)
            .map_err(sqlite_err("reading the source"))?;
        let mut rows = stmt.query([]).map_err(sqlite_err("reading the source"))?;
        let fresh =
            || -> Vec<Column> { table.columns.iter().map(|(_, k)| Column::new(*k)).collect() };
        let mut batch = fresh();
        let mut n = 0;
        while let Some(row) = rows.next().map_err(sqlite_err("reading the source"))? {
            for (i, col) in batch.iter_mut().enumerate() {
                col.push(row, i).map_err(sqlite_err("reading the source"))?;
            }
            n += 1;
            if n == BATCH {
                let full = std::mem::replace(&mut batch, fresh());
                if tx.blocking_send(Some((t, full))).is_err() {
                    return Ok(());
                }
                n = 0;
            }
        }
        if n > 0 && tx.blocking_send(Some((t, batch))).is_err() {
            return Ok(());
        }
    }
    // The writer may have gone already; it then reports why.
    let _ = tx.blocking_send(None);
    Ok(())
}

/// The context of the target's errors.
const CTX: &str = "copying into the target";

fn pg_err(context: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { context, source }
}

/// Locks the target's state tables and refuses them unless they are empty.
async fn lock_empty(
    txn: &deadpool_postgres::Transaction<'_>,
    target: &PgStore,
) -> Result<(), StoreError> {
    let state: Vec<&str> = TABLES.iter().filter(|t| t.state).map(|t| t.name).collect();
    // Writers (a daemon started on the target too early) wait for the copy;
    // readers (`status`) do not.
    txn.batch_execute(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        state.join(", ")
    ))
    .await
    .map_err(pg_err(CTX))?;
    let mut found = Vec::new();
    for table in TABLES.iter().filter(|t| t.state) {
        let any: bool = txn
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM {})", table.name),
                &[],
            )
            .await
            .map_err(pg_err(CTX))?
            .get(0);
        if any {
            found.push(table.label);
        }
    }
    if !found.is_empty() {
        return Err(StoreError::NotEmpty {
            location: target.describe(),
            what: format!("it has {}", found.join(", ")),
        });
    }
    Ok(())
}

/// The statement inserting one batch of `table`'s columns (arrays, through
/// `unnest`); the tables outside the state skip rows already there.
fn insert_sql(table: &Table) -> String {
    let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
    let arrays: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, k))| format!("${}::{}", i + 1, pg_array(*k)))
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest({}){}",
        table.name,
        names.join(", "),
        arrays.join(", "),
        if table.state {
            ""
        } else {
            " ON CONFLICT DO NOTHING"
        }
    )
}

/// Checks the target is empty and inserts every batch, in one transaction.
async fn write_target(
    target: &PgStore,
    mut rx: mpsc::Receiver<Batch>,
) -> Result<Copied, StoreError> {
    let mut client = target.client(CTX).await?;
    let txn = client.transaction().await.map_err(pg_err(CTX))?;
    lock_empty(&txn, target).await?;
    let inserts: Vec<String> = TABLES.iter().map(insert_sql).collect();
    let mut counts = vec![0u64; TABLES.len()];
    loop {
        let (t, batch) = match rx.recv().await {
            Some(Some(b)) => b,
            Some(None) => break,
            // The reader stopped without saying it was done: it failed, and
            // the transaction rolls back (the caller reports the reader's error).
            None => {
                return Err(StoreError::Task(
                    "the source was not read to its end".into(),
                ));
            }
        };
        let params: Vec<&(dyn ToSql + Sync)> = batch.iter().map(Column::as_sql).collect();
        counts[t] += txn
            .execute(inserts[t].as_str(), &params)
            .await
            .map_err(pg_err(CTX))?;
    }
    for table in NUMBERED {
        txn.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'seq'),
                        coalesce((SELECT max(seq) FROM {table}), 1),
                        (SELECT max(seq) FROM {table}) IS NOT NULL)"
            ),
            &[],
        )
        .await
        .map_err(pg_err(CTX))?;
    }
    txn.commit().await.map_err(pg_err(CTX))?;
    Ok(Copied {
        tables: TABLES
            .iter()
            .zip(counts)
            .map(|(t, n)| (t.label.to_string(), n))
            .collect(),
    })
}
