//! Knowing, not trusting, that nothing else feeds a subscription.
//!
//! Two things would send Guardrails every event a second time: its **event
//! handlers** (an Action Group `turbot_azure_event_handler_action_group` in the
//! resource group `turbot_rg`, with Activity Log Alerts routing to it) and its
//! own **event poller** (policy `Azure > Turbot > Event Poller`, `Enabled` by
//! default). The first is read from Azure with the poller's own credential;
//! both policies are read from the Guardrails GraphQL API when
//! `[guardrails.api]` is configured.
//!
//! A [`Detection`] is what was found for one subscription; its [`Verdict`] is
//! `Live` (something else feeds it), `Clear`, or `Unknown` (a check could not
//! be made). At start a live subscription is a refusal (`app.rs`); while the
//! daemon runs, [`run`] re-checks every `[detection] interval` (and at once
//! after a reload), pausing a live subscription and resuming it when it is
//! clear again. The paused set is a `watch` channel that every subscription
//! task follows (`scheduler.rs`).
//!
//! The action group's webhook URI carries a Guardrails token: it is never
//! deserialized, so it cannot reach a log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;

use crate::azure::{ActivityLogClient, AzureError, ReadBudget, TokenSource};
use crate::config::{Config, EventHandlers, OnUnknown, SubscriptionConfig};
use crate::guardrails_api::{
    ApiError, EVENT_HANDLERS_POLICY, EVENT_POLLER_POLICY, GuardrailsApi, PolicyValue,
};
use crate::poll::Heartbeat;

pub const HANDLER_RESOURCE_GROUP: &str = "turbot_rg";
pub const HANDLER_ACTION_GROUP: &str = "turbot_azure_event_handler_action_group";
const ACTION_GROUPS_API: &str = "2023-01-01";
const ALERTS_API: &str = "2020-10-01";
/// Subscriptions checked at the same time: 1,000 subscriptions at 500 ms a
/// call are checked in about half a minute.
const CHECKS_IN_FLIGHT: usize = 32;
/// ARM list pages followed at most.
const MAX_PAGES: usize = 100;

/// What Azure shows of Guardrails' event handlers in one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureHandlers {
    /// No `turbot_rg`: handlers were never deployed, or were removed.
    NoResourceGroup,
    /// `turbot_rg` exists, without the handlers' action group.
    NoActionGroup,
    /// The action group exists but is disabled.
    Disabled { alerts: usize },
    /// The action group is enabled, but no enabled alert routes to it.
    NoAlerts,
    /// Enabled, with this many enabled alerts routing to it.
    Live { alerts: usize },
}

impl AzureHandlers {
    pub fn live(&self) -> bool {
        matches!(self, AzureHandlers::Live { .. })
    }

    pub fn describe(&self) -> String {
        let ag = format!("action group {HANDLER_ACTION_GROUP} in {HANDLER_RESOURCE_GROUP}");
        match self {
            AzureHandlers::NoResourceGroup => format!("no resource group {HANDLER_RESOURCE_GROUP}"),
            AzureHandlers::NoActionGroup => {
                format!("no action group {HANDLER_ACTION_GROUP} in {HANDLER_RESOURCE_GROUP}")
            }
            AzureHandlers::Disabled { alerts } => {
                format!("{ag} is disabled ({} routing to it)", alerts_text(*alerts))
            }
            AzureHandlers::NoAlerts => {
                format!("{ag} is enabled, but no enabled alert routes to it")
            }
            AzureHandlers::Live { alerts } => {
                format!(
                    "{ag} is enabled, {} {} to it",
                    alerts_text(*alerts),
                    if *alerts == 1 { "routes" } else { "route" }
                )
            }
        }
    }
}

fn alerts_text(n: usize) -> String {
    if n == 1 {
        "1 alert".into()
    } else {
        format!("{n} alerts")
    }
}

