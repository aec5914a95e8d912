//! The delivery journal on SQLite (see `store/journal.rs`): its tables, the
//! rows written inside the page and settling transactions, pruning, and
//! what `trace` reads.
//!
//! `journal` is a rowid table without a secondary index: rows are numbered
//! in the order they were recorded, which is the order they were fetched,
//! so every write appends at the end of one B-tree and pruning walks the
//! oldest rows by rowid. The outbox row (and a dead letter) carries its
//! journal row's number (`journal_id`), so settling finds the row without
//! an index; a skipped entry is remembered in `seen` under `skipped:<id>`
//! (pruned with the look-back like any id), so the next query of the window
//! does not journal it twice. Settling appends to `journal_outcome`, keyed
//! by the journal row and the time (without a rowid: the outcomes of one
//! row sit together, and `trace` finds the latest by the key), small rows
//! that settle without touching the wide ones. `trace` reads the table: an index on random
//! ids would cost every queued event a random page write, and a catch-up
//! far more than the 10% the journal may cost it.

use rusqlite::{OptionalExtension, Transaction, params};

use super::Context;
use crate::event::{Entry, Timestamp, from_nanos, to_nanos};
use crate::store::StoreError;
use crate::store::journal::{
    Fate, JournalSpan, OUTCOME_FROM, OUTCOME_KEPT, PRUNE_BATCH, Param, Story, TraceQuery, trace_sql,
};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    id               INTEGER PRIMARY KEY,
    subscription_id  TEXT NOT NULL,
    event_data_id    TEXT NOT NULL,
    event_ts_ns      INTEGER NOT NULL,
    submission_ts_ns INTEGER,
    fetched_at_ns    INTEGER NOT NULL,
    status           TEXT,
    resource_id      TEXT,
    operation        TEXT,
    caller           TEXT,
    correlation_id   TEXT,
    fate             INTEGER NOT NULL,
    settled_at_ns    INTEGER,
    http_status      INTEGER,
    attempts         INTEGER,
    instance         TEXT,
    detail           TEXT
);
CREATE TABLE IF NOT EXISTS journal_outcome (
    journal_id       INTEGER NOT NULL,
    settled_at_ns    INTEGER NOT NULL,
    fate             INTEGER NOT NULL,
    http_status      INTEGER,
    attempts         INTEGER,
    instance         TEXT,
    detail           TEXT,
    PRIMARY KEY (journal_id, settled_at_ns)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal_span (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    started_at_ns    INTEGER NOT NULL,
    pruned_before_ns INTEGER,
    off_since_ns     INTEGER
);
";

/// One journal row, `queued` or `skipped`.
const INSERT: &str = "INSERT INTO journal (subscription_id, event_data_id, event_ts_ns,
        submission_ts_ns, fetched_at_ns, status, resource_id, operation, caller, correlation_id,
        fate, detail)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// Adds the columns that link the outbox and the dead letters to their
/// journal rows, on a state created before the journal.
pub(super) fn migrate(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    for table in ["outbox", "dead_letter"] {
        let has: bool = c.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = 'journal_id')"),
            [],
            |r| r.get(0),
        )?;
        if !has {
            c.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN journal_id INTEGER"
            ))?;
        }
    }
    Ok(())
}

/// Journals one entry in the page's transaction; returns its row number.
pub(super) fn insert(
    tx: &Transaction<'_>,
    subscription_id: &str,
    e: &Entry,
    fate: Fate,
    now: Timestamp,
) -> Result<i64, StoreError> {
    let t = &e.trail;
    let detail = (fate == Fate::Skipped).then_some("its status is not forwarded");
    tx.prepare_cached(INSERT)
        .ctx("preparing journal insert")?
        .execute(params![
            subscription_id,
            e.event_data_id,
            to_nanos(e.event_timestamp),
            t.submission_timestamp.map(to_nanos),
            to_nanos(now),
            e.status,
            t.resource_id,
            t.operation,
            t.caller,
            t.correlation_id,
            fate.code(),
            detail
        ])
        .ctx("journaling an event")?;
    Ok(tx.last_insert_rowid())
}

