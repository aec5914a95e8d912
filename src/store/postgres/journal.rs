//! The delivery journal on PostgreSQL (see `store/journal.rs`): its tables,
//! the rows written inside the page and settling transactions (whole
//! arrays through `unnest`, one statement each), pruning safe for several
//! instances at once, and what `trace` reads.
//!
//! As on SQLite, rows are numbered in the order they were recorded (an
//! identity column, the only index), pruning walks the oldest by that
//! number, the outbox row and the dead letter carry their journal row's
//! number, a skipped entry is remembered in `seen` as `skipped:<id>`, and
//! settling appends outcomes (keyed by the journal row and the time).
//! Any instance may prune: a batch locks its rows `FOR UPDATE SKIP LOCKED`,
//! so two instances pruning together each delete what the other has not
//! locked, and neither waits.

use tokio_postgres::types::ToSql;

use super::{Context, PgStore};
use crate::event::{Entry, Timestamp, from_nanos, to_nanos};
use crate::store::StoreError;
use crate::store::journal::{
    Fate, JournalSpan, OUTCOME_FROM, OUTCOME_KEPT, PRUNE_BATCH, Param, Story, TraceQuery, trace_sql,
};

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
CREATE TABLE IF NOT EXISTS journal_outcome (
    journal_id       BIGINT NOT NULL,
    settled_at_ns    BIGINT NOT NULL,
    fate             SMALLINT NOT NULL,
    http_status      SMALLINT,
    attempts         INTEGER,
    instance         TEXT,
    detail           TEXT,
    PRIMARY KEY (journal_id, settled_at_ns)
);
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS journal_id BIGINT;
ALTER TABLE dead_letter ADD COLUMN IF NOT EXISTS journal_id BIGINT;
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

