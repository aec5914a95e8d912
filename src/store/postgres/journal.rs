//! The delivery journal on PostgreSQL (see `store/journal.rs`): its tables,
//! the rows written inside the page and settling transactions (whole
//! arrays through `unnest`, one statement each), pruning safe for several
//! instances at once, and what `trace` reads.
//!
//! As on SQLite, rows are numbered in the order they were recorded
//! (an identity column), pruning walks the oldest by that number, and one
//! unique index, `(event_data_id, subscription_id)`, is the only other.
//! Any instance may prune: a batch locks its rows `FOR UPDATE SKIP LOCKED`,
//! so two instances pruning together each delete what the other has not
//! locked, and neither waits.

use tokio_postgres::types::ToSql;

use super::{Context, PgStore};
use crate::event::{Entry, Timestamp, from_nanos, to_nanos};
use crate::store::StoreError;
use crate::store::journal::{Fate, JournalSpan, PRUNE_BATCH, Param, Story, TraceQuery, trace_sql};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id  TEXT NOT NULL,
    event_data_id    TEXT NOT NULL,
    event_ts_ns      BIGINT NOT NULL,
    submission_ts_ns BIGINT,
    fetched_at_ns    BIGINT NOT NULL,
    status           TEXT,
    resource_id      TEXT,
    operation        TEXT,
    caller           TEXT,
    correlation_id   TEXT,
    fate             SMALLINT NOT NULL,
    settled_at_ns    BIGINT,
    http_status      SMALLINT,
    attempts         INTEGER,
    instance         TEXT,
    detail           TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS journal_by_event ON journal (event_data_id, subscription_id);
CREATE TABLE IF NOT EXISTS journal_span (
    id               SMALLINT PRIMARY KEY CHECK (id = 1),
    started_at_ns    BIGINT NOT NULL,
    pruned_before_ns BIGINT,
    off_since_ns     BIGINT
);
";

/// The columns of a page's entries, for `unnest`.
struct Columns<'a> {
    ids: Vec<&'a str>,
    times: Vec<i64>,
    submitted: Vec<Option<i64>>,
    statuses: Vec<Option<&'a str>>,
    resources: Vec<Option<&'a str>>,
    operations: Vec<Option<&'a str>>,
    callers: Vec<Option<&'a str>>,
    correlations: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(entries: &[&'a Entry]) -> Columns<'a> {
        Columns {
            ids: entries.iter().map(|e| e.event_data_id.as_str()).collect(),
            times: entries
                .iter()
                .map(|e| to_nanos(e.event_timestamp))
                .collect(),
            submitted: entries
                .iter()
                .map(|e| e.trail.submission_timestamp.map(to_nanos))
                .collect(),
            statuses: entries.iter().map(|e| e.status.as_deref()).collect(),
            resources: entries
                .iter()
                .map(|e| e.trail.resource_id.as_deref())
                .collect(),
            operations: entries
                .iter()
                .map(|e| e.trail.operation.as_deref())
                .collect(),
            callers: entries.iter().map(|e| e.trail.caller.as_deref()).collect(),
            correlations: entries
                .iter()
                .map(|e| e.trail.correlation_id.as_deref())
                .collect(),
        }
    }
}

/// Journals a page's entries in its transaction: `kept` are the page's
/// (unique) kept entries, of which those whose id the page transaction just
/// added to `seen` (`fresh`) are queued; `skipped` ones are noted once.
pub(super) async fn record(
    tx: &deadpool_postgres::Transaction<'_>,
    subscription_id: &str,
    queued: &[&Entry],
    skipped: &[&Entry],
    now: Timestamp,
) -> Result<(), StoreError> {
    let now = to_nanos(now);
    for (entries, fate, on_conflict) in [
        (
            queued,
            Fate::Queued,
            "DO UPDATE SET fate = excluded.fate, status = excluded.status, fetched_at_ns = excluded.fetched_at_ns",
        ),
        (skipped, Fate::Skipped, "DO NOTHING"),
    ] {
        if entries.is_empty() {
            continue;
        }
        let c = Columns::of(entries);
        let detail = (fate == Fate::Skipped).then_some("its status is not forwarded");
        let sql = format!(
            "INSERT INTO journal (subscription_id, event_data_id, event_ts_ns, submission_ts_ns,
                 fetched_at_ns, status, resource_id, operation, caller, correlation_id, fate, detail)
             SELECT $1, id, ts, sub_ts, $2, status, resource, op, caller, corr, $3, $4
             FROM unnest($5::text[], $6::bigint[], $7::bigint[], $8::text[], $9::text[],
                         $10::text[], $11::text[], $12::text[])
                  AS p(id, ts, sub_ts, status, resource, op, caller, corr)
             ORDER BY ts
             ON CONFLICT (event_data_id, subscription_id) {on_conflict}"
        );
        let fate = i16::try_from(fate.code()).unwrap_or_default();
        tx.execute(
            &sql,
            &[
                &subscription_id,
                &now,
                &fate,
                &detail,
                &c.ids,
                &c.times,
                &c.submitted,
                &c.statuses,
                &c.resources,
                &c.operations,
                &c.callers,
                &c.correlations,
            ],
        )
        .await
        .ctx("journaling events")?;
    }
    Ok(())
}

