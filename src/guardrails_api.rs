//! The Guardrails GraphQL API (`{workspace}/api/latest/graphql`), read with an
//! API key (HTTP Basic: access key and secret key): the policy values that say
//! whether Guardrails' own event handlers or event poller feed a subscription
//! (for the whole workspace in one paged query per policy, or for one
//! subscription), and the list of Azure subscriptions a workspace knows, for
//! `import`.
//!
//! Every filter says its hierarchy scope in full (`resource:` with
//! `level:self,descendant`, and `policyTypeLevel:self` or
//! `resourceTypeLevel:self` beside a type): nothing relies on a default the
//! server could change, and Event Poller's own sub-policies (Interval,
//! Window) are not read as Event Poller values. Pages hold [`PAGE_LIMIT`]
//! items (Guardrails' default is 20).
//!
//! Only reads. The keys travel in the `Authorization` header, which never
//! reaches a log or an error: errors carry the HTTP status, the transport
//! fault, or GraphQL's own messages.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use crate::config::GuardrailsApiConfig;
use crate::retry::{Backoff, retry_after};

/// The largest answer read: a workspace-wide page of 5,000 policy values is
/// a few MiB; anything past this is a broken proxy, not Guardrails.
const ANSWER_LIMIT: crate::http::Limit = crate::http::Limit::mib(16);

pub const EVENT_HANDLERS_POLICY: &str = "tmod:@turbot/azure#/policy/types/eventHandlers";
pub const EVENT_POLLER_POLICY: &str = "tmod:@turbot/azure#/policy/types/eventPoller";
pub const EVENT_POLLER_INTERVAL_POLICY: &str =
    "tmod:@turbot/azure#/policy/types/eventPollerInterval";
pub const EVENT_POLLER_WINDOW_POLICY: &str = "tmod:@turbot/azure#/policy/types/eventPollerWindow";
pub const SUBSCRIPTION_TYPE: &str = "tmod:@turbot/azure#/resource/types/subscription";

/// The prefix of a subscription's AKA, and of the AKAs of resources below it.
pub const SUBSCRIPTION_AKA_PREFIX: &str = "azure:///subscriptions/";
/// The root of a workspace's resource hierarchy (its AKA): every resource
/// is below it.
pub const WORKSPACE_ROOT: &str = "tmod:@turbot/turbot#/";
/// Items a page of a list query holds (`limit:`).
pub const PAGE_LIMIT: usize = 5000;

/// A subscription's resource id (AKA) in Guardrails.
pub fn subscription_aka(id: &str) -> String {
    format!("{SUBSCRIPTION_AKA_PREFIX}{id}")
}

/// The filter for the values of `policy_type` itself (not its sub-policies)
/// on `resource` (an AKA) and every resource below it.
pub fn policy_values_filter(policy_type: &str, resource: &str) -> String {
    format!(
        "policyTypeId:'{policy_type}' policyTypeLevel:self resource:'{resource}' level:self,descendant limit:{PAGE_LIMIT}"
    )
}

/// The filter for the workspace's Azure subscriptions (not the resources
/// below them, whose types descend from the subscription's).
pub fn subscriptions_filter() -> String {
    format!(
        "resourceTypeId:'{SUBSCRIPTION_TYPE}' resourceTypeLevel:self resource:'{WORKSPACE_ROOT}' level:self,descendant limit:{PAGE_LIMIT}"
    )
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error(
        "the Guardrails API refused the API key (HTTP {0}): check [guardrails.api] access_key and secret_key"
    )]
    Auth(u16),
    #[error("the Guardrails API is unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: usize, last: String },
    #[error("the Guardrails API rejected the query (HTTP {0})")]
    Rejected(u16),
    #[error("the Guardrails API answered with errors: {0}")]
    Query(String),
    #[error("the Guardrails API answered something that is not a GraphQL result: {0}")]
    Malformed(String),
}

impl ApiError {
    /// True when the configuration (the key) is what is wrong.
    pub fn is_config(&self) -> bool {
        matches!(self, ApiError::Auth(_))
    }
}

/// One value of a policy on a resource (the subscription or below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyValue {
    /// The value as text (`Enforce: Configured`, `Enabled`, ...).
    pub value: Option<String>,
    /// `ok | tbd | error | invalid`.
    pub state: Option<String>,
    /// Where it applies, as Guardrails titles it (a region, the subscription).
    pub resource: Option<String>,
}

