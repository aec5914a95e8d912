//! The configuration file, `poller.toml`: parsed, validated and resolved once.
//!
//! Parsing happens in two steps. Serde reads the TOML into raw structs whose
//! fields keep their position in the file (`toml::Spanned`), so that every later
//! check can say *where* a problem is. Validation then turns the raw structs into
//! a [`Config`] whose types carry their invariants: a [`Schedule`] whose window
//! exceeds its interval, a validated [`SubscriptionId`], secrets wrapped in
//! [`SecretString`](secrecy::SecretString). Validation does not stop at the
//! first problem: it collects every one, so that `check-config` can list them
//! all with line and column.
//!
//! One file per section, each owning its raw form (named for the section:
//! `Azure`), its validation and its resolved form (`AzureConfig`): `state.rs`,
//! `ha.rs`, `azure.rs`, `credentials.rs`, `guardrails.rs` (and
//! `guardrails_api.rs`), `subscriptions.rs` (`[defaults]` too),
//! `telemetry.rs`, `detection.rs`, `journal.rs`. What they share: `check.rs` (the problem
//! collector, the file read a section at a time), `secret.rs` (secrets from
//! a file, the environment or inline), `permissions.rs` (who can read the
//! files), `env.rs`. Imports run from this file to the sections and from the
//! sections to what they share, never back.

mod azure;
mod check;
mod credentials;
mod detection;
mod env;
mod guardrails;
mod guardrails_api;
mod ha;
mod journal;
mod permissions;
mod secret;
mod state;
mod subscriptions;
mod telemetry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use azure::{AzureConfig, Cloud, DEFAULT_READ_CAP};
pub use check::{Problem, line_column};
pub use credentials::CredentialConfig;
pub use detection::{DetectionConfig, OnUnknown};
pub use env::{Env, ProcessEnv};
pub use guardrails::{DeliveryConcurrency, Format, GuardrailsConfig, IngestUrl};
pub use guardrails_api::GuardrailsApiConfig;
pub use ha::HaConfig;
pub use journal::{DEFAULT_JOURNAL_RETENTION, JournalConfig};
pub use permissions::service_readability;
pub(crate) use state::DatabaseTls;
pub use state::{DatabaseUrl, StateConfig};
pub use subscriptions::{EventHandlers, RETENTION, Schedule, SubscriptionConfig, SubscriptionId};

use check::{Checker, Pieces, read_pieces};
use secret::Secrets;

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

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub state: StateConfig,
    pub ha: HaConfig,
    pub azure: AzureConfig,
    pub credentials: BTreeMap<String, CredentialConfig>,
    pub guardrails: GuardrailsConfig,
    /// Shared (`Arc`): the supervisor, each subscription's task and the
    /// detection keep the same one, not copies (10,000 of them at an estate).
    pub subscriptions: Vec<std::sync::Arc<SubscriptionConfig>>,
    /// `[telemetry] listen`: where /metrics, /healthz and /readyz are served.
    pub telemetry_listen: Option<std::net::SocketAddr>,
    pub detection: DetectionConfig,
    /// `[journal]`: the delivery journal `trace` reads.
    pub journal: JournalConfig,
    /// Things worth a warning, not an error: files with secrets that other
    /// users can read.
    pub warnings: Vec<String>,
}

/// The whole file as written, one field per section.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    state: Option<Spanned<state::State>>,
    azure: Option<azure::Azure>,
    #[serde(default)]
    credentials: BTreeMap<String, Spanned<credentials::Credential>>,
    guardrails: Option<Spanned<guardrails::Guardrails>>,
    defaults: Option<subscriptions::Defaults>,
    #[serde(default)]
    subscription: Vec<Spanned<subscriptions::Subscription>>,
    telemetry: Option<telemetry::Telemetry>,
    detection: Option<detection::Detection>,
    ha: Option<ha::Ha>,
    journal: Option<journal::Journal>,
}

