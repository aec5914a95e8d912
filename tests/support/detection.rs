//! What detection reads, faked: ARM's action groups in `turbot_rg`, its
//! activity log alerts and its subscription list (on the fake ARM), and the
//! Guardrails GraphQL API (on the fake Guardrails server), which checks the
//! Basic credentials and answers the policy queries.

use std::collections::HashMap;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::arm::{arm_error, bearer};
use super::{AzureState, Shared, lock};

pub const GR_ACCESS_KEY: &str = "gr-access-key-0123";
pub const GR_SECRET_KEY: &str = "gr-secret-key-DO-NOT-LOG-4567";
/// The token in the handlers' webhook URI: it must never be logged.
pub const WEBHOOK_TOKEN: &str = "webhook-jwt-DO-NOT-LOG-89ab";

/// What Azure shows of Guardrails' event handlers in one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeHandlers {
    /// `turbot_rg` exists, without the action group.
    EmptyResourceGroup,
    /// The action group, enabled or not, and alerts (enabled or not) routing to it.
    Deployed {
        group_enabled: bool,
        alerts: Vec<bool>,
    },
    /// The principal may not read them: 403.
    Forbidden,
}

/// ARM's answer to a bad token or api-version, if either is wrong.
fn refuse(
    s: &AzureState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    api_version: &str,
) -> Option<Response> {
    if !bearer(headers).is_some_and(|b| s.issued.iter().any(|i| i == b)) {
        return Some(arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "bad token",
        ));
    }
    if q.get("api-version").map(String::as_str) != Some(api_version) {
        return Some(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            "api-version",
        ));
    }
    None
}

fn ok_json(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn group_id(sub: &str) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/turbot_rg/providers/microsoft.insights/actionGroups/turbot_azure_event_handler_action_group"
    )
}

/// A detection read of `what` in `sub`, recorded: ARM's state to answer it
/// from, and the answer to a bad token or api-version, if either is wrong.
fn detection_read<'a>(
    st: &'a Shared<AzureState>,
    what: &str,
    sub: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    api_version: &str,
) -> (std::sync::MutexGuard<'a, AzureState>, Option<Response>) {
    let mut s = lock(st);
    s.detection_requests.push(format!("{what} {sub}"));
    let refused = refuse(&s, headers, q, api_version);
    (s, refused)
}

pub async fn action_groups(
    State(st): State<Shared<AzureState>>,
    UrlPath(sub): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (s, refused) = detection_read(&st, "actionGroups", &sub, &headers, &q, "2023-01-01");
    if let Some(refused) = refused {
        return refused;
    }
    match s.handlers.get(&sub) {
        None => arm_error(
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
            "Resource group 'turbot_rg' could not be found.",
        ),
        Some(FakeHandlers::Forbidden) => arm_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            "The client does not have authorization to perform action 'microsoft.insights/actionGroups/read'.",
        ),
        Some(FakeHandlers::EmptyResourceGroup) => ok_json(json!({"value": []})),
        Some(FakeHandlers::Deployed { group_enabled, .. }) => ok_json(json!({"value": [{
            "id": group_id(&sub),
            "name": "turbot_azure_event_handler_action_group",
            "type": "Microsoft.Insights/ActionGroups",
            "location": "Global",
            "properties": {
                "groupShortName": "turbot",
                "enabled": group_enabled,
                "webhookReceivers": [{
                    "name": "turbot",
                    "serviceUri": format!("https://gateway.example.turbot.com/api/v5/events/raw?token={WEBHOOK_TOKEN}"),
                    "useCommonAlertSchema": false
                }]
            }
        }]})),
    }
}

pub async fn alerts(
    State(st): State<Shared<AzureState>>,
    UrlPath(sub): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (s, refused) = detection_read(&st, "activityLogAlerts", &sub, &headers, &q, "2020-10-01");
    if let Some(refused) = refused {
        return refused;
    }
    let mut value = vec![json!({
        "id": format!("/subscriptions/{sub}/resourceGroups/ops/providers/microsoft.insights/activityLogAlerts/unrelated"),
        "name": "unrelated",
        "properties": {"enabled": true, "actions": {"actionGroups": [{"actionGroupId": format!("/subscriptions/{sub}/resourceGroups/ops/providers/microsoft.insights/actionGroups/pager")}]}}
    })];
    if let Some(FakeHandlers::Deployed { alerts, .. }) = s.handlers.get(&sub) {
        for (i, enabled) in alerts.iter().enumerate() {
            value.push(json!({
                "id": format!("/subscriptions/{sub}/resourceGroups/turbot_rg/providers/microsoft.insights/activityLogAlerts/turbot_{i}"),
                "name": format!("turbot_{i}"),
                // ARM ids are case-insensitive: upper-cased here on purpose.
                "properties": {"enabled": enabled, "actions": {"actionGroups": [{"actionGroupId": group_id(&sub).to_uppercase()}]}}
            }));
        }
    }
    ok_json(json!({ "value": value }))
}