/// One Guardrails policy's values on a subscription and below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFinding {
    pub title: &'static str,
    pub values: Vec<PolicyValue>,
    /// Whether a value turns the feature on.
    pub on: bool,
}

impl PolicyFinding {
    fn handlers(values: Vec<PolicyValue>) -> Self {
        let on = values.iter().any(|v| {
            v.value
                .as_deref()
                .is_some_and(|t| t.trim_start().starts_with("Enforce: Configured"))
        });
        PolicyFinding {
            title: "Azure > Turbot > Event Handlers",
            values,
            on,
        }
    }

    fn poller(values: Vec<PolicyValue>) -> Self {
        let on = values.iter().any(|v| {
            v.value
                .as_deref()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("Enabled"))
        });
        PolicyFinding {
            title: "Azure > Turbot > Event Poller",
            values,
            on,
        }
    }

    /// `Enabled`, or `Enforce: Configured (East US), Skip (West US)`, or `no value`.
    pub fn value_text(&self) -> String {
        let mut distinct: Vec<String> = Vec::new();
        for v in &self.values {
            let text = match (&v.value, &v.resource) {
                (Some(val), Some(r)) if self.values.len() > 1 => format!("{val} ({r})"),
                (Some(val), _) => val.clone(),
                (None, _) => format!("no value ({})", v.state.as_deref().unwrap_or("unknown")),
            };
            if !distinct.contains(&text) {
                distinct.push(text);
            }
        }
        if distinct.is_empty() {
            "no value (not in the workspace)".into()
        } else {
            distinct.join(", ")
        }
    }

    pub fn describe(&self) -> String {
        format!("Guardrails policy {} = {}", self.title, self.value_text())
    }
}

/// Both policies that matter, read from Guardrails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardrailsFinding {
    pub handlers: PolicyFinding,
    pub poller: PolicyFinding,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("Azure: {0}")]
    Azure(#[from] AzureError),
    #[error("Azure: credential {0:?} is not configured")]
    NoCredential(String),
    #[error("Azure: {what} answered something unreadable: {message}")]
    Malformed { what: &'static str, message: String },
    #[error("Guardrails: {0}")]
    Guardrails(#[from] ApiError),
}

impl DetectError {
    /// A problem a person fixes in the configuration (a bad API key), as
    /// opposed to a service that is down or refuses access.
    pub fn is_config(&self) -> bool {
        match self {
            DetectError::Guardrails(e) => e.is_config(),
            DetectError::NoCredential(_) => true,
            _ => false,
        }
    }
}

/// What was found for one subscription.
#[derive(Debug)]
pub struct Detection {
    pub azure: Result<AzureHandlers, DetectError>,
    /// `None` when `[guardrails.api]` is not configured.
    pub guardrails: Option<Result<GuardrailsFinding, DetectError>>,
}

/// What a detection means for polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing else feeds it; the strings say what was seen.
    Clear(Vec<String>),
    /// Something else feeds it: each string is one thing found, and where.
    Live(Vec<String>),
    /// A check could not be made (and nothing live was found).
    Unknown(Vec<String>),
}

impl Detection {
    pub fn verdict(&self) -> Verdict {
        let mut live = Vec::new();
        let mut clear = Vec::new();
        let mut unknown = Vec::new();
        match &self.azure {
            Ok(a) if a.live() => live.push(a.describe()),
            Ok(a) => clear.push(a.describe()),
            Err(e) => unknown.push(e.to_string()),
        }
        match &self.guardrails {
            None => {}
            Some(Ok(g)) => {
                for p in [&g.handlers, &g.poller] {
                    if p.on {
                        live.push(p.describe());
                    } else {
                        clear.push(p.describe());
                    }
                }
            }
            Some(Err(e)) => unknown.push(e.to_string()),
        }
        if !live.is_empty() {
            Verdict::Live(live)
        } else if !unknown.is_empty() {
            Verdict::Unknown(unknown)
        } else {
            Verdict::Clear(clear)
        }
    }

    /// True when an unknown comes from the configuration (a bad API key).
    pub fn config_problem(&self) -> bool {
        self.azure
            .as_ref()
            .err()
            .is_some_and(DetectError::is_config)
            || self
                .guardrails
                .as_ref()
                .and_then(|g| g.as_ref().err())
                .is_some_and(DetectError::is_config)
    }
}

#[derive(Deserialize)]
struct List<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "nextLink")]
    next_link: Option<String>,
}

