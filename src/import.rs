//! `import`: `[[subscription]]` sections to paste into `poller.toml`, from a
//! Guardrails workspace (`--from-guardrails`: its Azure subscriptions with
//! their Event Poller interval and window) or from Azure (`--from-azure`: the
//! subscriptions the credential can read). A subscription that cannot be
//! polled is printed commented out, with why; the output parses as TOML.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::azure::{ActivityLogClient, AzureError, CredentialError, ReadBudget, TokenSource};
use crate::config::{Config, SubscriptionId};
use crate::detect::{Asked, Detector, Verdict};
use crate::guardrails_api::{
    ApiError, EVENT_HANDLERS_POLICY, EVENT_POLLER_INTERVAL_POLICY, EVENT_POLLER_POLICY,
    EVENT_POLLER_WINDOW_POLICY, GuardrailsApi, subscription_aka,
};
use crate::heartbeat::Heartbeat;

pub const SUBSCRIPTIONS_API: &str = "2022-12-01";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "--from-guardrails needs [guardrails.api] (workspace_url, access_key, secret_key) in the configuration"
    )]
    NoApi,
    #[error("--credential: no credential {0:?} in the configuration")]
    UnknownCredential(String),
    #[error(
        "--from-azure: the configuration has {0} credentials; choose one with --credential NAME"
    )]
    WhichCredential(usize),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("Azure: {0}")]
    Azure(#[from] AzureError),
    #[error("Azure: the subscription list is unreadable: {0}")]
    Malformed(String),
    #[error("Guardrails: {0}")]
    Guardrails(#[from] ApiError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

impl ImportError {
    /// True when the configuration or the command line is what is wrong.
    pub fn is_config(&self) -> bool {
        match self {
            ImportError::NoApi
            | ImportError::UnknownCredential(_)
            | ImportError::WhichCredential(_)
            | ImportError::Credential(CredentialError::Build { .. }) => true,
            ImportError::Guardrails(e) => e.is_config(),
            _ => false,
        }
    }
}

/// One section to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub id: String,
    pub name: Option<String>,
    pub credential: Option<String>,
    pub interval: Option<String>,
    pub window: Option<String>,
    /// Notes printed above the section.
    pub notes: Vec<String>,
    /// Why it cannot be polled; the section is printed commented out.
    pub blocked: Option<String>,
}

/// TOML for a list of sections, with a header.
pub fn render(header: &str, sections: &[Section]) -> String {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str(&format!("# {line}\n"));
    }
    for s in sections {
        out.push('\n');
        for n in &s.notes {
            out.push_str(&format!("# {n}\n"));
        }
        let prefix = match &s.blocked {
            Some(why) => {
                out.push_str(&format!("# cannot be polled: {why}\n"));
                "# "
            }
            None => "",
        };
        let mut line = |text: String| out.push_str(&format!("{prefix}{text}\n"));
        line("[[subscription]]".into());
        line(format!("id = {}", toml_string(&s.id)));
        if let Some(n) = &s.name {
            line(format!("name = {}", toml_string(n)));
        }
        if let Some(c) = &s.credential {
            line(format!("credential = {}", toml_string(c)));
        }
        if let Some(i) = &s.interval {
            line(format!("interval = {}", toml_string(i)));
        }
        if let Some(w) = &s.window {
            line(format!("window = {}", toml_string(w)));
        }
        line("event_handlers = \"detect\"".into());
    }
    out
}

/// A TOML basic string (quotes and control characters escaped).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `Every 5 minutes` (interval) or `15 minutes` (window) as `5m` / `15m`.
pub fn policy_duration(value: &str) -> Option<String> {
    let text = value.trim();
    let text = text
        .strip_prefix("Every ")
        .or_else(|| text.strip_prefix("every "))
        .unwrap_or(text);
    let d: Duration = humantime::parse_duration(text.trim()).ok()?;
    Some(humantime::format_duration(d).to_string())
}

fn http() -> Result<reqwest::Client, ImportError> {
    crate::app::http_client().map_err(|e| ImportError::Http(e.to_string()))
}

