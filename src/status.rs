//! `status` and `dead-letters`: read (and for dead letters, change) the state
//! next to running daemons. SQLite's WAL lets them read while the daemon
//! writes; PostgreSQL is shared anyway. They never create or migrate a
//! database. On PostgreSQL, `status` also shows which instance holds each
//! subscription's lease, and the instances with their host and pid. It shows
//! the limit of ARM reads in flight each daemon last published (their own
//! measurement, which no other process can see).

use std::path::Path;

use chrono::Utc;
use serde::Serialize;

use crate::config::{Config, ProcessEnv, StateConfig};
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
    /// The instance holding the subscription's lease (PostgreSQL only).
    pub lease_holder: Option<String>,
    pub lease_expires: Option<String>,
    /// The lease is unexpired.
    pub lease_held: bool,
}

async fn open(config_path: &Path) -> Result<(Config, Store), StatusError> {
    let config = Config::load(config_path, &ProcessEnv)?;
    if let StateConfig::Sqlite(path) = &config.state
        && !path.exists()
    {
        return Err(StatusError::NoState(path.display().to_string()));
    }
    let store = Store::open_existing(&config.state).await?;
    Ok((config, store))
}

/// What `status` shows: every subscription, and the instances sharing the state.
#[derive(Debug, Serialize)]
pub struct Status {
    pub subscriptions: Vec<SubscriptionStatus>,
    /// Empty on SQLite.
    pub instances: Vec<InstanceStatus>,
    /// Empty when unknown: no daemon of this build has run on the state yet.
    pub reads: Vec<ReadLimitStatus>,
}

/// The limit of ARM reads (polls) in flight, as a daemon last published it.
#[derive(Debug, Serialize)]
pub struct ReadLimitStatus {
    /// The instance (PostgreSQL only).
    pub instance: Option<String>,
    pub limit: i64,
    pub cap: i64,
    pub in_flight: i64,
    pub waiting: i64,
    pub polls_per_second: f64,
    pub poll_seconds: f64,
    /// What sets the limit: `demand`, `cap` or `throttled`.
    pub bound: String,
    pub noted: String,
}

#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub instance: String,
    pub host: String,
    pub pid: i64,
    pub started: String,
    pub heartbeat_expires: String,
    pub live: bool,
    /// Subscriptions whose lease it holds (unexpired).
    pub holds: usize,
}

pub async fn collect(config_path: &Path) -> Result<Status, StatusError> {
    let (config, store) = open(config_path).await?;
    let states = store.states().await?;
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
    let instances = store
        .instances()
        .await?
        .into_iter()
        .map(|i| InstanceStatus {
            holds: out
                .iter()
                .filter(|r| r.lease_holder.as_deref() == Some(i.id.as_str()) && r.lease_held)
                .count(),
            instance: i.id,
            host: i.host,
            pid: i.pid,
            started: rfc3339(i.started_at),
            heartbeat_expires: rfc3339(i.expires_at),
            live: i.live,
        })
        .collect();
    let reads = store
        .read_limits()
        .await?
        .into_iter()
        .map(|n| ReadLimitStatus {
            instance: n.instance,
            limit: n.limit,
            cap: n.cap,
            in_flight: n.in_flight,
            waiting: n.waiting,
            polls_per_second: n.arrivals_per_second,
            poll_seconds: n.hold_seconds,
            bound: n.bound,
            noted: rfc3339(n.noted_at),
        })
        .collect();
    Ok(Status {
        subscriptions: out,
        instances,
        reads,
    })
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
        lease_holder: st.and_then(|s| s.lease.as_ref()).map(|l| l.holder.clone()),
        lease_expires: st
            .and_then(|s| s.lease.as_ref())
            .map(|l| rfc3339(l.expires_at)),
        lease_held: st
            .and_then(|s| s.lease.as_ref())
            .is_some_and(|l| l.expires_at > now),
    }
}

pub fn render_table(status: &Status) -> String {
    let rows = &status.subscriptions;
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
    out.push_str(&render_reads(&status.reads));
    if !status.instances.is_empty() {
        out.push_str(&format!(
            "\n{:<34} {:<24} {:>8} {:<21} {:>5} {}\n",
            "INSTANCE", "HOST", "PID", "STARTED", "HOLDS", "STATE"
        ));
        for i in &status.instances {
            out.push_str(&format!(
                "{:<34} {:<24} {:>8} {:<21} {:>5} {}\n",
                i.instance,
                i.host,
                i.pid,
                i.started,
                i.holds,
                if i.live { "live" } else { "gone" }
            ));
        }
        out.push_str(&format!(
            "\n{:<38} {:<34} {}\n",
            "SUBSCRIPTION", "LEASE HOLDER", "LEASE EXPIRES"
        ));
        for r in rows {
            out.push_str(&format!(
                "{:<38} {:<34} {}\n",
                r.subscription,
                match (&r.lease_holder, r.lease_held) {
                    (Some(h), true) => h.clone(),
                    (Some(h), false) => format!("{h} (expired)"),
                    (None, _) => "-".into(),
                },
                r.lease_expires.as_deref().unwrap_or("-")
            ));
        }
    }
    out
}

/// The limit of polls in flight: what it is, its cap, and what sets it.
fn render_reads(reads: &[ReadLimitStatus]) -> String {
    if reads.is_empty() {
        return "\nARM reads in flight: unknown (no daemon of this version has published its limit yet)\n"
            .into();
    }
    let mut out = format!(
        "\n{:<34} {:>9} {:>6} {:>5} {:>7}  {:<9} {:>7} {:>7}  {}\n",
        "READS (POLLS IN FLIGHT)",
        "IN FLIGHT",
        "LIMIT",
        "CAP",
        "WAITING",
        "SET BY",
        "POLLS/S",
        "TAKE S",
        "NOTED"
    );
    for r in reads {
        out.push_str(&format!(
            "{:<34} {:>9} {:>6} {:>5} {:>7}  {:<9} {:>7.1} {:>7.2}  {}\n",
            r.instance.as_deref().unwrap_or("this daemon"),
            r.in_flight,
            r.limit,
            r.cap,
            r.waiting,
            r.bound,
            r.polls_per_second,
            r.poll_seconds,
            r.noted
        ));
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

pub async fn dead_letters(config_path: &Path) -> Result<Vec<DeadLetterRow>, StatusError> {
    let (_, store) = open(config_path).await?;
    Ok(store
        .dead_letters()
        .await?
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
pub async fn act_on_dead_letters(
    config_path: &Path,
    numbers: Option<&[i64]>,
    retry: bool,
) -> Result<usize, StatusError> {
    let (_, store) = open(config_path).await?;
    let numbers = numbers.map(<[i64]>::to_vec);
    Ok(if retry {
        store.retry_dead_letters(numbers).await?
    } else {
        store.drop_dead_letters(numbers).await?
    })
}
