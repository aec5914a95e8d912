//! What Azure shows of Guardrails' event handlers in one subscription: the
//! handlers' action group in `turbot_rg`, and the activity log alerts that
//! route to it, read through the poller's own ARM client and credential.

use std::sync::Arc;

use serde::Deserialize;

use super::{DetectError, Detector};
use crate::azure::{AzureError, TokenSource};
use crate::poll::Heartbeat;

pub const HANDLER_RESOURCE_GROUP: &str = "turbot_rg";
pub const HANDLER_ACTION_GROUP: &str = "turbot_azure_event_handler_action_group";
const ACTION_GROUPS_API: &str = "2023-01-01";
const ALERTS_API: &str = "2020-10-01";
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

    /// A short form, for a table cell.
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

fn alerts_text(n: usize) -> String {
    if n == 1 {
        "1 alert".into()
    } else {
        format!("{n} alerts")
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

impl ActionGroup {
    /// Whether an alert's `actionGroupId` names this group: by its id when
    /// ARM gave one, else by the handlers' well-known path.
    fn is(&self, action_group_id: &str) -> bool {
        let id = action_group_id.trim_end_matches('/').to_ascii_lowercase();
        if !self.id.is_empty() {
            id == self.id.trim_end_matches('/').to_ascii_lowercase()
        } else {
            id.ends_with(&format!(
                "/resourcegroups/{HANDLER_RESOURCE_GROUP}/providers/microsoft.insights/actiongroups/{HANDLER_ACTION_GROUP}"
            ))
        }
    }

    /// The enabled alerts of `alerts` that route to this group.
    fn routing(&self, alerts: &[Alert]) -> usize {
        alerts
            .iter()
            .filter_map(|a| a.properties.as_ref())
            .filter(|p| p.enabled.unwrap_or(true))
            .filter(|p| {
                p.actions
                    .as_ref()
                    .is_some_and(|a| a.action_groups.iter().any(|g| self.is(&g.action_group_id)))
            })
            .count()
    }
}

impl Detector {
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

    /// What Azure shows of the event handlers in `subscription_id`.
    pub(super) async fn azure(
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
        Ok(match (enabled, group.routing(&alerts)) {
            (false, n) => AzureHandlers::Disabled { alerts: n },
            (true, 0) => AzureHandlers::NoAlerts,
            (true, n) => AzureHandlers::Live { alerts: n },
        })
    }
}