/// `--from-guardrails`.
pub async fn from_guardrails(config: &Config) -> Result<String, ImportError> {
    let api_config = config.guardrails.api.clone().ok_or(ImportError::NoApi)?;
    let api = GuardrailsApi::new(http()?, api_config, config.guardrails.timeout);
    let known = api.subscriptions().await?;
    let configured: Vec<&str> = config.subscriptions.iter().map(|s| s.id.as_str()).collect();
    let mut sections = Vec::new();
    for k in known {
        let Some(id) = k.subscription_id.as_deref().and_then(SubscriptionId::parse) else {
            tracing::warn!(title = ?k.title, akas = ?k.akas, "a Guardrails subscription without a subscription id; skipped");
            continue;
        };
        let aka = subscription_aka(id.as_str());
        let interval = api
            .policy_value(EVENT_POLLER_INTERVAL_POLICY, &aka)
            .await?
            .and_then(|v| policy_duration(&v));
        let window = api
            .policy_value(EVENT_POLLER_WINDOW_POLICY, &aka)
            .await?
            .and_then(|v| policy_duration(&v));
        let handlers = api
            .policy_values(EVENT_HANDLERS_POLICY, id.as_str())
            .await?;
        let poller = api.policy_values(EVENT_POLLER_POLICY, id.as_str()).await?;
        let mut notes = Vec::new();
        if configured.contains(&id.as_str()) {
            notes.push("already in this configuration".to_string());
        }
        let blocked = handlers
            .iter()
            .filter_map(|v| v.value.as_deref())
            .find(|v| v.trim_start().starts_with("Enforce: Configured"))
            .map(|v| format!("Guardrails event handlers are on (Azure > Turbot > Event Handlers = {v}); pollers and handlers must never both feed a subscription"));
        if poller
            .iter()
            .any(|v| v.value.as_deref().is_some_and(|t| t.trim() == "Enabled"))
        {
            notes.push("before starting: set Azure > Turbot > Event Poller to Disabled for it (now Enabled); this daemon replaces that poller and refuses to run beside it".into());
        }
        sections.push(Section {
            id: id.to_string(),
            name: k.title,
            credential: None,
            interval,
            window,
            notes,
            blocked,
        });
    }
    let header = format!(
        "Azure subscriptions in the Guardrails workspace at {} ({} found), with\n\
         its Event Poller Interval and Window policy values. Paste into poller.toml.",
        api.host(),
        sections.len()
    );
    Ok(render(&header, &sections))
}

