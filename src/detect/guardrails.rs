//! What Guardrails says of a subscription: its Event Handlers and Event
//! Poller policies on the subscription and below it, read through the
//! GraphQL API (`guardrails_api.rs`).

use super::DetectError;
use crate::guardrails_api::{
    EVENT_HANDLERS_POLICY, EVENT_POLLER_POLICY, GuardrailsApi, PolicyValue,
};

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
        Self::new("Azure > Turbot > Event Handlers", values, |t| {
            t.trim_start().starts_with("Enforce: Configured")
        })
    }

    fn poller(values: Vec<PolicyValue>) -> Self {
        Self::new("Azure > Turbot > Event Poller", values, |t| {
            t.trim().eq_ignore_ascii_case("Enabled")
        })
    }

    /// On when any value turns it on (`turns_on`).
    fn new(title: &'static str, values: Vec<PolicyValue>, turns_on: fn(&str) -> bool) -> Self {
        let on = values
            .iter()
            .any(|v| v.value.as_deref().is_some_and(turns_on));
        PolicyFinding { title, values, on }
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

/// Reads both policies on `subscription_id`, at the same time.
pub(super) async fn policies(
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
}
