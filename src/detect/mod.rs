//! Knowing, not trusting, that nothing else feeds a subscription.
//!
//! Two things would send Guardrails every event a second time: its **event
//! handlers** (an Action Group `turbot_azure_event_handler_action_group` in the
//! resource group `turbot_rg`, with Activity Log Alerts routing to it) and its
//! own **event poller** (policy `Azure > Turbot > Event Poller`, `Enabled` by
//! default). The first is read from Azure with the poller's own credential
//! (`azure.rs`); both policies are read from the Guardrails GraphQL API when
//! `[guardrails.api]` is configured (`guardrails.rs`).
//!
//! Every check asks about all its subscriptions at once, so that its cost
//! grows with the answers, not with the questions: Resource Graph for up to
//! 1,000 subscriptions a query (the per-subscription ARM reads, many in
//! flight, for what it does not answer), and one workspace-wide paged query
//! per Guardrails policy. 10,000 subscriptions are checked in seconds.
//!
//! A [`Detection`] is what was found for one subscription; its [`Verdict`] is
//! `Live` (something else feeds it), `Clear`, or `Unknown` (a check could not
//! be made). At start a live subscription is a refusal (`start.rs`); while the
//! daemon runs, [`run`] re-checks every `[detection] interval` (and at once
//! after a reload), pausing a live subscription and resuming it when it is
//! clear again (`watch.rs`). The paused set is a `watch` channel that every
//! subscription task follows (`scheduler.rs`). `check-config --online` shows
//! the same findings as a table (`report.rs`).
//!
//! Both checks work on a [`Checks`], which `app.rs` builds from the running
//! configuration: this module never sees the whole application.
//!
//! The action group's webhook URI carries a Guardrails token: it is never
//! deserialized, so it cannot reach a log.

mod azure;
mod guardrails;
mod report;
mod start;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::azure::handlers::Handlers;
use crate::azure::{ActivityLogClient, AzureError, ReadBudget, ResourceGraphClient, TokenSource};
use crate::config::{Config, DetectionConfig, EventHandlers, SubscriptionConfig};
use crate::event::Timestamp;
use crate::guardrails_api::{ApiError, GuardrailsApi};
use crate::health::Health;
use crate::outage::Resource;
use crate::store::Store;

pub use guardrails::{GuardrailsFinding, Policy, PolicyFinding, ValueSeen};
pub use report::{Outcome, render_online};
pub use start::{Refusal, at_start};
pub use watch::{AWAITING_FIRST_CHECK, Paused, Pauses, run};

/// How long `check-config --online` and the start check wait at most.
pub const START_CHECK_LIMIT: Duration = Duration::from_secs(300);

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
    pub azure: Result<Handlers, DetectError>,
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

impl Verdict {
    /// What a check's note (for `status`) says: what feeds the
    /// subscription, why the check failed, or what was seen.
    pub fn detail(&self) -> String {
        match self {
            Verdict::Live(found) => format!("fed by Guardrails: {}", found.join("; ")),
            Verdict::Unknown(errors) => format!("check failed: {}", errors.join("; ")),
            Verdict::Clear(seen) => seen.join("; "),
        }
    }
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

/// One subscription to ask about: its id and its credential's token source
/// (`None`: the credential is not configured).
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub id: &'a str,
    pub tokens: Option<&'a Arc<TokenSource>>,
}

