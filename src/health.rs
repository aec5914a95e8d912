//! Liveness and readiness, and the HTTP server that exposes them with the
//! metrics: `/healthz` (the process answers), `/readyz` (this instance holds
//! its share of the subscriptions, and every one it holds was polled
//! successfully within three intervals; the body names what is not),
//! `/metrics` (Prometheus text). Off unless `[telemetry] listen` is set.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::SubscriptionConfig;
use crate::metrics::Exporter;
use crate::outage::Outages;
use crate::store::Store;

#[derive(Debug, Clone)]
struct SubscriptionHealth {
    /// Its label and interval (shared with its task: a copy of the label
    /// each was 1 MiB at 10,000 subscriptions).
    sub: Arc<SubscriptionConfig>,
    /// When this instance began polling it: the poll age before a success.
    since: Instant,
    last_ok: Option<Instant>,
    last_error: Option<Box<str>>,
    /// Why polling is paused (Guardrails feeds it), while it is.
    paused: Option<Box<str>>,
}

/// What readiness is judged on, updated by every poll.
///
/// A new one is starting, so not ready: nothing is tracked yet, and an empty
/// list must not read as ready. The daemon says it has started once its
/// polls are tracked.
#[derive(Debug)]
pub struct Health {
    /// Keyed by the configuration's id, shared.
    subs: Mutex<BTreeMap<Arc<str>, SubscriptionHealth>>,
    /// The last lease round: (held, share, live instances).
    leases: Mutex<Option<(usize, usize, usize)>>,
    /// The resources out now (`outage.rs`): each one makes the instance
    /// not ready, named first.
    pub outages: Arc<Outages>,
    /// What the daemon is doing before its first poll (opening the state,
    /// checking credentials and event handlers); `None` once it polls.
    starting: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            subs: Mutex::default(),
            leases: Mutex::default(),
            outages: Arc::default(),
            starting: Mutex::new(Some("starting".to_string())),
        }
    }
}

/// How many intervals a subscription may go without a successful poll.
const READY_INTERVALS: u32 = 3;
/// Slack for the poll itself to run.
const READY_SLACK: Duration = Duration::from_secs(30);

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Arc<str>, SubscriptionHealth>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts judging `sub` (again, after a reload).
    pub fn track(&self, sub: &Arc<SubscriptionConfig>) {
        let mut m = self.lock();
        let e = m.entry(sub.id.shared()).or_insert(SubscriptionHealth {
            sub: sub.clone(),
            since: Instant::now(),
            last_ok: None,
            last_error: None,
            paused: None,
        });
        e.sub = sub.clone();
    }

    pub fn untrack(&self, id: &str) {
        self.lock().remove(id);
        crate::metrics::not_polled_here(id);
    }

    /// Each polled subscription's interval and time since its last
    /// successful poll, for the metrics (what `not_ready` judges).
    pub fn poll_ages(&self) -> Vec<crate::metrics::PollAge> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|(id, s)| crate::metrics::PollAge {
                subscription: id.clone(),
                interval: s.sub.schedule.interval().as_secs_f64(),
                age: match s.paused {
                    Some(_) => 0.0,
                    None => now
                        .duration_since(s.last_ok.unwrap_or(s.since))
                        .as_secs_f64(),
                },
                paused: s.paused.is_some(),
            })
            .collect()
    }

    pub fn succeeded(&self, id: &str) {
        if let Some(e) = self.lock().get_mut(id) {
            e.last_ok = Some(Instant::now());
            e.last_error = None;
        }
    }

    pub fn failed(&self, id: &str, error: &str) {
        if let Some(e) = self.lock().get_mut(id) {
            e.last_error = Some(error.into());
        }
    }

    pub fn paused(&self, id: &str, why: &str) {
        if let Some(e) = self.lock().get_mut(id) {
            e.paused = Some(why.into());
        }
    }

    /// Resumed: judged afresh from now, so that it has its intervals to poll.
    pub fn resumed(&self, id: &str) {
        if let Some(e) = self.lock().get_mut(id)
            && e.paused.take().is_some()
        {
            e.last_ok = Some(Instant::now());
        }
    }

    /// How many subscriptions are paused.
    pub fn paused_count(&self) -> usize {
        self.lock().values().filter(|s| s.paused.is_some()).count()
    }

    /// The daemon is starting, doing `what`; `None`: it has started.
    pub fn starting(&self, what: Option<&str>) {
        *self.starting.lock().unwrap_or_else(|p| p.into_inner()) = what.map(str::to_string);
    }

    /// What the last lease round held, of its share, among `live` instances.
    pub fn leases(&self, held: usize, share: usize, live: usize) {
        *self.leases.lock().unwrap_or_else(|p| p.into_inner()) = Some((held, share, live));
    }

    /// What is not ready, with why: first the resources out, then, when
    /// this instance holds less than its share of the subscriptions, that,
    /// then the subscriptions.
    pub fn not_ready(&self) -> Vec<String> {
        let now = Instant::now();
        let starting = self
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|w| format!("starting: {w}"));
        let outages = self.outages.current().into_iter().map(|o| o.to_string());
        let short = match *self.leases.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((held, share, live)) if held < share => Some(format!(
                "holds {held} of its share of {share} subscription(s) ({live} live instance(s))"
            )),
            _ => None,
        };
        starting
            .into_iter()
            .chain(outages)
            .chain(short)
            .chain(self.not_ready_subscriptions(now))
            .collect()
    }

    fn not_ready_subscriptions(&self, now: Instant) -> Vec<String> {
        self.lock()
            .values()
            .filter_map(|s| {
                if let Some(why) = &s.paused {
                    return Some(format!("{}: paused: {why}", s.sub.label()));
                }
                let limit = s.sub.schedule.interval() * READY_INTERVALS + READY_SLACK;
                let fresh = s.last_ok.is_some_and(|t| now.duration_since(t) <= limit);
                (!fresh).then(|| match (&s.last_ok, &s.last_error) {
                    (_, Some(e)) => format!("{}: last poll failed: {e}", s.sub.label()),
                    (None, None) => format!("{}: not polled successfully yet", s.sub.label()),
                    (Some(t), None) => format!(
                        "{}: no successful poll for {}s",
                        s.sub.label(),
                        now.duration_since(*t).as_secs()
                    ),
                })
            })
            .collect()
    }
}

