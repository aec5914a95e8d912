//! The configuration file, `poller.toml`: parsed, validated and resolved once.
//!
//! Parsing happens in two steps. Serde reads the TOML into `raw` structs whose
//! fields keep their position in the file (`toml::Spanned`), so that every later
//! check can say *where* a problem is. Validation then turns the raw structs into
//! a [`Config`] whose types carry their invariants: a [`Window`] known to exceed its
//! interval, a validated [`SubscriptionId`], secrets wrapped in [`SecretString`].
//! Validation does not stop at the first problem: it collects every one, so that
//! `check-config` can list them all with line and column.
//!
//! Secrets may come from a file, an environment variable or the file itself.
//! Relative secret file paths are looked up in `$CREDENTIALS_DIRECTORY` (systemd's
//! `LoadCredential=`) when it is set, else next to the configuration file.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Spanned;
use url::Url;

use crate::retry::Backoff;

/// Azure keeps activity log entries for 90 days; older start times get HTTP 400.
pub const RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Where a variable comes from: the process environment, or a map in tests.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// One problem found in the configuration file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Everything wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{}:{}:{}: {}",
            path.display(),
            p.line,
            p.column,
            p.message
        ));
    }
    out
}

/// A subscription id: a GUID, validated once, kept in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(String);

impl SubscriptionId {
    pub fn parse(s: &str) -> Option<Self> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        let ok = groups.len() == 5
            && groups
                .iter()
                .zip(lens)
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        ok.then(|| Self(s.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How often a subscription is polled and how far back each poll looks.
/// Invariant: `window > interval >= 1s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    interval: Duration,
    window: Duration,
}

impl Schedule {
    pub fn new(interval: Duration, window: Duration) -> Result<Self, String> {
        if interval < Duration::from_secs(1) {
            return Err(format!(
                "interval must be at least 1s, got {}",
                humantime::format_duration(interval)
            ));
        }
        if window <= interval {
            return Err(format!(
                "window ({}) must be longer than interval ({}); at least twice is recommended",
                humantime::format_duration(window),
                humantime::format_duration(interval)
            ));
        }
        if window >= RETENTION {
            return Err("window must be shorter than the activity log's 90-day retention".into());
        }
        Ok(Self { interval, window })
    }
    pub fn interval(&self) -> Duration {
        self.interval
    }
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// The Azure cloud the subscriptions live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    Public,
    UsGovernment,
    China,
    Custom,
}

impl Cloud {
    fn defaults(self) -> Option<(&'static str, &'static str)> {
        match self {
            Cloud::Public => Some((
                "https://management.azure.com",
                "https://login.microsoftonline.com",
            )),
            Cloud::UsGovernment => Some((
                "https://management.usgovcloudapi.net",
                "https://login.microsoftonline.us",
            )),
            Cloud::China => Some((
                "https://management.chinacloudapi.cn",
                "https://login.chinacloudapi.cn",
            )),
            Cloud::Custom => None,
        }
    }
}

/// The payload shape posted to the ingestion endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `Microsoft.Insights/activityLogs`, as the legacy Action Group webhook sends.
    ActivityLogAlert,
    /// `azureMonitorCommonAlertSchema`.
    CommonAlertSchema,
    /// The REST `EventData` entry, unchanged.
    EventData,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AzureConfig {
    pub cloud: Cloud,
    pub resource_manager_url: Url,
    pub authority_host: Url,
    /// Subscriptions polled at the same time.
    pub concurrency: usize,
    /// Limit for one HTTP request to Azure.
    pub request_timeout: Duration,
    /// Retries of one request after throttling, 5xx or transport faults.
    pub backoff: Backoff,
    /// ARM's read budget per subscription and principal: burst, and refill per second.
    pub reads_burst: u32,
    pub reads_per_second: f64,
    /// Time slices of a long catch-up queried in parallel, per subscription.
    pub catch_up_slices: usize,
}

impl AzureConfig {
    /// The OAuth2 scope for Azure Resource Manager in this cloud.
    pub fn scope(&self) -> String {
        format!(
            "{}/.default",
            self.resource_manager_url.as_str().trim_end_matches('/')
        )
    }
}

/// How to obtain Azure tokens. Secrets are already loaded.
#[derive(Debug, Clone)]
pub enum CredentialConfig {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        client_secret: SecretString,
    },
    ManagedIdentity {
        /// A user-assigned identity's client id; system-assigned when absent.
        client_id: Option<String>,
    },
    WorkloadIdentity {
        tenant_id: Option<String>,
        client_id: Option<String>,
        token_file: Option<PathBuf>,
    },
    AzureCli {
        tenant_id: Option<String>,
    },
}

impl CredentialConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialConfig::ClientSecret { .. } => "client_secret",
            CredentialConfig::ManagedIdentity { .. } => "managed_identity",
            CredentialConfig::WorkloadIdentity { .. } => "workload_identity",
            CredentialConfig::AzureCli { .. } => "azure_cli",
        }
    }
}

/// The Guardrails ingestion URL. It embeds a token, so it is a secret: its
/// `Debug` and `Display` show the host only.
#[derive(Clone)]
pub struct IngestUrl(SecretString);

impl IngestUrl {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
    /// A printable form: scheme and host, never path or query.
    pub fn redacted(&self) -> String {
        match Url::parse(self.expose()) {
            Ok(u) => format!(
                "{}://{}/[redacted]",
                u.scheme(),
                u.host_str().unwrap_or("?")
            ),
            Err(_) => "[redacted]".into(),
        }
    }
}

impl fmt::Debug for IngestUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IngestUrl({})", self.redacted())
    }
}

/// How many POSTs may be in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryConcurrency {
    /// Learned from the endpoint's answers (`src/concurrency.rs`), up to `max`.
    Adaptive {
        max: usize,
    },
    Fixed(usize),
}

#[derive(Debug, Clone)]
pub struct GuardrailsConfig {
    pub ingest_url: IngestUrl,
    pub format: Format,
    pub concurrency: DeliveryConcurrency,
    pub timeout: Duration,
    /// Pauses between failed delivery rounds (unbounded count).
    pub backoff: Backoff,
    /// `[guardrails.api]`, when configured.
    pub api: Option<GuardrailsApiConfig>,
}

