//! The delivery journal: one compact row for every entry the poller kept
//! (and every one it skipped for its status), with its fate, so that
//! "did Guardrails get it?" has an answer after the event left the outbox.
//!
//! Rows are written in the transactions that already exist: a page's
//! transaction queues its new entries and journals them (`queued`, or
//! `skipped` with the status); the forwarder's settling transaction appends
//! an outcome to `journal_outcome`: `delivered` (time, HTTP status,
//! attempts, the instance on shared state) or `dead-lettered` (why), and a
//! dead letter put back in the outbox appends `queued` again. Outcomes are
//! small rows in their own table, never an update of the wide journal row:
//! rows are written in fetch order but settled in delivery order, and
//! updating them in place dirtied a different page of the journal for
//! nearly every acknowledgement (settling ran 2.3 times slower, see
//! BENCHMARKS.md section 10). `trace` reads each row with its latest
//! outcome. A retry is not written: the outbox row
//! counts attempts and keeps the last error, and `trace` reads it there for
//! an event still waiting. Rows are kept for `[journal] retention` after
//! they were fetched and pruned in the background, oldest first, in small
//! batches (see `crate::journal`); `journal_span` says since when the
//! journal holds everything, so that `trace` can tell "not seen" from "not
//! known".
//!
//! This file holds what both backends share: the row as `trace` reads it,
//! the query and its SQL filter; `sqlite/journal.rs` and
//! `postgres/journal.rs` hold each backend's statements.

use crate::event::Timestamp;

/// How many rows one pruning transaction deletes at most: a few
/// milliseconds of work, so polls and deliveries never wait long behind it.
pub const PRUNE_BATCH: i64 = 1000;

/// What became of an event, as stored (a small integer keeps rows compact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// In the outbox, not yet acknowledged.
    Queued,
    Delivered,
    DeadLettered,
    /// Fetched, not forwarded: its status is not one the subscription keeps.
    Skipped,
}

impl Fate {
    pub fn code(self) -> i64 {
        match self {
            Fate::Queued => 0,
            Fate::Delivered => 1,
            Fate::DeadLettered => 2,
            Fate::Skipped => 3,
        }
    }

    /// An unknown code (a newer build's) reads as queued: the story then
    /// says what the outbox knows.
    pub fn from_code(code: i64) -> Fate {
        match code {
            1 => Fate::Delivered,
            2 => Fate::DeadLettered,
            3 => Fate::Skipped,
            _ => Fate::Queued,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Queued => "queued",
            Fate::Delivered => "delivered",
            Fate::DeadLettered => "dead-lettered",
            Fate::Skipped => "skipped",
        }
    }
}

/// One event's row, as `trace` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Story {
    pub subscription_id: String,
    pub event_data_id: String,
    pub event_timestamp: Timestamp,
    pub submission_timestamp: Option<Timestamp>,
    pub fetched_at: Timestamp,
    pub status: Option<String>,
    pub resource_id: Option<String>,
    pub operation: Option<String>,
    pub caller: Option<String>,
    pub correlation_id: Option<String>,
    pub fate: Fate,
    /// When it was delivered or dead-lettered.
    pub settled_at: Option<Timestamp>,
    /// The endpoint's answer to the acknowledged POST.
    pub http_status: Option<i64>,
    /// POSTs it took, the acknowledged or rejecting one included.
    pub attempts: Option<i64>,
    /// The instance that settled it (shared state only).
    pub instance: Option<String>,
    /// Why it was dead-lettered or skipped; for a delivered event, the last
    /// failure before the success.
    pub detail: Option<String>,
    /// Still in the outbox: its failed attempts and the last error so far.
    pub waiting: Option<(i64, Option<String>)>,
}

/// Since when the journal holds everything the poller fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSpan {
    /// The first daemon start with the journal on (after it was last off).
    pub started_at: Timestamp,
    /// Rows fetched before this were pruned (the retention).
    pub pruned_before: Option<Timestamp>,
    /// The journal is off (`[journal] retention = "0"`) since then.
    pub off_since: Option<Timestamp>,
}

impl JournalSpan {
    /// Everything fetched from here on is in the journal (while it is on).
    pub fn holds_from(&self) -> Timestamp {
        self.pruned_before
            .map_or(self.started_at, |p| p.max(self.started_at))
    }
}

/// What `trace` looks for; every given part must match.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    pub event: Option<String>,
    /// A resource id or the start of one (any case).
    pub resource: Option<String>,
    pub correlation: Option<String>,
    pub caller: Option<String>,
    pub operation: Option<String>,
    /// The event's `eventTimestamp` range.
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub limit: i64,
}

/// A parameter of the trace filter, for either backend to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Int(i64),
}

/// A journal row `j` and its latest outcome `x`, if it has one (the
/// outcome settled last; a row settled in place by an earlier build of this
/// cycle has none, and its own columns say the same).
pub const OUTCOME_FROM: &str = "journal j LEFT JOIN journal_outcome x ON x.journal_id = j.id
    AND x.settled_at_ns = (SELECT max(l.settled_at_ns) FROM journal_outcome l
                           WHERE l.journal_id = j.id)";

