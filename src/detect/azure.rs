//! What Azure shows of Guardrails' event handlers in many subscriptions at
//! once. Resource Graph answers for up to 1,000 subscriptions a query
//! (`azure/resource_graph.rs`), one `check` per credential (its answer and
//! its quota are the principal's); whatever it does not answer (refused,
//! unavailable, a subscription it does not show) is read with the two
//! per-subscription ARM reads: the handlers' action group in `turbot_rg`,
//! and the activity log alerts that route to it, through the poller's own
//! ARM client and each subscription's read budget.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::Deserialize;

use super::{Asked, DetectError, Detector};
use crate::azure::handlers::{ACTION_GROUP, Handlers, RESOURCE_GROUP, routes_to};
use crate::azure::{AzureError, TokenSource};
use crate::heartbeat::Heartbeat;

const ACTION_GROUPS_API: &str = "2023-01-01";
const ALERTS_API: &str = "2020-10-01";
/// ARM list pages followed at most.
const MAX_PAGES: usize = 100;
/// Subscriptions read with the ARM reads at the same time, when Resource
/// Graph does not answer for them: 10,000 subscriptions at 500 ms a read
/// would take 20 s (one read each without `turbot_rg`, the usual case) to
/// 40 s (two); measured behind a 250 ms one-way proxy on two shared cores,
/// 37 s for one read each (512 in flight: 34 s, the limit being elsewhere).
/// Each read still waits for its subscription's read budget, and ARM's own
/// 429s are followed by the client (`Retry-After`).
const ARM_CHECKS_IN_FLIGHT: usize = 256;

/// What Azure showed of each subscription a round asked about, and how.
pub(super) struct AzureChecked {
    /// In the order asked.
    pub results: Vec<Result<Handlers, DetectError>>,
    /// Subscriptions Resource Graph answered for, and its requests.
    pub by_graph: usize,
    pub graph_requests: usize,
    /// Subscriptions read with the per-subscription ARM reads.
    pub by_arm: usize,
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

impl ActionGroup {
    /// The enabled alerts of `alerts` that route to this group.
    fn routing(&self, alerts: &[Alert]) -> usize {
        alerts
            .iter()
            .filter_map(|a| a.properties.as_ref())
            .filter(|p| p.enabled.unwrap_or(true))
            .filter(|p| {
                p.actions.as_ref().is_some_and(|a| {
                    a.action_groups
                        .iter()
                        .any(|g| routes_to(&g.action_group_id, &self.id))
                })
            })
            .count()
    }
}

impl Detector {
    /// What Azure shows in each subscription of `asked`: Resource Graph for
    /// all of a credential's at once, the ARM reads for the rest.
    pub(super) async fn azure_all(&self, asked: &[Asked<'_>]) -> AzureChecked {
        let mut results = Vec::with_capacity(asked.len());
        let mut by_credential: BTreeMap<&str, (&Arc<TokenSource>, Vec<usize>)> = BTreeMap::new();
        for (i, a) in asked.iter().enumerate() {
            match a.tokens {
                Some(t) => by_credential
                    .entry(t.name())
                    .or_insert((t, Vec::new()))
                    .1
                    .push(i),
                None => results.push((i, Err(DetectError::NoCredential(a.id.to_string())))),
            }
        }
        let graphed = futures::future::join_all(by_credential.into_values().map(
            |(tokens, indices)| async move {
                let ids: Vec<String> = indices.iter().map(|&i| asked[i].id.to_string()).collect();
                let checked = self.graph.check(&ids, tokens).await;
                (tokens, indices, checked)
            },
        ))
        .await;
        let mut graph_requests = 0;
        let mut by_arm = Vec::new();
        for (tokens, indices, checked) in graphed {
            graph_requests += checked.requests;
            for i in indices {
                // Every id is in `handlers` or `fallback`, lowercased.
                match checked.handlers.get(&asked[i].id.to_ascii_lowercase()) {
                    Some(seen) => results.push((i, Ok(seen.state()))),
                    None => by_arm.push((i, tokens)),
                }
            }
        }
        let by_graph = results.iter().filter(|(_, r)| r.is_ok()).count();
        let by_arm_count = by_arm.len();
        // The futures are made first: a stream holding the closure that makes
        // them would not be `Send` for every lifetime, as a spawned task needs.
        let reads: Vec<_> = by_arm
            .into_iter()
            .map(|(i, tokens)| async move { (i, self.arm_reads(asked[i].id, tokens).await) })
            .collect();
        let read: Vec<_> = futures::stream::iter(reads)
            .buffer_unordered(ARM_CHECKS_IN_FLIGHT)
            .collect()
            .await;
        results.extend(read);
        results.sort_by_key(|(i, _)| *i);
        AzureChecked {
            results: results.into_iter().map(|(_, r)| r).collect(),
            by_graph,
            graph_requests,
            by_arm: by_arm_count,
        }
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

    /// What the two ARM reads show of the event handlers in `subscription_id`.
    async fn arm_reads(
        &self,
        subscription_id: &str,
        tokens: &Arc<TokenSource>,
    ) -> Result<Handlers, DetectError> {
        let groups_url = self.arm.arm_url(
            &format!(
                "subscriptions/{subscription_id}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Insights/actionGroups"
            ),
            ACTION_GROUPS_API,
        );
        let groups: Vec<ActionGroup> =
            match self.list(groups_url, tokens, "the action group list").await {
                Ok(g) => g,
                // The resource group does not exist: no handlers.
                Err(DetectError::Azure(AzureError::Rejected { status: 404, .. })) => {
                    return Ok(Handlers::NoResourceGroup);
                }
                Err(e) => return Err(e),
            };
        let Some(group) = groups
            .iter()
            .find(|g| g.name.eq_ignore_ascii_case(ACTION_GROUP))
        else {
            return Ok(Handlers::NoActionGroup);
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
        Ok(Handlers::from_parts(
            true,
            Some(enabled),
            group.routing(&alerts),
        ))
    }
}
