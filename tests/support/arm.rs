//! The fake Azure Resource Manager's Activity Logs - List call, and the
//! entries it serves: newest first, paged by an opaque `$skiptoken` over a
//! snapshot taken at the first page, `Date` headers from a possibly skewed
//! clock, entries visible only from their `visible_at`, a queue of injected
//! faults (status codes with `Retry-After`, cut connections, malformed
//! pages, any status and body; to the next calls or spaced out), a round
//! trip's latency, queries held back to make time slices finish out of
//! order, and subscriptions whose answers never end (`Flood`).
//! The reads detection makes of the same ARM are in `detection.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Shared, TENANT, detection, endless_body, lock};

/// The subscriptions most tests poll.
pub const SUB_A: &str = "089bd33f-d4ec-47fe-8ba5-0753aa5c5b33";
pub const SUB_B: &str = "1e8d8218-c5e7-4578-9acc-9abbd5d23315";

pub fn ticks(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

#[derive(Debug, Clone)]
pub struct FakeEntry {
    pub subscription: String,
    pub id: String,
    pub ts: DateTime<Utc>,
    pub status: String,
    pub visible_at: DateTime<Utc>,
    pub body: Value,
}

/// An entry shaped like the Administrative sample of the activity log schema.
pub fn entry(subscription: &str, id: &str, ts: DateTime<Utc>, status: &str) -> FakeEntry {
    let rg = "MSSupportGroup";
    let resource = format!(
        "/subscriptions/{subscription}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/vm-{id}"
    );
    let body = json!({
        "authorization": {
            "action": "Microsoft.Compute/virtualMachines/write",
            "scope": resource,
        },
        "caller": "admin@contoso.com",
        "channels": "Operation",
        "claims": {
            "aud": "https://management.core.windows.net/",
            "iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
            "appid": "c44b4083-3bb0-49c1-b47d-974e53cbdf3c",
            "http://schemas.microsoft.com/identity/claims/scope": "user_impersonation"
        },
        "correlationId": format!("corr-{id}"),
        "description": "",
        "eventDataId": id,
        "eventName": {"value": "EndRequest", "localizedValue": "End request"},
        "category": {"value": "Administrative", "localizedValue": "Administrative"},
        "eventTimestamp": ticks(ts),
        "id": format!("{resource}/events/{id}/ticks/{}", ts.timestamp_nanos_opt().unwrap_or(0) / 100),
        "level": "Informational",
        "operationId": format!("op-{id}"),
        "operationName": {"value": "Microsoft.Compute/virtualMachines/write", "localizedValue": "Create or Update Virtual Machine"},
        "resourceGroupName": rg,
        "resourceProviderName": {"value": "Microsoft.Compute", "localizedValue": "Microsoft.Compute"},
        "resourceType": {"value": "Microsoft.Compute/virtualMachines", "localizedValue": "Microsoft.Compute/virtualMachines"},
        "resourceId": resource,
        "status": {"value": status, "localizedValue": status},
        "subStatus": {"value": "Created", "localizedValue": "Created (HTTP Status Code: 201)"},
        "submissionTimestamp": ticks(ts + chrono::Duration::seconds(5)),
        "subscriptionId": subscription,
        "tenantId": TENANT,
        "properties": {"statusCode": "Created", "serviceRequestId": null},
        "relatedEvents": [],
        "httpRequest": {"clientRequestId": format!("req-{id}"), "clientIpAddress": "192.168.35.115", "method": "PUT"}
    });
    FakeEntry {
        subscription: subscription.to_string(),
        id: id.to_string(),
        ts,
        status: status.to_string(),
        visible_at: ts,
        body,
    }
}

/// A Succeeded entry of `sub` stamped `secs` seconds ago.
pub fn entry_ago(sub: &str, id: &str, secs: i64) -> FakeEntry {
    entry(
        sub,
        id,
        Utc::now() - chrono::Duration::seconds(secs),
        "Succeeded",
    )
}

/// A Succeeded entry of `sub` stamped `secs` seconds ago that Azure
/// received late: visible only from now.
pub fn arrived_late(sub: &str, id: &str, secs: i64) -> FakeEntry {
    let mut e = entry_ago(sub, id, secs);
    e.visible_at = Utc::now();
    e
}

/// `n` entries of `sub`, spread over the last `span_s` seconds, every `status`.
pub fn spread(sub: &str, prefix: &str, n: usize, span_s: i64, status: &str) -> Vec<FakeEntry> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let ts = now
                - chrono::Duration::milliseconds(span_s * 1000 * (i as i64 + 1) / (n as i64 + 1));
            entry(sub, &format!("{prefix}-{i:05}"), ts, status)
        })
        .collect()
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and `Retry-After` seconds, if any).
    Status(u16, Option<u64>),
    /// Start a 200 response and cut the connection mid-body.
    Cut,
    /// Answer 200 with this body.
    Body(&'static str),
    /// Answer this status with this body, as it is (a recorded Azure error).
    Answer(u16, String),
}

