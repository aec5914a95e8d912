//! What Guardrails says of many subscriptions: its Event Handlers and Event
//! Poller policies on each subscription and below it, read through the
//! GraphQL API (`guardrails_api.rs`) with one paged query per policy for the
//! whole workspace, however many subscriptions are checked.
//!
//! Each value is put back under its subscription by the resource it applies
//! to: by an AKA that names the subscription (`azure:///subscriptions/<id>`,
//! the subscription's own and, where Guardrails gives them, those of the
//! resources below it), else by its path (its ancestors' Guardrails ids)
//! passing through a subscription whose Guardrails id either answer showed.
//! A subscription with no value in the answer has none in Guardrails (the
//! query covers every resource of the workspace): it reads as `no value (not
//! in the workspace)`, as the per-subscription query would say. When some
//! value cannot be placed under any subscription, it could belong to any:
//! each subscription that policy does not already find on is asked about
//! with the per-subscription query instead, a few at a time.

use std::collections::HashMap;

use futures::StreamExt;

use super::DetectError;
use crate::guardrails_api::{
    ApiError, EVENT_HANDLERS_POLICY, EVENT_POLLER_POLICY, GuardrailsApi, PlacedValue, PolicyValue,
    SUBSCRIPTION_AKA_PREFIX,
};

/// Per-subscription queries in flight, when the workspace-wide answer
/// could not place some value.
const QUERIES_IN_FLIGHT: usize = 16;
/// The resources a value is said to apply to at most, in a message.
const RESOURCES_NAMED: usize = 3;

/// The two Guardrails policies that mean something else feeds a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    EventHandlers,
    EventPoller,
}

impl Policy {
    pub fn type_uri(self) -> &'static str {
        match self {
            Policy::EventHandlers => EVENT_HANDLERS_POLICY,
            Policy::EventPoller => EVENT_POLLER_POLICY,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Policy::EventHandlers => "Azure > Turbot > Event Handlers",
            Policy::EventPoller => "Azure > Turbot > Event Poller",
        }
    }

    /// Whether `value` turns the feature on.
    fn turns_on(self, value: &str) -> bool {
        match self {
            Policy::EventHandlers => value.trim_start().starts_with("Enforce: Configured"),
            Policy::EventPoller => value.trim().eq_ignore_ascii_case("Enabled"),
        }
    }
}

/// One distinct value of a policy on a subscription or below it, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSeen {
    /// The value as text; `None`: no value, in `state`.
    pub value: Option<String>,
    pub state: Option<String>,
    /// The first few resources it applies to (their titles)...
    pub resources: Vec<String>,
    /// ...and how many in all.
    pub count: usize,
}

impl ValueSeen {
    fn text(&self) -> String {
        match &self.value {
            Some(v) => v.clone(),
            None => format!("no value ({})", self.state.as_deref().unwrap_or("unknown")),
        }
    }

    /// `East US`, `East US, West US and 58 more`.
    fn places(&self) -> String {
        let named = self.resources.join(", ");
        match self.count.saturating_sub(self.resources.len()) {
            0 => named,
            more => format!("{named} and {more} more"),
        }
    }
}

/// One Guardrails policy's values on a subscription and below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFinding {
    pub policy: Policy,
    /// Each distinct value, in the order first seen.
    pub values: Vec<ValueSeen>,
    /// Whether a value turns the feature on.
    pub on: bool,
}

impl PolicyFinding {
    /// No value seen (yet).
    pub fn new(policy: Policy) -> Self {
        PolicyFinding {
            policy,
            values: Vec::new(),
            on: false,
        }
    }

    fn from_values(policy: Policy, values: Vec<PolicyValue>) -> Self {
        let mut f = PolicyFinding::new(policy);
        values.into_iter().for_each(|v| f.add(v));
        f
    }

