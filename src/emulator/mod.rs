//! A stand-in for Azure and Guardrails on loopback, so that the poller can be
//! seen working, and proven not to lose or duplicate events, without an Azure
//! account. Used by the `activity-log-emulator` binary, the `demo` command and
//! the fault soak in `tests/`.
//!
//! Three servers:
//! - Azure Resource Manager (plain HTTP): the Activity Logs - List call ([`arm`]),
//!   the event handlers' reads ([`handlers`]) and Resource Graph's query for
//!   them ([`resource_graph`]);
//! - Entra ID over TLS: `/{tenant}/oauth2/v2.0/token`, client credentials, so
//!   the real `azure_identity` credential signs in ([`tls`]);
//! - Guardrails: the raw event endpoint, which records what it receives ([`ingest`]).
//!
//! What happens is set by a [`Scenario`]: event rates, late arrival, faults,
//! outages, and a seed. [`Emulator::report`] compares what was delivered with
//! what should have been, event by event.

pub mod arm;
pub mod handlers;
pub mod ingest;
pub mod log;
pub mod resource_graph;
pub mod scenario;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Serialize;

pub use log::ActivityLog;
use scenario::HandlersSeen;
pub use scenario::{OutageMode, Scenario};

use crate::event::Timestamp;

pub const TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "a1b2c3d4-0000-4000-8000-0123456789ab";

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A delivery the endpoint accepted.
#[derive(Debug, Clone, Copy)]
struct Delivered {
    count: u32,
    first_at: Timestamp,
}

/// State shared by the three servers.
pub struct Shared {
    log: Mutex<ActivityLog>,
    client_secret: String,
    pub ingest_token: String,
    issued: Mutex<HashMap<String, Instant>>,
    faults: Mutex<fastrand::Rng>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    requests: Mutex<BTreeMap<String, u64>>,
    deliveries: Mutex<HashMap<String, Delivered>>,
    started: Instant,
    /// `http` or `https`, for nextLinks.
    pub arm_scheme: &'static str,
    /// The ingestion endpoint's capacity and its 429s.
    pub endpoint: ingest::Capacity,
    /// Resource Graph's quota window and what it answered.
    pub graph: resource_graph::Graph,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn log(&self) -> MutexGuard<'_, ActivityLog> {
        lock(&self.log)
    }

    fn scenario(&self) -> Scenario {
        self.log().scenario().clone()
    }

    pub fn page_size(&self) -> usize {
        self.log().scenario().page_size
    }

    pub fn token_valid(&self, token: &str) -> bool {
        lock(&self.issued)
            .get(token)
            .is_some_and(|expires| *expires > Instant::now())
    }

    pub fn count_request(&self, subscription: &str) {
        *lock(&self.requests)
            .entry(subscription.to_string())
            .or_default() += 1;
    }

    /// ARM's read limit: `(remaining reads, Some(retry-after seconds) if throttled)`.
    pub fn throttle(&self, subscription: &str) -> (u64, Option<u64>) {
        let faults = self.log().scenario().azure.clone();
        let mut remaining = 249;
        if faults.token_bucket {
            let mut buckets = lock(&self.buckets);
            let now = Instant::now();
            let (tokens, at) = buckets
                .entry(subscription.to_string())
                .or_insert((250.0, now));
            *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * 25.0).min(250.0);
            *at = now;
            if *tokens < 1.0 {
                return (0, Some(1));
            }
            *tokens -= 1.0;
            remaining = *tokens as u64;
        }
        if faults.throttle_rate > 0.0 && lock(&self.faults).f64() < faults.throttle_rate {
            return (remaining, Some(faults.retry_after.as_secs().max(1)));
        }
        (remaining, None)
    }

    /// What Azure shows of Guardrails' event handlers in `subscription` now
    /// (nothing for a subscription the scenario does not name).
    pub fn handlers(&self, subscription: &str) -> HandlersSeen {
        let elapsed = self.started.elapsed();
        self.log()
            .scenario()
            .subscriptions
            .iter()
            .find(|s| s.id.eq_ignore_ascii_case(subscription))
            .map(|s| s.handlers_at(elapsed))
            .unwrap_or_default()
    }

    /// The same for every subscription of the scenario, by lowercased id.
    pub fn handlers_now(&self) -> HashMap<String, HandlersSeen> {
        let elapsed = self.started.elapsed();
        self.log()
            .scenario()
            .subscriptions
            .iter()
            .map(|s| (s.id.to_ascii_lowercase(), s.handlers_at(elapsed)))
            .collect()
    }

    pub fn injected_error(&self) -> Option<StatusCode> {
        let rate = self.log().scenario().azure.error_rate;
        let mut rng = lock(&self.faults);
        (rate > 0.0 && rng.f64() < rate).then(|| {
            if rng.bool() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            }
        })
    }

    pub fn injected_drop(&self) -> bool {
        let rate = self.log().scenario().azure.drop_rate;
        rate > 0.0 && lock(&self.faults).f64() < rate
    }

    /// The endpoint outage in force now, if any.
    pub fn outage(&self) -> Option<(OutageMode, Duration)> {
        let elapsed = self.started.elapsed();
        self.scenario()
            .endpoint_outages
            .iter()
            .find(|o| elapsed >= o.at && elapsed < o.at + o.duration)
            .map(|o| (o.mode, o.delay))
    }

    pub fn record_delivery(&self, id: &str) {
        let now = Utc::now();
        lock(&self.deliveries)
            .entry(id.to_string())
            .and_modify(|d| d.count += 1)
            .or_insert(Delivered {
                count: 1,
                first_at: now,
            });
    }
}