/// Whether Guardrails event handlers (or Guardrails' own poller) feed a
/// subscription: `"detect"` asks Azure and Guardrails, `true` and `false` are
/// the operator's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventHandlers {
    /// Observe it: Azure's action group and alerts, and Guardrails' policies
    /// when `[guardrails.api]` is configured.
    #[default]
    Detect,
    /// Declared active: the poller refuses the subscription.
    Active,
    /// Declared absent: no detection; a warning at every start.
    Absent,
}

/// What to do when detection cannot tell (403, Guardrails unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnknown {
    /// At start: refuse to start. While running: keep the last known state.
    #[default]
    Refuse,
    /// Poll as if nothing else fed the subscription.
    Poll,
}

/// `[detection]`: how often live detection runs, and what an unknown means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectionConfig {
    pub interval: Duration,
    pub on_unknown: OnUnknown,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            interval: Duration::from_secs(600),
            on_unknown: OnUnknown::Refuse,
        }
    }
}

/// `[guardrails.api]`: the Guardrails GraphQL API, for detection and `import`.
#[derive(Debug, Clone)]
pub struct GuardrailsApiConfig {
    /// `https://<workspace>`: the GraphQL endpoint is `{workspace}/api/latest/graphql`.
    pub workspace_url: Url,
    pub access_key: SecretString,
    pub secret_key: SecretString,
}

impl GuardrailsApiConfig {
    pub fn graphql_url(&self) -> Url {
        let mut u = self.workspace_url.clone();
        u.set_path(&format!(
            "{}/api/latest/graphql",
            self.workspace_url.path().trim_end_matches('/')
        ));
        u.set_query(None);
        u
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    pub id: SubscriptionId,
    pub name: Option<String>,
    pub event_handlers: EventHandlers,
    /// Where `event_handlers` is set, as (line, column), for messages.
    pub event_handlers_at: Option<(usize, usize)>,
    pub schedule: Schedule,
    pub credential: String,
    pub statuses: Vec<String>,
}

impl SubscriptionConfig {
    /// `name (id)` or the id alone, for logs.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", self.id),
            None => self.id.to_string(),
        }
    }
    pub fn keeps(&self, status: &str) -> bool {
        self.statuses.iter().any(|s| s.eq_ignore_ascii_case(status))
    }
}

/// `[state]`: where the state lives.
#[derive(Debug, Clone)]
pub enum StateConfig {
    /// `path = ...`: an SQLite file, for one instance.
    Sqlite(PathBuf),
    /// `url = "postgres://..."` (or `url_file`, `url_env`): a PostgreSQL
    /// database shared by every instance.
    Postgres(crate::store::DatabaseUrl),
}

impl StateConfig {
    /// Printable: the path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StateConfig::Sqlite(p) => p.display().to_string(),
            StateConfig::Postgres(u) => u.redacted(),
        }
    }

    /// The same place (a reload cannot move the state).
    pub fn same_as(&self, other: &StateConfig) -> bool {
        match (self, other) {
            (StateConfig::Sqlite(a), StateConfig::Sqlite(b)) => a == b,
            (StateConfig::Postgres(a), StateConfig::Postgres(b)) => a.same_as(b),
            _ => false,
        }
    }
}

/// `[ha]`: leases between instances sharing a PostgreSQL state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaConfig {
    /// How long a lease lasts unrenewed; renewed every third of it. A dead
    /// instance's subscriptions are taken over this long after its last renewal.
    pub lease: Duration,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            lease: Duration::from_secs(30),
        }
    }
}

impl HaConfig {
    /// How often leases are renewed (and free ones looked for).
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub state: StateConfig,
    pub ha: HaConfig,
    pub azure: AzureConfig,
    pub credentials: BTreeMap<String, CredentialConfig>,
    pub guardrails: GuardrailsConfig,
    pub subscriptions: Vec<SubscriptionConfig>,
    /// `[telemetry] listen`: where /metrics, /healthz and /readyz are served.
    pub telemetry_listen: Option<std::net::SocketAddr>,
    pub detection: DetectionConfig,
    /// Things worth a warning, not an error: files with secrets that other
    /// users can read.
    pub warnings: Vec<String>,
}

mod raw {
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub state: Option<Spanned<State>>,
        pub azure: Option<Azure>,
        #[serde(default)]
        pub credentials: BTreeMap<String, Spanned<Credential>>,
        pub guardrails: Option<Spanned<Guardrails>>,
        pub defaults: Option<Defaults>,
        #[serde(default)]
        pub subscription: Vec<Spanned<Subscription>>,
        pub telemetry: Option<Telemetry>,
        pub detection: Option<Detection>,
        pub ha: Option<Ha>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Detection {
        pub interval: Option<Spanned<String>>,
        pub on_unknown: Option<Spanned<String>>,
    }

