//! The daemon's supervisor: puts each subscription on the timetable (one
//! timer for all, `timetable.rs`), starts the forwarder and
//! the summary (one INFO line a minute for the quiet polls, and the read
//! limit published for `status`), serves metrics and health, talks to
//! systemd, and reacts to signals.
//!
//! - SIGTERM/SIGINT: every task is told to stop (a `watch` channel, as in
//!   mini-redis; each subscription has its own small `Stop`, see `stop.rs`);
//!   polls in flight get the grace period, then state is committed and the
//!   daemon exits 0.
//! - SIGHUP: the configuration file is read again. If it is invalid (or turns
//!   on event handlers), the error is logged and the running configuration
//!   stays. Otherwise added subscriptions start, removed ones stop, changed ones
//!   (interval, window, statuses, credential, or any `[azure]` setting)
//!   restart, and a changed `[guardrails]` restarts the forwarder. A changed
//!   `[azure] concurrency` moves the cap of the shared read limit. The state
//!   path and the telemetry address need a restart; a change is logged.
//! - The watchdog (`WatchdogSec=`) is pinged from this loop, only while the
//!   forwarder runs and no subscription is stuck in a poll without
//!   progress; a hung poll therefore gets the service restarted, and a
//!   timetable that stops stops the daemon.
//! - Leases (`lease.rs`): a subscription is on the timetable only while this
//!   instance holds it; the supervisor follows the store's `held` channel,
//!   adding and stopping subscriptions as leases are taken, given back or
//!   lost. With SQLite it holds every configured subscription. At a clean
//!   stop the leases are given back, so another instance takes over at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::app::App;
use crate::config::{Config, CredentialConfig, ProcessEnv, SubscriptionConfig};
use crate::event::Timestamp;
use crate::heartbeat::Heartbeat;
use crate::lease;
use crate::notify;
use crate::outage::Resource;
use crate::stop::Stop;
use crate::store::{Share, StoreError};
use crate::timetable::{Ticket, Timetable};

/// What the signal handler asks of the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
}

/// A task busy in one poll without progress for this long is taken for hung.
/// Longer than the longest `Retry-After` honoured plus a request timeout.
const STALL_LIMIT: Duration = Duration::from_secs(20 * 60);

struct Running {
    sub: Arc<SubscriptionConfig>,
    ticket: Ticket,
    beat: Arc<Heartbeat>,
}

struct Forwarding {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), StoreError>>,
}

/// The summary task (`summary.rs`): it writes the last period's line and
/// publishes the read limit once more when told to stop.
struct Summarizing {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn start_summary(app: &App) -> Summarizing {
    let (stop, rx) = watch::channel(false);
    let (summary, reads, store) = (app.summary.clone(), app.reads.clone(), app.store.clone());
    let task = tokio::spawn(async move { summary.run(rx, reads, store).await });
    Summarizing { stop, task }
}

/// The delivery journal's pruning (`journal.rs`): like the summary, a
/// background task told when to stop.
type Pruning = Summarizing;

fn start_pruning(app: &App) -> Pruning {
    let (stop, rx) = watch::channel(false);
    let (store, retention) = (app.store.clone(), app.config.journal.retention);
    let task = tokio::spawn(crate::journal::run(store, retention, rx));
    Pruning { stop, task }
}

fn start_forwarder(app: &Arc<App>) -> Forwarding {
    // Published from the start, not only when it moves (for the rules).
    crate::metrics::concurrency_limit(app.forwarder.concurrency_limit());
    let (stop, rx) = watch::channel(false);
    let a = app.clone();
    let task = tokio::spawn(async move { a.forwarder.run(a.outbox_ready.clone(), rx).await });
    Forwarding { stop, task }
}

struct Supervisor {
    app: Arc<App>,
    since: Option<Timestamp>,
    running: BTreeMap<Arc<str>, Running>,
    timetable: Timetable,
    retiring: JoinSet<()>,
    /// The live event handler checks (`detect/watch.rs`), restarted on reload.
    detecting: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    /// The subscriptions this instance holds (see `lease.rs`).
    held: watch::Receiver<std::collections::BTreeSet<Arc<str>>>,
    /// Subscriptions stopped because their lease went, until they end: one
    /// started again for the same subscription waits for its predecessor.
    released: BTreeMap<Arc<str>, Arc<Stop>>,
}

impl Supervisor {
    fn start(&mut self, sub: Arc<SubscriptionConfig>, previous: Option<Arc<Stop>>) {
        let beat = Arc::new(Heartbeat::default());
        self.app.health.track(&sub);
        let ticket = self.timetable.add(
            self.app.clone(),
            sub.clone(),
            self.since,
            beat.clone(),
            previous,
        );
        self.running
            .insert(sub.id.shared(), Running { sub, ticket, beat });
    }