/// Journals a settling transaction's outcomes, before its outbox deletes,
/// for the subscriptions this instance holds (`held`, fenced).
pub(super) async fn settle(
    tx: &deadpool_postgres::Transaction<'_>,
    acks: &[(i64, u16)],
    rejects: (&Vec<i64>, &Vec<&str>),
    held: &[String],
    instance: &str,
) -> Result<(), StoreError> {
    let now = to_nanos(chrono::Utc::now());
    if !acks.is_empty() {
        let seqs: Vec<i64> = acks.iter().map(|(s, _)| *s).collect();
        let statuses: Vec<i16> = acks
            .iter()
            .map(|(_, st)| i16::try_from(*st).unwrap_or(i16::MAX))
            .collect();
        tx.execute(
            "UPDATE journal j SET fate = 1, settled_at_ns = $3, http_status = a.status,
                    attempts = o.attempts + 1, detail = o.last_error, instance = $4
             FROM unnest($1::bigint[], $2::smallint[]) AS a(seq, status)
             JOIN outbox o ON o.seq = a.seq
             WHERE j.event_data_id = o.event_data_id AND j.subscription_id = o.subscription_id
               AND o.subscription_id = ANY($5)",
            &[&seqs, &statuses, &now, &instance, &held],
        )
        .await
        .ctx("journaling deliveries")?;
    }
    if !rejects.0.is_empty() {
        tx.execute(
            "UPDATE journal j SET fate = 2, settled_at_ns = $3, detail = r.reason,
                    attempts = o.attempts + 1, instance = $4
             FROM unnest($1::bigint[], $2::text[]) AS r(seq, reason)
             JOIN outbox o ON o.seq = r.seq
             WHERE j.event_data_id = o.event_data_id AND j.subscription_id = o.subscription_id
               AND o.subscription_id = ANY($5)",
            &[rejects.0, rejects.1, &now, &instance, &held],
        )
        .await
        .ctx("journaling dead letters")?;
    }
    Ok(())
}

/// Dead letters put back in the outbox are queued again: the first part of
/// `retry_dead_letters`'s statement (`$1` as there: none means all).
pub(super) const REQUEUED: &str = "requeued AS (
         UPDATE journal j SET fate = 0, settled_at_ns = NULL, http_status = NULL
         FROM dead_letter d
         WHERE ($1::bigint[] IS NULL OR d.seq = ANY($1))
           AND j.event_data_id = d.event_data_id AND j.subscription_id = d.subscription_id), ";

