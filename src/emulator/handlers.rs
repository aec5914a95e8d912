//! What Guardrails' event handlers leave in Azure, emulated: the action group
//! `turbot_azure_event_handler_action_group` in `turbot_rg` and two activity
//! log alerts routing to it, present while a subscription's scenario says so
//! (`event_handlers_from` .. `event_handlers_until`), disabled or without the
//! alerts when its `event_handlers` says so. Before they first appear the
//! resource group does not exist (404); after their removal it is empty.
//! Both reads count against the subscription's ARM read budget, as in Azure.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Shared;
use super::arm::arm_error;

const GROUP: &str = crate::azure::handlers::ACTION_GROUP;
/// The two alerts, one per category.
pub const ALERT_CATEGORIES: [&str; 2] = ["administrative", "security"];

pub fn group_id(sub: &str) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/turbot_rg/providers/microsoft.insights/actionGroups/{GROUP}"
    )
}

pub fn alert_id(sub: &str, category: &str) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/turbot_rg/providers/microsoft.insights/activityLogAlerts/turbot_{category}"
    )
}

/// The checks every ARM read makes: api-version, bearer token, read budget.
fn admit(
    shared: &Shared,
    sub: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    api_version: &str,
) -> Option<Response> {
    if let Some(refused) = authorized(shared, q, headers, api_version) {
        return Some(refused);
    }
    if let (_, Some(wait)) = shared.throttle(sub) {
        let mut r = arm_error(
            StatusCode::TOO_MANY_REQUESTS,
            "SubscriptionRequestsThrottled",
            "Number of read requests for subscription exceeded the limit.",
        );
        if let Ok(v) = wait.to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
        return Some(r);
    }
    None
}

/// The checks every ARM request makes: api-version and bearer token.
pub(super) fn authorized(
    shared: &Shared,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    api_version: &str,
) -> Option<Response> {
    if q.get("api-version").map(String::as_str) != Some(api_version) {
        return Some(arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &format!("The supported api-version is '{api_version}'."),
        ));
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|b| shared.token_valid(b)) {
        return Some(arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        ));
    }
    None
}

pub(super) fn json_ok(v: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `GET /subscriptions/{sub}/resourceGroups/{rg}/providers/{provider}/actionGroups`
pub async fn action_groups(
    State(shared): State<Arc<Shared>>,
    Path((sub, rg, _provider)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, &sub, &q, &headers, "2023-01-01") {
        return refused;
    }
    let seen = shared.handlers(&sub);
    if !rg.eq_ignore_ascii_case("turbot_rg") || !seen.resource_group {
        return arm_error(
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
            &format!("Resource group '{rg}' could not be found."),
        );
    }
    let Some(enabled) = seen.action_group else {
        return json_ok(json!({ "value": [] }));
    };
    json_ok(json!({ "value": [{
        "id": group_id(&sub),
        "name": GROUP,
        "type": "Microsoft.Insights/ActionGroups",
        "location": "Global",
        "properties": {
            "groupShortName": "turbot",
            "enabled": enabled,
            "webhookReceivers": [{
                "name": "turbot",
                "serviceUri": format!("http://127.0.0.1/api/v5/events/raw?token={}", shared.ingest_token),
                "useCommonAlertSchema": false
            }]
        }
    }]}))
}

/// `GET /subscriptions/{sub}/providers/{provider}/activityLogAlerts`
pub async fn alerts(
    State(shared): State<Arc<Shared>>,
    Path((sub, _provider)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, &sub, &q, &headers, "2020-10-01") {
        return refused;
    }
    let value: Vec<serde_json::Value> = if shared.handlers(&sub).alerts {
        ALERT_CATEGORIES
            .iter()
            .map(|category| {
                json!({
                    "id": alert_id(&sub, category),
                    "name": format!("turbot_{category}"),
                    "properties": {
                        "enabled": true,
                        "scopes": [format!("/subscriptions/{sub}")],
                        "condition": {"allOf": [{"field": "category", "equals": category}]},
                        "actions": {"actionGroups": [{"actionGroupId": group_id(&sub)}]}
                    }
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    json_ok(json!({ "value": value }))
}
