//! Fake Azure and a fake Guardrails endpoint, on 127.0.0.1 with port 0, and a
//! harness that runs the real binary against them (as linkerd2-proxy's
//! integration crate does: the product carries no test hooks).
//!
//! - ARM: the Activity Logs - List call, newest first, paged by an opaque
//!   `$skiptoken` over a snapshot taken at the first page, `Date` headers from
//!   a possibly skewed clock, entries visible only from their `visible_at`,
//!   and a queue of faults (status codes with `Retry-After`, cut connections,
//!   malformed pages).
//! - Entra ID: `/{tenant}/oauth2/v2.0/token` over TLS, with a CA written to a
//!   file that the binary trusts through `SSL_CERT_FILE`.
//! - Guardrails: `POST /api/v5/events/raw?token=...`, which checks the token,
//!   records every body, and can be taken down or made to reject events.
#![allow(dead_code)]

pub mod detection;
pub mod postgres;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "11112222-bbbb-3333-cccc-4444dddd5555";
pub const CLIENT_SECRET: &str = "s3cr3t-client-value-DO-NOT-LOG";
pub const INGEST_TOKEN: &str = "ingest-token-DO-NOT-LOG-0123456789";

pub fn ticks(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

// ---------------------------------------------------------------- Azure ----

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

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and `Retry-After` seconds, if any).
    Status(u16, Option<u64>),
    /// Start a 200 response and cut the connection mid-body.
    Cut,
    /// Answer 200 with this body.
    Body(&'static str),
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
    /// First pages of queries starting before this time answer this much
    /// later: earlier time slices finish last.
    pub slow_before: Option<(DateTime<Utc>, Duration)>,
    snapshots: HashMap<String, Vec<Value>>,
    next_snapshot: usize,
}

impl AzureState {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.skew
    }
}

pub type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Shared<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response()
}

async fn list(
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
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
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
    if let Some(fault) = s.faults.pop_front() {
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
    if offset + page_size < all.len() {
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

async fn token(
    State(st): State<Shared<AzureState>>,
    UrlPath(tenant): UrlPath<String>,
    body: String,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let mut s = lock(&st);
    s.token_forms.push(form.clone());
    let ok = tenant == TENANT
        && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        && form.get("grant_type").map(String::as_str) == Some("client_credentials");
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}).to_string(),
        )
            .into_response();
    }
    let n = s.issued.len();
    let t = format!("bearer-token-{n}-DO-NOT-LOG");
    s.issued.push(t.clone());
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": t}).to_string(),
    )
        .into_response()
}

// ----------------------------------------------------------- Guardrails ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    Up,
    Down(u16),
}

#[derive(Default)]
pub struct IngestState {
    pub received: Vec<Value>,
    pub attempts: usize,
    pub mode: Option<IngestMode>,
    /// eventDataIds answered with 400.
    pub reject: HashSet<String>,
    pub delay: Option<Duration>,
    /// Above this many POSTs in flight, answer 429 with `Retry-After: 1`.
    pub capacity: Option<usize>,
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub throttled: usize,
    /// The token accepted in place of `INGEST_TOKEN`, once rotated.
    pub token: Option<String>,
}

/// The eventDataId of a posted document, whatever its format.
pub fn posted_id(doc: &Value) -> Option<String> {
    let candidates = [
        doc.pointer("/data/context/activityLog/eventDataId"),
        doc.pointer("/data/alertContext/eventDataId"),
        doc.get("eventDataId"),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|v| v.as_str().map(str::to_string))
}