async fn token(
    State(shared): State<Arc<Shared>>,
    UrlPath(tenant): UrlPath<String>,
    body: String,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let field = |k: &str| form.get(k).map(String::as_str);
    let ok = tenant == TENANT_ID
        && field("grant_type") == Some("client_credentials")
        && field("client_id") == Some(CLIENT_ID)
        && field("client_secret") == Some(shared.client_secret.as_str());
    if !ok {
        let body = serde_json::json!({
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.",
        });
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    let token = format!("emulated-{:032x}", lock(&shared.faults).u128(..));
    lock(&shared.issued).insert(token.clone(), Instant::now() + Duration::from_secs(3600));
    axum::Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": token,
    }))
    .into_response()
}

async fn report_handler(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(report(&shared, &["Succeeded"])).into_response()
}

/// Per subscription: what was generated, expected, delivered.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionReport {
    pub subscription: String,
    pub generated: usize,
    /// Entries with a forwarded status, visible by now.
    pub expected: usize,
    pub delivered: usize,
    pub missing: Vec<String>,
    pub duplicates: usize,
    pub requests: u64,
    /// Delivery time minus the time the entry became visible, over the
    /// delivered entries: median, 99th percentile and max.
    pub lag_p50_ms: i64,
    pub lag_p99_ms: i64,
    pub lag_max_ms: i64,
    /// The same over every expected entry, an undelivered one counting as if
    /// delivered now (a lower bound on its lag): what a run cut short shows.
    pub lag_so_far_p50_ms: i64,
    pub lag_so_far_p99_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub subscriptions: Vec<SubscriptionReport>,
    /// Delivered ids the emulator never generated with a forwarded status.
    pub unexpected: Vec<String>,
    /// What the ingestion endpoint answered: requests, 429s for capacity.
    pub endpoint: ingest::CapacityReport,
    /// What Resource Graph was asked, and how it answered.
    pub resource_graph: resource_graph::Calls,
}

impl Report {
    pub fn missing(&self) -> usize {
        self.subscriptions.iter().map(|s| s.missing.len()).sum()
    }
    pub fn duplicates(&self) -> usize {
        self.subscriptions.iter().map(|s| s.duplicates).sum()
    }
    pub fn delivered(&self) -> usize {
        self.subscriptions.iter().map(|s| s.delivered).sum()
    }
    pub fn expected(&self) -> usize {
        self.subscriptions.iter().map(|s| s.expected).sum()
    }
}