    /// `event_handlers`: `"detect"`, `true` or `false`; checked in
    /// validation, for a message better than serde's.
    pub type EventHandlers = toml::Value;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct GuardrailsApi {
        pub workspace_url: Option<Spanned<String>>,
        pub workspace_url_file: Option<Spanned<PathBuf>>,
        pub workspace_url_env: Option<Spanned<String>>,
        pub access_key: Option<Spanned<String>>,
        pub access_key_file: Option<Spanned<PathBuf>>,
        pub access_key_env: Option<Spanned<String>>,
        pub secret_key: Option<Spanned<String>>,
        pub secret_key_file: Option<Spanned<PathBuf>>,
        pub secret_key_env: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Telemetry {
        pub listen: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct State {
        pub path: Option<Spanned<PathBuf>>,
        pub url: Option<Spanned<String>>,
        pub url_file: Option<Spanned<PathBuf>>,
        pub url_env: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Ha {
        pub lease: Option<Spanned<String>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Azure {
        pub cloud: Option<Spanned<Cloud>>,
        pub resource_manager_url: Option<Spanned<String>>,
        pub authority_host: Option<Spanned<String>>,
        pub concurrency: Option<Spanned<i64>>,
        pub request_timeout: Option<Spanned<String>>,
        pub max_retries: Option<Spanned<i64>>,
        pub retry_base: Option<Spanned<String>>,
        pub reads_burst: Option<Spanned<i64>>,
        pub reads_per_second: Option<Spanned<i64>>,
        pub catch_up_slices: Option<Spanned<i64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Credential {
        pub kind: Spanned<String>,
        pub tenant_id: Option<Spanned<String>>,
        pub client_id: Option<Spanned<String>>,
        pub client_secret: Option<Spanned<String>>,
        pub client_secret_file: Option<Spanned<PathBuf>>,
        pub client_secret_env: Option<Spanned<String>>,
        pub token_file: Option<Spanned<PathBuf>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Guardrails {
        pub ingest_url: Option<Spanned<String>>,
        pub ingest_url_file: Option<Spanned<PathBuf>>,
        pub ingest_url_env: Option<Spanned<String>>,
        pub format: Option<Spanned<Format>>,
        pub concurrency: Option<Spanned<toml::Value>>,
        pub max_concurrency: Option<Spanned<i64>>,
        pub timeout: Option<Spanned<String>>,
        pub retry_base: Option<Spanned<String>>,
        pub retry_max: Option<Spanned<String>>,
        pub api: Option<Spanned<GuardrailsApi>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Defaults {
        pub credential: Option<Spanned<String>>,
        pub interval: Option<Spanned<String>>,
        pub window: Option<Spanned<String>>,
        pub statuses: Option<Spanned<Vec<String>>>,
        pub event_handlers: Option<Spanned<EventHandlers>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Subscription {
        pub id: Spanned<String>,
        pub name: Option<String>,
        pub event_handlers: Option<Spanned<EventHandlers>>,
        pub credential: Option<Spanned<String>>,
        pub interval: Option<Spanned<String>>,
        pub window: Option<Spanned<String>>,
        pub statuses: Option<Spanned<Vec<String>>>,
    }
}

/// Collects problems while validating; turns byte offsets into line and column.
struct Checker<'a> {
    source: &'a str,
    problems: Vec<Problem>,
    /// Sections whose own problems were reported while reading them; they are
    /// not reported again as missing.
    unreadable: HashSet<String>,
    warnings: Vec<String>,
    /// `import` reads a file that may have no subscription yet.
    subscriptions_optional: bool,
    /// The keys of secrets given inline, in this file.
    inline_secrets: Vec<String>,
}

impl<'a> Checker<'a> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_column(self.source, span.start);
        self.problems.push(Problem {
            line,
            column,
            message: message.into(),
        });
    }

    fn duration(&mut self, value: &Spanned<String>, key: &str) -> Option<Duration> {
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.at(
                    value.span(),
                    format!("{key}: cannot parse {:?} as a duration ({e}); examples: \"30s\", \"1m\", \"15m\"", value.get_ref()),
                );
                None
            }
        }
    }

    fn positive(&mut self, value: &Spanned<i64>, key: &str, max: i64) -> Option<usize> {
        let v = *value.get_ref();
        if v < 1 || v > max {
            self.at(
                value.span(),
                format!("{key} must be between 1 and {max}, got {v}"),
            );
            return None;
        }
        usize::try_from(v).ok()
    }

    fn url(&mut self, value: &Spanned<String>, key: &str) -> Option<Url> {
        match Url::parse(value.get_ref()) {
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && is_loopback(&u)) => Some(u),
            Ok(_) => {
                self.at(
                    value.span(),
                    format!("{key} must be an https URL (http is allowed only for loopback test servers)"),
                );
                None
            }
            Err(e) => {
                self.at(value.span(), format!("{key} is not a valid URL: {e}"));
                None
            }
        }
    }
}

fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// One of `X`, `X_file`, `X_env`, resolved to its secret value.
struct SecretSource<'r> {
    inline: Option<&'r Spanned<String>>,
    file: Option<&'r Spanned<PathBuf>>,
    env: Option<&'r Spanned<String>>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&source, path, env)
    }

    /// Validates configuration text; `path` is used for messages and for
    /// resolving relative secret files.
    pub fn parse(source: &str, path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::parse_for(source, path, env, false)
    }

    /// Reads a file for `import`: as [`Config::load`], but it may list no
    /// subscription yet.
    pub fn load_for_import(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_for(&source, path, env, true)
    }

    fn parse_for(
        source: &str,
        path: &Path,
        env: &dyn Env,
        subscriptions_optional: bool,
    ) -> Result<Config, ConfigError> {
        let mut ck = Checker {
            source,
            problems: Vec::new(),
            unreadable: HashSet::new(),
            warnings: Vec::new(),
            subscriptions_optional,
            inline_secrets: Vec::new(),
        };
        let file = read_pieces(&mut ck);
        let config = file.and_then(|file| validate(file, &mut ck, path, env));
        // The file itself is no secret (secrets travel by LoadCredential=, and
        // the service's dynamic user must read it), unless it holds one.
        if !ck.inline_secrets.is_empty() {
            let what = format!(
                "the configuration file holds {} inline: move it to {}_file, a file handed over with LoadCredential=",
                ck.inline_secrets.join(" and "),
                ck.inline_secrets[0],
            );
            warn_if_world_readable(path, &what, &mut ck.warnings);
        }
        match config {
            Some(mut c) if ck.problems.is_empty() => {
                c.warnings = std::mem::take(&mut ck.warnings);
                Ok(c)
            }
            _ => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: ck.problems,
            }),
        }
    }

    /// Subscriptions whose feeds are detected (`event_handlers = "detect"`).
    pub fn detected_subscriptions(&self) -> Vec<SubscriptionConfig> {
        self.subscriptions
            .iter()
            .filter(|s| s.event_handlers == EventHandlers::Detect)
            .cloned()
            .collect()
    }

    /// Subscriptions whose Guardrails event handlers are marked active.
    pub fn handler_conflicts(&self) -> Vec<&SubscriptionConfig> {
        self.subscriptions
            .iter()
            .filter(|s| s.event_handlers == EventHandlers::Active)
            .collect()
    }
}