/// Journals the entries a page skipped for their status, each once: the
/// first query of the window that sees one notes `skipped:<id>` in `seen`.
pub(super) fn skipped(
    tx: &Transaction<'_>,
    subscription_id: &str,
    skipped: &[Entry],
    now: Timestamp,
) -> Result<(), StoreError> {
    for e in skipped {
        let fresh = tx
            .prepare_cached(super::INSERT_SEEN)
            .ctx("preparing seen insert")?
            .execute(params![
                subscription_id,
                format!("skipped:{}", e.event_data_id),
                to_nanos(e.event_timestamp)
            ])
            .ctx("recording a seen id")?;
        if fresh > 0 {
            insert(tx, subscription_id, e, Fate::Skipped, now)?;
        }
    }
    Ok(())
}

/// The outbox row `?1` was acknowledged with HTTP `?2` at `?3`: an outcome
/// says so, with the attempts and the last failure before it. Run before
/// the outbox row is deleted.
const DELIVERED: &str = "INSERT OR REPLACE INTO journal_outcome
        (journal_id, settled_at_ns, fate, http_status, attempts, detail)
     SELECT journal_id, ?3, 1, ?2, attempts + 1, last_error
     FROM outbox WHERE seq = ?1 AND journal_id IS NOT NULL";

/// The outbox row `?1` was rejected for `?2` at `?3`.
const DEAD_LETTERED: &str = "INSERT OR REPLACE INTO journal_outcome
        (journal_id, settled_at_ns, fate, detail, attempts)
     SELECT journal_id, ?3, 2, ?2, attempts + 1
     FROM outbox WHERE seq = ?1 AND journal_id IS NOT NULL";

/// Journals a settling transaction's outcomes, before its outbox deletes.
pub(super) fn settle(
    tx: &Transaction<'_>,
    acks: &[(i64, u16)],
    rejects: &[(i64, String)],
    now: Timestamp,
) -> Result<(), StoreError> {
    let now = to_nanos(now);
    if !acks.is_empty() {
        let mut stmt = tx.prepare_cached(DELIVERED).ctx("journaling a delivery")?;
        for (seq, status) in acks {
            stmt.execute(params![seq, status, now])
                .ctx("journaling a delivery")?;
        }
    }
    for (seq, reason) in rejects {
        tx.prepare_cached(DEAD_LETTERED)
            .ctx("journaling a dead letter")?
            .execute(params![seq, reason, now])
            .ctx("journaling a dead letter")?;
    }
    Ok(())
}

/// A dead letter `?1` put back in the outbox at `now` is queued again: an
/// outcome says so, keeping the attempts and why it was dead-lettered.
pub(super) fn requeued(
    tx: &Transaction<'_>,
    dead_letter_seq: i64,
    now: Timestamp,
) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT OR REPLACE INTO journal_outcome
                 (journal_id, settled_at_ns, fate, attempts, instance, detail)
             SELECT j.id, ?2, 0, {OUTCOME_KEPT}
             FROM dead_letter d, {OUTCOME_FROM}
             WHERE d.seq = ?1 AND j.id = d.journal_id"
        ),
        params![dead_letter_seq, to_nanos(now)],
    )
    .ctx("journaling a re-queued dead letter")?;
    Ok(())
}

/// Notes a daemon start with the journal on or off: turned on after being
/// off, it starts afresh (what happened while off is unknown).
pub(super) fn start(tx: &Transaction<'_>, on: bool, now: Timestamp) -> Result<(), StoreError> {
    let sql = if on {
        "INSERT INTO journal_span (id, started_at_ns) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET started_at_ns = excluded.started_at_ns, off_since_ns = NULL
         WHERE journal_span.off_since_ns IS NOT NULL"
    } else {
        "INSERT INTO journal_span (id, started_at_ns, off_since_ns) VALUES (1, ?1, ?1)
         ON CONFLICT (id) DO UPDATE SET off_since_ns = excluded.off_since_ns
         WHERE journal_span.off_since_ns IS NULL"
    };
    tx.execute(sql, [to_nanos(now)])
        .ctx("noting the journal's start")?;
    Ok(())
}