fn report(shared: &Shared, statuses: &[&str]) -> Report {
    let now = Utc::now();
    let (expected, generated) = {
        let mut log = shared.log();
        (log.visible_with_status(statuses, now), log.generated())
    };
    let deliveries = lock(&shared.deliveries).clone();
    let requests = lock(&shared.requests).clone();
    let mut by_sub: BTreeMap<String, SubscriptionReport> = BTreeMap::new();
    for (sub, n) in &generated {
        by_sub.insert(
            sub.clone(),
            SubscriptionReport {
                subscription: sub.clone(),
                generated: *n,
                expected: 0,
                delivered: 0,
                missing: Vec::new(),
                duplicates: 0,
                requests: requests.get(sub).copied().unwrap_or(0),
                lag_p50_ms: 0,
                lag_p99_ms: 0,
                lag_max_ms: 0,
                lag_so_far_p50_ms: 0,
                lag_so_far_p99_ms: 0,
            },
        );
    }
    let mut lags: HashMap<String, Vec<i64>> = HashMap::new();
    let mut so_far: HashMap<String, Vec<i64>> = HashMap::new();
    let mut known = std::collections::HashSet::new();
    for e in &expected {
        known.insert(e.id.as_str());
        let Some(r) = by_sub.get_mut(&e.subscription) else {
            continue;
        };
        r.expected += 1;
        match deliveries.get(&e.id) {
            Some(d) => {
                r.delivered += 1;
                r.duplicates += (d.count - 1) as usize;
                let lag = (d.first_at - e.visible_at).num_milliseconds().max(0);
                lags.entry(e.subscription.clone()).or_default().push(lag);
                so_far.entry(e.subscription.clone()).or_default().push(lag);
            }
            None => {
                r.missing.push(e.id.clone());
                so_far
                    .entry(e.subscription.clone())
                    .or_default()
                    .push((now - e.visible_at).num_milliseconds().max(0));
            }
        }
    }
    for (sub, mut l) in lags {
        l.sort_unstable();
        if let Some(r) = by_sub.get_mut(&sub) {
            r.lag_p50_ms = percentile(&l, 50);
            r.lag_p99_ms = percentile(&l, 99);
            r.lag_max_ms = l.last().copied().unwrap_or(0);
        }
    }
    for (sub, mut l) in so_far {
        l.sort_unstable();
        if let Some(r) = by_sub.get_mut(&sub) {
            r.lag_so_far_p50_ms = percentile(&l, 50);
            r.lag_so_far_p99_ms = percentile(&l, 99);
        }
    }
    let mut unexpected: Vec<String> = deliveries
        .keys()
        .filter(|id| !known.contains(id.as_str()))
        .cloned()
        .collect();
    unexpected.sort();
    Report {
        subscriptions: by_sub.into_values().collect(),
        unexpected,
        endpoint: shared.endpoint.report(),
        resource_graph: shared.graph.calls(),
    }
}

/// The `p`th percentile of sorted values (nearest rank); 0 when empty.
fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Settings for the poller configuration the emulator writes.
#[derive(Debug, Clone)]
pub struct PollerSettings {
    pub interval: &'static str,
    pub window: &'static str,
    pub format: &'static str,
    pub retry_base: &'static str,
    /// `[detection] interval`, when not the default.
    pub detection_interval: Option<&'static str>,
}

impl Default for PollerSettings {
    fn default() -> Self {
        PollerSettings {
            interval: "2s",
            window: "30s",
            format: "activity-log-alert",
            retry_base: "200ms",
            detection_interval: None,
        }
    }
}

/// The running emulator. Dropping it stops the servers.
pub struct Emulator {
    pub arm: SocketAddr,
    pub login: SocketAddr,
    pub ingest: SocketAddr,
    pub ca_pem: String,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Emulator {
    /// Starts the three servers on `ip`, each on a port the system picks.
    pub async fn start(scenario: Scenario, ip: IpAddr) -> Result<Emulator, EmulatorError> {
        let seed = scenario.seed;
        let arm_tls = scenario.arm_tls;
        let scenario_endpoint = scenario.endpoint.clone();
        let mut secrets = fastrand::Rng::with_seed(seed ^ 0x5eed);
        let shared = Arc::new(Shared {
            client_secret: format!("emulator-secret-{:016x}", secrets.u64(..)),
            ingest_token: format!("emulator-ingest-{:016x}", secrets.u64(..)),
            log: Mutex::new(ActivityLog::new(scenario)),
            issued: Mutex::new(HashMap::new()),
            faults: Mutex::new(fastrand::Rng::with_seed(seed.wrapping_add(1))),
            buckets: Mutex::new(HashMap::new()),
            requests: Mutex::new(BTreeMap::new()),
            deliveries: Mutex::new(HashMap::new()),
            started: Instant::now(),
            arm_scheme: if arm_tls { "https" } else { "http" },
            endpoint: ingest::Capacity::new(&scenario_endpoint),
            graph: resource_graph::Graph::default(),
        });
        let arm_router = Router::new()
            .route(
                "/subscriptions/{sub}/providers/{provider}/eventtypes/management/values",
                get(arm::list),
            )
            .route(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/{provider}/actionGroups",
                get(handlers::action_groups),
            )
            .route(
                "/subscriptions/{sub}/providers/{provider}/activityLogAlerts",
                get(handlers::alerts),
            )
            .route(
                "/providers/Microsoft.ResourceGraph/resources",
                post(resource_graph::query),
            )
            .route("/_emulator/report", get(report_handler))
            .with_state(shared.clone());
        let login_router = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state(shared.clone());
        let ingest_router = Router::new()
            .route("/api/v5/events/raw", post(ingest::receive))
            .with_state(shared.clone());

        let bind = |ip: IpAddr| async move {
            let addr = SocketAddr::new(ip, 0);
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| EmulatorError::Bind { addr, source })
        };
        let (l_arm, l_login, l_ingest) = (bind(ip).await?, bind(ip).await?, bind(ip).await?);
        let addr = |l: &tokio::net::TcpListener| {
            l.local_addr().map_err(|source| EmulatorError::Bind {
                addr: SocketAddr::new(ip, 0),
                source,
            })
        };
        let (arm, login, ingest) = (addr(&l_arm)?, addr(&l_login)?, addr(&l_ingest)?);
        let tls = tls::generate()?;
        let arm_task = if arm_tls {
            tokio::spawn(tls::serve(l_arm, arm_router, tls.config.clone()))
        } else {
            tokio::spawn(async move {
                let _ = axum::serve(l_arm, arm_router).await;
            })
        };
        let tasks = vec![
            arm_task,
            tokio::spawn(async move {
                let _ = axum::serve(l_ingest, ingest_router).await;
            }),
            tokio::spawn(tls::serve(l_login, login_router, tls.config.clone())),
        ];
        Ok(Emulator {
            arm,
            login,
            ingest,
            ca_pem: tls.ca_pem,
            shared,
            tasks,
        })
    }