fn validate(file: raw::File, ck: &mut Checker<'_>, path: &Path, env: &dyn Env) -> Option<Config> {
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let cred_dir = env.var("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let resolve = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else if let Some(d) = &cred_dir {
            d.join(p)
        } else {
            base_dir.join(p)
        }
    };

    // [state]
    let state = validate_state(file.state.as_ref(), ck, env, &base_dir, &resolve);
    let ha = validate_ha(file.ha.as_ref(), ck);

    // [azure]
    let az = file.azure.unwrap_or_default();
    let cloud = az.cloud.as_ref().map_or(Cloud::Public, |c| *c.get_ref());
    let defaults = cloud.defaults();
    let mut endpoint = |value: &Option<Spanned<String>>, key: &str, default: Option<&str>| match (
        value, default,
    ) {
        (Some(v), _) => ck.url(v, key),
        (None, Some(d)) => Url::parse(d).ok(),
        (None, None) => {
            let span = az.cloud.as_ref().map_or(0..0, |c| c.span());
            ck.at(span, format!("cloud = \"custom\" requires [azure] {key}"));
            None
        }
    };
    let resource_manager_url = endpoint(
        &az.resource_manager_url,
        "resource_manager_url",
        defaults.map(|d| d.0),
    );
    let authority_host = endpoint(&az.authority_host, "authority_host", defaults.map(|d| d.1));
    let concurrency = az
        .concurrency
        .as_ref()
        .map_or(Some(32), |c| ck.positive(c, "[azure] concurrency", 1024));
    let request_timeout = az
        .request_timeout
        .as_ref()
        .map_or(Some(Duration::from_secs(60)), |t| {
            ck.duration(t, "[azure] request_timeout")
        });

    let reads_burst = az.reads_burst.as_ref().map_or(Some(250), |c| {
        ck.positive(c, "[azure] reads_burst", 100_000)
    });
    let reads_per_second = az.reads_per_second.as_ref().map_or(Some(25), |c| {
        ck.positive(c, "[azure] reads_per_second", 10_000)
    });
    let catch_up_slices = az
        .catch_up_slices
        .as_ref()
        .map_or(Some(8), |c| ck.positive(c, "[azure] catch_up_slices", 64));
    let max_retries = az
        .max_retries
        .as_ref()
        .map_or(Some(5), |c| ck.positive(c, "[azure] max_retries", 100));
    let retry_base = az
        .retry_base
        .as_ref()
        .map_or(Some(Duration::from_secs(1)), |t| {
            ck.duration(t, "[azure] retry_base")
        });

    // [credentials.*]
    let mut credentials = BTreeMap::new();
    for (name, cred) in &file.credentials {
        if let Some(c) = validate_credential(name, cred, ck, env, &resolve) {
            credentials.insert(name.clone(), c);
        }
    }

    // [guardrails]
    let guardrails = match &file.guardrails {
        None => {
            if !ck.unreadable.contains("guardrails") {
                ck.at(
                    0..0,
                    "missing [guardrails] section: where events are delivered",
                );
            }
            None
        }
        Some(g) => validate_guardrails(g, ck, env, &resolve),
    };

    // [defaults]
    let d = file.defaults.unwrap_or_default();
    let default_interval = d
        .interval
        .as_ref()
        .map_or(Some(Duration::from_secs(60)), |v| {
            ck.duration(v, "[defaults] interval")
        });
    let default_window = d
        .window
        .as_ref()
        .map_or(Some(Duration::from_secs(15 * 60)), |v| {
            ck.duration(v, "[defaults] window")
        });
    let default_handlers = match &d.event_handlers {
        Some(h) => event_handlers(h, ck),
        None => Some(EventHandlers::Detect),
    };
    let default_statuses = match &d.statuses {
        Some(s) => statuses(s, ck),
        None => Some(vec!["Succeeded".to_string()]),
    };

    // [[subscription]]
    if file.subscription.is_empty()
        && !ck.unreadable.contains("subscription")
        && !ck.subscriptions_optional
    {
        ck.at(
            source_len(ck),
            "no [[subscription]] configured: add at least one",
        );
    }
    let mut seen_ids = HashSet::new();
    let mut subscriptions = Vec::new();
    for sub in &file.subscription {
        let span = sub.span();
        let s = sub.get_ref();
        let id = match SubscriptionId::parse(s.id.get_ref().trim()) {
            Some(id) => id,
            None => {
                ck.at(
                    s.id.span(),
                    format!(
                        "subscription id {:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
                        s.id.get_ref()
                    ),
                );
                continue;
            }
        };
        if !seen_ids.insert(id.clone()) {
            ck.at(s.id.span(), format!("duplicate subscription id {id}"));
            continue;
        }
        let interval = match &s.interval {
            Some(v) => ck.duration(v, "interval"),
            None => default_interval,
        };
        let window = match &s.window {
            Some(v) => ck.duration(v, "window"),
            None => default_window,
        };
        let schedule = match (interval, window) {
            (Some(i), Some(w)) => match Schedule::new(i, w) {
                Ok(s) => Some(s),
                Err(msg) => {
                    // Point at the value that is wrong: the interval when it is
                    // too short, else the window; the subscription's own value
                    // before the [defaults] one.
                    let interval_at = s
                        .interval
                        .as_ref()
                        .or(d.interval.as_ref())
                        .map(|v| v.span());
                    let window_at = s.window.as_ref().or(d.window.as_ref()).map(|v| v.span());
                    let at = if i < Duration::from_secs(1) {
                        interval_at.or(window_at)
                    } else {
                        window_at.or(interval_at)
                    };
                    ck.at(
                        at.unwrap_or(span.clone()),
                        format!("subscription {id}: {msg}"),
                    );
                    None
                }
            },
            _ => None,
        };
        let credential = match (&s.credential, &d.credential) {
            (Some(c), _) | (None, Some(c)) => {
                if credentials.contains_key(c.get_ref())
                    || file.credentials.contains_key(c.get_ref())
                {
                    Some(c.get_ref().clone())
                } else if ck
                    .unreadable
                    .contains(&format!("credentials.{}", c.get_ref()))
                {
                    // Its own problem was reported already.
                    None
                } else {
                    let known: Vec<&str> = file.credentials.keys().map(String::as_str).collect();
                    ck.at(
                        c.span(),
                        format!(
                            "unknown credential {:?} (defined: {})",
                            c.get_ref(),
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                    None
                }
            }
            (None, None) => {
                ck.at(
                    span.clone(),
                    format!("subscription {id} names no credential, and [defaults] credential is not set"),
                );
                None
            }
        };
        let statuses = match &s.statuses {
            Some(v) => statuses(v, ck),
            None => default_statuses.clone(),
        };
        let handlers = match &s.event_handlers {
            Some(h) => event_handlers(h, ck),
            None => default_handlers,
        };
        if let (Some(schedule), Some(credential), Some(statuses), Some(handlers)) =
            (schedule, credential, statuses, handlers)
        {
            subscriptions.push(SubscriptionConfig {
                id,
                name: s.name.clone(),
                event_handlers: handlers,
                event_handlers_at: s
                    .event_handlers
                    .as_ref()
                    .or(d.event_handlers.as_ref())
                    .map(|b| line_column(ck.source, b.span().start)),
                schedule,
                credential,
                statuses,
            });
        }
    }

    let telemetry_listen = match file.telemetry.as_ref().and_then(|t| t.listen.as_ref()) {
        None => None,
        Some(l) => match l.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                ck.at(
                    l.span(),
                    format!(
                        "[telemetry] listen {:?} is not an address and port like \"127.0.0.1:9464\"",
                        l.get_ref()
                    ),
                );
                None
            }
        },
    };

    let detection = validate_detection(file.detection.as_ref(), ck);

    Some(Config {
        path: path.to_path_buf(),
        state: state?,
        ha: ha?,
        azure: AzureConfig {
            cloud,
            resource_manager_url: resource_manager_url?,
            authority_host: authority_host?,
            concurrency: concurrency?,
            request_timeout: request_timeout?,
            backoff: Backoff {
                base: retry_base?,
                max: Duration::from_secs(60).max(retry_base?),
                retries: Some(max_retries?),
            },
            reads_burst: u32::try_from(reads_burst?).unwrap_or(u32::MAX),
            reads_per_second: reads_per_second? as f64,
            catch_up_slices: catch_up_slices?,
        },
        credentials,
        guardrails: guardrails?,
        subscriptions,
        telemetry_listen,
        detection: detection?,
        warnings: Vec::new(),
    })
}

