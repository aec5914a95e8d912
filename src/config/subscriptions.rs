//! `[defaults]` and `[[subscription]]`: the subscriptions polled, each with
//! its schedule, credential, statuses and `event_handlers`, any of which it
//! may inherit from `[defaults]`. Also the types that carry their
//! invariants: [`SubscriptionId`] (a GUID, validated once) and [`Schedule`]
//! (a window longer than the interval).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::check::Checker;

/// Azure keeps activity log entries for 90 days; older start times get HTTP 400.
pub const RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// `[defaults]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Defaults {
    pub(super) credential: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) window: Option<Spanned<String>>,
    pub(super) statuses: Option<Spanned<Vec<String>>>,
    /// `"detect"`, `true` or `false`; checked in validation, for a message
    /// better than serde's.
    pub(super) event_handlers: Option<Spanned<toml::Value>>,
}

/// One `[[subscription]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Subscription {
    pub(super) id: Spanned<String>,
    pub(super) name: Option<String>,
    /// As in [`Defaults`].
    pub(super) event_handlers: Option<Spanned<toml::Value>>,
    pub(super) credential: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) window: Option<Spanned<String>>,
    pub(super) statuses: Option<Spanned<Vec<String>>>,
}

/// A subscription id: a GUID, validated once, kept in lower case.
///
/// Shared, not copied: the supervisor, readiness and the leases each key a
/// map of every subscription by it, and a copy of the string in each was
/// about 0.5 MiB at 10,000 subscriptions: they hold [`SubscriptionId::shared`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(Arc<str>);

impl SubscriptionId {
    pub fn parse(s: &str) -> Option<Self> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        let ok = groups.len() == 5
            && groups
                .iter()
                .zip(lens)
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        ok.then(|| Self(s.to_ascii_lowercase().into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The id itself, shared (a reference count, not a copy).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How often a subscription is polled and how far back each poll looks.
/// Invariant: `window > interval >= 1s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    interval: Duration,
    window: Duration,
}

impl Schedule {
    pub fn new(interval: Duration, window: Duration) -> Result<Self, String> {
        if interval < Duration::from_secs(1) {
            return Err(format!(
                "interval must be at least 1s, got {}",
                humantime::format_duration(interval)
            ));
        }
        if window <= interval {
            return Err(format!(
                "window ({}) must be longer than interval ({}); at least twice is recommended",
                humantime::format_duration(window),
                humantime::format_duration(interval)
            ));
        }
        if window >= RETENTION {
            return Err("window must be shorter than the activity log's 90-day retention".into());
        }
        Ok(Self { interval, window })
    }
    pub fn interval(&self) -> Duration {
        self.interval
    }
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// Whether Guardrails event handlers (or Guardrails' own poller) feed a
/// subscription: `"detect"` asks Azure and Guardrails, `true` and `false` are
/// the operator's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventHandlers {
    /// Observe it: Azure's action group and alerts, and Guardrails' policies
    /// when `[guardrails.api]` is configured.
    #[default]
    Detect,
    /// Declared active: the poller refuses the subscription.
    Active,
    /// Declared absent: no detection; a warning at every start.
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    pub id: SubscriptionId,
    pub name: Option<String>,
    pub event_handlers: EventHandlers,
    /// Where `event_handlers` is set, as (line, column), for messages.
    pub event_handlers_at: Option<(usize, usize)>,
    pub schedule: Schedule,
    /// Shared by every subscription that names it, as `statuses` are by every
    /// one that inherits them: 10,000 copies of each added up.
    pub credential: Arc<str>,
    pub statuses: Arc<[String]>,
}

impl SubscriptionConfig {
    /// `name (id)` or the id alone, for logs.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", self.id),
            None => self.id.to_string(),
        }
    }
    pub fn keeps(&self, status: &str) -> bool {
        self.statuses.iter().any(|s| s.eq_ignore_ascii_case(status))
    }
}

/// `[defaults]`, its values resolved (each `None` when invalid), kept with
/// what was written so that a subscription's problem can point at the
/// default it inherited.
struct Inherited<'r> {
    written: &'r Defaults,
    interval: Option<Duration>,
    window: Option<Duration>,
    event_handlers: Option<EventHandlers>,
    statuses: Option<Arc<[String]>>,
}