    /// Takes in one value: a value seen before only counts one more place.
    fn add(&mut self, v: PolicyValue) {
        self.on |= v.value.as_deref().is_some_and(|t| self.policy.turns_on(t));
        let same = |s: &&mut ValueSeen| match &v.value {
            Some(_) => s.value == v.value,
            None => s.value.is_none() && s.state == v.state,
        };
        let seen = match self.values.iter_mut().find(same) {
            Some(s) => s,
            None => {
                self.values.push(ValueSeen {
                    value: v.value,
                    state: v.state,
                    resources: Vec::new(),
                    count: 0,
                });
                let last = self.values.len() - 1;
                &mut self.values[last]
            }
        };
        seen.count += 1;
        if let Some(r) = v.resource
            && seen.resources.len() < RESOURCES_NAMED
            && !seen.resources.contains(&r)
        {
            seen.resources.push(r);
        }
    }

    pub fn title(&self) -> &'static str {
        self.policy.title()
    }

    /// `Enabled`, or `Enforce: Configured (East US), Skip (West US and 3 more)`,
    /// or `no value (not in the workspace)`.
    pub fn value_text(&self) -> String {
        if self.values.is_empty() {
            return "no value (not in the workspace)".into();
        }
        let several = self.values.len() > 1;
        let texts: Vec<String> = self
            .values
            .iter()
            .map(|v| match v.places() {
                places if several && !places.is_empty() => format!("{} ({places})", v.text()),
                _ => v.text(),
            })
            .collect();
        texts.join(", ")
    }

    pub fn describe(&self) -> String {
        format!("Guardrails policy {} = {}", self.title(), self.value_text())
    }
}

/// Both policies that matter, read from Guardrails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardrailsFinding {
    pub handlers: PolicyFinding,
    pub poller: PolicyFinding,
}

