//! Azure Resource Graph, emulated for the poller's one query
//! ([`crate::azure::resource_graph::QUERY`]): the rows it would return for
//! the scenario's event handlers, paged as Resource Graph pages them.
//!
//! `POST /providers/Microsoft.ResourceGraph/resources?api-version=2022-10-01`
//! with an emulated bearer token, then, in order:
//! - 403 `AuthorizationFailed` when the scenario says `[resource_graph]
//!   enabled = false`, as for a principal Resource Graph will not answer;
//! - 429 once `quota` queries were made in the current `quota_window` (every
//!   answer says what is left in `x-ms-user-quota-remaining` and
//!   `x-ms-user-quota-resets-after`);
//! - the scenario's injected 500/503;
//! - 400 with ARM's error shape for any query other than the poller's (KQL is
//!   not parsed), for no subscriptions or more than 1,000, for `$top` outside 1
//!   to 1,000, for a `resultFormat` other than `objectArray`, and for a
//!   `$skipToken` not from an answer to the same subscriptions.
//!
//! Every answer takes the scenario's `latency`. A subscription the scenario
//! does not name is not visible: no row at all.
//! Rows are sorted by `id`, `$top` a page (1,000 by default), and the
//! `$skipToken` holds where the next page starts. [`Calls`] counts what was
//! asked and answered.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::arm::{parse_skiptoken, skiptoken};
use super::handlers::{ALERT_CATEGORIES, alert_id, authorized, group_id, json_ok};
use super::{Shared, lock};
use crate::azure::resource_graph::{API_VERSION, MAX_SUBSCRIPTIONS, MAX_TOP, QUERY};

/// What Resource Graph was asked (with a valid token), and how it answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Calls {
    pub requests: u64,
    /// 200s: pages served.
    pub answered: u64,
    /// 403s: Resource Graph is off.
    pub refused: u64,
    /// 429s: the quota was spent.
    pub throttled: u64,
    /// 400s: not the poller's query, or a bad option.
    pub rejected: u64,
}

/// Resource Graph's state: the calls, and the current quota window.
#[derive(Debug, Default)]
pub struct Graph {
    calls: Mutex<Calls>,
    /// When the current window started, and the queries made in it.
    window: Mutex<Option<(Instant, u32)>>,
}

impl Graph {
    pub fn calls(&self) -> Calls {
        *lock(&self.calls)
    }

    fn count(&self, f: impl FnOnce(&mut Calls)) {
        f(&mut lock(&self.calls));
    }

    /// Takes one query from a quota of `quota` per `window`: what is left
    /// (`None` when it was already spent), and when the window resets.
    fn take(&self, quota: u32, window: Duration) -> (Option<u32>, Duration) {
        let now = Instant::now();
        let mut w = lock(&self.window);
        let (start, used) = w.get_or_insert((now, 0));
        if now.duration_since(*start) >= window {
            *start = now;
            *used = 0;
        }
        let resets = window.saturating_sub(now.duration_since(*start));
        if *used >= quota {
            return (None, resets);
        }
        *used += 1;
        (Some(quota - *used), resets)
    }
}

#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    subscriptions: Vec<String>,
    #[serde(default)]
    query: String,
    #[serde(default)]
    options: Options,
}

#[derive(Debug, Default, Deserialize)]
struct Options {
    #[serde(rename = "$top")]
    top: Option<i64>,
    #[serde(rename = "$skipToken")]
    skip_token: Option<String>,
    #[serde(rename = "resultFormat")]
    result_format: Option<String>,
}