async fn ingest_handler(
    State(st): State<Shared<IngestState>>,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    let delay = {
        let mut s = lock(&st);
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        if s.capacity.is_some_and(|c| s.in_flight > c) {
            s.in_flight -= 1;
            s.attempts += 1;
            s.throttled += 1;
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
        }
        s.delay
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut s = lock(&st);
    s.in_flight -= 1;
    s.attempts += 1;
    let accepted = s.token.as_deref().unwrap_or(INGEST_TOKEN);
    if q.get("token").map(String::as_str) != Some(accepted) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Some(IngestMode::Down(code)) = s.mode {
        return StatusCode::from_u16(code)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            .into_response();
    }
    let Ok(doc) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if posted_id(&doc).is_some_and(|id| s.reject.contains(&id)) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    s.received.push(doc);
    StatusCode::ACCEPTED.into_response()
}

// -------------------------------------------------------------- Servers ----

pub struct Fakes {
    pub azure: Shared<AzureState>,
    pub ingest: Shared<IngestState>,
    pub graphql: Shared<detection::GraphqlState>,
    pub arm_addr: SocketAddr,
    pub login_addr: SocketAddr,
    pub ingest_addr: SocketAddr,
    pub ca_pem: String,
}

impl Fakes {
    pub async fn start() -> Fakes {
        let azure = Arc::new(Mutex::new(AzureState {
            page_size: 200,
            ..AzureState::default()
        }));
        let ingest = Arc::new(Mutex::new(IngestState::default()));
        let graphql = Arc::new(Mutex::new(detection::GraphqlState::default()));

        let arm = Router::new()
            .route(
                "/subscriptions/{sub}/providers/Microsoft.Insights/eventtypes/management/values",
                get(list),
            )
            .route(
                "/subscriptions/{sub}/providers/microsoft.insights/eventtypes/management/values",
                get(list),
            )
            .route(
                "/subscriptions/{sub}/resourceGroups/turbot_rg/providers/Microsoft.Insights/actionGroups",
                get(detection::action_groups),
            )
            .route(
                "/subscriptions/{sub}/providers/Microsoft.Insights/activityLogAlerts",
                get(detection::alerts),
            )
            .route("/subscriptions", get(detection::subscriptions))
            .with_state(azure.clone());
        let login = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state(azure.clone());
        let guardrails = Router::new()
            .route("/api/v5/events/raw", post(ingest_handler))
            .with_state(ingest.clone())
            .merge(
                Router::new()
                    .route("/api/latest/graphql", post(detection::graphql))
                    .with_state(graphql.clone()),
            );

        let bind = || async {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0")
        };
        let (l_arm, l_login, l_ingest) = (bind().await, bind().await, bind().await);
        let arm_addr = l_arm.local_addr().expect("addr");
        let login_addr = l_login.local_addr().expect("addr");
        let ingest_addr = l_ingest.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l_arm, arm).await });
        tokio::spawn(async move { axum::serve(l_ingest, guardrails).await });
        // The emulator's throwaway CA and TLS server, shared with these fakes.
        let tls = azure_activity_poller::emulator::tls::generate().expect("TLS certificate");
        tokio::spawn(azure_activity_poller::emulator::tls::serve(
            l_login,
            login,
            tls.config.clone(),
        ));
        Fakes {
            azure,
            ingest,
            graphql,
            arm_addr,
            login_addr,
            ingest_addr,
            ca_pem: tls.ca_pem,
        }
    }

    pub fn add(&self, entries: impl IntoIterator<Item = FakeEntry>) {
        lock(&self.azure).entries.extend(entries);
    }

    pub fn azure_now(&self) -> DateTime<Utc> {
        lock(&self.azure).now()
    }

    pub fn fault(&self, f: Fault) {
        lock(&self.azure).faults.push_back(f);
    }

    pub fn arm_requests(&self) -> Vec<ArmRequest> {
        lock(&self.azure).requests.clone()
    }

    /// The endpoint answers 400 to the event with this eventDataId.
    pub fn reject(&self, id: &str) {
        lock(&self.ingest).reject.insert(id.to_string());
    }

    pub fn set_ingest(&self, mode: IngestMode) {
        lock(&self.ingest).mode = Some(mode);
    }

    pub fn received(&self) -> Vec<Value> {
        lock(&self.ingest).received.clone()
    }

    pub fn received_ids(&self) -> Vec<String> {
        self.received().iter().filter_map(posted_id).collect()
    }

    /// Sets what Azure shows of the event handlers of `sub` (`None`: no `turbot_rg`).
    pub fn set_handlers(&self, sub: &str, h: Option<detection::FakeHandlers>) {
        let mut s = lock(&self.azure);
        match h {
            Some(h) => s.handlers.insert(sub.to_string(), h),
            None => s.handlers.remove(sub),
        };
    }

    pub fn detection_requests(&self) -> Vec<String> {
        lock(&self.azure).detection_requests.clone()
    }

    /// Sets a Guardrails policy's values on `sub`: (value, resource title).
    pub fn set_policy(&self, policy: &str, sub: &str, values: &[(&str, &str)]) {
        lock(&self.graphql).policies.insert(
            (policy.to_string(), sub.to_string()),
            values
                .iter()
                .map(|(v, t)| (v.to_string(), t.to_string()))
                .collect(),
        );
    }

    pub fn set_graphql(&self, mode: detection::GraphqlMode) {
        lock(&self.graphql).mode = mode;
    }

    /// The `[guardrails.api]` section for these fakes; the secret key comes
    /// from the environment variable `GR_SECRET`.
    pub fn guardrails_api_section(&self) -> String {
        format!(
            "\n[guardrails.api]\nworkspace_url = \"http://{}\"\naccess_key = \"{}\"\nsecret_key_env = \"GR_SECRET\"\n",
            self.ingest_addr,
            detection::GR_ACCESS_KEY
        )
    }

    pub fn ingest_url(&self) -> String {
        format!(
            "http://{}/api/v5/events/raw?token={INGEST_TOKEN}",
            self.ingest_addr
        )
    }
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