/// How a flooded subscription's List call answers: 200 and a page that
/// streams on without end, as a broken proxy might send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// No length said.
    Endless,
    /// Its `Content-Length` says this many bytes.
    Declared(u64),
}

#[derive(Debug, Clone)]
pub struct ArmRequest {
    pub at: std::time::Instant,
    pub subscription: String,
    pub filter: Option<String>,
    pub skiptoken: Option<String>,
    pub bearer: Option<String>,
    pub status: u16,
}

#[derive(Default)]
pub struct AzureState {
    pub entries: Vec<FakeEntry>,
    pub page_size: usize,
    pub faults: VecDeque<Fault>,
    pub requests: Vec<ArmRequest>,
    pub token_forms: Vec<HashMap<String, String>>,
    pub issued: Vec<String>,
    /// Azure's clock minus ours.
    pub skew: chrono::Duration,
    /// Subscriptions the principal has no role on: 403.
    pub deny: HashSet<String>,
    /// Guardrails' event handlers per subscription; absent: no `turbot_rg`.
    pub handlers: HashMap<String, detection::FakeHandlers>,
    /// Detection reads (action groups, alerts), in order.
    pub detection_requests: Vec<String>,
    /// The subscription list: (id, display name, state).
    pub listed: Vec<(String, String, String)>,
    /// Resource Graph answers 403 to every query.
    pub graph_refused: bool,
    /// Resource Graph queries received, and how many of them were first
    /// pages (one per batch of subscriptions).
    pub graph_requests: usize,
    pub graph_batches: usize,
    /// First pages of queries starting before this time answer this much
    /// later: earlier time slices finish last.
    pub slow_before: Option<(DateTime<Utc>, Duration)>,
    /// How many queries `slow_before` has held back so far (the ones still
    /// held included).
    pub held_back: usize,
    /// Every List answer takes this long (ARM's round trip).
    pub latency: Option<Duration>,
    /// Queued faults go to every this-many-th List call rather than to the
    /// next ones (0 or 1: the next ones).
    pub fault_spacing: usize,
    /// Subscriptions whose List calls answer without end.
    pub floods: HashMap<String, Flood>,
    /// Subscriptions whose every page's nextLink leads to their first page
    /// again (a broken proxy's paging that never ends).
    pub looping: std::collections::HashSet<String>,
    /// Token requests answer 200 with a body without end.
    pub flood_tokens: bool,
    /// Bytes the endless answers handed to the servers so far.
    pub flooded: Arc<AtomicU64>,
    snapshots: HashMap<String, Vec<Value>>,
    next_snapshot: usize,
}

impl AzureState {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.skew
    }
}

/// Parses the spec's `eventTimestamp ge '<t>' and eventTimestamp le '<t>'`.
fn parse_filter(f: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let mut ge = None;
    let mut le = None;
    for clause in f.split(" and ") {
        let parts: Vec<&str> = clause.trim().splitn(3, ' ').collect();
        if parts.len() != 3 || parts[0] != "eventTimestamp" {
            continue;
        }
        let t = DateTime::parse_from_rfc3339(parts[2].trim_matches('\'')).ok()?;
        match parts[1] {
            "ge" => ge = Some(t.with_timezone(&Utc)),
            "le" => le = Some(t.with_timezone(&Utc)),
            _ => return None,
        }
    }
    Some((ge?, le?))
}

pub(super) fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response()
}

/// The bearer token of a request, if it has one.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

