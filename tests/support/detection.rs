//! What detection reads, faked: ARM's action groups in `turbot_rg`, its
//! activity log alerts and its subscription list, and Resource Graph's view
//! of the same handlers for many subscriptions a query (on the fake ARM);
//! and the Guardrails GraphQL API (on the fake Guardrails server), which
//! checks the Basic credentials, refuses a filter that does not say its
//! `level:`, and answers the policy queries for one subscription or for the
//! whole workspace.

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

/// One row of Resource Graph's answer to the poller's query.
fn graph_row(id: String, sub: &str, entry: &str, enabled: Value, names: String) -> Value {
    json!({"id": id, "subscriptionId": sub, "entry": entry, "enabled": enabled, "actionGroupId": names})
}

/// Resource Graph, for the poller's query only: what `handlers` holds, as
/// rows; a subscription the principal may not read (`deny`, `Forbidden`) is
/// not shown at all. Pages of `$top` rows, the `$skipToken` an offset.
pub async fn resource_graph(
    State(st): State<Shared<AzureState>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut s = lock(&st);
    s.graph_requests += 1;
    s.detection_requests.push("resourceGraph".into());
    if let Some(refused) = refuse(&s, &headers, &q, "2022-10-01") {
        return refused;
    }
    if s.graph_refused {
        return arm_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            "The client does not have authorization to perform action 'Microsoft.ResourceGraph/resources/read'.",
        );
    }
    let Ok(req) = serde_json::from_str::<Value>(&body) else {
        return arm_error(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let top = req["options"]["$top"].as_u64().unwrap_or(1000) as usize;
    let skip: usize = req["options"]["$skipToken"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if skip == 0 {
        s.graph_batches += 1;
    }
    let mut rows = Vec::new();
    let asked = req["subscriptions"].as_array().cloned().unwrap_or_default();
    for sub in asked.iter().filter_map(Value::as_str) {
        let handlers = s.handlers.get(sub);
        if s.deny.contains(sub) || handlers == Some(&FakeHandlers::Forbidden) {
            continue;
        }
        rows.push(graph_row(
            format!("/subscriptions/{sub}"),
            sub,
            "subscription",
            Value::Null,
            String::new(),
        ));
        if handlers.is_some() {
            rows.push(graph_row(
                format!("/subscriptions/{sub}/resourceGroups/turbot_rg"),
                sub,
                "resourceGroup",
                Value::Null,
                String::new(),
            ));
        }
        if let Some(FakeHandlers::Deployed {
            group_enabled,
            alerts,
        }) = handlers
        {
            rows.push(graph_row(
                group_id(sub),
                sub,
                "actionGroup",
                json!(group_enabled),
                String::new(),
            ));
            for (i, enabled) in alerts.iter().enumerate() {
                rows.push(graph_row(
                    format!("/subscriptions/{sub}/resourceGroups/turbot_rg/providers/microsoft.insights/activityLogAlerts/turbot_{i}"),
                    sub,
                    "alert",
                    json!(enabled),
                    group_id(sub).to_ascii_lowercase(),
                ));
            }
        }
    }
    rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let total = rows.len();
    let page: Vec<Value> = rows.into_iter().skip(skip).take(top).collect();
    let mut answer = json!({"totalRecords": total, "count": page.len(), "data": page, "resultTruncated": "false"});
    if skip + top < total {
        answer["$skipToken"] = json!((skip + top).to_string());
    }
    ok_json(answer)
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
    /// The first value is on the subscription itself, the others on regions
    /// below it: their AKAs do not name the subscription, their paths do.
    pub policies: HashMap<(String, String), Vec<(String, String)>>,
    /// Workspace subscriptions: (id, title).
    pub subscriptions: Vec<(String, String)>,
    pub requests: usize,
    /// Every filter received, in order.
    pub filters: Vec<String>,
    /// Items a page of a workspace-wide query holds at most (and `limit:`).
    pub page_size: usize,
    /// Regions come without a path: nothing places them under their subscription.
    pub regions_without_path: bool,
}

impl Default for GraphqlState {
    fn default() -> Self {
        GraphqlState {
            mode: GraphqlMode::Up,
            policies: HashMap::new(),
            subscriptions: Vec::new(),
            requests: 0,
            filters: Vec::new(),
            page_size: 5000,
            regions_without_path: false,
        }
    }
}

/// Where the workspace root is (its AKA), in a filter's `resource:`.
const WORKSPACE_ROOT: &str = "tmod:@turbot/turbot#/";

/// A subscription's Guardrails resource id (stable, made up).
fn guardrails_id(sub: &str) -> u64 {
    sub.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) >> 12
}

/// One policy value item: the `n`th value of `sub` (0: on the subscription
/// itself; else on a region below it).
fn policy_item(
    s: &GraphqlState,
    policy: &str,
    sub: &str,
    n: usize,
    (value, title): &(String, String),
) -> Value {
    let gid = guardrails_id(sub);
    let turbot = if n == 0 {
        json!({"id": gid.to_string(), "akas": [format!("azure:///subscriptions/{sub}")], "path": format!("1.{gid}")})
    } else if s.regions_without_path {
        json!({"id": format!("{gid}{n:03}"), "akas": null, "path": null})
    } else {
        json!({"id": format!("{gid}{n:03}"), "akas": [format!("tmod:@turbot/azure#/regions/{n}")], "path": format!("1.{gid}.{gid}{n:03}")})
    };
    json!({"value": value, "state": "ok", "resource": {"trunk": {"title": title}, "turbot": turbot}, "turbot": {"resourceId": "1", "policyTypeId": policy}})
}

/// A page of `items`: `size` from the offset `next` names, and the next one's.
fn page_of(items: Vec<Value>, size: usize, next: Option<&str>) -> (Vec<Value>, Value) {
    let from: usize = next.and_then(|n| n.parse().ok()).unwrap_or(0);
    let more = from + size < items.len();
    let page = items.into_iter().skip(from).take(size).collect();
    (
        page,
        if more {
            json!((from + size).to_string())
        } else {
            Value::Null
        },
    )
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
    let filters: Vec<String> = vars["filter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    s.filters.extend(filters.iter().cloned());
    // Guardrails' default scope is not to be relied on: every filter says it.
    if let Some(f) = filters
        .iter()
        .find(|f| !f.split_whitespace().any(|t| t.starts_with("level:")))
    {
        return ok_json(
            json!({"data": null, "errors": [{"message": format!("the fake wants level: in every filter, not {f:?}")}]}),
        );
    }
    let filter = filters.first().map(String::as_str).unwrap_or("");
    let limit = filter
        .split_whitespace()
        .find_map(|t| t.strip_prefix("limit:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    if query.contains("policyValues(") {
        let policy = filter_value(filter, "policyTypeId").unwrap_or_default();
        let resource = filter_value(filter, "resource").unwrap_or_default();
        let (items, size) = if resource == WORKSPACE_ROOT {
            let mut subs: Vec<&String> = s
                .policies
                .keys()
                .filter(|(p, _)| *p == policy)
                .map(|(_, sub)| sub)
                .collect();
            subs.sort();
            let items: Vec<Value> = subs
                .into_iter()
                .flat_map(|sub| {
                    s.policies[&(policy.clone(), sub.clone())]
                        .iter()
                        .enumerate()
                        .map(|(n, v)| policy_item(&s, &policy, sub, n, v))
                })
                .collect();
            (items, s.page_size.min(limit))
        } else {
            let sub = resource
                .strip_prefix("azure:///subscriptions/")
                .unwrap_or("")
                .to_string();
            let values = s
                .policies
                .get(&(policy.clone(), sub.clone()))
                .cloned()
                .unwrap_or_default();
            let items = values
                .iter()
                .enumerate()
                .map(|(n, v)| policy_item(&s, &policy, &sub, n, v))
                .collect();
            // One value a page, to exercise paging.
            (items, 1)
        };
        let (items, next) = page_of(items, size, vars["next"].as_str());
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