/// Queues a page's entries not seen before and journals each `queued`, its
/// outbox row naming its journal row: one statement. `entries` have unique
/// ids; returns how many were new.
pub(super) async fn queue(
    tx: &deadpool_postgres::Transaction<'_>,
    subscription_id: &str,
    entries: &[&Entry],
    now: Timestamp,
) -> Result<usize, StoreError> {
    let c = Columns::of(entries);
    let bodies: Vec<&str> = entries.iter().map(|e| e.raw.get()).collect();
    let n = tx
        .execute(
            "WITH page AS (
                 SELECT * FROM unnest($2::text[], $3::bigint[], $4::text[], $6::bigint[], $7::text[],
                                      $8::text[], $9::text[], $10::text[], $11::text[])
                 AS p(id, ts, entry, sub_ts, status, resource, op, caller, corr)),
             fresh AS (
                 INSERT INTO seen (subscription_id, event_data_id, event_ts_ns)
                 SELECT $1, id, ts FROM page
                 ON CONFLICT DO NOTHING
                 RETURNING event_data_id),
             journaled AS (
                 INSERT INTO journal (subscription_id, event_data_id, event_ts_ns, submission_ts_ns,
                     fetched_at_ns, status, resource_id, operation, caller, correlation_id, fate)
                 SELECT $1, page.id, page.ts, page.sub_ts, $5, page.status, page.resource, page.op,
                        page.caller, page.corr, 0
                 FROM page JOIN fresh ON fresh.event_data_id = page.id ORDER BY page.ts
                 RETURNING id, event_data_id)
             INSERT INTO outbox (subscription_id, event_data_id, event_ts_ns, entry, journal_id)
             SELECT $1, page.id, page.ts, page.entry, journaled.id
             FROM page JOIN journaled ON journaled.event_data_id = page.id
             ORDER BY page.ts",
            &[
                &subscription_id,
                &c.ids,
                &c.times,
                &bodies,
                &to_nanos(now),
                &c.submitted,
                &c.statuses,
                &c.resources,
                &c.operations,
                &c.callers,
                &c.correlations,
            ],
        )
        .await
        .ctx("queueing events")?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Journals the entries a page skipped for their status, each once (the
/// first query of the window notes `skipped:<id>` in `seen`).
pub(super) async fn skipped(
    tx: &deadpool_postgres::Transaction<'_>,
    subscription_id: &str,
    skipped: &[Entry],
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut ids = std::collections::HashSet::new();
    let unique: Vec<&Entry> = skipped
        .iter()
        .filter(|e| ids.insert(e.event_data_id.as_str()))
        .collect();
    if unique.is_empty() {
        return Ok(());
    }
    let c = Columns::of(&unique);
    tx.execute(
        "WITH page AS (
             SELECT * FROM unnest($3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[],
                                  $8::text[], $9::text[], $10::text[])
             AS p(id, ts, sub_ts, status, resource, op, caller, corr)),
         fresh AS (
             INSERT INTO seen (subscription_id, event_data_id, event_ts_ns)
             SELECT $1, 'skipped:' || id, ts FROM page
             ON CONFLICT DO NOTHING
             RETURNING event_data_id)
         INSERT INTO journal (subscription_id, event_data_id, event_ts_ns, submission_ts_ns,
             fetched_at_ns, status, resource_id, operation, caller, correlation_id, fate, detail)
         SELECT $1, page.id, page.ts, page.sub_ts, $2, page.status, page.resource, page.op,
                page.caller, page.corr, 3, 'its status is not forwarded'
         FROM page JOIN fresh ON fresh.event_data_id = 'skipped:' || page.id
         ORDER BY page.ts",
        &[
            &subscription_id,
            &to_nanos(now),
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
    .ctx("journaling skipped entries")?;
    Ok(())
}

/// Journals a settling transaction's outcomes, before its outbox deletes,
/// for the subscriptions `held` names (those the outcomes are of: written
/// whoever holds their leases now, as the deletes are).
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
            "INSERT INTO journal_outcome
                 (journal_id, settled_at_ns, fate, http_status, attempts, detail, instance)
             SELECT o.journal_id, $3, 1, a.status, o.attempts + 1, o.last_error, $4
             FROM unnest($1::bigint[], $2::smallint[]) AS a(seq, status)
             JOIN outbox o ON o.seq = a.seq
             WHERE o.journal_id IS NOT NULL AND o.subscription_id = ANY($5)
             ON CONFLICT DO NOTHING",
            &[&seqs, &statuses, &now, &instance, &held],
        )
        .await
        .ctx("journaling deliveries")?;
    }
    if !rejects.0.is_empty() {
        tx.execute(
            "INSERT INTO journal_outcome
                 (journal_id, settled_at_ns, fate, detail, attempts, instance)
             SELECT o.journal_id, $3, 2, r.reason, o.attempts + 1, $4
             FROM unnest($1::bigint[], $2::text[]) AS r(seq, reason)
             JOIN outbox o ON o.seq = r.seq
             WHERE o.journal_id IS NOT NULL AND o.subscription_id = ANY($5)
             ON CONFLICT DO NOTHING",
            &[rejects.0, rejects.1, &now, &instance, &held],
        )
        .await
        .ctx("journaling dead letters")?;
    }
    Ok(())
}

/// Dead letters put back in the outbox are queued again, an outcome each
/// that keeps the attempts and why: the first part of
/// `retry_dead_letters`'s statement (`$1` as there: none means all; `$2`
/// the time).
pub(super) fn requeued() -> String {
    format!(
        "requeued AS (
         INSERT INTO journal_outcome (journal_id, settled_at_ns, fate, attempts, instance, detail)
         SELECT j.id, $2, 0, {OUTCOME_KEPT}
         FROM dead_letter d, {OUTCOME_FROM}
         WHERE ($1::bigint[] IS NULL OR d.seq = ANY($1)) AND j.id = d.journal_id
         ON CONFLICT DO NOTHING), "
    )
}

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
                 outcomes AS (
                     DELETE FROM journal_outcome WHERE journal_id IN (SELECT id FROM oldest)),
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