/// The subscription id an AKA names (lowercased), and whether the AKA is
/// the subscription's own rather than a resource's below it.
fn subscription_in(aka: &str) -> Option<(String, bool)> {
    let prefix = aka.get(..SUBSCRIPTION_AKA_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(SUBSCRIPTION_AKA_PREFIX) {
        return None;
    }
    let rest = &aka[SUBSCRIPTION_AKA_PREFIX.len()..];
    let (id, below) = match rest.split_once('/') {
        Some((id, below)) => (id, !below.is_empty()),
        None => (rest, false),
    };
    (!id.is_empty()).then(|| (id.to_ascii_lowercase(), !below))
}

/// One policy's workspace-wide answer, sorted out per subscription as it
/// arrives, a page at a time.
struct Sorted {
    policy: Policy,
    /// By subscription id (lowercased).
    found: HashMap<String, PolicyFinding>,
    /// The Guardrails id of each subscription seen, to place values by path.
    subscriptions: HashMap<String, String>,
    /// Values no AKA placed: their path, and the value.
    by_path: Vec<(Vec<String>, PolicyValue)>,
    /// Values placed under no subscription at all.
    unplaced: usize,
}

impl Sorted {
    fn new(policy: Policy) -> Self {
        Sorted {
            policy,
            found: HashMap::new(),
            subscriptions: HashMap::new(),
            by_path: Vec::new(),
            unplaced: 0,
        }
    }

    fn take(&mut self, v: PlacedValue) {
        let named = v.placement.akas.iter().find_map(|a| subscription_in(a));
        match named {
            Some((sub, own)) => {
                if own && let Some(id) = v.placement.id {
                    self.subscriptions.insert(id, sub.clone());
                }
                self.add(sub, v.value);
            }
            None => self.by_path.push((v.placement.path, v.value)),
        }
    }

    fn add(&mut self, sub: String, value: PolicyValue) {
        let policy = self.policy;
        self.found
            .entry(sub)
            .or_insert_with(|| PolicyFinding::new(policy))
            .add(value);
    }

    /// Places the values left by their path, through the subscriptions
    /// `known` (Guardrails id to subscription id).
    fn place_by_path(&mut self, known: &HashMap<String, String>) {
        for (path, value) in std::mem::take(&mut self.by_path) {
            match path.iter().rev().find_map(|id| known.get(id)) {
                Some(sub) => self.add(sub.clone(), value),
                None => self.unplaced += 1,
            }
        }
    }
}

/// One policy in the whole workspace, sorted out per subscription.
async fn workspace(api: &GuardrailsApi, policy: Policy) -> Result<Sorted, ApiError> {
    let mut sorted = Sorted::new(policy);
    api.workspace_policy_values(policy.type_uri(), |v| sorted.take(v))
        .await?;
    Ok(sorted)
}

/// Reads both policies for every subscription of `ids` (lowercase, as the
/// configuration keeps them), in their order: two workspace-wide queries,
/// and per-subscription ones only where the answer left a doubt.
pub(super) async fn policies_all(
    api: &GuardrailsApi,
    ids: &[&str],
) -> Vec<Result<GuardrailsFinding, DetectError>> {
    let (handlers, poller) = tokio::join!(
        workspace(api, Policy::EventHandlers),
        workspace(api, Policy::EventPoller),
    );
    let (mut handlers, mut poller) = match (handlers, poller) {
        (Ok(h), Ok(p)) => (h, p),
        (Err(e), _) | (_, Err(e)) => {
            return ids
                .iter()
                .map(|_| Err(DetectError::Guardrails(e.clone())))
                .collect();
        }
    };
    let mut known = std::mem::take(&mut handlers.subscriptions);
    known.extend(std::mem::take(&mut poller.subscriptions));
    handlers.place_by_path(&known);
    poller.place_by_path(&known);
    let mut findings: Vec<[PolicyFinding; 2]> = ids
        .iter()
        .map(|id| {
            [&mut handlers, &mut poller].map(|s| {
                s.found
                    .remove(*id)
                    .unwrap_or_else(|| PolicyFinding::new(s.policy))
            })
        })
        .collect();
    // A value placed nowhere could be on any subscription: ask each one
    // that policy does not already find on.
    let mut doubts = Vec::new();
    for (slot, sorted) in [&handlers, &poller].into_iter().enumerate() {
        if sorted.unplaced == 0 {
            continue;
        }
        tracing::warn!(
            policy = sorted.policy.title(),
            values = sorted.unplaced,
            "Guardrails values that no subscription's AKA or path explains; asking about each subscription on its own"
        );
        doubts.extend(
            findings
                .iter()
                .enumerate()
                .filter(|(_, f)| !f[slot].on)
                .map(|(i, _)| (i, slot, sorted.policy)),
        );
    }
    // Futures made first, as in `azure.rs`: the task stays `Send`.
    let queries: Vec<_> = doubts
        .into_iter()
        .map(|(i, slot, policy)| async move {
            (i, slot, api.policy_values(policy.type_uri(), ids[i]).await)
        })
        .collect();
    let asked: Vec<(usize, usize, Result<Vec<PolicyValue>, ApiError>)> =
        futures::stream::iter(queries)
            .buffer_unordered(QUERIES_IN_FLIGHT)
            .collect()
            .await;
    let mut failed: HashMap<usize, ApiError> = HashMap::new();
    for (i, slot, answer) in asked {
        match answer {
            Ok(values) => {
                findings[i][slot] = PolicyFinding::from_values(findings[i][slot].policy, values)
            }
            Err(e) => {
                failed.insert(i, e);
            }
        }
    }
    findings
        .into_iter()
        .enumerate()
        .map(|(i, [handlers, poller])| match failed.remove(&i) {
            Some(e) => Err(DetectError::Guardrails(e)),
            None => Ok(GuardrailsFinding { handlers, poller }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardrails_api::Placement;

    fn pv(value: &str, resource: &str) -> PolicyValue {
        PolicyValue {
            value: Some(value.into()),
            state: Some("ok".into()),
            resource: Some(resource.into()),
        }
    }

    #[test]
    fn handlers_are_on_when_any_region_enforces_them() {
        let handlers = |v| PolicyFinding::from_values(Policy::EventHandlers, v);
        let poller = |v| PolicyFinding::from_values(Policy::EventPoller, v);
        let p = handlers(vec![
            pv("Skip", "East US"),
            pv("Enforce: Configured", "West US"),
        ]);
        assert!(p.on);
        assert_eq!(
            p.value_text(),
            "Skip (East US), Enforce: Configured (West US)"
        );
        assert!(!handlers(vec![pv("Enforce: Not configured", "Sub")]).on);
        let p = poller(vec![pv("Enabled", "Sub")]);
        assert!(p.on);
        assert_eq!(
            p.describe(),
            "Guardrails policy Azure > Turbot > Event Poller = Enabled"
        );
        assert!(!poller(vec![pv("Disabled", "Sub")]).on);
        assert!(!poller(vec![]).on);
        assert_eq!(
            poller(vec![]).value_text(),
            "no value (not in the workspace)"
        );
    }

    #[test]
    fn many_places_of_one_value_are_counted_not_listed() {
        let mut values: Vec<PolicyValue> = (0..60)
            .map(|i| pv("Skip", &format!("region {i}")))
            .collect();
        values.push(pv("Enforce: Configured", "region 60"));
        values.push(pv("Skip", "region 0"));
        let p = PolicyFinding::from_values(Policy::EventHandlers, values);
        assert_eq!(
            p.value_text(),
            "Skip (region 0, region 1, region 2 and 58 more), Enforce: Configured (region 60)"
        );
        // One value everywhere: just the value.
        let p = PolicyFinding::from_values(
            Policy::EventPoller,
            vec![pv("Disabled", "sub"), pv("Disabled", "East US")],
        );
        assert_eq!(p.value_text(), "Disabled");
    }

    #[test]
    fn subscriptions_are_found_in_akas() {
        let sub = "089BD33F-d4ec-47fe-8ba5-0753aa5c5b33";
        let lower = sub.to_ascii_lowercase();
        assert_eq!(
            subscription_in(&format!("azure:///subscriptions/{sub}")),
            Some((lower.clone(), true))
        );
        assert_eq!(
            subscription_in(&format!("AZURE:///subscriptions/{sub}/")),
            Some((lower.clone(), true))
        );
        assert_eq!(
            subscription_in(&format!("azure:///subscriptions/{sub}/locations/eastus")),
            Some((lower, false))
        );
        assert_eq!(subscription_in("azure:///subscriptions/"), None);
        assert_eq!(subscription_in("tmod:@turbot/turbot#/"), None);
        assert_eq!(subscription_in("azure://"), None);
    }

    fn placed(value: &str, id: &str, akas: &[&str], path: &[&str]) -> PlacedValue {
        PlacedValue {
            value: pv(value, id),
            placement: Placement {
                id: Some(id.into()),
                akas: akas.iter().map(|a| a.to_string()).collect(),
                path: path.iter().map(|p| p.to_string()).collect(),
            },
        }
    }

    #[test]
    fn values_are_placed_by_aka_then_by_path() {
        let mut handlers = Sorted::new(Policy::EventHandlers);
        // A region below subscription "a" (Guardrails id 20), its AKA not
        // naming it, before the subscription itself was seen.
        handlers.take(placed(
            "Enforce: Configured",
            "21",
            &["x:region"],
            &["1", "20", "21"],
        ));
        // A resource group naming its subscription "b" in its AKA.
        handlers.take(placed(
            "Skip",
            "31",
            &["azure:///subscriptions/b/resourceGroups/rg"],
            &["1", "30", "31"],
        ));
        // Nowhere.
        handlers.take(placed("Skip", "99", &[], &["1", "98", "99"]));
        let mut poller = Sorted::new(Policy::EventPoller);
        poller.take(placed(
            "Disabled",
            "20",
            &["azure:///subscriptions/a"],
            &["1", "20"],
        ));
        poller.take(placed(
            "Disabled",
            "30",
            &["azure:///subscriptions/B"],
            &["1", "30"],
        ));
        let mut known = std::mem::take(&mut handlers.subscriptions);
        known.extend(std::mem::take(&mut poller.subscriptions));
        handlers.place_by_path(&known);
        assert!(handlers.found["a"].on);
        assert!(!handlers.found["b"].on);
        assert_eq!(handlers.unplaced, 1);
        assert_eq!(poller.found.len(), 2);
    }
}