/// The attempts, instance and detail of [`OUTCOME_FROM`]'s latest outcome
/// (or of the row itself), in that order.
pub const OUTCOME_KEPT: &str = "COALESCE(x.attempts, j.attempts),
    COALESCE(x.instance, j.instance), COALESCE(x.detail, j.detail)";

/// The columns `trace` reads, in [`Story`]'s order (`o` is the outbox row
/// of a queued event). An event queued again after it was dead-lettered
/// (outcome `queued`) is not settled, and its status is the one it had.
fn story_columns() -> String {
    format!(
        "j.subscription_id, j.event_data_id, j.event_ts_ns,
    j.submission_ts_ns, j.fetched_at_ns, j.status, j.resource_id, j.operation, j.caller,
    j.correlation_id, COALESCE(x.fate, j.fate),
    CASE WHEN x.fate = 0 THEN NULL ELSE COALESCE(x.settled_at_ns, j.settled_at_ns) END,
    COALESCE(x.http_status, j.http_status), {OUTCOME_KEPT}, o.attempts, o.last_error"
    )
}

/// [`OUTCOME_FROM`] and the outbox row of a queued event, by the outbox's
/// own index.
fn story_from() -> String {
    format!(
        "{OUTCOME_FROM} LEFT JOIN outbox o ON COALESCE(x.fate, j.fate) = 0
    AND o.subscription_id = j.subscription_id AND o.event_ts_ns = j.event_ts_ns
    AND o.event_data_id = j.event_data_id"
    )
}

/// The whole trace statement, parameters written by `mark(n)` (`?n` for
/// SQLite, `$n` for PostgreSQL): text matches are case-insensitive (Azure's
/// ids are), the resource matches by prefix.
pub fn trace_sql(q: &TraceQuery, mark: impl Fn(usize) -> String) -> (String, Vec<Param>) {
    let mut clauses = Vec::new();
    let mut params = Vec::new();
    let mut add = |clause: &str, p: Param| {
        params.push(p);
        clauses.push(clause.replace("{}", &mark(params.len())));
    };
    if let Some(e) = &q.event {
        add("j.event_data_id = {}", Param::Text(e.trim().to_string()));
    }
    if let Some(r) = &q.resource {
        let prefix = like_escape(&r.trim().to_lowercase());
        add(
            "lower(j.resource_id) LIKE {} ESCAPE '\\'",
            Param::Text(format!("{prefix}%")),
        );
    }
    for (column, value) in [
        ("correlation_id", &q.correlation),
        ("caller", &q.caller),
        ("operation", &q.operation),
    ] {
        if let Some(v) = value {
            add(
                &format!("lower(j.{column}) = {{}}"),
                Param::Text(v.trim().to_lowercase()),
            );
        }
    }
    if let Some(t) = q.since {
        add("j.event_ts_ns >= {}", Param::Int(crate::event::to_nanos(t)));
    }
    if let Some(t) = q.until {
        add("j.event_ts_ns <= {}", Param::Int(crate::event::to_nanos(t)));
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    params.push(Param::Int(q.limit));
    let sql = format!(
        "SELECT {} FROM {} {filter} ORDER BY j.event_ts_ns, j.id LIMIT {}",
        story_columns(),
        story_from(),
        mark(params.len())
    );
    (sql, params)
}

/// `LIKE` wildcards taken literally (the escape character is `\`).
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_numbers_its_parameters_and_escapes_wildcards() {
        let q = TraceQuery {
            resource: Some("/Subscriptions/S/resourceGroups/rg_1".into()),
            caller: Some("Ann@Example.com".into()),
            limit: 10,
            ..TraceQuery::default()
        };
        let (sql, params) = trace_sql(&q, |n| format!("${n}"));
        assert!(sql.contains("lower(j.resource_id) LIKE $1 ESCAPE '\\'"));
        assert!(sql.contains("lower(j.caller) = $2"));
        assert!(sql.ends_with("LIMIT $3"));
        assert_eq!(
            params,
            vec![
                Param::Text("/subscriptions/s/resourcegroups/rg\\_1%".into()),
                Param::Text("ann@example.com".into()),
                Param::Int(10)
            ]
        );
    }

    #[test]
    fn the_span_starts_at_the_later_of_start_and_pruning() {
        let t = |s: &str| crate::event::parse_timestamp(s).unwrap();
        let mut span = JournalSpan {
            started_at: t("2026-01-02T00:00:00Z"),
            pruned_before: Some(t("2026-01-01T00:00:00Z")),
            off_since: None,
        };
        assert_eq!(span.holds_from(), t("2026-01-02T00:00:00Z"));
        span.pruned_before = Some(t("2026-01-03T00:00:00Z"));
        assert_eq!(span.holds_from(), t("2026-01-03T00:00:00Z"));
    }
}