    pub fn ingest_url(&self) -> String {
        format!(
            "http://{}/api/v5/events/raw?token={}",
            self.ingest, self.shared.ingest_token
        )
    }

    pub fn client_secret(&self) -> &str {
        &self.shared.client_secret
    }

    pub fn stop_generating(&self) {
        self.shared.log().stop_generating();
    }

    /// When the last entry generated so far becomes visible.
    pub fn last_visible_at(&self) -> Option<Timestamp> {
        self.shared.log().last_visible_at()
    }

    pub fn report(&self, statuses: &[&str]) -> Report {
        report(&self.shared, statuses)
    }

    /// What Resource Graph was asked so far, and how it answered.
    pub fn resource_graph_calls(&self) -> resource_graph::Calls {
        self.shared.graph.calls()
    }

    /// Writes `ca.pem`, `client-secret`, `ingest-url` and `poller.toml` into
    /// `dir`, configured for this emulator; returns the configuration's path.
    pub fn write_poller_files(
        &self,
        dir: &Path,
        settings: &PollerSettings,
    ) -> Result<PathBuf, EmulatorError> {
        let write = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(name);
            // Secrets, as an operator would keep them: readable by the owner only.
            std::fs::write(&path, text)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                })
                .map_err(|source| EmulatorError::Write { path, source })
        };
        write("ca.pem", &self.ca_pem)?;
        write("client-secret", &self.shared.client_secret)?;
        write("ingest-url", &self.ingest_url())?;
        let mut toml = format!(
            r#"# Written by the activity log emulator. Trust its CA: SSL_CERT_FILE={ca}
[state]
path = "state.db"

[azure]
cloud = "custom"
resource_manager_url = "{scheme}://{arm}"
authority_host = "https://{login}"
retry_base = "{retry}"
max_retries = 6
request_timeout = "10s"

[credentials.emulator]
kind = "client_secret"
tenant_id = "{TENANT_ID}"
client_id = "{CLIENT_ID}"
client_secret_file = "client-secret"

[guardrails]
ingest_url_file = "ingest-url"
format = "{format}"
timeout = "10s"
retry_base = "{retry}"
retry_max = "2s"

[defaults]
credential = "emulator"
interval = "{interval}"
window = "{window}"
"#,
            ca = dir.join("ca.pem").display(),
            scheme = self.shared.arm_scheme,
            arm = self.arm,
            login = self.login,
            retry = settings.retry_base,
            format = settings.format,
            interval = settings.interval,
            window = settings.window,
        );
        if let Some(every) = settings.detection_interval {
            toml.push_str(&format!("\n[detection]\ninterval = \"{every}\"\n"));
        }
        for (i, s) in self.shared.scenario().subscriptions.iter().enumerate() {
            toml.push_str(&format!(
                "\n[[subscription]]\nid = \"{}\"\nname = \"emulated-{}\"\n",
                s.id,
                i + 1
            ));
        }
        write("poller.toml", &toml)?;
        Ok(dir.join("poller.toml"))
    }
}
