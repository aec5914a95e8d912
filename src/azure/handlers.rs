//! What Guardrails' event handlers leave in Azure, and the five states a
//! subscription can be in: the names both ways of reading them share (the
//! per-subscription ARM reads in `detect/azure.rs`, and Resource Graph for up
//! to 1,000 subscriptions a query in [`super::resource_graph`]), and how a
//! state is said in messages and in `check-config --online`'s table.
//!
//! The handlers are an Action Group `turbot_azure_event_handler_action_group`
//! in the resource group `turbot_rg` and the Activity Log Alerts that route to
//! it (their names are not documented: they are found by the action group they
//! name). The action group's webhook URI carries a Guardrails token: nothing
//! here reads it.

pub const RESOURCE_GROUP: &str = "turbot_rg";
pub const ACTION_GROUP: &str = "turbot_azure_event_handler_action_group";

/// What Azure shows of Guardrails' event handlers in one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handlers {
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

impl Handlers {
    /// From what was found: whether `turbot_rg` exists, the action group's
    /// `enabled` when it exists, and the enabled alerts routing to it.
    pub fn from_parts(resource_group: bool, action_group: Option<bool>, alerts: usize) -> Self {
        match (resource_group, action_group, alerts) {
            (false, None, _) => Handlers::NoResourceGroup,
            (true, None, _) => Handlers::NoActionGroup,
            (_, Some(false), n) => Handlers::Disabled { alerts: n },
            (_, Some(true), 0) => Handlers::NoAlerts,
            (_, Some(true), n) => Handlers::Live { alerts: n },
        }
    }

    pub fn live(&self) -> bool {
        matches!(self, Handlers::Live { .. })
    }

    /// What was found, for messages and the store's detection notes.
    pub fn describe(&self) -> String {
        let ag = format!("action group {ACTION_GROUP} in {RESOURCE_GROUP}");
        match self {
            Handlers::NoResourceGroup => format!("no resource group {RESOURCE_GROUP}"),
            Handlers::NoActionGroup => format!("no {ag}"),
            Handlers::Disabled { alerts } => {
                format!("{ag} is disabled ({} routing to it)", alerts_text(*alerts))
            }
            Handlers::NoAlerts => format!("{ag} is enabled, but no enabled alert routes to it"),
            Handlers::Live { alerts } => format!(
                "{ag} is enabled, {} {} to it",
                alerts_text(*alerts),
                if *alerts == 1 { "routes" } else { "route" }
            ),
        }
    }

    /// A short form, for a table cell.
    pub fn short(&self) -> String {
        match self {
            Handlers::NoResourceGroup => format!("none (no {RESOURCE_GROUP})"),
            Handlers::NoActionGroup => "none (no action group)".into(),
            Handlers::Disabled { .. } => "disabled".into(),
            Handlers::NoAlerts => "no alerts route".into(),
            Handlers::Live { alerts } => format!("LIVE ({})", alerts_text(*alerts)),
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

/// Whether an alert's `actionGroupId` names the handlers' action group whose
/// own id is `group_id` (compared without case or a trailing `/`); when that
/// id is unknown (empty), any `turbot_rg/.../turbot_azure_event_handler_action_group`.
pub fn routes_to(action_group_id: &str, group_id: &str) -> bool {
    let id = action_group_id.trim_end_matches('/').to_ascii_lowercase();
    if group_id.is_empty() {
        id.ends_with(&format!(
            "/resourcegroups/{RESOURCE_GROUP}/providers/microsoft.insights/actiongroups/{ACTION_GROUP}"
        ))
    } else {
        id == group_id.trim_end_matches('/').to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_five_states() {
        use Handlers::*;
        assert_eq!(Handlers::from_parts(false, None, 0), NoResourceGroup);
        assert_eq!(Handlers::from_parts(true, None, 2), NoActionGroup);
        assert_eq!(
            Handlers::from_parts(true, Some(false), 2),
            Disabled { alerts: 2 }
        );
        assert_eq!(Handlers::from_parts(true, Some(true), 0), NoAlerts);
        assert_eq!(
            Handlers::from_parts(true, Some(true), 3),
            Live { alerts: 3 }
        );
        // An action group cannot exist outside its resource group: it counts.
        assert_eq!(
            Handlers::from_parts(false, Some(true), 1),
            Live { alerts: 1 }
        );
        assert!(Live { alerts: 1 }.live() && !NoAlerts.live());
    }

    #[test]
    fn each_state_says_what_was_found() {
        use Handlers::*;
        assert_eq!(
            Live { alerts: 3 }.describe(),
            "action group turbot_azure_event_handler_action_group in turbot_rg is enabled, 3 alerts route to it"
        );
        assert_eq!(
            Live { alerts: 1 }.describe(),
            "action group turbot_azure_event_handler_action_group in turbot_rg is enabled, 1 alert routes to it"
        );
        assert_eq!(
            NoActionGroup.describe(),
            "no action group turbot_azure_event_handler_action_group in turbot_rg"
        );
        assert_eq!(NoResourceGroup.describe(), "no resource group turbot_rg");
        assert!(
            Disabled { alerts: 2 }
                .describe()
                .ends_with("is disabled (2 alerts routing to it)")
        );
        assert_eq!(NoResourceGroup.short(), "none (no turbot_rg)");
        assert_eq!(Live { alerts: 1 }.short(), "LIVE (1 alert)");
    }

    #[test]
    fn routing_is_matched_without_case_or_trailing_slash() {
        let group = "/subscriptions/aaa/resourceGroups/turbot_rg/providers/microsoft.insights/actionGroups/turbot_azure_event_handler_action_group";
        assert!(routes_to(&group.to_uppercase(), group));
        assert!(routes_to(&format!("{group}/"), group));
        assert!(!routes_to(&group.replace("aaa", "bbb"), group));
        // Without the group's id, any subscription's handler group counts.
        assert!(routes_to(&group.replace("aaa", "bbb"), ""));
        assert!(!routes_to(
            "/subscriptions/aaa/resourceGroups/other/providers/microsoft.insights/actionGroups/x",
            ""
        ));
    }
}