#[derive(Clone)]
struct Admin {
    health: Arc<Health>,
    exporter: Option<Exporter>,
    store: StoreSlot,
}

/// The state store, once it is open: the admin server answers before (its
/// outage is what `/readyz` then says), without the outbox depths.
pub type StoreSlot = Arc<std::sync::OnceLock<Store>>;

/// How long a scrape waits for the outbox depths from the state database.
const SCRAPE_STORE_WAIT: Duration = Duration::from_secs(2);

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(a): State<Admin>) -> Response {
    let not_ready = a.health.not_ready();
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let mut body = String::from("not ready:\n");
        for line in not_ready {
            body.push_str(&line);
            body.push('\n');
        }
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(a): State<Admin>) -> Response {
    let Some(exporter) = a.exporter.clone() else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response();
    };
    a.health.outages.publish();
    // Bounded: a state database that does not answer leaves the depths as
    // they were, and the scrape still answers.
    if let Some(store) = a.store.get()
        && let Ok(Ok(states)) = tokio::time::timeout(SCRAPE_STORE_WAIT, store.states()).await
    {
        let outbox: Vec<(String, i64)> = states
            .iter()
            .map(|s| (s.subscription_id.clone(), s.outbox))
            .collect();
        let dead: Vec<(String, i64)> = states
            .iter()
            .map(|s| (s.subscription_id.clone(), s.dead_letters))
            .collect();
        crate::metrics::queue_depths(&outbox, &dead);
    }
    crate::metrics::poll_ages(&a.health.poll_ages());
    let body = tokio::task::spawn_blocking(move || exporter.render())
        .await
        .unwrap_or_default();
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Binds the admin server; serve it with the returned future.
pub async fn bind(
    addr: SocketAddr,
    health: Arc<Health>,
    exporter: Option<Exporter>,
    store: StoreSlot,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Admin {
            health,
            exporter,
            store,
        });
    Ok((local, async move {
        let _ = axum::serve(listener, router).await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_started_then_until_each_tracked_subscription_polls() {
        let h = Health::default();
        assert_eq!(h.not_ready(), vec!["starting: starting".to_string()]);
        let sub = crate::config::SubscriptionConfig {
            id: crate::config::SubscriptionId::parse("00000000-0000-4000-8000-000000000001")
                .unwrap(),
            name: None,
            event_handlers: crate::config::EventHandlers::Absent,
            event_handlers_at: None,
            schedule: crate::config::Schedule::new(
                Duration::from_secs(60),
                Duration::from_secs(600),
            )
            .unwrap(),
            credential: "default".into(),
            statuses: vec!["Succeeded".into()].into(),
        };
        let sub = Arc::new(sub);
        h.track(&sub);
        h.starting(None);
        let why = h.not_ready();
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].ends_with("not polled successfully yet"), "{why:?}");
        h.succeeded(sub.id.as_str());
        assert!(h.not_ready().is_empty());
    }
}
