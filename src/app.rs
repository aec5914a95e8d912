//! Startup: turns a validated [`Config`] into the running parts (state store,
//! token sources, activity log client, poller, forwarder, the event handler
//! checks), the way zero2prod's `startup.rs` does, so that `main` and the
//! tests build the same thing; on SIGHUP, the same parts anew around what the
//! running process keeps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::azure::{ActivityLogClient, CredentialError, ReadBudget, TokenSource};
use crate::config::{Config, SubscriptionConfig};
use crate::event::Timestamp;
use crate::forward::Forwarder;
use crate::health::Health;
use crate::poll::Poller;
use crate::progress::Progress;
use crate::read_limit::ReadLimit;
use crate::store::{Store, StoreError};
use crate::summary::Summary;

/// Why the poller cannot start. Each maps to a sysexits code in `main`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{}", refusal(.0))]
    HandlersActive(Vec<String>),
    /// The start check found something else feeding a subscription, or
    /// could not tell.
    #[error(transparent)]
    Detection(#[from] crate::detect::Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("--since {0}: more than 90 days ago; the activity log keeps 90 days")]
    SinceTooOld(String),
    #[error(
        "--since {0:?}: not a duration (\"2h\") or an RFC 3339 time (\"2026-11-20T00:00:00Z\")"
    )]
    SinceInvalid(String),
}

fn refusal(subs: &[String]) -> String {
    format!(
        "refusing to start: Guardrails event handlers are active for {} ({}); \
         the poller and the event handlers must never both feed a subscription, or Guardrails receives every event twice. \
         Disable the event handlers (policy Azure > Turbot > Event Handlers) and set event_handlers = false, or remove the subscription from this file",
        if subs.len() == 1 {
            "subscription"
        } else {
            "subscriptions"
        },
        subs.join(", ")
    )
}

/// Everything a run needs, built once.
pub struct App {
    pub config: Config,
    pub store: Store,
    /// This process among the instances sharing the state (its lease holder id).
    pub instance: crate::store::Instance,
    pub poller: Arc<Poller>,
    pub forwarder: Arc<Forwarder>,
    pub tokens: BTreeMap<String, Arc<TokenSource>>,
    pub outbox_ready: Arc<Notify>,
    pub http: reqwest::Client,
    pub health: Arc<Health>,
    pub delivered: crate::forward::Delivered,
    /// The event handler checks of this configuration: at start
    /// (`detect::at_start`) and while the daemon runs (`detect::run`).
    pub checks: Arc<crate::detect::Checks>,
    /// Subscriptions paused because something else feeds them (kept across reloads).
    pub pauses: Arc<crate::detect::Pauses>,
    /// ARM's read budget per subscription and principal.
    pub budget: Arc<ReadBudget>,
    /// How many polls may be in flight (kept across reloads, which may change
    /// its cap).
    pub reads: ReadLimit,
    /// What the daemon's polls did since the last summary line.
    pub summary: Arc<Summary>,
    /// What a `--once` run's polls and deliveries tell its progress bars
    /// (off unless `--once` on a terminal turns it on).
    pub progress: Progress,
    /// When this process built its first `App` (kept across reloads): the
    /// origin of every subscription's poll schedule (`scheduler.rs`).
    pub started: tokio::time::Instant,
}

/// What a reload keeps of the running process.
struct Kept {
    store: Store,
    instance: crate::store::Instance,
    http: reqwest::Client,
    outbox_ready: Arc<Notify>,
    health: Arc<Health>,
    delivered: crate::forward::Delivered,
    pauses: Arc<crate::detect::Pauses>,
    budget: Arc<ReadBudget>,
    reads: ReadLimit,
    summary: Arc<Summary>,
    progress: Progress,
    started: tokio::time::Instant,
}

