//! What the emulator simulates: a TOML scenario file (or flags) with the event
//! rate and status mix per subscription, late arrival, Azure's faults and the
//! endpoint's outages, and a seed that makes every run reproducible.
//!
//! ```toml
//! seed = 42
//! page_size = 200
//! arm_tls = false              # serve ARM over TLS as well
//!
//! [[subscription]]
//! id = "089bd33f-d4ec-47fe-8ba5-0753aa5c5b33"
//! rate_per_minute = 600        # operations; each yields 2 or 3 entries
//! succeeded = 0.8              # share of operations that end Succeeded (else Failed)
//! backlog = 0                  # operations already in the log at start...
//! backlog_span = "1h"          # ...spread over this span before start
//! backlog_succeeded_only = false  # true: one Succeeded entry per backlog operation
//! event_handlers_from = "10s"  # Guardrails event handlers appear in Azure then...
//! event_handlers_until = "20s" # ...and are removed then (both relative to start)
//! event_handlers = "live"      # meanwhile: live | disabled (action group off) | no_alerts
//!
//! [late]                       # when entries become visible (submissionTimestamp)
//! delay_min = "0s"             # every entry: uniform in [delay_min, delay_max]
//! delay_max = "2s"
//! fraction = 0.2               # and this share is late: uniform in [late_min, late_max]
//! late_min = "5s"
//! late_max = "40s"
//!
//! [azure]
//! error_rate = 0.02            # HTTP 500/503 answers
//! drop_rate = 0.01             # connections cut mid-response
//! throttle_rate = 0.02         # HTTP 429 with Retry-After
//! retry_after = "1s"
//! token_bucket = true          # ARM's per-subscription reads: 250 tokens, 25 per second
//!
//! [resource_graph]             # POST /providers/Microsoft.ResourceGraph/resources
//! enabled = true               # false: every query is refused (403), as for a principal without access
//! quota = 15                   # queries per window per principal (0: no limit); then 429
//! quota_window = "5s"
//! latency = "0s"               # how long each answer takes (a WAN round trip)
//!
//! [endpoint]                   # the Guardrails endpoint's capacity
//! max_in_flight = 64           # above this many requests at once: 429, Retry-After: 1 (0: no limit)
//! service_time = "50ms"        # how long it takes to accept one event
//!
//! [[endpoint_outage]]          # relative to the emulator's start
//! at = "20s"
//! duration = "10s"
//! mode = "unavailable"         # unavailable (503) | error (500) | slow | refuse (cut connection)
//! delay = "2s"                 # for slow
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Serve Azure Resource Manager over TLS too (the Python SDK refuses to
    /// send a bearer token over plain HTTP).
    #[serde(default)]
    pub arm_tls: bool,
    #[serde(default, rename = "subscription")]
    pub subscriptions: Vec<SubscriptionScenario>,
    #[serde(default)]
    pub late: Late,
    #[serde(default)]
    pub azure: AzureFaults,
    #[serde(default)]
    pub endpoint: Endpoint,
    #[serde(default, rename = "endpoint_outage")]
    pub endpoint_outages: Vec<Outage>,
    #[serde(default)]
    pub resource_graph: ResourceGraph,
}

/// Azure Resource Graph: whether it answers, and its quota per principal
/// (`x-ms-user-quota-remaining` on every answer; 429 once it is spent).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceGraph {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Queries per `quota_window`; 0: no limit.
    #[serde(default = "default_graph_quota")]
    pub quota: u32,
    #[serde(default = "default_graph_window", with = "humantime_serde")]
    pub quota_window: Duration,
    /// How long each answer takes.
    #[serde(default, with = "humantime_serde")]
    pub latency: Duration,
}