/// Only the fields needed: the webhook receivers (and their tokens) are never read.
#[derive(Deserialize)]
struct ActionGroup {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    properties: Option<ActionGroupProperties>,
}

#[derive(Deserialize)]
struct ActionGroupProperties {
    enabled: Option<bool>,
}

#[derive(Deserialize)]
struct Alert {
    properties: Option<AlertProperties>,
}

#[derive(Deserialize)]
struct AlertProperties {
    enabled: Option<bool>,
    actions: Option<AlertActions>,
}

#[derive(Deserialize)]
struct AlertActions {
    #[serde(default, rename = "actionGroups")]
    action_groups: Vec<AlertActionGroup>,
}

#[derive(Deserialize)]
struct AlertActionGroup {
    #[serde(default, rename = "actionGroupId")]
    action_group_id: String,
}

/// Asks Azure and Guardrails.
#[derive(Debug)]
pub struct Detector {
    arm: ActivityLogClient,
    api: Option<GuardrailsApi>,
}

impl Detector {
    /// `budget`: ARM's read budget, shared with the polls (detection reads
    /// count against the same per-subscription limit).
    pub fn new(config: &Config, http: reqwest::Client, budget: Arc<ReadBudget>) -> Detector {
        let arm = ActivityLogClient::new(
            http.clone(),
            config.azure.resource_manager_url.clone(),
            config.azure.backoff,
            config.azure.request_timeout,
            budget,
        );
        let api = config
            .guardrails
            .api
            .clone()
            .map(|a| GuardrailsApi::new(http, a, config.guardrails.timeout));
        Detector { arm, api }
    }

    pub fn asks_guardrails(&self) -> bool {
        self.api.is_some()
    }

    /// Checks one subscription in Azure and, when configured, in Guardrails.
    pub async fn detect(
        &self,
        subscription_id: &str,
        tokens: Option<&Arc<TokenSource>>,
    ) -> Detection {
        let azure = async {
            match tokens {
                Some(t) => self.azure(subscription_id, t).await,
                None => Err(DetectError::NoCredential(subscription_id.to_string())),
            }
        };
        let guardrails = async {
            match &self.api {
                Some(api) => Some(guardrails(api, subscription_id).await),
                None => None,
            }
        };
        let (azure, guardrails) = tokio::join!(azure, guardrails);
        Detection { azure, guardrails }
    }

    async fn list<T: for<'de> Deserialize<'de>>(
        &self,
        first: url::Url,
        tokens: &Arc<TokenSource>,
        what: &'static str,
    ) -> Result<Vec<T>, DetectError> {
        let beat = Heartbeat::default();
        let mut out = Vec::new();
        let mut url = first;
        for _ in 0..MAX_PAGES {
            let got = self.arm.get(&url, tokens, &beat).await?;
            let page: List<T> =
                serde_json::from_slice(&got.body).map_err(|e| DetectError::Malformed {
                    what,
                    message: e.to_string(),
                })?;
            out.extend(page.value);
            match page.next_link.filter(|l| !l.is_empty()) {
                Some(link) => url = self.arm.next_page(&link)?,
                None => break,
            }
        }
        Ok(out)
    }