    /// Starts the tasks of held subscriptions and stops those of subscriptions
    /// no longer held.
    fn follow_leases(&mut self) {
        let held = self.held.borrow_and_update().clone();
        crate::metrics::leases(
            self.app
                .config
                .subscriptions
                .iter()
                .map(|s| (s.id.as_str(), held.contains(s.id.as_str()))),
        );
        let gone = self.running_but_not(|id| held.contains(id));
        log_lease_changes("no longer held by this instance: stopping its polls", &gone);
        for id in gone {
            tracing::debug!(subscription = %id, "no longer held by this instance: stopping its polls");
            if let Some(task) = self.retire(&id) {
                self.released.insert(id.clone(), task);
            }
            self.app.health.untrack(&id);
        }
        self.released.retain(|_, t| !t.is_ended());
        let start: Vec<Arc<SubscriptionConfig>> = self
            .app
            .config
            .subscriptions
            .iter()
            .filter(|s| held.contains(s.id.as_str()) && !self.running.contains_key(s.id.as_str()))
            .cloned()
            .collect();
        let labels: Vec<String> = start.iter().map(|s| s.label()).collect();
        log_lease_changes("held by this instance: polling it", &labels);
        for sub in start {
            tracing::debug!(subscription = %sub.label(), "held by this instance: polling it");
            let previous = self.released.remove(sub.id.as_str());
            self.start(sub, previous);
        }
    }

    /// The subscriptions with a task here that `keep` does not keep.
    fn running_but_not(&self, keep: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        self.running
            .keys()
            .filter(|id| !keep(id))
            .cloned()
            .collect()
    }

    /// Stops a subscription; returns what says it has ended, for a
    /// successor to wait on.
    fn retire(&mut self, id: &str) -> Option<Arc<Stop>> {
        let r = self.running.remove(id)?;
        self.timetable.stop(&r.ticket);
        Some(r.ticket.ending())
    }

    /// (Re)starts the periodic event handler checks on the current
    /// configuration; the first check runs at once.
    fn restart_detection(&mut self, at_once: bool) {
        self.stop_detection();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(crate::detect::run(self.app.checks.clone(), at_once, rx));
        self.detecting = Some((stop, task));
    }

    fn stop_detection(&mut self) {
        if let Some((stop, task)) = self.detecting.take() {
            let _ = stop.send(true);
            task.abort();
        }
    }

    fn stalled(&self) -> Vec<String> {
        self.running
            .values()
            .filter(|r| r.beat.stalled(STALL_LIMIT))
            .map(|r| r.sub.label())
            .collect()
    }

    fn status_line(&self) -> String {
        let not_ready = self.app.health.not_ready().len();
        let paused = self.app.health.paused_count();
        let mut line = format!(
            "polling {} subscription(s), {paused} paused (fed by Guardrails); {} not ready",
            self.running.len() - paused.min(self.running.len()),
            not_ready
        );
        // An outage first: `systemctl status` shows the start of the line.
        for o in self.app.health.outages.current() {
            line = format!("{o}; {line}");
        }
        line
    }

    /// Applies a new configuration; returns a one-line summary.
    fn apply(&mut self, new: Arc<App>, forwarding: &mut Forwarding) -> String {
        let old = std::mem::replace(&mut self.app, new.clone());
        let (oc, nc) = (&old.config, &new.config);
        warn_restart_only(oc, nc);
        let azure_changed = oc.azure != nc.azure;
        if oc.azure.concurrency != nc.azure.concurrency {
            // The limit is shared by every task, old and new: its cap moves,
            // what it measured stays.
            new.reads.set_cap(nc.azure.concurrency);
        }
        new.reads
            .follow_intervals(crate::app::shortest_interval(nc));
        let wanted: BTreeMap<Arc<str>, Arc<SubscriptionConfig>> = nc
            .subscriptions
            .iter()
            .map(|s| (s.id.shared(), s.clone()))
            .collect();
        let removed = self.retire_unwanted(&wanted);
        self.app.pauses.retain(|id| wanted.contains_key(id));
        let (mut added, mut changed) = (0, 0);
        for (id, sub) in wanted {
            if sub.event_handlers == crate::config::EventHandlers::Detect
                && !self.running.contains_key(&id)
            {
                self.await_first_check(&sub);
            }
            match self.running.get(&id) {
                Some(r)
                    if r.sub == sub
                        && !azure_changed
                        && !credential_changed(oc, nc, &sub.credential) =>
                {
                    // Unchanged: it keeps running on the previous configuration's
                    // poller and tokens, which are equal to the new ones.
                }
                Some(_) => {
                    let previous = self.retire(&id);
                    self.start(sub, previous);
                    changed += 1;
                }
                None => {
                    // Started once this instance holds it (`follow_leases`).
                    added += 1;
                }
            }
        }
        let summary = format!("{added} added, {removed} removed, {changed} restarted");
        if same_guardrails(&oc.guardrails, &nc.guardrails) {
            return summary;
        }
        self.restart_forwarder(&new, forwarding);
        format!("{summary}; forwarder restarted")
    }