#[derive(Deserialize)]
struct AzureSubscriptions {
    #[serde(default = "Vec::new")]
    value: Vec<AzureSubscription>,
    #[serde(rename = "nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
struct AzureSubscription {
    #[serde(rename = "subscriptionId")]
    subscription_id: String,
    #[serde(rename = "displayName")]
    display_name: Option<String>,
    state: Option<String>,
}

/// `--from-azure`.
pub async fn from_azure(config: &Config, credential: Option<&str>) -> Result<String, ImportError> {
    let name = match credential {
        Some(c) if config.credentials.contains_key(c) => c.to_string(),
        Some(c) => return Err(ImportError::UnknownCredential(c.to_string())),
        None if config.credentials.len() == 1 => config
            .credentials
            .keys()
            .next()
            .cloned()
            .unwrap_or_default(),
        None => return Err(ImportError::WhichCredential(config.credentials.len())),
    };
    let cred = config
        .credentials
        .get(&name)
        .cloned()
        .ok_or_else(|| ImportError::UnknownCredential(name.clone()))?;
    let http = http()?;
    let tokens = Arc::new(TokenSource::new(
        &name,
        cred,
        config.azure.authority_host.clone(),
        config.azure.scope(),
        http.clone(),
        config.azure.request_timeout,
    )?);
    let budget = Arc::new(ReadBudget::new(
        config.azure.reads_burst,
        config.azure.reads_per_second,
    ));
    let arm = ActivityLogClient::new(
        http.clone(),
        config.azure.resource_manager_url.clone(),
        config.azure.backoff,
        config.azure.request_timeout,
        budget.clone(),
    );
    let beat = Heartbeat::default();
    let mut url = arm.arm_url("subscriptions", SUBSCRIPTIONS_API);
    let mut found = Vec::new();
    for _ in 0..100 {
        let got = arm.get(&url, &tokens, &beat).await?;
        let page: AzureSubscriptions =
            serde_json::from_slice(&got.body).map_err(|e| ImportError::Malformed(e.to_string()))?;
        found.extend(page.value);
        match page.next_link.filter(|l| !l.is_empty()) {
            Some(l) => url = arm.next_page(&l)?,
            None => break,
        }
    }
    let configured: Vec<&str> = config.subscriptions.iter().map(|s| s.id.as_str()).collect();
    let found: Vec<(SubscriptionId, AzureSubscription)> = found
        .into_iter()
        .filter_map(|s| SubscriptionId::parse(&s.subscription_id).map(|id| (id, s)))
        .collect();
    // Every subscription that Azure does not already rule out, checked at once.
    let ruled_out = |s: &AzureSubscription| match s.state.as_deref().unwrap_or("Enabled") {
        "Enabled" | "Warned" | "PastDue" => None,
        other => Some(format!("Azure reports it {other}")),
    };
    let asked: Vec<Asked> = found
        .iter()
        .filter(|(_, s)| ruled_out(s).is_none())
        .map(|(id, _)| Asked {
            id: id.as_str(),
            tokens: Some(&tokens),
        })
        .collect();
    let mut detections = Detector::new(config, http, budget)
        .detect_many(&asked)
        .await
        .into_iter();
    let mut sections = Vec::new();
    for (id, s) in &found {
        let mut notes = Vec::new();
        if configured.contains(&id.as_str()) {
            notes.push("already in this configuration".to_string());
        }
        let mut blocked = ruled_out(s);
        if blocked.is_none()
            && let Some(d) = detections.next()
        {
            match d.verdict() {
                Verdict::Live(found) => blocked = Some(found.join("; ")),
                Verdict::Unknown(errors) => {
                    notes.push(format!("event handler check failed: {}", errors.join("; ")))
                }
                Verdict::Clear(_) => {}
            }
        }
        sections.push(Section {
            id: id.to_string(),
            name: s.display_name.clone(),
            credential: Some(name.clone()),
            interval: None,
            window: None,
            notes,
            blocked,
        });
    }
    let header = format!(
        "Azure subscriptions that credential {name:?} can read ({} found).\n\
         Paste into poller.toml; interval and window come from [defaults].",
        sections.len()
    );
    Ok(render(&header, &sections))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_durations_become_config_durations() {
        assert_eq!(policy_duration("Every 1 minute").as_deref(), Some("1m"));
        assert_eq!(policy_duration("Every 10 minutes").as_deref(), Some("10m"));
        assert_eq!(policy_duration("15 minutes").as_deref(), Some("15m"));
        assert_eq!(policy_duration("whenever"), None);
    }

    #[test]
    fn blocked_sections_are_commented_out_and_names_escaped() {
        let text = render(
            "head",
            &[
                Section {
                    id: "11111111-1111-1111-1111-111111111111".into(),
                    name: Some("Prod \"main\"".into()),
                    credential: None,
                    interval: Some("1m".into()),
                    window: Some("15m".into()),
                    notes: vec![],
                    blocked: None,
                },
                Section {
                    id: "22222222-2222-2222-2222-222222222222".into(),
                    name: None,
                    credential: Some("main".into()),
                    interval: None,
                    window: None,
                    notes: vec!["note".into()],
                    blocked: Some("handlers".into()),
                },
            ],
        );
        let v: toml::Table = toml::from_str(&text).expect("TOML");
        let subs = v["subscription"].as_array().expect("array");
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0]["name"].as_str(), Some("Prod \"main\""));
        assert!(text.contains("# cannot be polled: handlers\n# [[subscription]]"));
    }
}