impl PgStore {
    /// Notes a daemon start with the journal on or off: turned on after
    /// being off, it starts afresh.
    pub async fn start_journal(&self, on: bool, now: Timestamp) -> Result<(), StoreError> {
        let sql = if on {
            "INSERT INTO journal_span (id, started_at_ns) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET started_at_ns = excluded.started_at_ns, off_since_ns = NULL
             WHERE journal_span.off_since_ns IS NOT NULL"
        } else {
            "INSERT INTO journal_span (id, started_at_ns, off_since_ns) VALUES (1, $1, $1)
             ON CONFLICT (id) DO UPDATE SET off_since_ns = excluded.off_since_ns
             WHERE journal_span.off_since_ns IS NULL"
        };
        self.execute("noting the journal's start", sql, &[&to_nanos(now)])
            .await
            .map(drop)
    }

    /// Deletes up to [`PRUNE_BATCH`] of the oldest rows fetched before
    /// `before`; returns how many. Only the oldest rows are looked at (a
    /// range of the primary key), and rows another instance is pruning are
    /// skipped, not waited for.
    pub async fn prune_journal(&self, before: Timestamp) -> Result<usize, StoreError> {
        let before = to_nanos(before);
        let rows = self
            .query(
                "pruning the journal",
                "WITH oldest AS (
                     SELECT id FROM journal
                     WHERE id <= (SELECT max(id) FROM (SELECT id FROM journal ORDER BY id LIMIT $2) f)
                       AND fetched_at_ns < $1
                     FOR UPDATE SKIP LOCKED),
                 gone AS (DELETE FROM journal WHERE id IN (SELECT id FROM oldest) RETURNING 1),
                 noted AS (
                     UPDATE journal_span SET pruned_before_ns = GREATEST(pruned_before_ns, $1)
                     WHERE EXISTS (SELECT 1 FROM gone))
                 SELECT count(*) FROM gone",
                &[&before, &PRUNE_BATCH],
            )
            .await?;
        let deleted: i64 = rows.first().map_or(0, |r| r.get(0));
        Ok(usize::try_from(deleted).unwrap_or(0))
    }

    pub async fn journal_span(&self) -> Result<Option<JournalSpan>, StoreError> {
        const CONTEXT: &str = "reading the journal";
        let exists = self
            .query(
                CONTEXT,
                "SELECT to_regclass('journal_span') IS NOT NULL",
                &[],
            )
            .await?;
        if !exists.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(None);
        }
        let rows = self
            .query(
                CONTEXT,
                "SELECT started_at_ns, pruned_before_ns, off_since_ns FROM journal_span WHERE id = 1",
                &[],
            )
            .await?;
        Ok(rows.first().map(|r| JournalSpan {
            started_at: from_nanos(r.get(0)),
            pruned_before: r.get::<_, Option<i64>>(1).map(from_nanos),
            off_since: r.get::<_, Option<i64>>(2).map(from_nanos),
        }))
    }

    pub async fn trace(&self, q: &TraceQuery) -> Result<Vec<Story>, StoreError> {
        if self.journal_span().await?.is_none() {
            return Ok(Vec::new());
        }
        let (sql, params) = trace_sql(q, |n| format!("${n}"));
        let values: Vec<Box<dyn ToSql + Sync + Send>> = params
            .into_iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    Param::Text(s) => Box::new(s),
                    Param::Int(i) => Box::new(i),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = self.query("reading the journal", &sql, &refs).await?;
        Ok(rows
            .iter()
            .map(|r| Story {
                subscription_id: r.get(0),
                event_data_id: r.get(1),
                event_timestamp: from_nanos(r.get(2)),
                submission_timestamp: r.get::<_, Option<i64>>(3).map(from_nanos),
                fetched_at: from_nanos(r.get(4)),
                status: r.get(5),
                resource_id: r.get(6),
                operation: r.get(7),
                caller: r.get(8),
                correlation_id: r.get(9),
                fate: Fate::from_code(i64::from(r.get::<_, i16>(10))),
                settled_at: r.get::<_, Option<i64>>(11).map(from_nanos),
                http_status: r.get::<_, Option<i16>>(12).map(i64::from),
                attempts: r.get::<_, Option<i32>>(13).map(i64::from),
                instance: r.get(14),
                detail: r.get(15),
                waiting: r
                    .get::<_, Option<i64>>(16)
                    .map(|n| (n, r.get::<_, Option<String>>(17))),
            })
            .collect())
    }
}