impl<'r> Inherited<'r> {
    fn validate(d: &'r Defaults, ck: &mut Checker<'_>) -> Self {
        let interval = ck.duration_or(&d.interval, "[defaults] interval", Duration::from_secs(60));
        let window = ck.duration_or(&d.window, "[defaults] window", Duration::from_secs(15 * 60));
        let event_handlers = match &d.event_handlers {
            Some(h) => event_handlers(h, ck),
            None => Some(EventHandlers::Detect),
        };
        let statuses = match &d.statuses {
            Some(s) => statuses(s, ck),
            None => Some(Arc::from(["Succeeded".to_string()])),
        };
        Inherited {
            written: d,
            interval,
            window,
            event_handlers,
            statuses,
        }
    }
}

/// `[defaults]` and every `[[subscription]]`: the valid subscriptions (the
/// others' problems are reported). `credentials` are the names defined;
/// `optional`: no subscription is no problem (`import` fills them in).
pub(super) fn validate(
    defaults: &Defaults,
    subscriptions: &[Spanned<Subscription>],
    credentials: &[&str],
    optional: bool,
    ck: &mut Checker<'_>,
) -> Vec<std::sync::Arc<SubscriptionConfig>> {
    let d = Inherited::validate(defaults, ck);
    let credentials: Vec<Arc<str>> = credentials.iter().map(|c| Arc::from(*c)).collect();
    if subscriptions.is_empty() && !ck.unreadable.contains("subscription") && !optional {
        ck.at(ck.end(), "no [[subscription]] configured: add at least one");
    }
    let mut seen_ids = std::collections::HashSet::new();
    let mut out = Vec::new();
    for sub in subscriptions {
        let Some(id) = subscription_id(sub.get_ref(), ck) else {
            continue;
        };
        if !seen_ids.insert(id.clone()) {
            ck.at(
                sub.get_ref().id.span(),
                format!("duplicate subscription id {id}"),
            );
            continue;
        }
        if let Some(s) = validate_one(id, sub, &d, &credentials, ck) {
            out.push(std::sync::Arc::new(s));
        }
    }
    out
}

fn subscription_id(s: &Subscription, ck: &mut Checker<'_>) -> Option<SubscriptionId> {
    let id = SubscriptionId::parse(s.id.get_ref().trim());
    if id.is_none() {
        ck.at(
            s.id.span(),
            format!(
                "subscription id {:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
                s.id.get_ref()
            ),
        );
    }
    id
}

/// One subscription, its id already checked.
fn validate_one(
    id: SubscriptionId,
    sub: &Spanned<Subscription>,
    d: &Inherited<'_>,
    credentials: &[Arc<str>],
    ck: &mut Checker<'_>,
) -> Option<SubscriptionConfig> {
    let s = sub.get_ref();
    let schedule = schedule(&id, sub, d, ck);
    let credential = credential(&id, sub, d, credentials, ck);
    let statuses = match &s.statuses {
        Some(v) => statuses(v, ck),
        None => d.statuses.clone(),
    };
    let handlers = match &s.event_handlers {
        Some(h) => event_handlers(h, ck),
        None => d.event_handlers,
    };
    let event_handlers_at = s
        .event_handlers
        .as_ref()
        .or(d.written.event_handlers.as_ref())
        .map(|b| ck.position(b.span().start));
    Some(SubscriptionConfig {
        id,
        name: s.name.clone(),
        event_handlers: handlers?,
        event_handlers_at,
        schedule: schedule?,
        credential: credential?,
        statuses: statuses?,
    })
}

/// Its interval and window, its own or inherited.
fn schedule(
    id: &SubscriptionId,
    sub: &Spanned<Subscription>,
    d: &Inherited<'_>,
    ck: &mut Checker<'_>,
) -> Option<Schedule> {
    let s = sub.get_ref();
    let interval = match &s.interval {
        Some(v) => ck.duration(v, "interval"),
        None => d.interval,
    };
    let window = match &s.window {
        Some(v) => ck.duration(v, "window"),
        None => d.window,
    };
    let (i, w) = (interval?, window?);
    Schedule::new(i, w)
        .map_err(|msg| {
            // Point at the value that is wrong: the interval when it is too
            // short, else the window; the subscription's own value before
            // the [defaults] one.
            let interval_at = s
                .interval
                .as_ref()
                .or(d.written.interval.as_ref())
                .map(|v| v.span());
            let window_at = s
                .window
                .as_ref()
                .or(d.written.window.as_ref())
                .map(|v| v.span());
            let at = if i < Duration::from_secs(1) {
                interval_at.or(window_at)
            } else {
                window_at.or(interval_at)
            };
            ck.at(
                at.unwrap_or(sub.span()),
                format!("subscription {id}: {msg}"),
            );
        })
        .ok()
}