/// The one HTTP client: rustls, trusting the system store and `SSL_CERT_FILE`.
pub fn http_client() -> Result<reqwest::Client, StartError> {
    reqwest::Client::builder()
        .user_agent(concat!("azure-activity-poller/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        // Keep connections alive and reuse them: at WAN latency a new
        // connection per request costs a round trip or three (TLS).
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(60))
        // Over https, HTTP/2 when the server offers it (ALPN); flow control
        // windows sized from the measured bandwidth-delay product.
        .http2_adaptive_window(true)
        .build()
        .map_err(|e| StartError::Http(e.to_string()))
}

/// The shortest interval configured (a minute when there is none).
pub fn shortest_interval(config: &Config) -> Duration {
    config
        .subscriptions
        .iter()
        .map(|s| s.schedule.interval())
        .min()
        .unwrap_or(Duration::from_secs(60))
}

/// The polls a second the schedule asks for: every subscription once per interval.
fn polls_per_second(config: &Config) -> f64 {
    config
        .subscriptions
        .iter()
        .map(|s| 1.0 / s.schedule.interval().as_secs_f64().max(1.0))
        .sum()
}

/// Refuses subscriptions with active event handlers: exit 78, nothing polled.
pub fn refuse_handler_conflicts(config: &Config) -> Result<(), StartError> {
    let conflicts: Vec<String> = config
        .handler_conflicts()
        .iter()
        .map(|s| s.label())
        .collect();
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(StartError::HandlersActive(conflicts))
    }
}

/// Parses `--since`: a duration back from now, or an RFC 3339 time.
pub fn parse_since(s: &str, now: Timestamp) -> Result<Timestamp, StartError> {
    let t = match humantime::parse_duration(s) {
        Ok(d) => {
            let d = chrono::Duration::from_std(d).map_err(|_| StartError::SinceTooOld(s.into()))?;
            now.checked_sub_signed(d)
                .ok_or_else(|| StartError::SinceTooOld(s.into()))?
        }
        Err(_) => {
            crate::event::parse_timestamp(s).ok_or_else(|| StartError::SinceInvalid(s.into()))?
        }
    };
    let oldest = now - chrono::Duration::days(90);
    if t < oldest {
        return Err(StartError::SinceTooOld(s.into()));
    }
    Ok(t.min(now))
}

/// One token source per credential of `names` (a name not configured is
/// skipped: validation has already refused a subscription naming one).
pub fn token_sources<'a>(
    config: &Config,
    names: impl IntoIterator<Item = &'a str>,
    http: &reqwest::Client,
) -> Result<BTreeMap<String, Arc<TokenSource>>, CredentialError> {
    let scope = config.azure.scope();
    let mut tokens = BTreeMap::new();
    for name in names {
        let Some(cred) = config.credentials.get(name) else {
            continue;
        };
        let source = TokenSource::new(
            name,
            cred.clone(),
            config.azure.authority_host.clone(),
            scope.clone(),
            http.clone(),
            config.azure.request_timeout,
        )?;
        tokens.insert(name.to_string(), Arc::new(source));
    }
    Ok(tokens)
}