fn event_handlers(
    value: &Spanned<raw::EventHandlers>,
    ck: &mut Checker<'_>,
) -> Option<EventHandlers> {
    match value.get_ref() {
        toml::Value::Boolean(true) => Some(EventHandlers::Active),
        toml::Value::Boolean(false) => Some(EventHandlers::Absent),
        toml::Value::String(w) if w.eq_ignore_ascii_case("detect") => Some(EventHandlers::Detect),
        other => {
            ck.at(
                value.span(),
                format!("event_handlers must be \"detect\", true or false, got {other}"),
            );
            None
        }
    }
}

fn validate_state(
    st: Option<&Spanned<raw::State>>,
    ck: &mut Checker<'_>,
    env: &dyn Env,
    base_dir: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Option<StateConfig> {
    let Some(st) = st else {
        if !ck.unreadable.contains("state") {
            ck.at(
                0..0,
                "missing [state]: path (an SQLite file) or url (a PostgreSQL database)",
            );
        }
        return None;
    };
    let span = st.span();
    let s = st.get_ref();
    let url_given = s.url.is_some() || s.url_file.is_some() || s.url_env.is_some();
    match (&s.path, url_given) {
        (Some(p), false) => Some(StateConfig::Sqlite(base_dir.join(p.get_ref()))),
        (Some(p), true) => {
            ck.at(
                p.span(),
                "[state]: set either path (SQLite) or url (PostgreSQL), not both",
            );
            None
        }
        (None, false) => {
            ck.at(
                span,
                "[state]: set path (an SQLite file) or url (a PostgreSQL database)",
            );
            None
        }
        (None, true) => {
            let url = load_secret(
                SecretSource {
                    inline: s.url.as_ref(),
                    file: s.url_file.as_ref(),
                    env: s.url_env.as_ref(),
                },
                "[state] url",
                span.clone(),
                ck,
                env,
                resolve,
            )?;
            // The URL may hold a password: say what is wrong, never what it is.
            let at = s
                .url
                .as_ref()
                .map(|v| v.span())
                .or(s.url_file.as_ref().map(|v| v.span()))
                .or(s.url_env.as_ref().map(|v| v.span()))
                .unwrap_or(span);
            match crate::store::DatabaseUrl::parse(url.expose_secret()) {
                Ok(u) => Some(StateConfig::Postgres(u)),
                Err(e) => {
                    ck.at(at, format!("[state] url: {e}"));
                    None
                }
            }
        }
    }
}

fn validate_ha(h: Option<&raw::Ha>, ck: &mut Checker<'_>) -> Option<HaConfig> {
    let mut out = HaConfig::default();
    let Some(lease) = h.and_then(|h| h.lease.as_ref()) else {
        return Some(out);
    };
    let v = ck.duration(lease, "[ha] lease")?;
    if v < Duration::from_secs(1) || v > Duration::from_secs(3600) {
        ck.at(
            lease.span(),
            "[ha] lease must be between 1s and 1h (renewed every third of it)",
        );
        return None;
    }
    out.lease = v;
    Some(out)
}

fn validate_detection(d: Option<&raw::Detection>, ck: &mut Checker<'_>) -> Option<DetectionConfig> {
    let mut out = DetectionConfig::default();
    let Some(d) = d else {
        return Some(out);
    };
    let mut ok = true;
    if let Some(i) = &d.interval {
        match ck.duration(i, "[detection] interval") {
            Some(v) if v >= Duration::from_secs(1) => out.interval = v,
            Some(_) => {
                ck.at(i.span(), "[detection] interval must be at least 1s");
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(o) = &d.on_unknown {
        match o.get_ref().as_str() {
            "refuse" => out.on_unknown = OnUnknown::Refuse,
            "poll" => out.on_unknown = OnUnknown::Poll,
            other => {
                ck.at(
                    o.span(),
                    format!("[detection] on_unknown must be \"refuse\" or \"poll\", got {other:?}"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn validate_guardrails_api(
    api: &Spanned<raw::GuardrailsApi>,
    ck: &mut Checker<'_>,
    env: &dyn Env,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Option<GuardrailsApiConfig> {
    let span = api.span();
    let a = api.get_ref();
    let workspace = load_secret(
        SecretSource {
            inline: a.workspace_url.as_ref(),
            file: a.workspace_url_file.as_ref(),
            env: a.workspace_url_env.as_ref(),
        },
        "[guardrails.api] workspace_url",
        span.clone(),
        ck,
        env,
        resolve,
    );
    // The workspace URL may come from a file or the environment like the
    // keys, but it is no secret: inline in a world-readable file is fine.
    ck.inline_secrets
        .retain(|k| k != "[guardrails.api] workspace_url");
    let access_key = load_secret(
        SecretSource {
            inline: a.access_key.as_ref(),
            file: a.access_key_file.as_ref(),
            env: a.access_key_env.as_ref(),
        },
        "[guardrails.api] access_key",
        span.clone(),
        ck,
        env,
        resolve,
    );
    let secret_key = load_secret(
        SecretSource {
            inline: a.secret_key.as_ref(),
            file: a.secret_key_file.as_ref(),
            env: a.secret_key_env.as_ref(),
        },
        "[guardrails.api] secret_key",
        span.clone(),
        ck,
        env,
        resolve,
    );
    let at = a
        .workspace_url
        .as_ref()
        .map(|v| v.span())
        .or(a.workspace_url_file.as_ref().map(|v| v.span()))
        .or(a.workspace_url_env.as_ref().map(|v| v.span()))
        .unwrap_or(span);
    let workspace_url = workspace.and_then(|w| {
        let text = w.expose_secret().trim().to_string();
        ck.url(
            &Spanned::new(at.clone(), text),
            "[guardrails.api] workspace_url",
        )
    });
    Some(GuardrailsApiConfig {
        workspace_url: workspace_url?,
        access_key: access_key?,
        secret_key: secret_key?,
    })
}

/// A warning when a file that holds secrets can be read by every user; `what`
/// says which secret and what to do.
fn warn_if_world_readable(path: &Path, what: &str, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        warnings.push(format!(
            "{} is readable by every user (mode {:o}): {what}",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
}

/// Warnings when the service could not read the configuration file at `path`:
/// under systemd it runs as a dynamic user (`DynamicUser=`), which owns no
/// file, so the file must be readable by "other" and every directory above
/// it searchable by "other". Secrets are not concerned: systemd hands them
/// over with `LoadCredential=`.
pub fn service_readability(path: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(path) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777);
    let mut warnings = Vec::new();
    if let Ok(m) = mode(&path)
        && m & 0o004 == 0
    {
        warnings.push(format!(
            "{} is not readable by other users (mode {m:o}): the service's dynamic user (DynamicUser=) cannot read it; chmod o+r it (secrets belong in LoadCredential= files, not in it)",
            path.display()
        ));
    }
    for dir in path.ancestors().skip(1) {
        if let Ok(m) = mode(dir)
            && m & 0o001 == 0
        {
            warnings.push(format!(
                "{} is not searchable by other users (mode {m:o}): the service's dynamic user (DynamicUser=) cannot reach {} through it; chmod o+x it",
                dir.display(),
                path.display()
            ));
        }
    }
    warnings
}

/// Reads the file section by section (each `[[subscription]]` on its own), so
/// that a problem in one does not hide the problems of the others.
fn read_pieces(ck: &mut Checker<'_>) -> Option<raw::File> {
    use toml::de::{DeArray, DeTable, DeValue};
    let root = match DeTable::parse(ck.source) {
        Ok(r) => r,
        Err(e) => {
            ck.at(e.span().unwrap_or(0..0), e.message().trim().to_string());
            return None;
        }
    };
    let span = root.span();
    let mut file = raw::File::default();
    for (key, value) in root.into_inner() {
        let pieces: Vec<Spanned<DeValue<'_>>> = match value.get_ref() {
            // Each credential on its own, like each subscription.
            DeValue::Table(creds) if key.get_ref() == "credentials" => creds
                .iter()
                .map(|(name, cred)| {
                    let mut one = DeTable::new();
                    one.insert(name.clone(), cred.clone());
                    Spanned::new(value.span(), DeValue::Table(one))
                })
                .collect(),
            DeValue::Array(items) if key.get_ref() == "subscription" => items
                .iter()
                .map(|item| {
                    let mut one = DeArray::new();
                    one.push(item.clone());
                    Spanned::new(value.span(), DeValue::Array(one))
                })
                .collect(),
            _ => vec![value.clone()],
        };
        for piece in pieces {
            let piece_value = piece.get_ref().clone();
            let mut table = DeTable::new();
            table.insert(key.clone(), piece);
            let de = toml::de::Deserializer::from(Spanned::new(span.clone(), table));
            match raw::File::deserialize(de) {
                Ok(part) => file.merge(part),
                Err(e) => {
                    let at = e.span().unwrap_or(0..0);
                    let message = redact_secret_value(ck.source, &at, e.message().trim());
                    ck.at(at, message);
                    let mut what = key.get_ref().to_string();
                    if let DeValue::Table(t) = piece_value
                        && what == "credentials"
                        && let Some((name, _)) = t.iter().next()
                    {
                        what = format!("{what}.{}", name.get_ref());
                    }
                    ck.unreadable.insert(what);
                }
            }
        }
    }
    Some(file)
}

impl raw::File {
    fn merge(&mut self, part: raw::File) {
        self.state = part.state.or(self.state.take());
        self.azure = part.azure.or(self.azure.take());
        self.credentials.extend(part.credentials);
        self.guardrails = part.guardrails.or(self.guardrails.take());
        self.defaults = part.defaults.or(self.defaults.take());
        self.subscription.extend(part.subscription);
        self.telemetry = part.telemetry.or(self.telemetry.take());
        self.detection = part.detection.or(self.detection.take());
        self.ha = part.ha.or(self.ha.take());
    }
}

/// Serde quotes the offending value in type errors; for a secret key that
/// value is the secret, so say only what is wrong.
fn redact_secret_value(source: &str, at: &Range<usize>, message: &str) -> String {
    let line_start = source
        .get(..at.start)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = source
        .get(line_start..)
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    if [
        "client_secret",
        "ingest_url",
        "access_key",
        "secret_key",
        "workspace_url",
        "url",
    ]
    .contains(&key)
    {
        format!("{key} must be a string")
    } else {
        message.to_string()
    }
}

fn source_len(ck: &Checker<'_>) -> Range<usize> {
    let end = ck.source.trim_end().len();
    end..end
}

fn statuses(value: &Spanned<Vec<String>>, ck: &mut Checker<'_>) -> Option<Vec<String>> {
    let list = value.get_ref();
    if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
        ck.at(
            value.span(),
            "statuses must list at least one non-empty status, e.g. [\"Succeeded\"]",
        );
        return None;
    }
    Some(list.iter().map(|s| s.trim().to_string()).collect())
}

fn span_of<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
    v.as_ref().map(|v| v.span())
}

fn require<'r>(
    field: &'r Option<Spanned<String>>,
    ck: &mut Checker<'_>,
    span: Range<usize>,
    what: &str,
) -> Option<&'r str> {
    match field {
        Some(v) if !v.get_ref().trim().is_empty() => Some(v.get_ref().trim()),
        Some(v) => {
            ck.at(v.span(), format!("{what} must not be empty"));
            None
        }
        None => {
            ck.at(span, format!("missing {what}"));
            None
        }
    }
}

fn validate_credential(
    name: &str,
    cred: &Spanned<raw::Credential>,
    ck: &mut Checker<'_>,
    env: &dyn Env,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Option<CredentialConfig> {
    let span = cred.span();
    let c = cred.get_ref();
    let key = |k: &str| format!("[credentials.{name}] {k}");
    let opt = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().trim().to_string());
    let forbid = |ck: &mut Checker<'_>, v: Option<Range<usize>>, k: &str, kind: &str| {
        if let Some(sp) = v {
            ck.at(
                sp,
                format!("{} does not apply to kind = \"{kind}\"", key(k)),
            );
        }
    };
    let secret_keys = [
        c.client_secret.as_ref().map(|v| v.span()),
        c.client_secret_file.as_ref().map(|v| v.span()),
        c.client_secret_env.as_ref().map(|v| v.span()),
    ];
    match c.kind.get_ref().as_str() {
        "client_secret" => {
            forbid(ck, span_of(&c.token_file), "token_file", "client_secret");
            let tenant_id = require(&c.tenant_id, ck, span.clone(), &key("tenant_id"));
            let client_id = require(&c.client_id, ck, span.clone(), &key("client_id"));
            let secret = load_secret(
                SecretSource {
                    inline: c.client_secret.as_ref(),
                    file: c.client_secret_file.as_ref(),
                    env: c.client_secret_env.as_ref(),
                },
                &key("client_secret"),
                span,
                ck,
                env,
                resolve,
            );
            Some(CredentialConfig::ClientSecret {
                tenant_id: tenant_id?.to_string(),
                client_id: client_id?.to_string(),
                client_secret: secret?,
            })
        }
        kind @ ("managed_identity" | "workload_identity" | "azure_cli") => {
            for (sp, k) in secret_keys.into_iter().zip([
                "client_secret",
                "client_secret_file",
                "client_secret_env",
            ]) {
                forbid(ck, sp, k, kind);
            }
            match kind {
                "managed_identity" => {
                    forbid(ck, span_of(&c.tenant_id), "tenant_id", kind);
                    forbid(ck, span_of(&c.token_file), "token_file", kind);
                    Some(CredentialConfig::ManagedIdentity {
                        client_id: opt(&c.client_id),
                    })
                }
                "workload_identity" => {
                    let token_file = c.token_file.as_ref().map(|t| resolve(t.get_ref()));
                    if let (Some(t), Some(path)) = (&c.token_file, &token_file)
                        && let Err(e) = std::fs::metadata(path)
                    {
                        ck.at(
                            t.span(),
                            format!("{}: cannot read {}: {e}", key("token_file"), path.display()),
                        );
                    }
                    Some(CredentialConfig::WorkloadIdentity {
                        tenant_id: opt(&c.tenant_id),
                        client_id: opt(&c.client_id),
                        token_file,
                    })
                }
                _ => {
                    forbid(ck, span_of(&c.client_id), "client_id", kind);
                    forbid(ck, span_of(&c.token_file), "token_file", kind);
                    Some(CredentialConfig::AzureCli {
                        tenant_id: opt(&c.tenant_id),
                    })
                }
            }
        }
        other => {
            ck.at(
                c.kind.span(),
                format!(
                    "{}: unknown kind {other:?}; expected client_secret, managed_identity, workload_identity or azure_cli",
                    key("kind")
                ),
            );
            None
        }
    }
}

fn validate_guardrails(
    g: &Spanned<raw::Guardrails>,
    ck: &mut Checker<'_>,
    env: &dyn Env,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Option<GuardrailsConfig> {
    let span = g.span();
    let g = g.get_ref();
    let url = load_secret(
        SecretSource {
            inline: g.ingest_url.as_ref(),
            file: g.ingest_url_file.as_ref(),
            env: g.ingest_url_env.as_ref(),
        },
        "[guardrails] ingest_url",
        span.clone(),
        ck,
        env,
        resolve,
    );
    // The URL is a secret: messages say what is wrong, never what it is.
    let where_ = g
        .ingest_url
        .as_ref()
        .map(|v| v.span())
        .or(g.ingest_url_file.as_ref().map(|v| v.span()))
        .or(g.ingest_url_env.as_ref().map(|v| v.span()))
        .unwrap_or(span);
    let url = url.and_then(|u| match Url::parse(u.expose_secret().trim()) {
        Ok(parsed)
            if parsed.scheme() == "https"
                || (parsed.scheme() == "http" && is_loopback(&parsed)) =>
        {
            Some(IngestUrl(SecretString::from(
                u.expose_secret().trim().to_string(),
            )))
        }
        Ok(_) => {
            ck.at(
                where_.clone(),
                "[guardrails] ingest_url must be an https URL (http only for loopback)",
            );
            None
        }
        Err(e) => {
            ck.at(
                where_.clone(),
                format!("[guardrails] ingest_url is not a valid URL: {e}"),
            );
            None
        }
    });
    let format = g
        .format
        .as_ref()
        .map_or(Format::ActivityLogAlert, |f| *f.get_ref());
    let max_concurrency = g.max_concurrency.as_ref().map_or(Some(256), |c| {
        ck.positive(c, "[guardrails] max_concurrency", 4096)
    });
    let concurrency = match g.concurrency.as_ref() {
        None => max_concurrency.map(|max| DeliveryConcurrency::Adaptive { max }),
        Some(c) => match c.get_ref() {
            toml::Value::String(s) if s == "adaptive" => {
                max_concurrency.map(|max| DeliveryConcurrency::Adaptive { max })
            }
            toml::Value::Integer(n) => ck
                .positive(
                    &Spanned::new(c.span(), *n),
                    "[guardrails] concurrency",
                    4096,
                )
                .map(DeliveryConcurrency::Fixed),
            other => {
                ck.at(
                    c.span(),
                    format!(
                        "[guardrails] concurrency must be \"adaptive\" or a number of POSTs in flight, got {other}"
                    ),
                );
                None
            }
        },
    };
    let timeout = g
        .timeout
        .as_ref()
        .map_or(Some(Duration::from_secs(30)), |t| {
            ck.duration(t, "[guardrails] timeout")
        });
    let retry_base = g
        .retry_base
        .as_ref()
        .map_or(Some(Duration::from_millis(500)), |t| {
            ck.duration(t, "[guardrails] retry_base")
        });
    let retry_max = g
        .retry_max
        .as_ref()
        .map_or(Some(Duration::from_secs(60)), |t| {
            ck.duration(t, "[guardrails] retry_max")
        });
    let api = match &g.api {
        Some(a) => Some(validate_guardrails_api(a, ck, env, resolve)?),
        None => None,
    };
    Some(GuardrailsConfig {
        api,
        ingest_url: url?,
        format,
        concurrency: concurrency?,
        timeout: timeout?,
        backoff: Backoff {
            base: retry_base?,
            max: retry_max?.max(retry_base?),
            retries: None,
        },
    })
}

/// Resolves exactly one of the inline, file and environment forms of a secret.
fn load_secret(
    src: SecretSource<'_>,
    key: &str,
    section: Range<usize>,
    ck: &mut Checker<'_>,
    env: &dyn Env,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Option<SecretString> {
    let given = [src.inline.is_some(), src.file.is_some(), src.env.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        let msg = if given == 0 {
            format!("missing {key}: set one of {key}_file, {key}_env or {key}")
        } else {
            format!("set only one of {key}_file, {key}_env and {key}")
        };
        ck.at(section, msg);
        return None;
    }
    let value = if let Some(v) = src.inline {
        ck.inline_secrets.push(key.to_string());
        Ok(v.get_ref().clone())
    } else if let Some(f) = src.file {
        let path = resolve(f.get_ref());
        let what = format!("{key}_file holds a secret: chmod o-r it");
        warn_if_world_readable(&path, &what, &mut ck.warnings);
        std::fs::read_to_string(&path).map_err(|e| {
            (
                f.span(),
                format!("{key}_file: cannot read {}: {e}", path.display()),
            )
        })
    } else if let Some(v) = src.env {
        env.var(v.get_ref()).ok_or_else(|| {
            (
                v.span(),
                format!("{key}_env: environment variable {} is not set", v.get_ref()),
            )
        })
    } else {
        return None;
    };
    match value {
        Ok(v) if !v.trim().is_empty() => Some(SecretString::from(v.trim().to_string())),
        Ok(_) => {
            let at = src
                .inline
                .map(|v| v.span())
                .or(src.file.map(|v| v.span()))
                .or(src.env.map(|v| v.span()))
                .unwrap_or(section);
            ck.at(at, format!("{key} is empty"));
            None
        }
        Err((span, msg)) => {
            ck.at(span, msg);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let s = "a = 1\nbb = 2\n";
        assert_eq!(line_column(s, 0), (1, 1));
        assert_eq!(line_column(s, 6), (2, 1));
        assert_eq!(line_column(s, 9), (2, 4));
    }

    #[test]
    fn subscription_id_must_be_a_guid() {
        assert!(SubscriptionId::parse("00000000-0000-0000-0000-000000000000").is_some());
        assert_eq!(
            SubscriptionId::parse("ABCDEF00-0000-0000-0000-000000000000")
                .map(|s| s.to_string())
                .as_deref(),
            Some("abcdef00-0000-0000-0000-000000000000")
        );
        assert!(SubscriptionId::parse("12345-5645-123a-9867-123b45a6789").is_none());
        assert!(SubscriptionId::parse("0000000g-0000-0000-0000-000000000000").is_none());
    }

    #[test]
    fn schedule_needs_window_longer_than_interval() {
        let s = Duration::from_secs;
        assert!(Schedule::new(s(60), s(900)).is_ok());
        assert!(Schedule::new(s(60), s(60)).is_err());
        assert!(Schedule::new(Duration::from_millis(500), s(60)).is_err());
    }
}
