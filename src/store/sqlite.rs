//! The SQLite backend: one file, one process. WAL mode with `synchronous =
//! NORMAL`: a transaction that returned survives the process being killed; a
//! power loss can roll back the last ones, watermark included, which
//! re-fetches rather than loses. The poller records each page's new entries
//! (seen ids and outbox rows) in one transaction, and the last page of a
//! window moves the watermark in that same transaction; the forwarder deletes
//! an outbox row only after a 2xx. A kill at any moment therefore loses
//! nothing: an uncommitted page is fetched again, and the seen ids keep an
//! already-recorded entry from being queued twice.
//!
//! The connection is synchronous; [`super::Store`] runs every call on the
//! store's own thread ([`SqliteStore::submit`]), one after another.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::journal::{Fate, JournalSpan, Story, TraceQuery};
use super::{
    Advance, Cursor, DetectionNote, ReadLimitNote, Recorded, SCHEMA_VERSION, StoreError,
    SubscriptionState,
};
use crate::event::{Entry, Malformed, Timestamp, from_nanos, to_nanos};

trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { context, source })
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    thread: StoreThread,
}

/// A call to run on the store's thread.
pub type Job = Box<dyn FnOnce() + Send>;

/// The thread every call of [`super::Store`] runs on, in turn. The one
/// connection serializes them anyway: on tokio's blocking pool each call
/// woke one of up to 16 threads, which then waited for the connection's
/// lock, and at 10,000 subscriptions (three calls a poll, 500 a second)
/// those threads' wake-ups and lock hand-offs cost a third of the daemon's
/// CPU. One thread, warm, takes the calls as they queue. It ends when the
/// last handle on the store is dropped.
#[derive(Clone)]
struct StoreThread {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl StoreThread {
    fn spawn(path: &Path) -> Result<StoreThread, StoreError> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("state-store".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A call that panics drops its answer (its caller gets
                    // an error); the thread goes on with the next.
                    // Its text is not logged (as a panicking poll's:
                    // `timetable.rs`).
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a state store call panicked");
                    }
                }
            })
            .map_err(|e| {
                StoreError::Task(format!(
                    "cannot start the thread of the state store {}: {e}",
                    path.display()
                ))
            })?;
        Ok(StoreThread { jobs })
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cursor (
    subscription_id  TEXT PRIMARY KEY,
    watermark_ns     INTEGER NOT NULL,
    pruned_before_ns INTEGER NOT NULL,
    last_poll_at_ns  INTEGER,
    last_result      TEXT
);
CREATE TABLE IF NOT EXISTS seen (
    subscription_id TEXT NOT NULL,
    event_data_id   TEXT NOT NULL,
    event_ts_ns     INTEGER NOT NULL,
    PRIMARY KEY (subscription_id, event_data_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (subscription_id, event_ts_ns);
CREATE TABLE IF NOT EXISTS outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL,
    event_data_id   TEXT NOT NULL,
    event_ts_ns     INTEGER NOT NULL,
    entry           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);
DROP INDEX IF EXISTS outbox_by_time;
CREATE INDEX IF NOT EXISTS outbox_by_subscription ON outbox (subscription_id, event_ts_ns, seq);
CREATE TABLE IF NOT EXISTS detection (
    subscription_id TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    detail          TEXT NOT NULL,
    checked_at_ns   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS read_limit (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    limit_now           INTEGER NOT NULL,
    cap                 INTEGER NOT NULL,
    in_flight           INTEGER NOT NULL,
    waiting             INTEGER NOT NULL,
    arrivals_per_second REAL NOT NULL,
    hold_seconds        REAL NOT NULL,
    bound               TEXT NOT NULL,
    noted_at_ns         INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL,
    event_data_id   TEXT NOT NULL,
    event_ts_ns     INTEGER,
    entry           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    failed_at_ns    INTEGER NOT NULL
);
";

impl SqliteStore {
    /// Opens (creating if needed) the state database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::init(conn, path, true)
    }

    /// Opens an existing database without creating or migrating anything, for
    /// `status` next to a running daemon.
    pub fn open_existing(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::init(conn, path, false)
    }

    /// Checks the schema version and, with `migrate`, creates or brings the
    /// schema up to date. Without it nothing is written: a database the
    /// poller never ran with is refused.
    fn init(conn: Connection, path: &Path, migrate: bool) -> Result<SqliteStore, StoreError> {
        let not_db = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => StoreError::NotADatabase {
                path: path.to_path_buf(),
            },
            _ => StoreError::Open {
                path: path.to_path_buf(),
                source: e,
            },
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(not_db)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(not_db)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                location: path.display().to_string(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if !migrate {
            if version == 0 {
                return Err(StoreError::NoSchema {
                    location: path.display().to_string(),
                });
            }
            return Ok(SqliteStore {
                conn: Arc::new(Mutex::new(conn)),
                path: path.to_path_buf(),
                thread: StoreThread::spawn(path)?,
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(not_db)?;
        // In WAL mode, NORMAL makes a commit durable against a killed process
        // (the WAL is written before commit returns) without an fsync per
        // commit. A power loss may roll back the last commits, watermark and
        // outbox together: entries are fetched again, and at worst sent twice;
        // none is lost.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(not_db)?;
        conn.execute_batch(SCHEMA).map_err(not_db)?;
        conn.execute_batch(journal::SCHEMA).map_err(not_db)?;
        journal::migrate(&conn).map_err(not_db)?;
        if version < SCHEMA_VERSION {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(not_db)?;
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            thread: StoreThread::spawn(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `job` on the store's thread; false if the thread is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.thread.jobs.send(job).is_ok()
    }

    fn with<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        // A panic while holding the lock cannot leave a half-done transaction
        // committed (rusqlite rolls back on drop), so a poisoned lock is usable.
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn cursor(&self, subscription_id: &str) -> Result<Option<Cursor>, StoreError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT watermark_ns, pruned_before_ns FROM cursor WHERE subscription_id = ?1",
            )
            .and_then(|mut st| {
                st.query_row([subscription_id], |r| {
                    Ok(Cursor {
                        watermark: from_nanos(r.get(0)?),
                        pruned_before: from_nanos(r.get(1)?),
                    })
                })
                .optional()
            })
            .ctx("reading cursor")
        })
    }

    /// Creates a subscription's cursor at `since` if it has none; returns the cursor.
    pub fn init_cursor(
        &self,
        subscription_id: &str,
        since: Timestamp,
    ) -> Result<Cursor, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO cursor (subscription_id, watermark_ns, pruned_before_ns) VALUES (?1, ?2, ?2)",
                params![subscription_id, to_nanos(since)],
            )
            .ctx("creating cursor")?;
            Ok(())
        })?;
        self.cursor(subscription_id)?.ok_or(StoreError::Sqlite {
            context: "creating cursor",
            source: rusqlite::Error::QueryReturnedNoRows,
        })
    }

    /// Records one page's kept entries and quarantined ones in one transaction;
    /// with `advance`, moves the watermark and prunes seen ids in the same one.
    /// One page in one transaction: its new entries queued, its malformed
    /// ones quarantined, and (the last page of a window) the watermark moved.
    /// With `journal`, the new entries and the `skipped` ones (status not
    /// forwarded) are journaled in it too.
    pub fn record_page(
        &self,
        subscription_id: &str,
        entries: &[Entry],
        skipped: &[Entry],
        malformed: &[(Malformed, Timestamp)],
        advance: Option<Advance>,
        journal: bool,
    ) -> Result<Recorded, StoreError> {
        self.with(|c| {
            let tx = c.transaction().ctx("starting a transaction")?;
            let now = journal.then(chrono::Utc::now);
            let mut rec = queue(&tx, subscription_id, entries, now)?;
            if let Some(now) = now {
                journal::skipped(&tx, subscription_id, skipped, now)?;
            }
            rec.quarantined = quarantine(&tx, subscription_id, malformed)?;
            if let Some(a) = advance {
                move_watermark(&tx, subscription_id, a)?;
            }
            tx.commit().ctx("committing a page")?;
            Ok(rec)
        })
    }

    /// Notes how a poll ended, for `status` and readiness.
    pub fn note_poll(
        &self,
        subscription_id: &str,
        at: Timestamp,
        result: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.prepare_cached(
                "UPDATE cursor SET last_poll_at_ns = ?2, last_result = ?3 WHERE subscription_id = ?1",
            )
            .and_then(|mut st| st.execute(params![subscription_id, to_nanos(at), result]))
            .ctx("noting a poll")?;
            Ok(())
        })
    }

    /// Notes the last event handler check, for `status`.
    pub fn note_detection(
        &self,
        subscription_id: &str,
        at: Timestamp,
        state: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO detection (subscription_id, state, detail, checked_at_ns)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (subscription_id) DO UPDATE
                 SET state = excluded.state, detail = excluded.detail, checked_at_ns = excluded.checked_at_ns",
                params![subscription_id, state, detail, to_nanos(at)],
            )
            .ctx("noting an event handler check")?;
            Ok(())
        })
    }

    /// Every subscription the database knows, with its counts.
    /// One row: SQLite has one daemon.
    pub fn note_read_limit(&self, n: &ReadLimitNote) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO read_limit (id, limit_now, cap, in_flight, waiting,
                        arrivals_per_second, hold_seconds, bound, noted_at_ns)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    n.limit,
                    n.cap,
                    n.in_flight,
                    n.waiting,
                    n.arrivals_per_second,
                    n.hold_seconds,
                    n.bound,
                    to_nanos(n.noted_at)
                ],
            )
            .ctx("noting the read limit")?;
            Ok(())
        })
    }

    /// The published read limit; none before a daemon of this build ran
    /// (the table is only read if it is there, so `status` creates nothing).
    pub fn read_limits(&self) -> Result<Vec<ReadLimitNote>, StoreError> {
        const CONTEXT: &str = "reading the read limit";
        self.with(|c| {
            let exists: bool = c
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'read_limit')",
                    [],
                    |r| r.get(0),
                )
                .ctx(CONTEXT)?;
            if !exists {
                return Ok(Vec::new());
            }
            let mut stmt = c
                .prepare(
                    "SELECT limit_now, cap, in_flight, waiting, arrivals_per_second, hold_seconds,
                            bound, noted_at_ns
                     FROM read_limit",
                )
                .ctx(CONTEXT)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(ReadLimitNote {
                        instance: None,
                        limit: r.get(0)?,
                        cap: r.get(1)?,
                        in_flight: r.get(2)?,
                        waiting: r.get(3)?,
                        arrivals_per_second: r.get(4)?,
                        hold_seconds: r.get(5)?,
                        bound: r.get(6)?,
                        noted_at: from_nanos(r.get(7)?),
                    })
                })
                .ctx(CONTEXT)?;
            rows.collect::<Result<Vec<_>, _>>().ctx(CONTEXT)
        })
    }

    pub fn states(&self) -> Result<Vec<SubscriptionState>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT s.id, cu.watermark_ns, cu.pruned_before_ns, cu.last_poll_at_ns, cu.last_result,
                            (SELECT COUNT(*) FROM outbox o WHERE o.subscription_id = s.id),
                            (SELECT COUNT(*) FROM dead_letter d WHERE d.subscription_id = s.id),
                            de.state, de.detail, de.checked_at_ns
                     FROM (SELECT subscription_id AS id FROM cursor
                           UNION SELECT subscription_id FROM outbox
                           UNION SELECT subscription_id FROM dead_letter
                           UNION SELECT subscription_id FROM detection) s
                     LEFT JOIN cursor cu ON cu.subscription_id = s.id
                     LEFT JOIN detection de ON de.subscription_id = s.id
                     ORDER BY s.id",
                )
                .ctx("reading subscription states")?;
            let rows = stmt
                .query_map([], |r| {
                    let wm: Option<i64> = r.get(1)?;
                    let pb: Option<i64> = r.get(2)?;
                    Ok(SubscriptionState {
                        subscription_id: r.get(0)?,
                        cursor: wm.zip(pb).map(|(w, p)| Cursor {
                            watermark: from_nanos(w),
                            pruned_before: from_nanos(p),
                        }),
                        last_poll_at: r.get::<_, Option<i64>>(3)?.map(from_nanos),
                        last_result: r.get(4)?,
                        outbox: r.get(5)?,
                        dead_letters: r.get(6)?,
                        detection: match (
                            r.get::<_, Option<String>>(7)?,
                            r.get::<_, Option<String>>(8)?,
                            r.get::<_, Option<i64>>(9)?,
                        ) {
                            (Some(state), Some(detail), Some(at)) => Some(DetectionNote {
                                state,
                                detail,
                                checked_at: from_nanos(at),
                            }),
                            _ => None,
                        },
                        lease: None,
                    })
                })
                .ctx("reading subscription states")?;
            rows.collect::<Result<Vec<_>, _>>()
                .ctx("reading subscription states")
        })
    }
}