/// The name of its credential, its own or inherited, which must be defined.
fn credential(
    id: &SubscriptionId,
    sub: &Spanned<Subscription>,
    d: &Inherited<'_>,
    credentials: &[Arc<str>],
    ck: &mut Checker<'_>,
) -> Option<Arc<str>> {
    let Some(c) = sub
        .get_ref()
        .credential
        .as_ref()
        .or(d.written.credential.as_ref())
    else {
        ck.at(
            sub.span(),
            format!("subscription {id} names no credential, and [defaults] credential is not set"),
        );
        return None;
    };
    let name = c.get_ref();
    if let Some(known) = credentials.iter().find(|k| ***k == *name.as_str()) {
        return Some(known.clone());
    }
    // Unless its own problem was reported already.
    if !ck.unreadable.contains(&format!("credentials.{name}")) {
        ck.at(
            c.span(),
            format!(
                "unknown credential {name:?} (defined: {})",
                if credentials.is_empty() {
                    "none".into()
                } else {
                    credentials
                        .iter()
                        .map(|c| &**c)
                        .collect::<Vec<&str>>()
                        .join(", ")
                }
            ),
        );
    }
    None
}

fn event_handlers(value: &Spanned<toml::Value>, ck: &mut Checker<'_>) -> Option<EventHandlers> {
    match value.get_ref() {
        toml::Value::Boolean(true) => Some(EventHandlers::Active),
        toml::Value::Boolean(false) => Some(EventHandlers::Absent),
        toml::Value::String(w) if w.eq_ignore_ascii_case("detect") => Some(EventHandlers::Detect),
        other => {
            ck.at(
                value.span(),
                format!("event_handlers must be \"detect\", true or false, got {other}"),
            );
            None
        }
    }
}

fn statuses(value: &Spanned<Vec<String>>, ck: &mut Checker<'_>) -> Option<Arc<[String]>> {
    let list = value.get_ref();
    if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
        ck.at(
            value.span(),
            "statuses must list at least one non-empty status, e.g. [\"Succeeded\"]",
        );
        return None;
    }
    Some(list.iter().map(|s| s.trim().to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_id_must_be_a_guid() {
        assert!(SubscriptionId::parse("00000000-0000-0000-0000-000000000000").is_some());
        assert_eq!(
            SubscriptionId::parse("ABCDEF00-0000-0000-0000-000000000000")
                .map(|s| s.to_string())
                .as_deref(),
            Some("abcdef00-0000-0000-0000-000000000000")
        );
        assert!(SubscriptionId::parse("12345-5645-123a-9867-123b45a6789").is_none());
        assert!(SubscriptionId::parse("0000000g-0000-0000-0000-000000000000").is_none());
    }

    #[test]
    fn schedule_needs_window_longer_than_interval() {
        let s = Duration::from_secs;
        assert!(Schedule::new(s(60), s(900)).is_ok());
        assert!(Schedule::new(s(60), s(60)).is_err());
        assert!(Schedule::new(Duration::from_millis(500), s(60)).is_err());
    }

    /// At 10,000 subscriptions a copy each of the id, the credential's name
    /// and the statuses added up to megabytes: they are shared.
    #[test]
    fn subscriptions_share_their_id_credential_and_statuses() {
        let c = super::super::sample(&[
            "00000000-0000-4000-8000-000000000001",
            "00000000-0000-4000-8000-000000000002",
        ]);
        let [a, b] = &c.subscriptions[..] else {
            panic!("two subscriptions: {:?}", c.subscriptions);
        };
        assert!(Arc::ptr_eq(&a.credential, &b.credential));
        assert!(Arc::ptr_eq(&a.statuses, &b.statuses));
        assert!(a.keeps("succeeded") && !a.keeps("Failed"));
        // A copy of the id is a reference to the same text.
        assert!(Arc::ptr_eq(&b.id.clone().shared(), &b.id.shared()));
        assert_eq!(b.id.as_str(), "00000000-0000-4000-8000-000000000002");
    }
}
