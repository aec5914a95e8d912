//! `trace`: "did Guardrails get it?" Finds events in the delivery journal
//! (by eventDataId, resource id or its prefix, correlation id, caller,
//! operation, within an `eventTimestamp` range) and tells each one's story:
//! fetched when, then delivered (when, HTTP status, attempts, by which
//! instance), dead-lettered (why), skipped (its status is not forwarded)
//! or still queued (failed attempts so far). Like `status`, it runs beside
//! a running daemon and never creates or migrates anything.
//!
//! What the journal cannot know is said, not left to silence: a state
//! without a journal (written before it), a range that starts before the
//! journal does or before its retention, a journal turned off.

use std::path::Path;

use serde::Serialize;

use crate::config::{Config, ProcessEnv, StateConfig};
use crate::event::{Timestamp, format_ticks, parse_timestamp, rfc3339};
use crate::status::StatusError;
use crate::store::Store;
use crate::store::journal::{Fate, JournalSpan, Story, TraceQuery};

/// What `trace` found, and what it could not know.
#[derive(Debug)]
pub struct Trace {
    pub events: Vec<Story>,
    /// Lines about what the journal does not hold (empty when it holds the
    /// whole range asked about).
    pub notes: Vec<String>,
    /// More events matched than `--limit`.
    pub truncated: bool,
}

/// Parses `--since`/`--until`: a duration back from `now` ("2h", "3days")
/// or an RFC 3339 time.
pub fn parse_instant(s: &str, now: Timestamp) -> Option<Timestamp> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) => now.checked_sub_signed(chrono::Duration::from_std(d).ok()?),
        Err(_) => parse_timestamp(s),
    }
}

/// Reads the journal for `q` (its `limit` is what is shown; one more is read
/// to tell whether there were more).
pub async fn run(config_path: &Path, mut q: TraceQuery) -> Result<Trace, StatusError> {
    let config = Config::load(config_path, &ProcessEnv)?;
    if let StateConfig::Sqlite(path) = &config.state
        && !path.exists()
    {
        return Err(StatusError::NoState(path.display().to_string()));
    }
    let store = Store::open_existing(&config.state).await?;
    let span = store.journal_span().await?;
    let limit = q.limit;
    q.limit = limit.saturating_add(1);
    let mut events = match span {
        Some(_) => store.trace(q.clone()).await?,
        None => Vec::new(),
    };
    let truncated = i64::try_from(events.len()).unwrap_or(i64::MAX) > limit;
    events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let notes = coverage(
        span.as_ref(),
        &q,
        !events.is_empty(),
        config.journal.retention,
        chrono::Utc::now(),
    );
    Ok(Trace {
        events,
        notes,
        truncated,
    })
}

/// What the journal could not answer about `q`'s range.
fn coverage(
    span: Option<&JournalSpan>,
    q: &TraceQuery,
    found: bool,
    retention: Option<std::time::Duration>,
    now: Timestamp,
) -> Vec<String> {
    let from = q.since.map_or("the start".to_string(), rfc3339);
    let to = rfc3339(q.until.unwrap_or(now));
    let Some(span) = span else {
        return vec![format!(
            "nothing known between {from} and {to}: this state has no delivery journal (it was written by a build without one); the journal starts when a daemon of this build starts with it"
        )];
    };
    let mut notes = Vec::new();
    let holds = span.holds_from();
    let pruned = span.pruned_before.is_some_and(|p| p > span.started_at);
    let why = if pruned {
        let kept = retention.map_or("the journal is off".to_string(), |r| {
            format!(
                "[journal] retention = \"{}\"",
                humantime::format_duration(r)
            )
        });
        format!(
            "that is before the retention ({kept}): the journal holds what was fetched since {}",
            rfc3339(holds)
        )
    } else {
        format!("the journal starts at {}", rfc3339(holds))
    };
    let before_journal = q.since.is_none_or(|s| s < holds);
    if !found {
        if q.until.is_some_and(|u| u < holds) {
            notes.push(format!("nothing known between {from} and {to}: {why}"));
        } else if before_journal {
            let seen_from = q.since.map_or(holds, |s| s.max(holds));
            notes.push(format!(
                "not seen between {} and {to}; before that nothing is known: {why}",
                rfc3339(seen_from)
            ));
        } else {
            notes.push(format!("not seen between {from} and {to}"));
        }
    } else if q.since.is_some_and(|s| s < holds) {
        notes.push(format!(
            "events before {} may be missing: {why}",
            rfc3339(holds)
        ));
    }
    if let Some(off) = span.off_since {
        notes.push(format!(
            "the journal is off since {} ([journal] retention = \"0\"): nothing fetched after that is journaled",
            rfc3339(off)
        ));
    }
    notes
}

/// One event as `trace --json` prints it (one JSON object a line).
#[derive(Debug, Serialize)]
pub struct TraceLine<'a> {
    pub event_data_id: &'a str,
    pub subscription: &'a str,
    pub event_timestamp: String,
    pub submission_timestamp: Option<String>,
    pub status: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub caller: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub fetched: String,
    /// `delivered`, `dead-lettered`, `skipped` or `queued`.
    pub fate: &'static str,
    pub settled: Option<String>,
    pub http_status: Option<i64>,
    pub attempts: Option<i64>,
    pub instance: Option<&'a str>,
    pub detail: Option<&'a str>,
    /// Still queued: the delivery attempts that failed so far.
    pub failed_attempts: Option<i64>,
    pub last_error: Option<&'a str>,
    /// The whole story in words, as the line format prints it.
    pub story: String,
}

