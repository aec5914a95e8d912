//! `status` and `dead-letters`: read (and for dead letters, change) the state
//! database next to a running daemon. SQLite's WAL lets them read while the
//! daemon writes; they never create or migrate a database.

use std::path::Path;

use chrono::Utc;
use serde::Serialize;

use crate::config::{Config, ProcessEnv};
use crate::event::{Timestamp, rfc3339};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("no state database at {0} yet: the poller has not run with this configuration")]
    NoState(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Serialize)]
pub struct SubscriptionStatus {
    pub subscription: String,
    pub name: Option<String>,
    /// Not in the configuration any more (its events may still be queued).
    pub configured: bool,
    pub watermark: Option<String>,
    pub lag_seconds: Option<i64>,
    pub last_poll: Option<String>,
    pub last_result: Option<String>,
    pub outbox: i64,
    pub dead_letters: i64,
    /// `detect`, `true` (refused) or `false` (the operator's override).
    pub event_handlers: Option<String>,
    /// The daemon's last event handler check: `clear`, `paused` or `unknown`.
    pub detection: Option<String>,
    pub detection_detail: Option<String>,
    pub detection_checked: Option<String>,
}

fn open(config_path: &Path) -> Result<(Config, Store), StatusError> {
    let config = Config::load(config_path, &ProcessEnv)?;
    if !config.state_path.exists() {
        return Err(StatusError::NoState(
            config.state_path.display().to_string(),
        ));
    }
    let store = Store::open_existing(&config.state_path)?;
    Ok((config, store))
}

pub fn collect(config_path: &Path) -> Result<Vec<SubscriptionStatus>, StatusError> {
    let (config, store) = open(config_path)?;
    let states = store.states()?;
    let now = Utc::now();
    let mut out: Vec<SubscriptionStatus> = Vec::new();
    for sub in &config.subscriptions {
        let st = states.iter().find(|s| s.subscription_id == sub.id.as_str());
        let mut r = row(sub.id.as_str(), sub.name.clone(), true, st, now);
        r.event_handlers = Some(
            match sub.event_handlers {
                crate::config::EventHandlers::Detect => "detect",
                crate::config::EventHandlers::Active => "true",
                crate::config::EventHandlers::Absent => "false",
            }
            .to_string(),
        );
        out.push(r);
    }
    for st in &states {
        if !config
            .subscriptions
            .iter()
            .any(|s| s.id.as_str() == st.subscription_id)
        {
            out.push(row(&st.subscription_id, None, false, Some(st), now));
        }
    }
    Ok(out)
}

fn row(
    id: &str,
    name: Option<String>,
    configured: bool,
    st: Option<&crate::store::SubscriptionState>,
    now: Timestamp,
) -> SubscriptionStatus {
    let watermark = st.and_then(|s| s.cursor).map(|c| c.watermark);
    SubscriptionStatus {
        subscription: id.to_string(),
        name,
        configured,
        watermark: watermark.map(rfc3339),
        lag_seconds: watermark.map(|w| (now - w).num_seconds().max(0)),
        last_poll: st.and_then(|s| s.last_poll_at).map(rfc3339),
        last_result: st.and_then(|s| s.last_result.clone()),
        outbox: st.map_or(0, |s| s.outbox),
        dead_letters: st.map_or(0, |s| s.dead_letters),
        event_handlers: None,
        detection: st
            .and_then(|s| s.detection.as_ref())
            .map(|d| d.state.clone()),
        detection_detail: st
            .and_then(|s| s.detection.as_ref())
            .map(|d| d.detail.clone()),
        detection_checked: st
            .and_then(|s| s.detection.as_ref())
            .map(|d| rfc3339(d.checked_at)),
    }
}

pub fn render_table(rows: &[SubscriptionStatus]) -> String {
    let mut out = format!(
        "{:<38} {:<16} {:<21} {:>8} {:<21} {:>7} {:>5}  {:<9} {}\n",
        "SUBSCRIPTION",
        "NAME",
        "WATERMARK",
        "LAG",
        "LAST POLL",
        "OUTBOX",
        "DEAD",
        "HANDLERS",
        "RESULT"
    );
    let mut notes = String::new();
    for r in rows {
        let lag = r
            .lag_seconds
            .map(|s| {
                humantime::format_duration(std::time::Duration::from_secs(s.max(0) as u64))
                    .to_string()
            })
            .unwrap_or_else(|| "-".into());
        let name = match (&r.name, r.configured) {
            (Some(n), _) => n.clone(),
            (None, true) => "-".into(),
            (None, false) => "(not configured)".into(),
        };
        let handlers = match (r.event_handlers.as_deref(), r.detection.as_deref()) {
            (Some("true"), _) => "refused".to_string(),
            (Some("false"), _) => "override".to_string(),
            (_, Some(state)) => state.to_string(),
            _ => "-".to_string(),
        };
        if r.detection.as_deref() == Some("paused")
            && r.event_handlers.as_deref() == Some("detect")
            && let Some(d) = &r.detection_detail
        {
            notes.push_str(&format!(
                "{}: PAUSED since the check at {}: {d}\n",
                r.subscription,
                r.detection_checked.as_deref().unwrap_or("?")
            ));
        }
        out.push_str(&format!(
            "{:<38} {:<16} {:<21} {:>8} {:<21} {:>7} {:>5}  {:<9} {}\n",
            r.subscription,
            name,
            r.watermark.as_deref().unwrap_or("never polled"),
            lag,
            r.last_poll.as_deref().unwrap_or("-"),
            r.outbox,
            r.dead_letters,
            handlers,
            r.last_result.as_deref().unwrap_or("-"),
        ));
    }
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes);
    }
    out
}

#[derive(Debug, Serialize)]
pub struct DeadLetterRow {
    pub number: i64,
    pub subscription: String,
    pub event_data_id: String,
    pub failed_at: String,
    pub reason: String,
}

pub fn dead_letters(config_path: &Path) -> Result<Vec<DeadLetterRow>, StatusError> {
    let (_, store) = open(config_path)?;
    Ok(store
        .dead_letters()?
        .into_iter()
        .map(|d| DeadLetterRow {
            number: d.seq,
            subscription: d.subscription_id,
            event_data_id: d.event_data_id,
            failed_at: rfc3339(d.failed_at),
            reason: d.reason,
        })
        .collect())
}

pub fn render_dead_letters(rows: &[DeadLetterRow]) -> String {
    if rows.is_empty() {
        return "no dead letters\n".into();
    }
    let mut out = format!(
        "{:>6}  {:<38} {:<40} {:<21} {}\n",
        "NUMBER", "SUBSCRIPTION", "EVENT DATA ID", "FAILED AT", "REASON"
    );
    for r in rows {
        out.push_str(&format!(
            "{:>6}  {:<38} {:<40} {:<21} {}\n",
            r.number, r.subscription, r.event_data_id, r.failed_at, r.reason
        ));
    }
    out
}

/// Retries (`retry = true`) or drops dead letters; `None` means all.
pub fn act_on_dead_letters(
    config_path: &Path,
    numbers: Option<&[i64]>,
    retry: bool,
) -> Result<usize, StatusError> {
    let (_, store) = open(config_path)?;
    Ok(if retry {
        store.retry_dead_letters(numbers)?
    } else {
        store.drop_dead_letters(numbers)?
    })
}