/// Asks Azure and Guardrails.
#[derive(Debug)]
pub struct Detector {
    arm: ActivityLogClient,
    graph: ResourceGraphClient,
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
        let graph = ResourceGraphClient::new(
            http.clone(),
            &config.azure.resource_manager_url,
            config.azure.backoff,
            config.azure.request_timeout,
        );
        let api = config
            .guardrails
            .api
            .clone()
            .map(|a| GuardrailsApi::new(http, a, config.guardrails.timeout));
        Detector { arm, graph, api }
    }

    pub fn asks_guardrails(&self) -> bool {
        self.api.is_some()
    }

    /// Checks every subscription of `asked` in Azure and, when configured,
    /// in Guardrails, all at once; the detections in the order asked.
    pub async fn detect_many(&self, asked: &[Asked<'_>]) -> Vec<Detection> {
        let ids: Vec<&str> = asked.iter().map(|a| a.id).collect();
        let guardrails = async {
            match &self.api {
                Some(api) => Some(guardrails::policies_all(api, &ids).await),
                None => None,
            }
        };
        let (azure, guardrails) = tokio::join!(self.azure_all(asked), guardrails);
        tracing::info!(
            subscriptions = asked.len(),
            resource_graph = azure.by_graph,
            resource_graph_requests = azure.graph_requests,
            arm_reads = azure.by_arm,
            guardrails = guardrails.is_some(),
            "checked for Guardrails event handlers"
        );
        let mut guardrails = guardrails.map(Vec::into_iter);
        azure
            .results
            .into_iter()
            .map(|azure| Detection {
                azure,
                guardrails: guardrails.as_mut().and_then(Iterator::next),
            })
            .collect()
    }
}

/// Detects every subscription of `subs` at once, in their order.
pub async fn detect_all(
    detector: &Detector,
    subs: &[Arc<SubscriptionConfig>],
    tokens: &BTreeMap<String, Arc<TokenSource>>,
) -> Vec<(Arc<SubscriptionConfig>, Detection)> {
    let asked: Vec<Asked> = subs
        .iter()
        .map(|s| Asked {
            id: s.id.as_str(),
            tokens: tokens.get(&*s.credential),
        })
        .collect();
    let detections = detector.detect_many(&asked).await;
    subs.iter().cloned().zip(detections).collect()
}

/// One line per finding, for messages: `prod (1111...): a; b`.
pub fn explain(sub: &SubscriptionConfig, findings: &[String]) -> String {
    format!("{}: {}", sub.label(), findings.join("; "))
}

/// What the start check and the running daemon's checks work with: who to
/// ask (the detector and the token source of each credential), about which
/// subscriptions, with which `[detection]` settings, and where the answers
/// go (the store's detection notes, the pauses, readiness). Built by
/// `app.rs` for each configuration.
pub struct Checks {
    pub detector: Arc<Detector>,
    pub tokens: BTreeMap<String, Arc<TokenSource>>,
    pub subscriptions: Vec<Arc<SubscriptionConfig>>,
    pub settings: DetectionConfig,
    pub store: Store,
    pub pauses: Arc<Pauses>,
    pub health: Arc<Health>,
}

impl Checks {
    /// The subscriptions with `event_handlers = "detect"`, in file order.
    fn detected(&self) -> Vec<Arc<SubscriptionConfig>> {
        self.subscriptions
            .iter()
            .filter(|s| s.event_handlers == EventHandlers::Detect)
            .cloned()
            .collect()
    }

    /// Asks about every subscription of `subs` (see [`detect_all`]).
    async fn detect_all(
        &self,
        subs: &[Arc<SubscriptionConfig>],
    ) -> Vec<(Arc<SubscriptionConfig>, Detection)> {
        detect_all(&self.detector, subs, &self.tokens).await
    }

    /// Notes a check's result in the store, for `status`; a failure to note
    /// it is only logged.
    async fn note(&self, id: &str, now: Timestamp, state: &'static str, detail: String) {
        match self.store.note_detection(id, now, state, detail).await {
            Ok(()) => self.health.outages.recovered(Resource::StateStore),
            Err(e) => {
                let declared = self.health.outages.failed(Resource::StateStore, &e);
                crate::log_at!(crate::outage::quiet_if(declared), error = %e, "cannot note the detection result");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_wins_over_unknown_and_unknown_over_clear() {
        let live = Detection {
            azure: Ok(Handlers::Live { alerts: 3 }),
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
            azure: Ok(Handlers::NoResourceGroup),
            guardrails: Some(Err(DetectError::Guardrails(ApiError::Rejected(400)))),
        };
        assert!(matches!(unknown.verdict(), Verdict::Unknown(_)));
        assert!(!unknown.config_problem());
        let clear = Detection {
            azure: Ok(Handlers::NoAlerts),
            guardrails: None,
        };
        assert!(matches!(clear.verdict(), Verdict::Clear(_)));
    }
}