pub(super) async fn list(
    State(st): State<Shared<AzureState>>,
    UrlPath(subscription): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let bearer = bearer(&headers).map(str::to_string);
    let slow = {
        let s = lock(&st);
        match (
            s.slow_before,
            q.get("$filter").and_then(|f| parse_filter(f)),
        ) {
            (Some((before, d)), Some((ge, _))) if ge < before => Some(d),
            _ => None,
        }
    };
    if let Some(d) = slow {
        lock(&st).held_back += 1;
        tokio::time::sleep(d).await;
    }
    let latency = lock(&st).latency;
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }
    let mut s = lock(&st);
    let date = s.now().to_rfc2822().replace("+0000", "GMT");
    let record = ArmRequest {
        at: std::time::Instant::now(),
        subscription: subscription.clone(),
        filter: q.get("$filter").cloned(),
        skiptoken: q.get("$skiptoken").cloned(),
        bearer: bearer.clone(),
        status: 200,
    };
    let respond = |s: &mut AzureState, mut record: ArmRequest, resp: Response| {
        record.status = resp.status().as_u16();
        s.requests.push(record);
        resp
    };
    if q.get("api-version").map(String::as_str) != Some("2015-04-01") {
        let r = arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            "api-version must be 2015-04-01",
        );
        return respond(&mut s, record, r);
    }
    if !bearer.as_ref().is_some_and(|b| s.issued.contains(b)) {
        let r = arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        );
        return respond(&mut s, record, r);
    }
    if s.deny.contains(&subscription) {
        let r = arm_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            "The client does not have authorization to perform action 'Microsoft.Insights/eventtypes/values/read'.",
        );
        return respond(&mut s, record, r);
    }
    if let Some(flood) = s.floods.get(&subscription).copied() {
        let mut r = Response::builder()
            .status(200)
            .header("content-type", "application/json");
        if let Flood::Declared(n) = flood {
            r = r.header("content-length", n.to_string());
        }
        let body = endless_body("{\"value\": [", s.flooded.clone());
        let r = r.body(body).unwrap_or_default();
        return respond(&mut s, record, r);
    }
    let spacing = s.fault_spacing.max(1);
    let fault = if s.requests.len() % spacing == spacing - 1 {
        s.faults.pop_front()
    } else {
        None
    };
    if let Some(fault) = fault {
        let r = match fault {
            Fault::Status(code, retry_after) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut r = arm_error(status, "Injected", "injected fault");
                if let Some(secs) = retry_after
                    && let Ok(v) = secs.to_string().parse()
                {
                    r.headers_mut().insert("retry-after", v);
                }
                r
            }
            Fault::Cut => {
                let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
                    Ok(bytes::Bytes::from_static(b"{\"value\": [")),
                    Err(std::io::Error::other("connection cut by the fake")),
                ];
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from_stream(futures_util::stream::iter(chunks)))
                    .unwrap_or_default()
            }
            Fault::Body(b) => {
                (StatusCode::OK, [("content-type", "application/json")], b).into_response()
            }
            Fault::Answer(code, body) => (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [("content-type", "application/json")],
                body,
            )
                .into_response(),
        };
        return respond(&mut s, record, r);
    }
    let (key, offset) = match q.get("$skiptoken") {
        Some(tok) => {
            let Some((k, o)) = tok.rsplit_once('.') else {
                let r = arm_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidSkipToken",
                    "bad $skiptoken",
                );
                return respond(&mut s, record, r);
            };
            (k.to_string(), o.parse::<usize>().unwrap_or(0))
        }
        None => {
            let Some((ge, le)) = q.get("$filter").and_then(|f| parse_filter(f)) else {
                let r = arm_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidFilter",
                    "$filter must hold eventTimestamp ge and le",
                );
                return respond(&mut s, record, r);
            };
            if ge < s.now() - chrono::Duration::days(90) {
                let r = arm_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "start time older than 90 days",
                );
                return respond(&mut s, record, r);
            }
            let now = s.now();
            let mut matching: Vec<&FakeEntry> = s
                .entries
                .iter()
                .filter(|e| {
                    e.subscription == subscription
                        && e.ts >= ge
                        && e.ts <= le
                        && e.visible_at <= now
                })
                .collect();
            matching.sort_by_key(|e| std::cmp::Reverse(e.ts));
            let snapshot: Vec<Value> = matching.into_iter().map(|e| e.body.clone()).collect();
            let key = format!("snap{}", s.next_snapshot);
            s.next_snapshot += 1;
            s.snapshots.insert(key.clone(), snapshot);
            (key, 0)
        }
    };
    let page_size = s.page_size.max(1);
    let all = s.snapshots.get(&key).cloned().unwrap_or_default();
    let page: Vec<Value> = all.iter().skip(offset).take(page_size).cloned().collect();
    let mut body = json!({ "value": page });
    if s.looping.contains(&subscription) {
        body["nextLink"] = Value::String(format!(
            "http://{}/subscriptions/{subscription}/providers/microsoft.insights/eventtypes/management/values?api-version=2015-04-01&$skiptoken={key}.0",
            host
        ));
    } else if offset + page_size < all.len() {
        body["nextLink"] = Value::String(format!(
            "http://{}/subscriptions/{subscription}/providers/microsoft.insights/eventtypes/management/values?api-version=2015-04-01&$skiptoken={key}.{}",
            host,
            offset + page_size
        ));
    }
    let mut r = (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Ok(v) = date.parse() {
        r.headers_mut().insert("date", v);
    }
    r.headers_mut().insert(
        "x-ms-ratelimit-remaining-subscription-reads",
        axum::http::HeaderValue::from_static("249"),
    );
    respond(&mut s, record, r)
}