    /// Stops the tasks of subscriptions no longer configured; how many.
    fn retire_unwanted(&mut self, wanted: &BTreeMap<Arc<str>, Arc<SubscriptionConfig>>) -> usize {
        let gone = self.running_but_not(|id| wanted.contains_key(id));
        for id in &gone {
            if let Some(ending) = self.retire(id) {
                self.retiring.spawn(async move { ending.ended().await });
            }
            self.app.health.untrack(id);
        }
        gone.len()
    }

    /// A subscription added by a reload is not polled before its first
    /// check says it may be.
    fn await_first_check(&self, sub: &Arc<SubscriptionConfig>) {
        let id = sub.id.as_str();
        self.app
            .pauses
            .pause(id, crate::detect::AWAITING_FIRST_CHECK);
        self.app.health.track(sub);
        self.app
            .health
            .paused(id, crate::detect::AWAITING_FIRST_CHECK);
    }

    /// Replaces the forwarder by one on `new`'s `[guardrails]`; the old one
    /// finishes its POSTs in flight.
    fn restart_forwarder(&mut self, new: &Arc<App>, forwarding: &mut Forwarding) {
        let _ = forwarding.stop.send(true);
        let previous = std::mem::replace(forwarding, start_forwarder(new));
        self.retiring.spawn(async move {
            let _ = previous.task.await;
        });
    }
}

/// Settings a reload cannot change: said, and left as they run.
fn warn_restart_only(oc: &Config, nc: &Config) {
    if !oc.state.same_as(&nc.state) {
        tracing::warn!(
            running = %oc.state.describe(),
            configured = %nc.state.describe(),
            "[state] changes only on restart; still using the running one"
        );
    }
    if oc.ha != nc.ha {
        tracing::warn!("[ha] changes only on restart");
    }
    if oc.telemetry_listen != nc.telemetry_listen {
        tracing::warn!("[telemetry] listen changes only on restart");
    }
    if oc.journal != nc.journal {
        tracing::warn!("[journal] retention changes only on restart");
    }
}

/// Whether credential `name` differs between two configurations (or is
/// missing from either).
fn credential_changed(oc: &Config, nc: &Config, name: &str) -> bool {
    match (oc.credentials.get(name), nc.credentials.get(name)) {
        (Some(a), Some(b)) => !same_credential(a, b),
        _ => true,
    }
}

fn same_credential(a: &CredentialConfig, b: &CredentialConfig) -> bool {
    use secrecy::ExposeSecret;
    match (a, b) {
        (
            CredentialConfig::ClientSecret {
                tenant_id: t1,
                client_id: c1,
                client_secret: s1,
            },
            CredentialConfig::ClientSecret {
                tenant_id: t2,
                client_id: c2,
                client_secret: s2,
            },
        ) => t1 == t2 && c1 == c2 && s1.expose_secret() == s2.expose_secret(),
        (
            CredentialConfig::ManagedIdentity { client_id: a },
            CredentialConfig::ManagedIdentity { client_id: b },
        ) => a == b,
        (
            CredentialConfig::WorkloadIdentity {
                tenant_id: t1,
                client_id: c1,
                token_file: f1,
            },
            CredentialConfig::WorkloadIdentity {
                tenant_id: t2,
                client_id: c2,
                token_file: f2,
            },
        ) => t1 == t2 && c1 == c2 && f1 == f2,
        (
            CredentialConfig::AzureCli { tenant_id: a },
            CredentialConfig::AzureCli { tenant_id: b },
        ) => a == b,
        _ => false,
    }
}

fn same_guardrails(
    a: &crate::config::GuardrailsConfig,
    b: &crate::config::GuardrailsConfig,
) -> bool {
    a.ingest_url.expose() == b.ingest_url.expose()
        && a.format == b.format
        && a.concurrency == b.concurrency
        && a.timeout == b.timeout
        && a.backoff == b.backoff
}

/// Reads and validates the configuration again and builds a new `App` on the
/// running one's store.
fn reload(current: &App, path: &Path) -> Result<Arc<App>, String> {
    let config = Config::load(path, &ProcessEnv).map_err(|e| e.to_string())?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    current
        .rebuild(config)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Runs the daemon until a [`Signal::Stop`] (or the channel closes).
pub async fn run(
    app: Arc<App>,
    since: Option<Timestamp>,
    signals: mpsc::Receiver<Signal>,
    grace: Duration,
) -> Result<(), StoreError> {
    let path = app.config.path.clone();
    let keeper = start_leasing(&app).await?;
    let mut sup = Supervisor::new(app.clone(), since);
    sup.follow_leases();
    // Every subscription held is tracked now: readiness judges them.
    app.health.starting(None);
    sup.restart_detection(false);
    let mut forwarding = start_forwarder(&app);
    let summarizing = start_summary(&app);
    let pruning = start_pruning(&app);
    notify::ready(&sup.status_line());
    let failed = sup
        .supervise(&path, &keeper, &mut forwarding, signals)
        .await;
    notify::stopping();
    sup.stop_detection();
    // A batch cut short rolls back, and the next start prunes it again:
    // nothing to wait for.
    let _ = pruning.stop.send(true);
    pruning.task.abort();
    if let Some(e) = &failed {
        tracing::error!(error = %e, "delivery cannot continue; stopping");
    }
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: finishing work in flight"
    );
    let deadline = Instant::now() + grace;
    let polls = sup.stop_polls();
    let _ = forwarding.stop.send(true);
    sup.wait_for_polls(polls, deadline).await;
    let ended = match failed {
        Some(e) => Err(e),
        None => wait_for_forwarder(forwarding, deadline).await,
    };
    // After the polls, so that the last line counts them all.
    let Summarizing { stop, mut task } = summarizing;
    let _ = stop.send(true);
    if tokio::time::timeout_at(deadline + Duration::from_secs(1), &mut task)
        .await
        .is_err()
    {
        task.abort();
        tracing::warn!("grace period over: the last summary is not written");
    }
    // Nothing polls or delivers any more: give the leases back, so that
    // another instance takes over now rather than when they expire.
    keeper.stop().await;
    if let Err(e) = app.store.leave().await {
        tracing::warn!(error = %e, "cannot give the leases back; they expire on their own");
    }
    ended
}

/// The first lease round (so that the first tasks start on what this
/// instance holds), then the keeper that renews them.
///
/// A state database that fails that round is an outage like any other: the
/// daemon starts holding nothing, and the keeper's rounds take the leases
/// once it answers.
async fn start_leasing(app: &App) -> Result<lease::Keeper, StoreError> {
    let ha = app.config.ha;
    let first =
        match lease::round(&app.store, &lease::configured(&app.config), ha, Share::Fair).await {
            Ok(first) => first,
            Err(e) if e.is_config() => return Err(e),
            Err(e) => {
                let declared = app.health.outages.failed(Resource::StateStore, &e);
                crate::log_at!(crate::outage::quiet_if(declared), error = %e,
                "cannot take leases; starting with none and retrying");
                return Ok(keeper(app));
            }
        };
    app.health.leases(first.held.len(), first.share, first.live);
    if app.store.shared() {
        tracing::info!(
            instance = %app.instance.id,
            host = %app.instance.host,
            pid = app.instance.pid,
            held = first.held.len(),
            share = first.share,
            live = first.live,
            "sharing the state with other instances: polling the subscriptions this one holds"
        );
    }
    Ok(keeper(app))
}

fn keeper(app: &App) -> lease::Keeper {
    lease::Keeper::spawn(
        app.store.clone(),
        app.health.clone(),
        app.config.ha,
        Share::Fair,
        lease::configured(&app.config),
    )
}

/// The forwarder's end within the grace period: its error, or nothing when
/// it is abandoned (what it was delivering stays in the outbox).
async fn wait_for_forwarder(forwarding: Forwarding, deadline: Instant) -> Result<(), StoreError> {
    match tokio::time::timeout_at(deadline + Duration::from_secs(1), forwarding.task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(StoreError::Task(e.to_string())),
        Err(_) => {
            tracing::warn!(
                "grace period over: abandoning deliveries in flight (they stay in the outbox)"
            );
            Ok(())
        }
    }
}

impl Supervisor {
    fn new(app: Arc<App>, since: Option<Timestamp>) -> Supervisor {
        let timetable = Timetable::spawn(app.pauses.clone());
        Supervisor {
            held: app.store.held(),
            app,
            since,
            running: BTreeMap::new(),
            timetable,
            retiring: JoinSet::new(),
            detecting: None,
            released: BTreeMap::new(),
        }
    }