pub fn ids(entries: &[FakeEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// The harness's configuration with `lines` added to `[azure]`, written;
/// returns its path.
pub fn write_with_azure(h: &Harness, lines: &str) -> String {
    let text = h
        .config_text()
        .replace("max_retries = 4\n", &format!("max_retries = 4\n{lines}"));
    let path = h.path("poller.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

/// Counts of each id; an exactly-once delivery has every count at 1.
pub fn counts(ids: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id.clone()).or_insert(0) += 1;
    }
    m
}

/// Asserts that `delivered` holds every id of `expected` exactly once and nothing else.
pub fn assert_exactly_once(delivered: &[String], expected: &[String]) {
    let c = counts(delivered);
    let dup: Vec<_> = c.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "delivered more than once: {dup:?}");
    let want: HashSet<&String> = expected.iter().collect();
    let got: HashSet<&String> = delivered.iter().collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(extra.is_empty(), "delivered but not expected: {extra:?}");
}

// -------------------------------------------------------------- Harness ----

pub const SUB_A: &str = "089bd33f-d4ec-47fe-8ba5-0753aa5c5b33";
pub const SUB_B: &str = "1e8d8218-c5e7-4578-9acc-9abbd5d23315";

/// Where the poller under test keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates, for each named `async fn name(backend: Backend)`, a module
/// `name` with two tests, `sqlite` and `postgres`: every end-to-end test runs
/// on both state backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            }
        )*
    };
}

pub struct Harness {
    pub fakes: Fakes,
    pub backend: Backend,
    /// The PostgreSQL server of a `Backend::Postgres` harness.
    pub pg: Option<postgres::PgServer>,
    /// Its database's URL (password included).
    pub db_url: Option<String>,
    pub dir: tempfile::TempDir,
    pub format: &'static str,
    pub interval: &'static str,
    pub window: &'static str,
    pub subscriptions: Vec<(String, bool)>,
    pub extra: String,
    /// `[ha] lease` on PostgreSQL.
    pub lease: &'static str,
    /// Extra environment for the poller.
    pub env: Vec<(String, String)>,
    runs: usize,
}