/// Resource Graph's error: ARM's shape, with the specific reason in `details`.
fn graph_error(status: StatusCode, code: &str, detail_code: &str, message: &str) -> Response {
    let body = json!({"error": {
        "code": code,
        "message": message,
        "details": [{"code": detail_code, "message": message}],
    }});
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn bad_request(detail_code: &str, message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", detail_code, message)
}

/// `hh:mm:ss`, rounded up to the second.
fn hms(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn quota_headers(r: &mut Response, remaining: u32, resets: Duration) {
    let h = r.headers_mut();
    h.insert("x-ms-user-quota-remaining", HeaderValue::from(remaining));
    if let Ok(v) = HeaderValue::from_str(&hms(resets)) {
        h.insert("x-ms-user-quota-resets-after", v);
    }
}

/// FNV-1a over the subscriptions: ties a `$skipToken` to its request.
fn fingerprint(subscriptions: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in subscriptions.iter().flat_map(|s| s.bytes().chain([b','])) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Every row the poller's query returns for `subscriptions`, sorted by id.
fn rows(subscriptions: &[String], shared: &Shared) -> Vec<Value> {
    let now = shared.handlers_now();
    let row = |id: String, sub: &str, entry: &str, enabled: Value, names: String| {
        json!({
            "id": id,
            "subscriptionId": sub,
            "entry": entry,
            "enabled": enabled,
            "actionGroupId": names,
        })
    };
    let mut out = Vec::new();
    for sub in subscriptions {
        let Some(seen) = now.get(sub) else {
            continue;
        };
        out.push(row(
            format!("/subscriptions/{sub}"),
            sub,
            "subscription",
            Value::Null,
            String::new(),
        ));
        if seen.resource_group {
            out.push(row(
                format!("/subscriptions/{sub}/resourceGroups/turbot_rg"),
                sub,
                "resourceGroup",
                Value::Null,
                String::new(),
            ));
        }
        if let Some(enabled) = seen.action_group {
            out.push(row(
                group_id(sub),
                sub,
                "actionGroup",
                Value::Bool(enabled),
                String::new(),
            ));
            if seen.alerts {
                for category in ALERT_CATEGORIES {
                    out.push(row(
                        alert_id(sub, category),
                        sub,
                        "alert",
                        Value::Bool(true),
                        group_id(sub).to_ascii_lowercase(),
                    ));
                }
            }
        }
    }
    out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    out
}

/// `POST /providers/Microsoft.ResourceGraph/resources`
pub async fn query(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = authorized(&shared, &q, &headers, API_VERSION) {
        return refused;
    }
    shared.graph.count(|c| c.requests += 1);
    let settings = shared.log().scenario().resource_graph.clone();
    tokio::time::sleep(settings.latency).await;
    if !settings.enabled {
        shared.graph.count(|c| c.refused += 1);
        return graph_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            "AuthorizationFailed",
            "The client does not have authorization to perform action 'Microsoft.ResourceGraph/resources/read' over scope '/providers/Microsoft.ResourceGraph'.",
        );
    }
    let quota =
        (settings.quota > 0).then(|| shared.graph.take(settings.quota, settings.quota_window));
    if let Some((None, resets)) = quota {
        shared.graph.count(|c| c.throttled += 1);
        let mut r = graph_error(
            StatusCode::TOO_MANY_REQUESTS,
            "RateLimiting",
            "RateLimiting",
            "Please provide below info when asking for support: too many requests. Please retry after the quota resets.",
        );
        quota_headers(&mut r, 0, resets);
        let wait = resets.as_secs() + u64::from(resets.subsec_nanos() > 0);
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(wait.max(1)));
        return r;
    }
    let mut r = answer(&shared, &body);
    if let Some((Some(remaining), resets)) = quota {
        quota_headers(&mut r, remaining, resets);
    }
    let status = r.status();
    shared.graph.count(|c| {
        if status == StatusCode::OK {
            c.answered += 1;
        } else if status == StatusCode::BAD_REQUEST {
            c.rejected += 1;
        }
    });
    r
}

/// The answer to an admitted request.
fn answer(shared: &Shared, body: &[u8]) -> Response {
    if let Some(status) = shared.injected_error() {
        return graph_error(
            status,
            "InternalServerError",
            "InternalServerError",
            "Encountered internal server error.",
        );
    }
    let request: Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(
                "InvalidRequestContent",
                &format!("The request body is invalid: {e}"),
            );
        }
    };
    if request.query.trim() != QUERY.trim() {
        return bad_request(
            "InvalidQuery",
            "Query is invalid. The emulator answers only the poller's own query.",
        );
    }
    let mut seen = HashSet::new();
    let subscriptions: Vec<String> = request
        .subscriptions
        .iter()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| seen.insert(s.clone()))
        .collect();
    if subscriptions.is_empty() || subscriptions.len() > MAX_SUBSCRIPTIONS {
        return bad_request(
            "InvalidSubscriptions",
            &format!(
                "A query takes 1 to {MAX_SUBSCRIPTIONS} subscriptions, not {}.",
                subscriptions.len()
            ),
        );
    }
    let top = match request.options.top {
        None => MAX_TOP,
        Some(t) if (1..=MAX_TOP as i64).contains(&t) => t as usize,
        Some(t) => {
            return bad_request(
                "InvalidTop",
                &format!("$top must be between 1 and {MAX_TOP}, not {t}."),
            );
        }
    };
    if let Some(f) = request.options.result_format.as_deref()
        && f != "objectArray"
    {
        return bad_request(
            "UnsupportedResultFormat",
            "The emulator answers in resultFormat objectArray only.",
        );
    }
    let print = fingerprint(&subscriptions);
    let offset = match request.options.skip_token.as_deref() {
        None => 0,
        Some(t) => match parse_skiptoken(t) {
            Some((p, offset)) if p == print => offset,
            _ => {
                return bad_request(
                    "InvalidSkipToken",
                    "The $skipToken is invalid, or was issued for other subscriptions.",
                );
            }
        },
    };
    let rows = rows(&subscriptions, shared);
    let page: Vec<&Value> = rows.iter().skip(offset).take(top).collect();
    let mut out = json!({
        "totalRecords": rows.len(),
        "count": page.len(),
        "data": page,
        "facets": [],
        "resultTruncated": "false",
    });
    if offset + top < rows.len() {
        out["$skipToken"] = Value::from(skiptoken(print, offset + top));
    }
    json_ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_is_spent_then_resets() {
        let g = Graph::default();
        let window = Duration::from_millis(50);
        assert_eq!(g.take(2, window).0, Some(1));
        assert_eq!(g.take(2, window).0, Some(0));
        let (left, resets) = g.take(2, window);
        assert_eq!(left, None);
        assert!(resets <= window);
        std::thread::sleep(window);
        assert_eq!(g.take(2, window).0, Some(1));
    }

    #[test]
    fn resets_read_as_hours_minutes_seconds() {
        assert_eq!(hms(Duration::from_millis(2500)), "00:00:03");
        assert_eq!(hms(Duration::from_secs(3723)), "01:02:03");
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = vec!["a".to_string(), "b".to_string()];
        let b = vec!["ab".to_string()];
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
    }
}