/// Where a policy value applies, as the workspace-wide answer says it:
/// enough to tell which subscription it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The resource's Guardrails id.
    pub id: Option<String>,
    /// Its AKAs (a subscription's: `azure:///subscriptions/<id>`).
    pub akas: Vec<String>,
    /// Its ancestors' Guardrails ids, from the root down.
    pub path: Vec<String>,
}

/// A policy value and the resource it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedValue {
    pub value: PolicyValue,
    pub placement: Placement,
}

/// An Azure subscription as a Guardrails workspace knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownSubscription {
    pub subscription_id: Option<String>,
    pub title: Option<String>,
    pub akas: Vec<String>,
}

pub struct GuardrailsApi {
    http: reqwest::Client,
    endpoint: Url,
    config: GuardrailsApiConfig,
    timeout: Duration,
    backoff: Backoff,
}

impl std::fmt::Debug for GuardrailsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GuardrailsApi({})",
            self.endpoint.host_str().unwrap_or("?")
        )
    }
}

const POLICY_VALUES: &str = "query PolicyValues($filter: [String!], $next: String) {
  policyValues(filter: $filter, paging: $next) {
    items { value state resource { trunk { title } turbot { id akas path } } turbot { resourceId policyTypeId } }
    paging { next }
  }
}";

const POLICY_VALUE: &str = "query ReadPolicyValue($uri: String, $resourceId: ID) {
  policyValue(uri: $uri, resourceId: $resourceId) { value state }
}";

const SUBSCRIPTIONS: &str = "query Subscriptions($filter: [String!], $next: String) {
  resources(filter: $filter, paging: $next) {
    items { data turbot { id akas title } }
    paging { next }
  }
}";

/// Pages followed at most, so that a server that always says "next" ends.
const MAX_PAGES: usize = 1000;