    async fn azure(
        &self,
        subscription_id: &str,
        tokens: &Arc<TokenSource>,
    ) -> Result<AzureHandlers, DetectError> {
        let groups_url = self.arm.arm_url(
            &format!(
                "subscriptions/{subscription_id}/resourceGroups/{HANDLER_RESOURCE_GROUP}/providers/Microsoft.Insights/actionGroups"
            ),
            ACTION_GROUPS_API,
        );
        let groups: Vec<ActionGroup> =
            match self.list(groups_url, tokens, "the action group list").await {
                Ok(g) => g,
                // The resource group does not exist: no handlers.
                Err(DetectError::Azure(AzureError::Rejected { status: 404, .. })) => {
                    return Ok(AzureHandlers::NoResourceGroup);
                }
                Err(e) => return Err(e),
            };
        let Some(group) = groups
            .iter()
            .find(|g| g.name.eq_ignore_ascii_case(HANDLER_ACTION_GROUP))
        else {
            return Ok(AzureHandlers::NoActionGroup);
        };
        let enabled = group
            .properties
            .as_ref()
            .and_then(|p| p.enabled)
            .unwrap_or(true);
        let alerts_url = self.arm.arm_url(
            &format!(
                "subscriptions/{subscription_id}/providers/Microsoft.Insights/activityLogAlerts"
            ),
            ALERTS_API,
        );
        let alerts: Vec<Alert> = self
            .list(alerts_url, tokens, "the activity log alert list")
            .await?;
        let routes_here = |id: &str| {
            let id = id.trim_end_matches('/').to_ascii_lowercase();
            if !group.id.is_empty() {
                id == group.id.trim_end_matches('/').to_ascii_lowercase()
            } else {
                id.ends_with(&format!(
                    "/resourcegroups/{HANDLER_RESOURCE_GROUP}/providers/microsoft.insights/actiongroups/{HANDLER_ACTION_GROUP}"
                ))
            }
        };
        let routing = alerts
            .iter()
            .filter_map(|a| a.properties.as_ref())
            .filter(|p| p.enabled.unwrap_or(true))
            .filter(|p| {
                p.actions.as_ref().is_some_and(|a| {
                    a.action_groups
                        .iter()
                        .any(|g| routes_here(&g.action_group_id))
                })
            })
            .count();
        Ok(match (enabled, routing) {
            (false, n) => AzureHandlers::Disabled { alerts: n },
            (true, 0) => AzureHandlers::NoAlerts,
            (true, n) => AzureHandlers::Live { alerts: n },
        })
    }
}

async fn guardrails(
    api: &GuardrailsApi,
    subscription_id: &str,
) -> Result<GuardrailsFinding, DetectError> {
    let (handlers, poller) = tokio::join!(
        api.policy_values(EVENT_HANDLERS_POLICY, subscription_id),
        api.policy_values(EVENT_POLLER_POLICY, subscription_id),
    );
    Ok(GuardrailsFinding {
        handlers: PolicyFinding::handlers(handlers?),
        poller: PolicyFinding::poller(poller?),
    })
}

/// Detects every subscription of `subs` (a few at a time), in their order.
pub async fn detect_all(
    detector: &Detector,
    subs: &[SubscriptionConfig],
    tokens: &BTreeMap<String, Arc<TokenSource>>,
) -> Vec<(SubscriptionConfig, Detection)> {
    let mut out: Vec<(usize, SubscriptionConfig, Detection)> =
        futures::stream::iter(subs.iter().cloned().enumerate())
            .map(|(i, sub)| async move {
                let d = detector
                    .detect(sub.id.as_str(), tokens.get(&sub.credential))
                    .await;
                (i, sub, d)
            })
            .buffer_unordered(CHECKS_IN_FLIGHT)
            .collect()
            .await;
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, s, d)| (s, d)).collect()
}

/// The paused subscriptions (id to why), which every subscription task follows.
pub type Paused = BTreeMap<String, String>;

/// The shared, live pause state, kept across reloads.
#[derive(Debug)]
pub struct Pauses {
    tx: watch::Sender<Paused>,
}

impl Default for Pauses {
    fn default() -> Self {
        Pauses {
            tx: watch::channel(Paused::new()).0,
        }
    }
}