/// Deletes up to [`PRUNE_BATCH`] of the oldest rows fetched before
/// `before`; returns how many. Looks at the oldest rows only (by rowid), so
/// that a journal with nothing to prune costs one short index walk.
pub(super) fn prune(tx: &Transaction<'_>, before: Timestamp) -> Result<usize, StoreError> {
    let before = to_nanos(before);
    // The same rows' outcomes first, while the rows still name them.
    let oldest = "SELECT id FROM (SELECT id, fetched_at_ns FROM journal ORDER BY id LIMIT ?2)
                  WHERE fetched_at_ns < ?1";
    tx.execute(
        &format!("DELETE FROM journal_outcome WHERE journal_id IN ({oldest})"),
        params![before, PRUNE_BATCH],
    )
    .ctx("pruning the journal")?;
    let deleted = tx
        .execute(
            &format!("DELETE FROM journal WHERE id IN ({oldest})"),
            params![before, PRUNE_BATCH],
        )
        .ctx("pruning the journal")?;
    if deleted > 0 {
        tx.execute(
            "UPDATE journal_span SET pruned_before_ns = MAX(COALESCE(pruned_before_ns, ?1), ?1)",
            [before],
        )
        .ctx("pruning the journal")?;
    }
    Ok(deleted)
}

/// Whether the journal's tables are there (a state written before the
/// journal has none, and `trace` creates nothing).
pub(super) fn exists(c: &rusqlite::Connection) -> Result<bool, StoreError> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal_span')",
        [],
        |r| r.get(0),
    )
    .ctx("reading the journal")
}

/// Since when the journal holds everything; `None` when it never started.
pub(super) fn span(c: &rusqlite::Connection) -> Result<Option<JournalSpan>, StoreError> {
    if !exists(c)? {
        return Ok(None);
    }
    c.query_row(
        "SELECT started_at_ns, pruned_before_ns, off_since_ns FROM journal_span WHERE id = 1",
        [],
        |r| {
            Ok(JournalSpan {
                started_at: from_nanos(r.get(0)?),
                pruned_before: r.get::<_, Option<i64>>(1)?.map(from_nanos),
                off_since: r.get::<_, Option<i64>>(2)?.map(from_nanos),
            })
        },
    )
    .optional()
    .ctx("reading the journal")
}

/// The events matching `q`, oldest first.
pub(super) fn trace(c: &rusqlite::Connection, q: &TraceQuery) -> Result<Vec<Story>, StoreError> {
    if !exists(c)? {
        return Ok(Vec::new());
    }
    let (sql, params) = trace_sql(q, |n| format!("?{n}"));
    let values: Vec<rusqlite::types::Value> = params
        .into_iter()
        .map(|p| match p {
            Param::Text(s) => rusqlite::types::Value::Text(s),
            Param::Int(i) => rusqlite::types::Value::Integer(i),
        })
        .collect();
    let mut stmt = c.prepare(&sql).ctx("reading the journal")?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(values), |r| {
            let waiting: Option<i64> = r.get(16)?;
            Ok(Story {
                subscription_id: r.get(0)?,
                event_data_id: r.get(1)?,
                event_timestamp: from_nanos(r.get(2)?),
                submission_timestamp: r.get::<_, Option<i64>>(3)?.map(from_nanos),
                fetched_at: from_nanos(r.get(4)?),
                status: r.get(5)?,
                resource_id: r.get(6)?,
                operation: r.get(7)?,
                caller: r.get(8)?,
                correlation_id: r.get(9)?,
                fate: Fate::from_code(r.get(10)?),
                settled_at: r.get::<_, Option<i64>>(11)?.map(from_nanos),
                http_status: r.get(12)?,
                attempts: r.get(13)?,
                instance: r.get(14)?,
                detail: r.get(15)?,
                waiting: match waiting {
                    Some(n) => Some((n, r.get(17)?)),
                    None => None,
                },
            })
        })
        .ctx("reading the journal")?;
    rows.collect::<Result<Vec<_>, _>>()
        .ctx("reading the journal")
}