impl Default for ResourceGraph {
    fn default() -> Self {
        ResourceGraph {
            enabled: true,
            quota: default_graph_quota(),
            quota_window: default_graph_window(),
            latency: Duration::ZERO,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_graph_quota() -> u32 {
    15
}
fn default_graph_window() -> Duration {
    Duration::from_secs(5)
}

/// The ingestion endpoint's capacity: with a service time, requests overlap,
/// and those beyond `max_in_flight` at once are answered 429 with
/// `Retry-After: 1`, as a gateway at its limit would.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// 0: no limit.
    #[serde(default)]
    pub max_in_flight: usize,
    #[serde(default, with = "humantime_serde")]
    pub service_time: Duration,
}

fn default_seed() -> u64 {
    1
}
fn default_page_size() -> usize {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionScenario {
    pub id: String,
    #[serde(default = "default_rate")]
    pub rate_per_minute: f64,
    #[serde(default = "default_succeeded")]
    pub succeeded: f64,
    #[serde(default)]
    pub backlog: usize,
    #[serde(default = "default_backlog_span", with = "humantime_serde")]
    pub backlog_span: Duration,
    /// Backlog operations yield one Succeeded entry each (for benchmarks).
    #[serde(default)]
    pub backlog_succeeded_only: bool,
    /// When Guardrails' event handlers (action group and alerts) appear in
    /// this subscription, relative to the emulator's start.
    #[serde(default, with = "humantime_serde")]
    pub event_handlers_from: Option<Duration>,
    /// When they are removed again; never when absent.
    #[serde(default, with = "humantime_serde")]
    pub event_handlers_until: Option<Duration>,
    /// What they look like while they are there.
    #[serde(default)]
    pub event_handlers: HandlersShape,
}

/// What Guardrails' event handlers look like in a subscription while they
/// are deployed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlersShape {
    /// The action group, enabled, and two alerts routing to it.
    #[default]
    Live,
    /// The same, with the action group disabled.
    Disabled,
    /// The action group, enabled, without alerts.
    NoAlerts,
}

/// What Azure shows of a subscription's event handlers at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlersSeen {
    /// `turbot_rg` exists: from the handlers' first appearance on.
    pub resource_group: bool,
    /// The action group's `enabled`, while it exists.
    pub action_group: Option<bool>,
    /// Whether two enabled alerts route to it.
    pub alerts: bool,
}

impl SubscriptionScenario {
    /// What Azure shows of its event handlers `elapsed` after the start:
    /// nothing before `event_handlers_from`, an empty `turbot_rg` from
    /// `event_handlers_until` on.
    pub fn handlers_at(&self, elapsed: Duration) -> HandlersSeen {
        let deployed = self.event_handlers_from.is_some_and(|from| elapsed >= from);
        let present = deployed
            && self
                .event_handlers_until
                .is_none_or(|until| elapsed < until);
        HandlersSeen {
            resource_group: deployed,
            action_group: present.then_some(self.event_handlers != HandlersShape::Disabled),
            alerts: present && self.event_handlers != HandlersShape::NoAlerts,
        }
    }
}

fn default_rate() -> f64 {
    60.0
}
fn default_succeeded() -> f64 {
    0.8
}
fn default_backlog_span() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Late {
    #[serde(default, with = "humantime_serde")]
    pub delay_min: Duration,
    #[serde(default, with = "humantime_serde")]
    pub delay_max: Duration,
    #[serde(default)]
    pub fraction: f64,
    #[serde(default, with = "humantime_serde")]
    pub late_min: Duration,
    #[serde(default, with = "humantime_serde")]
    pub late_max: Duration,
}

impl Default for Late {
    fn default() -> Self {
        Late {
            delay_min: Duration::ZERO,
            delay_max: Duration::ZERO,
            fraction: 0.0,
            late_min: Duration::ZERO,
            late_max: Duration::ZERO,
        }
    }
}

impl Late {
    /// The longest an entry can take to become visible.
    pub fn max_delay(&self) -> Duration {
        if self.fraction > 0.0 {
            self.delay_max.max(self.late_max)
        } else {
            self.delay_max
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureFaults {
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub drop_rate: f64,
    #[serde(default)]
    pub throttle_rate: f64,
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
    #[serde(default)]
    pub token_bucket: bool,
}

fn default_retry_after() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutageMode {
    Unavailable,
    Error,
    Slow,
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    pub mode: OutageMode,
    #[serde(default = "default_slow", with = "humantime_serde")]
    pub delay: Duration,
}

fn default_slow() -> Duration {
    Duration::from_secs(2)
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, name: &str) -> Result<Scenario, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid {
            path: name.to_string(),
            message,
        };
        let s: Scenario = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        s.validate().map_err(invalid)?;
        Ok(s)
    }

    /// Checks rates, delays and ids; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let rate = |v: f64, k: &str| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{k} must be between 0 and 1, got {v}"))
            }
        };
        rate(self.late.fraction, "late.fraction")?;
        rate(self.azure.error_rate, "azure.error_rate")?;
        rate(self.azure.drop_rate, "azure.drop_rate")?;
        rate(self.azure.throttle_rate, "azure.throttle_rate")?;
        if self.resource_graph.quota > 0 && self.resource_graph.quota_window.is_zero() {
            return Err("resource_graph.quota_window must be longer than 0".into());
        }
        if self.page_size == 0 {
            return Err("page_size must be at least 1".into());
        }
        if self.late.delay_min > self.late.delay_max || self.late.late_min > self.late.late_max {
            return Err("late: a minimum delay exceeds its maximum".into());
        }
        for s in &self.subscriptions {
            rate(s.succeeded, "subscription.succeeded")?;
            if crate::config::SubscriptionId::parse(&s.id).is_none() {
                return Err(format!("subscription id {:?} is not a GUID", s.id));
            }
            if let (Some(from), Some(until)) = (s.event_handlers_from, s.event_handlers_until)
                && until <= from
            {
                return Err(format!(
                    "subscription {}: event_handlers_until must come after event_handlers_from",
                    s.id
                ));
            }
            if !(s.rate_per_minute >= 0.0 && s.rate_per_minute.is_finite()) {
                return Err(format!(
                    "subscription {}: rate_per_minute must be >= 0",
                    s.id
                ));
            }
        }
        Ok(())
    }
}