impl Pauses {
    pub fn subscribe(&self) -> watch::Receiver<Paused> {
        self.tx.subscribe()
    }

    pub fn is_paused(&self, id: &str) -> bool {
        self.tx.borrow().contains_key(id)
    }

    pub fn snapshot(&self) -> Paused {
        self.tx.borrow().clone()
    }

    /// Pauses `id` (or changes why); true when it was not paused before.
    pub fn pause(&self, id: &str, why: &str) -> bool {
        let mut newly = false;
        self.tx.send_if_modified(|m| {
            newly = !m.contains_key(id);
            let changed = m.get(id).map(String::as_str) != Some(why);
            m.insert(id.to_string(), why.to_string());
            changed
        });
        newly
    }

    /// Resumes `id`; true when it was paused.
    pub fn resume(&self, id: &str) -> bool {
        self.tx.send_if_modified(|m| m.remove(id).is_some())
    }

    /// Forgets every subscription not in `keep`.
    pub fn retain(&self, keep: &[String]) {
        self.tx.send_if_modified(|m| {
            let before = m.len();
            m.retain(|k, _| keep.contains(k));
            m.len() != before
        });
    }
}

/// One line per finding, for messages: `prod (1111...): a; b`.
pub fn explain(sub: &SubscriptionConfig, findings: &[String]) -> String {
    format!("{}: {}", sub.label(), findings.join("; "))
}

/// The running daemon's detection: checks every `detect` subscription (now
/// when `at_once`, else after one interval: the start check has just run)
/// and then every `interval`, until `stop`. Live ones are paused, clear ones
/// resumed; a failed check keeps the last known state (a subscription still
/// waiting for its first check stays paused unless `on_unknown = "poll"`).
pub async fn run(app: Arc<crate::app::App>, at_once: bool, mut stop: watch::Receiver<bool>) {
    let every = app.config.detection.interval;
    let first = if at_once {
        tokio::time::Instant::now()
    } else {
        tokio::time::Instant::now() + every
    };
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        check_round(&app).await;
    }
}

/// The first check of a subscription added by a reload has not run yet.
pub const AWAITING_FIRST_CHECK: &str = "awaiting its first event handler check";

async fn check_round(app: &crate::app::App) {
    let subs = app.config.detected_subscriptions();
    for s in &app.config.subscriptions {
        if s.event_handlers != EventHandlers::Detect && app.pauses.resume(s.id.as_str()) {
            app.health.resumed(s.id.as_str());
            crate::metrics::paused(s.id.as_str(), false);
        }
    }
    if subs.is_empty() {
        return;
    }
    let results = detect_all(&app.detector, &subs, &app.tokens).await;
    for (sub, detection) in results {
        apply(app, &sub, &detection).await;
    }
}