    /// Follows signals, leases, the forwarder and the watchdog's tick until
    /// a stop; returns why delivery cannot continue, if that is the reason.
    async fn supervise(
        &mut self,
        path: &Path,
        keeper: &lease::Keeper,
        forwarding: &mut Forwarding,
        mut signals: mpsc::Receiver<Signal>,
    ) -> Option<StoreError> {
        let watchdog = notify::watchdog_interval();
        let every = watchdog.map_or(Duration::from_secs(10), |w| {
            (w / 3).max(Duration::from_millis(100))
        });
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                s = signals.recv() => match s {
                    Some(Signal::Reload) => self.reload(path, keeper, forwarding),
                    Some(Signal::Stop) | None => return None,
                },
                changed = self.held.changed() => {
                    if changed.is_ok() {
                        self.follow_leases();
                        notify::status(&self.status_line());
                    }
                }
                ended = &mut forwarding.task => return Some(match ended {
                    Ok(Ok(())) => StoreError::Task("the forwarder stopped".into()),
                    Ok(Err(e)) => e,
                    Err(e) => StoreError::Task(e.to_string()),
                }),
                // It ends only when told to, and a panic's text is left out.
                _ = self.timetable.task() => return Some(StoreError::Task(
                    "the timetable stopped: nothing would poll any more".into(),
                )),
                _ = tick.tick() => self.watchdog_tick(watchdog.is_some()),
            }
        }
    }

    /// SIGHUP: the configuration file again; a rejected one leaves the
    /// running one in place.
    fn reload(&mut self, path: &Path, keeper: &lease::Keeper, forwarding: &mut Forwarding) {
        notify::reloading();
        tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
        match reload(&self.app, path) {
            Ok(new) => {
                keeper.want(lease::configured(&new.config));
                let summary = self.apply(new, forwarding);
                self.follow_leases();
                self.restart_detection(true);
                tracing::info!(%summary, "configuration reloaded");
            }
            Err(e) => tracing::error!(
                error = %e,
                "the new configuration is rejected; the running one stays"
            ),
        }
        notify::ready(&self.status_line());
    }

    /// Pings the watchdog (when systemd asks for one) unless a task is
    /// stuck in a poll; refreshes the status line.
    fn watchdog_tick(&self, watchdog: bool) {
        self.app.health.outages.settle();
        let stalled = self.stalled();
        if stalled.is_empty() {
            if watchdog {
                notify::watchdog();
            }
        } else {
            tracing::error!(subscriptions = ?stalled, "no progress in a poll for {} min; withholding the watchdog ping", STALL_LIMIT.as_secs() / 60);
        }
        notify::status(&self.status_line());
    }

    /// Stops every subscription (those whose lease went too); returns
    /// their ends to wait for.
    fn stop_polls(&mut self) -> JoinSet<()> {
        let ids: Vec<Arc<str>> = self.running.keys().cloned().collect();
        let mut tasks = JoinSet::new();
        for id in ids {
            if let Some(ending) = self.retire(&id) {
                tasks.spawn(async move { ending.ended().await });
            }
        }
        for (_, ending) in std::mem::take(&mut self.released) {
            tasks.spawn(async move { ending.ended().await });
        }
        tasks
    }

    /// Waits for the stopped tasks (and those retired by reloads) until
    /// `deadline`, then abandons them.
    async fn wait_for_polls(&mut self, mut tasks: JoinSet<()>, deadline: Instant) {
        let drained = tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
            while self.retiring.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "grace period over: abandoning polls in flight (their windows are queried again on the next start)"
            );
            tasks.abort_all();
            self.retiring.abort_all();
            self.timetable.abort();
        }
    }
}
/// A lease change at INFO: one line per subscription for a few (an HA
/// takeover names what moved), one line with a count and the first few for
/// many (a start with 10,000 subscriptions is one line, not 10,000; each is
/// at debug).
fn log_lease_changes<S: AsRef<str>>(what: &str, subscriptions: &[S]) {
    const NAMED: usize = 10;
    match subscriptions.len() {
        0 => {}
        n if n <= NAMED => {
            for s in subscriptions {
                tracing::info!(subscription = %s.as_ref(), "{what}");
            }
        }
        n => tracing::info!(
            subscriptions = n,
            first = %subscriptions[..NAMED].iter().map(AsRef::as_ref).collect::<Vec<&str>>().join(", "),
            "{what}"
        ),
    }
}