pub struct Run {
    pub code: Option<i32>,
    pub stderr: String,
    pub stdout: String,
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::on(Backend::Sqlite).await
    }

    /// A harness whose poller keeps its state on `backend` (PostgreSQL: a
    /// server of its own, database `poller`).
    pub async fn on(backend: Backend) -> Harness {
        let (pg, db_url) = match backend {
            Backend::Sqlite => (None, None),
            Backend::Postgres => {
                let (server, url) = postgres::PgServer::with_database("poller").await;
                (Some(server), Some(url))
            }
        };
        let fakes = Fakes::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), &fakes.ca_pem).expect("write CA");
        std::fs::write(
            dir.path().join("client-secret"),
            format!("{CLIENT_SECRET}\n"),
        )
        .expect("write secret");
        std::fs::write(dir.path().join("ingest-url"), fakes.ingest_url()).expect("write url");
        Harness {
            fakes,
            backend,
            pg,
            db_url,
            dir,
            format: "activity-log-alert",
            interval: "1s",
            window: "10s",
            subscriptions: vec![(SUB_A.to_string(), false)],
            extra: String::new(),
            lease: "2s",
            env: Vec::new(),
            runs: 0,
        }
    }

    /// Moves the harness's state to `server`'s database at `url` (the
    /// configuration written next says `[state] url`).
    pub fn use_postgres(&mut self, server: postgres::PgServer, url: String) {
        self.backend = Backend::Postgres;
        self.pg = Some(server);
        self.db_url = Some(url);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Gives the endpoint a new token, accepted from now on in place of the
    /// old one, and writes the URL carrying it for the next process: a POST
    /// a killed process left in the endpoint's socket is refused (401) when
    /// it is read late, instead of counting as a delivery.
    pub fn rotate_ingest_token(&self) {
        let token = "rotated-ingest-token-DO-NOT-LOG-9876543210";
        lock(&self.fakes.ingest).token = Some(token.to_string());
        let url = format!(
            "http://{}/api/v5/events/raw?token={token}",
            self.fakes.ingest_addr
        );
        std::fs::write(self.path("ingest-url"), url).expect("write url");
    }

    pub fn config_text(&self) -> String {
        let mut s = format!(
            r#"[state]
{state}

[azure]
cloud = "custom"
resource_manager_url = "http://{arm}"
authority_host = "https://{login}"
retry_base = "50ms"
max_retries = 4
request_timeout = "5s"

[credentials.main]
kind = "client_secret"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"

[guardrails]
ingest_url_file = "{url}"
format = "{format}"
concurrency = 4
timeout = "5s"
retry_base = "50ms"
retry_max = "300ms"

[defaults]
credential = "main"
interval = "{interval}"
window = "{window}"
statuses = ["Succeeded"]
{extra}
"#,
            state = self.state_section(),
            arm = self.fakes.arm_addr,
            login = self.fakes.login_addr,
            secret = self.path("client-secret").display(),
            url = self.path("ingest-url").display(),
            format = self.format,
            interval = self.interval,
            window = self.window,
            extra = self.extra,
        );
        // `false` leaves event_handlers at its default, "detect": every run
        // checks the fake ARM, which shows no turbot_rg unless told otherwise.
        for (id, handlers) in &self.subscriptions {
            s.push_str(&format!(
                "\n[[subscription]]\nid = \"{id}\"\nname = \"sub-{}\"\n{}",
                &id[..8],
                if *handlers {
                    "event_handlers = true\n"
                } else {
                    ""
                }
            ));
        }
        s
    }

    /// The `[state]` keys for this harness's backend.
    pub fn state_section(&self) -> String {
        match &self.db_url {
            // Short leases, so that a killed poller's are taken over soon.
            Some(url) => format!("url = \"{url}\"\n\n[ha]\nlease = \"{}\"", self.lease),
            None => format!("path = \"{}\"", self.path("state.db").display()),
        }
    }

    /// Runs SQL against the state (either backend), for a test to look at
    /// or change it; returns the first column of each row, as text.
    pub async fn state_sql(&self, sql: &str) -> Vec<Option<String>> {
        match &self.pg {
            Some(_) => self.try_state_sql(sql).await.expect("state SQL"),
            None => self.sqlite_sql(sql),
        }
    }

    /// [`Harness::state_sql`] on PostgreSQL, where the schema may not be
    /// there yet.
    pub async fn try_state_sql(&self, sql: &str) -> Result<Vec<Option<String>>, String> {
        let pg = self.pg.as_ref().ok_or("not a PostgreSQL harness")?;
        let c = pg.connect("poller").await;
        let rows = c.simple_query(sql).await.map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                _ => None,
            })
            .collect())
    }

    fn sqlite_sql(&self, sql: &str) -> Vec<Option<String>> {
        {
            {
                let db = rusqlite::Connection::open(self.path("state.db")).expect("open state");
                let mut stmt = db.prepare(sql).expect("state SQL");
                let n = stmt.column_count();
                stmt.query_map([], |r| {
                    if n == 0 {
                        return Ok(None);
                    }
                    let v: rusqlite::types::Value = r.get(0)?;
                    Ok(match v {
                        rusqlite::types::Value::Null => None,
                        rusqlite::types::Value::Integer(i) => Some(i.to_string()),
                        rusqlite::types::Value::Real(f) => Some(f.to_string()),
                        rusqlite::types::Value::Text(t) => Some(t),
                        rusqlite::types::Value::Blob(_) => Some("<blob>".into()),
                    })
                })
                .expect("state SQL")
                .collect::<Result<Vec<_>, _>>()
                .expect("state SQL")
            }
        }
    }

    pub fn write_config(&self) -> PathBuf {
        let p = self.path("poller.toml");
        std::fs::write(&p, self.config_text()).expect("write config");
        p
    }

    pub fn command(&mut self, args: &[&str]) -> (tokio::process::Command, PathBuf) {
        self.runs += 1;
        let log = self.path(&format!("run-{}.log", self.runs));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_azure-activity-poller"));
        cmd.args(args)
            .env("SSL_CERT_FILE", self.path("ca.pem"))
            .env_remove("SSL_CERT_DIR")
            .env("RUST_LOG", "debug")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        (cmd, log)
    }

    /// Runs `--once` (plus `args`) to completion, within two minutes.
    pub async fn once(&mut self, args: &[&str]) -> Run {
        let config = self.write_config();
        let config = config.display().to_string();
        let mut all = vec![
            "--config",
            config.as_str(),
            "--once",
            "--give-up-after",
            "2s",
        ];
        all.extend_from_slice(args);
        self.run(&all).await
    }

    pub async fn run(&mut self, args: &[&str]) -> Run {
        let (mut cmd, log) = self.command(args);
        let child = cmd.spawn().expect("spawn the poller");
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("the poller did not finish within 2 minutes")
            .expect("wait for the poller");
        let run = Run {
            code: out.status.code(),
            stderr: std::fs::read_to_string(&log).unwrap_or_default(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        };
        // The database password never shows, whatever the run did.
        assert!(
            !run.stderr.contains(postgres::DB_PASSWORD)
                && !run.stdout.contains(postgres::DB_PASSWORD),
            "the database password was printed:\n{}\n{}",
            run.stdout,
            run.stderr
        );
        run
    }

    /// Starts the daemon; the caller stops or kills it.
    pub fn daemon(&mut self, args: &[&str]) -> Daemon {
        let config = self.write_config();
        let config = config.display().to_string();
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        let (mut cmd, log) = self.command(&all);
        let child = cmd.spawn().expect("spawn the daemon");
        Daemon { child, log }
    }
}

pub struct Daemon {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (TERM, HUP, ...).
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([&format!("-{name}"), &pid.to_string()])
                .status();
        }
    }

    /// SIGTERM, then waits for the exit code.
    pub async fn stop(mut self) -> (Option<i32>, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the daemon did not stop within 60s after SIGTERM")
            .expect("wait for the daemon");
        let log = self.log();
        assert!(
            !log.contains(postgres::DB_PASSWORD),
            "the database password was printed:\n{log}"
        );
        (status.code(), log)
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.log()
    }
}

/// Polls `check` until it holds, or panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures")
        .join(rel)
}