async fn apply(app: &crate::app::App, sub: &SubscriptionConfig, detection: &Detection) {
    let id = sub.id.as_str();
    let verdict = detection.verdict();
    let (state, detail) = match &verdict {
        Verdict::Live(found) => {
            let why = format!("fed by Guardrails: {}", found.join("; "));
            app.pauses.pause(id, &why);
            app.health.paused(id, &why);
            crate::metrics::paused(id, true);
            crate::metrics::detection_check("live");
            tracing::error!(
                subscription_id = %sub.id,
                subscription_name = sub.name.as_deref(),
                found = %found.join("; "),
                "Guardrails event handlers or its own poller feed this subscription: polling paused (events already queued are still delivered)"
            );
            ("paused", why)
        }
        Verdict::Clear(seen) => {
            crate::metrics::detection_check("clear");
            if app.pauses.resume(id) {
                app.health.resumed(id);
                crate::metrics::paused(id, false);
                tracing::info!(
                    subscription_id = %sub.id,
                    subscription_name = sub.name.as_deref(),
                    seen = %seen.join("; "),
                    "nothing else feeds this subscription any more: polling resumes from its watermark"
                );
            }
            ("clear", seen.join("; "))
        }
        Verdict::Unknown(errors) => {
            crate::metrics::detection_check("unknown");
            crate::metrics::detection_failed(id);
            let first_check = app
                .pauses
                .snapshot()
                .get(id)
                .is_some_and(|w| w == AWAITING_FIRST_CHECK);
            let on_unknown = app.config.detection.on_unknown;
            if first_check && on_unknown == OnUnknown::Poll {
                app.pauses.resume(id);
                app.health.resumed(id);
                crate::metrics::paused(id, false);
            } else if first_check {
                let why = format!("event handler check failed: {}", errors.join("; "));
                app.pauses.pause(id, &why);
                app.health.paused(id, &why);
            }
            tracing::warn!(
                subscription_id = %sub.id,
                subscription_name = sub.name.as_deref(),
                error = %errors.join("; "),
                paused = app.pauses.is_paused(id),
                "the event handler check failed; the subscription keeps its last known state"
            );
            let state = if app.pauses.is_paused(id) {
                "paused"
            } else {
                "unknown"
            };
            (state, format!("check failed: {}", errors.join("; ")))
        }
    };
    let now = chrono::Utc::now();
    if let Err(e) = app
        .store
        .note_detection(id, now, state, detail.clone())
        .await
    {
        tracing::warn!(error = %e, "cannot note the detection result");
    }
}

/// A short form of what Azure shows, for a table cell.
impl AzureHandlers {
    pub fn short(&self) -> String {
        match self {
            AzureHandlers::NoResourceGroup => "none (no turbot_rg)".into(),
            AzureHandlers::NoActionGroup => "none (no action group)".into(),
            AzureHandlers::Disabled { .. } => "disabled".into(),
            AzureHandlers::NoAlerts => "no alerts route".into(),
            AzureHandlers::Live { alerts } => format!("LIVE ({})", alerts_text(*alerts)),
        }
    }
}

/// What `check-config --online` concludes for one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Poll,
    Unknown,
    Refuse,
}