/// Remembers an id (or a malformed entry's key, or a skipped entry's) as
/// seen; inserts nothing if it was already.
const INSERT_SEEN: &str =
    "INSERT OR IGNORE INTO seen (subscription_id, event_data_id, event_ts_ns) VALUES (?1, ?2, ?3)";

/// Queues the entries not seen before (their ids now seen); counts new and
/// duplicate ones. With `journal` (the time), each new one is journaled
/// `queued` and its outbox row names its journal row.
fn queue(
    tx: &rusqlite::Transaction<'_>,
    subscription_id: &str,
    entries: &[Entry],
    journal: Option<Timestamp>,
) -> Result<Recorded, StoreError> {
    let mut rec = Recorded::default();
    let mut seen = tx
        .prepare_cached(INSERT_SEEN)
        .ctx("preparing seen insert")?;
    let mut outbox = tx
        .prepare_cached(
            "INSERT INTO outbox (subscription_id, event_data_id, event_ts_ns, entry, journal_id)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .ctx("preparing outbox insert")?;
    for e in entries {
        let ts = to_nanos(e.event_timestamp);
        if seen
            .execute(params![subscription_id, e.event_data_id, ts])
            .ctx("recording a seen id")?
            == 0
        {
            rec.duplicate += 1;
            continue;
        }
        let journal_id = match journal {
            Some(now) => Some(journal::insert(tx, subscription_id, e, Fate::Queued, now)?),
            None => None,
        };
        outbox
            .execute(params![
                subscription_id,
                e.event_data_id,
                ts,
                e.raw.get(),
                journal_id
            ])
            .ctx("queueing an event")?;
        rec.new += 1;
    }
    Ok(rec)
}

/// Dead-letters the malformed entries not quarantined before; returns how many.
fn quarantine(
    tx: &rusqlite::Transaction<'_>,
    subscription_id: &str,
    malformed: &[(Malformed, Timestamp)],
) -> Result<usize, StoreError> {
    let mut seen = tx
        .prepare_cached(INSERT_SEEN)
        .ctx("preparing seen insert")?;
    let mut dead = tx
        .prepare_cached(
            "INSERT INTO dead_letter (subscription_id, event_data_id, event_ts_ns, entry, reason, failed_at_ns)
             VALUES (?1, ?2, NULL, ?3, ?4, ?5)",
        )
        .ctx("preparing dead-letter insert")?;
    let mut quarantined = 0;
    for (m, seen_at) in malformed {
        // Keyed by content and remembered like an id, so that the next
        // query of the same window does not quarantine it again.
        let ts = to_nanos(*seen_at);
        if seen
            .execute(params![subscription_id, m.key, ts])
            .ctx("recording a seen id")?
            == 0
        {
            continue;
        }
        let body = m.raw.get();
        dead.execute(params![
            subscription_id,
            m.key,
            body,
            m.reason,
            to_nanos(chrono::Utc::now())
        ])
        .ctx("quarantining an entry")?;
        quarantined += 1;
    }
    Ok(quarantined)
}

/// Moves the watermark and the pruning point, and forgets the seen ids below
/// the pruning point.
fn move_watermark(
    tx: &rusqlite::Transaction<'_>,
    subscription_id: &str,
    a: Advance,
) -> Result<(), StoreError> {
    // The watermark never moves back, and pruning never un-prunes.
    // Prepared once per connection (every empty poll runs these: parsing
    // them each time was a visible share of the daemon's CPU).
    tx.prepare_cached(
        "UPDATE cursor SET watermark_ns = MAX(watermark_ns, ?2),
                           pruned_before_ns = MAX(pruned_before_ns, ?3)
         WHERE subscription_id = ?1",
    )
    .and_then(|mut st| {
        st.execute(params![
            subscription_id,
            to_nanos(a.watermark),
            to_nanos(a.prune_before)
        ])
    })
    .ctx("moving the watermark")?;
    let pruned_before: i64 = tx
        .prepare_cached("SELECT pruned_before_ns FROM cursor WHERE subscription_id = ?1")
        .and_then(|mut st| st.query_row([subscription_id], |r| r.get(0)))
        .ctx("reading cursor")?;
    tx.prepare_cached("DELETE FROM seen WHERE subscription_id = ?1 AND event_ts_ns < ?2")
        .and_then(|mut st| st.execute(params![subscription_id, pruned_before]))
        .ctx("pruning seen ids")?;
    Ok(())
}

/// The delivery journal's side of the store (see `store/journal.rs`).
impl SqliteStore {
    /// Notes a daemon start with the journal on or off.
    pub fn start_journal(&self, on: bool, now: Timestamp) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction().ctx("starting a transaction")?;
            journal::start(&tx, on, now)?;
            tx.commit().ctx("noting the journal's start")
        })
    }

    /// One pruning batch (see [`journal::prune`]).
    pub fn prune_journal(&self, before: Timestamp) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction().ctx("starting a transaction")?;
            let n = journal::prune(&tx, before)?;
            tx.commit().ctx("pruning the journal")?;
            Ok(n)
        })
    }

    pub fn journal_span(&self) -> Result<Option<JournalSpan>, StoreError> {
        self.with(|c| journal::span(c))
    }

    pub fn trace(&self, q: &TraceQuery) -> Result<Vec<Story>, StoreError> {
        self.with(|c| journal::trace(c, q))
    }
}

mod journal;
mod outbox;

#[cfg(test)]
mod tests;