/// ARM's read budget as `[azure]` sets it.
pub fn read_budget(config: &Config) -> Arc<ReadBudget> {
    Arc::new(ReadBudget::new(
        config.azure.reads_burst,
        config.azure.reads_per_second,
    ))
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartError> {
        Self::build_with(config, Arc::default()).await
    }

    /// [`App::build`] reporting to `health` (the daemon serves it before the
    /// state database answers).
    pub async fn build_with(config: Config, health: Arc<Health>) -> Result<App, StartError> {
        refuse_handler_conflicts(&config)?;
        let instance = crate::store::Instance::new();
        let mut store = Store::open(&config.state, &instance).await?;
        store
            .start_journal(config.journal.retention.is_some())
            .await?;
        let http = http_client()?;
        let budget = read_budget(&config);
        let reads = ReadLimit::for_schedule(config.azure.concurrency, polls_per_second(&config));
        reads.follow_intervals(shortest_interval(&config));
        Self::assemble(
            config,
            Kept {
                store,
                instance,
                http,
                outbox_ready: Arc::new(Notify::new()),
                health,
                delivered: crate::forward::Delivered::default(),
                pauses: Arc::new(crate::detect::Pauses::default()),
                budget,
                reads,
                summary: Arc::default(),
                progress: Progress::default(),
                started: tokio::time::Instant::now(),
            },
        )
    }

    /// The same process with a new configuration (SIGHUP): the state store,
    /// HTTP client, wake-ups, health, pauses, ARM's read budget, the limit of
    /// reads in flight, the summary's counts and the progress are kept (the
    /// budget is made anew if its settings changed; the limit's cap changes
    /// when the daemon applies the new configuration); everything else is
    /// rebuilt.
    pub fn rebuild(&self, config: Config) -> Result<App, StartError> {
        refuse_handler_conflicts(&config)?;
        let same_budget = config.azure.reads_burst == self.config.azure.reads_burst
            && config.azure.reads_per_second == self.config.azure.reads_per_second;
        let budget = if same_budget {
            self.budget.clone()
        } else {
            read_budget(&config)
        };
        Self::assemble(
            config,
            Kept {
                store: self.store.clone(),
                instance: self.instance.clone(),
                http: self.http.clone(),
                outbox_ready: self.outbox_ready.clone(),
                health: self.health.clone(),
                delivered: self.delivered.clone(),
                pauses: self.pauses.clone(),
                budget,
                reads: self.reads.clone(),
                summary: self.summary.clone(),
                progress: self.progress.clone(),
                started: self.started,
            },
        )
    }

    fn assemble(config: Config, kept: Kept) -> Result<App, StartError> {
        let Kept {
            store,
            instance,
            http,
            outbox_ready,
            health,
            delivered,
            pauses,
            budget,
            reads,
            summary,
            progress,
            started,
        } = kept;
        let used: std::collections::BTreeSet<&str> = config
            .subscriptions
            .iter()
            .map(|s| &*s.credential)
            .collect();
        let tokens = token_sources(&config, used, &http)?;
        let checks = Arc::new(crate::detect::Checks {
            detector: Arc::new(crate::detect::Detector::new(
                &config,
                http.clone(),
                budget.clone(),
            )),
            tokens: tokens.clone(),
            subscriptions: config.subscriptions.clone(),
            settings: config.detection,
            store: store.clone(),
            pauses: pauses.clone(),
            health: health.clone(),
        });
        let client = ActivityLogClient::new(
            http.clone(),
            config.azure.resource_manager_url.clone(),
            config.azure.backoff,
            config.azure.request_timeout,
            budget.clone(),
        );
        let poller = Arc::new(Poller {
            client,
            slices: config.azure.catch_up_slices,
            store: store.clone(),
            outbox_ready: outbox_ready.clone(),
            skew: std::sync::Mutex::new(None),
            progress: progress.clone(),
        });
        let forwarder = Arc::new(
            Forwarder::new(
                http.clone(),
                &config.guardrails,
                store.clone(),
                config.guardrails.backoff,
                delivered.clone(),
                health.outages.clone(),
            )
            .with_progress(progress.clone()),
        );
        Ok(App {
            config,
            store,
            instance,
            poller,
            forwarder,
            tokens,
            outbox_ready,
            http,
            health,
            delivered,
            checks,
            pauses,
            budget,
            reads,
            summary,
            progress,
            started,
        })
    }

    /// Obtains one token from every credential in use: the first credential
    /// check before the service reports ready.
    pub async fn check_credentials(&self) -> Result<(), CredentialError> {
        for source in self.tokens.values() {
            source.token().await?;
        }
        Ok(())
    }

    /// Opens the ARM connections a `--once` run's first reads will use
    /// while the token and the start check are still on their way (see
    /// [`crate::http::warm`]): as many as its catch-ups' first slices, up to
    /// the read limit, and one for the check.
    pub fn warm_reads(&self) {
        let first_reads = self
            .config
            .subscriptions
            .len()
            .saturating_mul(self.config.azure.catch_up_slices)
            .min(self.reads.figure().limit);
        crate::http::warm(
            &self.http,
            &self.config.azure.resource_manager_url,
            first_reads + 1,
            self.config.azure.request_timeout,
        );
    }

    pub fn tokens_for(&self, sub: &SubscriptionConfig) -> Option<Arc<TokenSource>> {
        self.tokens.get(&*sub.credential).cloned()
    }
}