/// The `check-config --online` table, the details below it, and the worst outcome.
pub fn render_online(
    checked: &[(SubscriptionConfig, Detection)],
    on_unknown: OnUnknown,
) -> (String, Outcome) {
    let cell = |r: &Option<Result<GuardrailsFinding, DetectError>>,
                pick: fn(&GuardrailsFinding) -> &PolicyFinding| match r {
        None => "not asked".to_string(),
        Some(Ok(g)) => {
            let p = pick(g);
            let text = p.value_text();
            if p.on { format!("ON: {text}") } else { text }
        }
        Some(Err(_)) => "check failed".to_string(),
    };
    let mut rows = vec![[
        "SUBSCRIPTION".to_string(),
        "AZURE HANDLERS".to_string(),
        "GUARDRAILS HANDLERS POLICY".to_string(),
        "GUARDRAILS POLLER POLICY".to_string(),
        "VERDICT".to_string(),
    ]];
    let mut details = String::new();
    let mut worst = Outcome::Poll;
    for (sub, d) in checked {
        let (verdict, outcome) = match (sub.event_handlers, d.verdict()) {
            (EventHandlers::Active, _) => (
                "refuse (event_handlers = true)".to_string(),
                Outcome::Refuse,
            ),
            (EventHandlers::Absent, Verdict::Live(_)) => (
                "poll: OVERRIDDEN (event_handlers = false), but something feeds it".to_string(),
                Outcome::Poll,
            ),
            (EventHandlers::Absent, _) => {
                ("poll (event_handlers = false)".to_string(), Outcome::Poll)
            }
            (EventHandlers::Detect, Verdict::Live(_)) => {
                ("REFUSE: fed by Guardrails".to_string(), Outcome::Refuse)
            }
            (EventHandlers::Detect, Verdict::Unknown(_)) if on_unknown == OnUnknown::Poll => (
                "poll (unknown; on_unknown = \"poll\")".to_string(),
                Outcome::Poll,
            ),
            (EventHandlers::Detect, Verdict::Unknown(_)) => {
                ("REFUSE: cannot tell".to_string(), Outcome::Unknown)
            }
            (EventHandlers::Detect, Verdict::Clear(_)) => ("poll".to_string(), Outcome::Poll),
        };
        worst = worst.max(outcome);
        rows.push([
            sub.label(),
            match &d.azure {
                Ok(a) => a.short(),
                Err(_) => "check failed".into(),
            },
            cell(&d.guardrails, |g| &g.handlers),
            cell(&d.guardrails, |g| &g.poller),
            verdict,
        ]);
        match d.verdict() {
            Verdict::Live(found) => details.push_str(&format!("{}\n", explain(sub, &found))),
            Verdict::Unknown(errors) => details.push_str(&format!("{}\n", explain(sub, &errors))),
            Verdict::Clear(_) => {}
        }
        if let (Ok(_), Some(Err(e))) = (&d.azure, &d.guardrails) {
            details.push_str(&format!("{}: {e}\n", sub.label()));
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if !details.is_empty() {
        out.push('\n');
        out.push_str(&details);
    }
    (out, worst)
}

/// How long `check-config --online` and the start check wait at most.
pub const START_CHECK_LIMIT: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(value: &str, resource: &str) -> PolicyValue {
        PolicyValue {
            value: Some(value.into()),
            state: Some("ok".into()),
            resource: Some(resource.into()),
        }
    }

    #[test]
    fn handlers_are_on_when_any_region_enforces_them() {
        let p = PolicyFinding::handlers(vec![
            pv("Skip", "East US"),
            pv("Enforce: Configured", "West US"),
        ]);
        assert!(p.on);
        assert_eq!(
            p.value_text(),
            "Skip (East US), Enforce: Configured (West US)"
        );
        let p = PolicyFinding::handlers(vec![pv("Enforce: Not configured", "Sub")]);
        assert!(!p.on);
        let p = PolicyFinding::poller(vec![pv("Enabled", "Sub")]);
        assert!(p.on);
        assert_eq!(
            p.describe(),
            "Guardrails policy Azure > Turbot > Event Poller = Enabled"
        );
        assert!(!PolicyFinding::poller(vec![pv("Disabled", "Sub")]).on);
        assert!(!PolicyFinding::poller(vec![]).on);
    }

    #[test]
    fn live_wins_over_unknown_and_unknown_over_clear() {
        let live = Detection {
            azure: Ok(AzureHandlers::Live { alerts: 3 }),
            guardrails: Some(Err(DetectError::Guardrails(ApiError::Auth(401)))),
        };
        assert_eq!(
            live.verdict(),
            Verdict::Live(vec![
                "action group turbot_azure_event_handler_action_group in turbot_rg is enabled, 3 alerts route to it".into()
            ])
        );
        assert!(live.config_problem());
        let unknown = Detection {
            azure: Ok(AzureHandlers::NoResourceGroup),
            guardrails: Some(Err(DetectError::Guardrails(ApiError::Rejected(400)))),
        };
        assert!(matches!(unknown.verdict(), Verdict::Unknown(_)));
        assert!(!unknown.config_problem());
        let clear = Detection {
            azure: Ok(AzureHandlers::NoAlerts),
            guardrails: None,
        };
        assert!(matches!(clear.verdict(), Verdict::Clear(_)));
    }

    #[test]
    fn pauses_say_what_changed() {
        let p = Pauses::default();
        let rx = p.subscribe();
        assert!(p.pause("a", "why"));
        assert!(!p.pause("a", "why again"));
        assert!(rx.borrow().get("a").is_some_and(|w| w == "why again"));
        assert!(p.resume("a"));
        assert!(!p.resume("a"));
        p.pause("b", "x");
        p.retain(&[]);
        assert!(!p.is_paused("b"));
    }
}