impl<'a> TraceLine<'a> {
    pub fn of(s: &'a Story) -> TraceLine<'a> {
        TraceLine {
            event_data_id: &s.event_data_id,
            subscription: &s.subscription_id,
            event_timestamp: format_ticks(s.event_timestamp),
            submission_timestamp: s.submission_timestamp.map(format_ticks),
            status: s.status.as_deref(),
            operation: s.operation.as_deref(),
            resource_id: s.resource_id.as_deref(),
            caller: s.caller.as_deref(),
            correlation_id: s.correlation_id.as_deref(),
            fetched: rfc3339(s.fetched_at),
            fate: s.fate.as_str(),
            settled: s.settled_at.map(rfc3339),
            http_status: s.http_status,
            attempts: s.attempts,
            instance: s.instance.as_deref(),
            detail: s.detail.as_deref(),
            failed_attempts: s.waiting.as_ref().map(|(n, _)| *n),
            last_error: s.waiting.as_ref().and_then(|(_, e)| e.as_deref()),
            story: story(s),
        }
    }
}

/// What happened to the event after it was fetched, in words.
pub fn story(s: &Story) -> String {
    let mut out = format!("fetched {}", rfc3339(s.fetched_at));
    if let Some(sub) = s.submission_timestamp {
        out.push_str(&format!(" (submitted {})", rfc3339(sub)));
    }
    let attempts = |n: Option<i64>| match n {
        Some(1) => "1 attempt".to_string(),
        Some(n) => format!("{n} attempts"),
        None => "attempts unknown".to_string(),
    };
    let at = s.settled_at.map(rfc3339).unwrap_or_default();
    match s.fate {
        Fate::Delivered => {
            out.push_str(&format!(", delivered {at}"));
            if let Some(code) = s.http_status {
                out.push_str(&format!(" (HTTP {code}, {})", attempts(s.attempts)));
            }
            if let Some(last) = &s.detail {
                out.push_str(&format!("; the last failure before: {last}"));
            }
            if let Some(i) = &s.instance {
                out.push_str(&format!("; by instance {i}"));
            }
        }
        Fate::DeadLettered => {
            let why = s.detail.as_deref().unwrap_or("rejected");
            out.push_str(&format!(
                ", dead-lettered {at}: {why} ({}); see `dead-letters list`",
                attempts(s.attempts)
            ));
        }
        Fate::Skipped => {
            let status = s.status.as_deref().unwrap_or("(none)");
            out.push_str(&format!(
                ", skipped: its status {status} is not forwarded (the subscription's statuses); never sent"
            ));
        }
        Fate::Queued => match &s.waiting {
            Some((0, _)) => out.push_str(
                ", queued: not delivered yet, no failed attempt recorded (a POST in flight when a poller stopped is sent again at its next start)",
            ),
            Some((n, last)) => out.push_str(&format!(
                ", queued: not delivered yet, {n} failed attempt(s), the last: {}",
                last.as_deref().unwrap_or("unknown")
            )),
            None => out.push_str(
                ", queued, and no longer in the outbox: settled while the journal was off or by a build without it",
            ),
        },
    }
    out
}

/// One event on one line: when, fate, ids, what it was, then its story.
pub fn render_line(s: &Story) -> String {
    let mut out = format!(
        "{} {} {} subscription={}",
        format_ticks(s.event_timestamp),
        s.fate.as_str(),
        s.event_data_id,
        s.subscription_id
    );
    for (key, value) in [
        ("status", &s.status),
        ("operation", &s.operation),
        ("resource", &s.resource_id),
        ("caller", &s.caller),
        ("correlation", &s.correlation_id),
    ] {
        if let Some(v) = value {
            out.push_str(&format!(" {key}={v}"));
        }
    }
    out.push_str(": ");
    out.push_str(&story(s));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        parse_timestamp(s).unwrap()
    }

    #[test]
    fn a_range_before_the_journal_is_not_known() {
        let span = JournalSpan {
            started_at: t("2026-01-02T00:00:00Z"),
            pruned_before: None,
            off_since: None,
        };
        let q = TraceQuery {
            since: Some(t("2026-01-01T00:00:00Z")),
            until: Some(t("2026-01-01T12:00:00Z")),
            ..TraceQuery::default()
        };
        let notes = coverage(Some(&span), &q, false, None, t("2026-01-03T00:00:00Z"));
        assert_eq!(
            notes,
            [
                "nothing known between 2026-01-01T00:00:00Z and 2026-01-01T12:00:00Z: the journal starts at 2026-01-02T00:00:00Z"
            ]
        );
    }

    #[test]
    fn a_pruned_range_says_retention() {
        let span = JournalSpan {
            started_at: t("2026-01-01T00:00:00Z"),
            pruned_before: Some(t("2026-01-10T00:00:00Z")),
            off_since: None,
        };
        let q = TraceQuery {
            since: Some(t("2026-01-05T00:00:00Z")),
            ..TraceQuery::default()
        };
        let week = std::time::Duration::from_secs(7 * 86400);
        let notes = coverage(
            Some(&span),
            &q,
            false,
            Some(week),
            t("2026-01-17T00:00:00Z"),
        );
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("not seen between 2026-01-10T00:00:00Z and 2026-01-17T00:00:00Z; before that nothing is known: that is before the retention ([journal] retention = \"7days\")"),
            "{notes:?}"
        );
    }
}