impl Pieces for File {
    fn merge(&mut self, part: File) {
        self.state = part.state.or(self.state.take());
        self.azure = part.azure.or(self.azure.take());
        self.credentials.extend(part.credentials);
        self.guardrails = part.guardrails.or(self.guardrails.take());
        self.defaults = part.defaults.or(self.defaults.take());
        self.subscription.extend(part.subscription);
        self.telemetry = part.telemetry.or(self.telemetry.take());
        self.detection = part.detection.or(self.detection.take());
        self.ha = part.ha.or(self.ha.take());
        self.journal = part.journal.or(self.journal.take());
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::parse(&read(path)?, path, env)
    }

    /// Validates configuration text; `path` is used for messages and for
    /// resolving relative secret files.
    pub fn parse(source: &str, path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::parse_for(source, path, env, false)
    }

    /// Reads a file for `import`: as [`Config::load`], but it may list no
    /// subscription yet.
    pub fn load_for_import(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::parse_for(&read(path)?, path, env, true)
    }

    fn parse_for(
        source: &str,
        path: &Path,
        env: &dyn Env,
        subscriptions_optional: bool,
    ) -> Result<Config, ConfigError> {
        let mut ck = Checker::new(source);
        let file = read_pieces::<File>(&mut ck);
        let config =
            file.and_then(|file| validate(file, &mut ck, path, env, subscriptions_optional));
        permissions::warn_if_inline_secrets(path, &mut ck);
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
    pub fn detected_subscriptions(&self) -> Vec<std::sync::Arc<SubscriptionConfig>> {
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
            .map(|s| &**s)
            .collect()
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The file's sections, top to bottom, each validated on its own (problems
/// are collected in this order); a [`Config`] when every one is valid.
fn validate(
    file: File,
    ck: &mut Checker<'_>,
    path: &Path,
    env: &dyn Env,
    subscriptions_optional: bool,
) -> Option<Config> {
    let config_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let secrets = Secrets::new(&config_dir, env);
    let state = state::validate(file.state.as_ref(), ck, &secrets, &config_dir);
    let ha = ha::validate(file.ha.as_ref(), ck);
    let azure = azure::validate(&file.azure.unwrap_or_default(), ck);
    let credentials = credentials::validate(&file.credentials, ck, &secrets);
    let guardrails = guardrails::validate(file.guardrails.as_ref(), ck, &secrets);
    let defined: Vec<&str> = file.credentials.keys().map(String::as_str).collect();
    let subscriptions = subscriptions::validate(
        &file.defaults.unwrap_or_default(),
        &file.subscription,
        &defined,
        subscriptions_optional,
        ck,
    );
    let telemetry_listen = telemetry::validate(file.telemetry.as_ref(), ck);
    let detection = detection::validate(file.detection.as_ref(), ck);
    let journal = journal::validate(file.journal.as_ref(), ck);
    Some(Config {
        path: path.to_path_buf(),
        state: state?,
        ha: ha?,
        azure: azure?,
        credentials,
        guardrails: guardrails?,
        subscriptions,
        telemetry_listen,
        detection: detection?,
        journal: journal?,
        warnings: Vec::new(),
    })
}

/// A valid configuration with `ids` as its subscriptions, for unit tests.
#[cfg(test)]
pub(crate) fn sample(ids: &[&str]) -> Config {
    let mut text = String::from(
        "[state]\npath = \"state.db\"\n[credentials.mi]\nkind = \"managed_identity\"\n\
         [guardrails]\ningest_url = \"https://example.turbot.com/api/v5/events/raw?token=abc\"\n\
         [defaults]\ncredential = \"mi\"\n",
    );
    for id in ids {
        text.push_str(&format!("[[subscription]]\nid = \"{id}\"\n"));
    }
    let env = std::collections::BTreeMap::new();
    Config::parse(&text, std::path::Path::new("p.toml"), &env).expect("a valid configuration")
}