pub async fn subscriptions(
    State(st): State<Shared<AzureState>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let s = lock(&st);
    if let Some(refused) = refuse(&s, &headers, &q, "2022-12-01") {
        return refused;
    }
    let value: Vec<Value> = s
        .listed
        .iter()
        .map(|(id, name, state)| {
            json!({"id": format!("/subscriptions/{id}"), "subscriptionId": id, "displayName": name, "state": state, "tenantId": super::TENANT})
        })
        .collect();
    ok_json(json!({ "value": value }))
}

// ------------------------------------------------------ Guardrails GraphQL ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphqlMode {
    Up,
    /// HTTP status for every request.
    Status(u16),
    /// 200 with a GraphQL `errors` array.
    Errors,
}

#[derive(Debug)]
pub struct GraphqlState {
    pub mode: GraphqlMode,
    /// (policy type URI, subscription id) -> values (value, resource title).
    pub policies: HashMap<(String, String), Vec<(String, String)>>,
    /// Workspace subscriptions: (id, title).
    pub subscriptions: Vec<(String, String)>,
    pub requests: usize,
}

impl Default for GraphqlState {
    fn default() -> Self {
        GraphqlState {
            mode: GraphqlMode::Up,
            policies: HashMap::new(),
            subscriptions: Vec::new(),
            requests: 0,
        }
    }
}

pub const HANDLERS_POLICY: &str = "tmod:@turbot/azure#/policy/types/eventHandlers";
pub const POLLER_POLICY: &str = "tmod:@turbot/azure#/policy/types/eventPoller";

/// `name:'value'` from a Guardrails filter.
fn filter_value(filter: &str, name: &str) -> Option<String> {
    let start = filter.find(&format!("{name}:'"))? + name.len() + 2;
    let rest = &filter[start..];
    Some(rest[..rest.find('\'')?].to_string())
}

pub async fn graphql(
    State(st): State<Shared<GraphqlState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    use base64_basic as b64;
    let mut s = lock(&st);
    s.requests += 1;
    let expected = format!(
        "Basic {}",
        b64::encode(&format!("{GR_ACCESS_KEY}:{GR_SECRET_KEY}"))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::UNAUTHORIZED, "unauthorized").into_response();
    }
    match s.mode {
        GraphqlMode::Status(code) => {
            return StatusCode::from_u16(code)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response();
        }
        GraphqlMode::Errors => {
            return ok_json(
                json!({"data": null, "errors": [{"message": "Internal error: policy service unavailable"}]}),
            );
        }
        GraphqlMode::Up => {}
    }
    let Ok(req) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let query = req["query"].as_str().unwrap_or("");
    let vars = &req["variables"];
    if query.contains("policyValues(") {
        let filter = vars["filter"][0].as_str().unwrap_or("");
        let policy = filter_value(filter, "policyTypeId").unwrap_or_default();
        let resource = filter_value(filter, "resource").unwrap_or_default();
        let sub = resource
            .strip_prefix("azure:///subscriptions/")
            .unwrap_or("")
            .to_string();
        let values = s
            .policies
            .get(&(policy.clone(), sub))
            .cloned()
            .unwrap_or_default();
        // Two pages when there is more than one value, to exercise paging.
        let page = vars["next"].as_str().map_or(0, |_| 1);
        let (items, next): (Vec<_>, Value) = if values.len() > 1 && page == 0 {
            (values[..1].to_vec(), json!("page-2"))
        } else if page == 1 {
            (values[1..].to_vec(), Value::Null)
        } else {
            (values, Value::Null)
        };
        let items: Vec<Value> = items
            .into_iter()
            .map(|(value, title)| json!({"value": value, "state": "ok", "resource": {"trunk": {"title": title}}, "turbot": {"resourceId": "1", "policyTypeId": policy}}))
            .collect();
        ok_json(json!({"data": {"policyValues": {"items": items, "paging": {"next": next}}}}))
    } else if query.contains("policyValue(") {
        let uri = vars["uri"].as_str().unwrap_or("").to_string();
        let sub = vars["resourceId"]
            .as_str()
            .unwrap_or("")
            .strip_prefix("azure:///subscriptions/")
            .unwrap_or("")
            .to_string();
        let v = s.policies.get(&(uri, sub)).and_then(|v| v.first().cloned());
        ok_json(
            json!({"data": {"policyValue": v.map(|(value, _)| json!({"value": value, "state": "ok"}))}}),
        )
    } else if query.contains("resources(") {
        let items: Vec<Value> = s
            .subscriptions
            .iter()
            .map(|(id, title)| json!({"data": {"subscriptionId": id, "displayName": title}, "turbot": {"id": "123", "akas": [format!("azure:///subscriptions/{id}")], "title": title}}))
            .collect();
        ok_json(json!({"data": {"resources": {"items": items, "paging": {"next": null}}}}))
    } else {
        ok_json(json!({"data": null, "errors": [{"message": "unknown query"}]}))
    }
}

/// A tiny base64 encoder for the expected Basic header (the test crate has no
/// base64 dependency).
mod base64_basic {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