impl GuardrailsApi {
    pub fn new(http: reqwest::Client, config: GuardrailsApiConfig, timeout: Duration) -> Self {
        GuardrailsApi {
            http,
            endpoint: config.graphql_url(),
            config,
            timeout,
            backoff: Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(10),
                retries: Some(3),
            },
        }
    }

    /// The host, for messages.
    pub fn host(&self) -> String {
        self.endpoint.host_str().unwrap_or("?").to_string()
    }

    /// One GraphQL request; retries transport faults, 429 and 5xx.
    async fn query(&self, query: &str, variables: Value) -> Result<Value, ApiError> {
        let body = json!({ "query": query, "variables": variables });
        let mut delays = self.backoff.delays();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let sent = self
                .http
                .post(self.endpoint.clone())
                .basic_auth(
                    self.config.access_key.expose_secret(),
                    Some(self.config.secret_key.expose_secret()),
                )
                .header(reqwest::header::ACCEPT, "application/json")
                .json(&body)
                .timeout(self.timeout)
                .send()
                .await;
            let (wait, last) = match sent {
                Err(e) => (None, crate::http::describe(&e)),
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        let bytes = crate::http::read(resp, ANSWER_LIMIT).await.map_err(|e| {
                            ApiError::Unavailable {
                                attempts,
                                last: e.to_string(),
                            }
                        })?;
                        return parse_result(&bytes);
                    } else if status.as_u16() == 401 || status.as_u16() == 403 {
                        return Err(ApiError::Auth(status.as_u16()));
                    } else if status.as_u16() == 429 || status.is_server_error() {
                        (retry_after(resp.headers()), format!("HTTP {status}"))
                    } else {
                        return Err(ApiError::Rejected(status.as_u16()));
                    }
                }
            };
            let Some(delay) = delays.next() else {
                return Err(ApiError::Unavailable { attempts, last });
            };
            tokio::time::sleep(wait.unwrap_or(delay)).await;
        }
    }

    /// Every value of `policy_type` on the subscription and below it (regions
    /// carry their own event handler settings).
    pub async fn policy_values(
        &self,
        policy_type: &str,
        subscription_id: &str,
    ) -> Result<Vec<PolicyValue>, ApiError> {
        let filter = policy_values_filter(policy_type, &subscription_aka(subscription_id));
        let values: Vec<RawPolicyValue> = self
            .all_pages(POLICY_VALUES, &filter, "policyValues")
            .await?;
        Ok(values.into_iter().map(|v| v.placed().value).collect())
    }

    /// Every value of `policy_type` in the whole workspace, each with where
    /// it applies, handed to `each` a page at a time (so that a large
    /// workspace's answer is never held whole): one paged query, however
    /// many subscriptions there are.
    pub async fn workspace_policy_values(
        &self,
        policy_type: &str,
        mut each: impl FnMut(PlacedValue),
    ) -> Result<(), ApiError> {
        let filter = policy_values_filter(policy_type, WORKSPACE_ROOT);
        self.each_page(
            POLICY_VALUES,
            &filter,
            "policyValues",
            |items: Vec<RawPolicyValue>| items.into_iter().for_each(|v| each(v.placed())),
        )
        .await
    }

    /// The effective value of one policy on one resource.
    pub async fn policy_value(
        &self,
        policy_type: &str,
        resource: &str,
    ) -> Result<Option<String>, ApiError> {
        let data = self
            .query(
                POLICY_VALUE,
                json!({ "uri": policy_type, "resourceId": resource }),
            )
            .await?;
        let v: Option<RawPolicyValue> = field(&data, "policyValue")?;
        Ok(v.and_then(|v| v.value.as_ref().and_then(value_text)))
    }

    /// The Azure subscriptions the workspace knows.
    pub async fn subscriptions(&self) -> Result<Vec<KnownSubscription>, ApiError> {
        let resources: Vec<RawResource> = self
            .all_pages(SUBSCRIPTIONS, &subscriptions_filter(), "resources")
            .await?;
        Ok(resources.into_iter().map(known_subscription).collect())
    }

    /// Every item of a paged query's field `name`, following `paging.next`
    /// (at most [`MAX_PAGES`] pages).
    async fn all_pages<T: for<'de> Deserialize<'de>>(
        &self,
        query: &str,
        filter: &str,
        name: &str,
    ) -> Result<Vec<T>, ApiError> {
        let mut out = Vec::new();
        self.each_page(query, filter, name, |items| out.extend(items))
            .await?;
        Ok(out)
    }

    /// Hands each page's items of a paged query's field `name` to `each`,
    /// following `paging.next` (at most [`MAX_PAGES`] pages).
    async fn each_page<T: for<'de> Deserialize<'de>>(
        &self,
        query: &str,
        filter: &str,
        name: &str,
        mut each: impl FnMut(Vec<T>),
    ) -> Result<(), ApiError> {
        let mut next: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let data = self
                .query(query, json!({ "filter": [filter], "next": next }))
                .await?;
            let page: Paged<T> = field(&data, name)?;
            each(page.items);
            next = page.paging.and_then(|p| p.next).filter(|n| !n.is_empty());
            if next.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// A subscription resource as the workspace knows it: its id from its data,
/// else from its AKA; its title, else its display name.
fn known_subscription(r: RawResource) -> KnownSubscription {
    let turbot = r.turbot.unwrap_or_default();
    let from_data = r
        .data
        .as_ref()
        .and_then(|d| d.get("subscriptionId"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let from_aka = turbot.akas.iter().find_map(|a| {
        a.strip_prefix("azure:///subscriptions/")
            .map(|s| s.trim_end_matches('/').to_string())
    });
    let title = turbot.title.or_else(|| {
        r.data
            .as_ref()
            .and_then(|d| d.get("displayName"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    KnownSubscription {
        subscription_id: from_data.or(from_aka),
        title,
        akas: turbot.akas,
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[derive(Deserialize)]
struct Paged<T> {
    #[serde(default = "Vec::new")]
    items: Vec<T>,
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Paging {
    next: Option<String>,
}

#[derive(Deserialize)]
struct RawPolicyValue {
    value: Option<Value>,
    state: Option<String>,
    resource: Option<RawResourceRef>,
}

impl RawPolicyValue {
    fn placed(self) -> PlacedValue {
        let (trunk, turbot) = match self.resource {
            Some(r) => (r.trunk, r.turbot),
            None => (None, None),
        };
        let turbot = turbot.unwrap_or_default();
        PlacedValue {
            value: PolicyValue {
                value: self.value.as_ref().and_then(value_text),
                state: self.state,
                resource: trunk.and_then(|t| t.title),
            },
            placement: Placement {
                id: turbot.id.as_ref().and_then(value_text),
                akas: turbot.akas.unwrap_or_default(),
                path: turbot.path.as_ref().map(path_ids).unwrap_or_default(),
            },
        }
    }
}

/// A resource's `turbot.path`: its ancestors' ids, `"1.2.3"` (or a list).
fn path_ids(path: &Value) -> Vec<String> {
    match path {
        Value::String(s) => s
            .split('.')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        Value::Array(items) => items.iter().filter_map(value_text).collect(),
        other => value_text(other).into_iter().collect(),
    }
}

#[derive(Deserialize)]
struct RawResourceRef {
    trunk: Option<Trunk>,
    turbot: Option<RawPlacement>,
}

#[derive(Deserialize, Default)]
struct RawPlacement {
    id: Option<Value>,
    akas: Option<Vec<String>>,
    path: Option<Value>,
}

#[derive(Deserialize)]
struct Trunk {
    title: Option<String>,
}

#[derive(Deserialize)]
struct RawResource {
    data: Option<Value>,
    turbot: Option<RawTurbot>,
}

#[derive(Deserialize, Default)]
struct RawTurbot {
    #[serde(default)]
    akas: Vec<String>,
    title: Option<String>,
}

/// GraphQL's `{"data": ..., "errors": [...]}`: errors win.
fn parse_result(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::Malformed(format!("not JSON ({e})")))?;
    if let Some(errors) = v.get("errors").and_then(Value::as_array)
        && !errors.is_empty()
    {
        let messages: Vec<String> = errors
            .iter()
            .map(|e| {
                e.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("an error without a message")
                    .chars()
                    .take(300)
                    .collect()
            })
            .collect();
        return Err(ApiError::Query(messages.join("; ")));
    }
    match v.get("data") {
        Some(d) if !d.is_null() => Ok(d.clone()),
        _ => Err(ApiError::Malformed("no data".into())),
    }
}

fn field<T: for<'de> Deserialize<'de>>(data: &Value, name: &str) -> Result<T, ApiError> {
    let v = data.get(name).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v).map_err(|e| ApiError::Malformed(format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphql_errors_win_over_data() {
        let body = br#"{"data": null, "errors": [{"message": "Not authorized"}]}"#;
        assert!(matches!(parse_result(body), Err(ApiError::Query(m)) if m == "Not authorized"));
        let body = br#"{"data": {"policyValue": {"value": "Enabled", "state": "ok"}}}"#;
        let data = parse_result(body).expect("data");
        let v: Option<RawPolicyValue> = field(&data, "policyValue").expect("field");
        assert_eq!(
            v.and_then(|v| v.value.as_ref().and_then(value_text)),
            Some("Enabled".into())
        );
        assert!(matches!(
            parse_result(b"<html>"),
            Err(ApiError::Malformed(_))
        ));
    }

    #[test]
    fn every_filter_says_its_scope() {
        let sub = policy_values_filter(EVENT_POLLER_POLICY, &subscription_aka("abc"));
        assert_eq!(
            sub,
            "policyTypeId:'tmod:@turbot/azure#/policy/types/eventPoller' policyTypeLevel:self resource:'azure:///subscriptions/abc' level:self,descendant limit:5000"
        );
        let everywhere = policy_values_filter(EVENT_HANDLERS_POLICY, WORKSPACE_ROOT);
        assert!(everywhere.contains("resource:'tmod:@turbot/turbot#/' level:self,descendant"));
        let subs = subscriptions_filter();
        assert!(subs.contains("resourceTypeLevel:self") && subs.contains("level:self,descendant"));
    }

    #[test]
    fn a_value_says_where_it_applies() {
        let raw: RawPolicyValue = serde_json::from_value(json!({
            "value": "Skip", "state": "ok",
            "resource": {"trunk": {"title": "Turbot > Prod > East US"},
                         "turbot": {"id": "300", "akas": null, "path": "1.200.300"}}
        }))
        .expect("a policy value");
        let placed = raw.placed();
        assert_eq!(placed.value.value.as_deref(), Some("Skip"));
        assert_eq!(placed.placement.id.as_deref(), Some("300"));
        assert!(placed.placement.akas.is_empty());
        assert_eq!(placed.placement.path, ["1", "200", "300"]);
        // A numeric id, a path as a list, no resource at all.
        let raw: RawPolicyValue = serde_json::from_value(json!({
            "value": true, "resource": {"turbot": {"id": 7, "akas": ["a"], "path": [1, "7"]}}
        }))
        .expect("a policy value");
        let placed = raw.placed();
        assert_eq!(placed.value.value.as_deref(), Some("true"));
        assert_eq!(placed.placement.id.as_deref(), Some("7"));
        assert_eq!(placed.placement.path, ["1", "7"]);
        let raw: RawPolicyValue =
            serde_json::from_value(json!({"value": null})).expect("a policy value");
        assert_eq!(raw.placed().placement, Placement::default());
    }
}
