//! Outages of the resources the daemon depends on: the state database, ARM,
//! Entra ID (tokens), the ingestion endpoint and the Guardrails API.
//!
//! An outage is survived, never a reason to exit (a full disk is not a hung
//! process): whoever meets the failure retries with capped backoff, and
//! tells [`Outages`], which is where operators see it:
//! - one ERROR line when the outage is declared, then at most one a minute
//!   while it lasts (with the latest cause and how many tries failed), and one
//!   INFO line when it ends, with how long it lasted. The callers log their
//!   own per-try failures at debug while an outage is declared;
//! - `/readyz` answers 503 naming each outage and its cause (`health.rs`),
//!   `STATUS=` says so in `systemctl status` (`daemon.rs`);
//! - the gauges `resource_up{resource}` (1 or 0) and
//!   `resource_outage_seconds{resource}` for alerting.
//!
//! A failure declares an outage at once for the resources one failure says
//! everything about (the state database, the endpoint, the Guardrails API).
//! ARM and Entra ID are asked per subscription and per credential, and one
//! subscription's own trouble is not an outage: those are declared only when
//! failures went on for [`PER_SUBSCRIPTION_GRACE`] without a success between.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the daemon depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    StateStore,
    Arm,
    EntraId,
    Endpoint,
    GuardrailsApi,
}

impl Resource {
    pub const ALL: [Resource; 5] = [
        Resource::StateStore,
        Resource::Arm,
        Resource::EntraId,
        Resource::Endpoint,
        Resource::GuardrailsApi,
    ];

    /// The `resource` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Resource::StateStore => "state_store",
            Resource::Arm => "arm",
            Resource::EntraId => "entra_id",
            Resource::Endpoint => "endpoint",
            Resource::GuardrailsApi => "guardrails_api",
        }
    }

    /// What it is, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Resource::StateStore => "the state database",
            Resource::Arm => "Azure Resource Manager",
            Resource::EntraId => "Entra ID (tokens)",
            Resource::Endpoint => "the ingestion endpoint",
            Resource::GuardrailsApi => "the Guardrails API",
        }
    }

    /// How long failures must go on, without a success between, before they
    /// are an outage (see the module's comment).
    fn grace(self) -> Duration {
        match self {
            Resource::Arm | Resource::EntraId => PER_SUBSCRIPTION_GRACE,
            _ => Duration::ZERO,
        }
    }
}

/// See the module's comment.
pub const PER_SUBSCRIPTION_GRACE: Duration = Duration::from_secs(30);

/// How often a lasting outage is logged again.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// The longest wait between tries while a resource is out.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Failing {
    /// The first failure since the last success.
    since: Instant,
    cause: String,
    tries: u64,
    /// When the outage was declared (logged, published); `None` while within
    /// the grace.
    declared: Option<Instant>,
    logged: Instant,
    /// A declared outage's first success since its last failure: it ends
    /// once successes held for [`RECOVERY_HOLD`] with no failure between
    /// (a disk that is full takes some small writes).
    recovering: Option<Instant>,
}

/// How long a declared outage must see no failure after a success to end.
pub const RECOVERY_HOLD: Duration = Duration::from_secs(5);

/// One outage as `/readyz` and `STATUS=` tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub resource: Resource,
    pub lasted: Duration,
    pub cause: String,
}

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} unavailable for {}s: {}",
            self.resource.describe(),
            self.lasted.as_secs(),
            self.cause
        )
    }
}

/// The resources failing now; shared by everything that meets them.
#[derive(Debug, Default)]
pub struct Outages {
    failing: Mutex<BTreeMap<Resource, Failing>>,
}

impl Outages {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Resource, Failing>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A try at `r` failed with `cause` (which must hold no secret: callers
    /// pass their errors' texts, which never do). True when an outage of `r`
    /// is declared, so that the caller logs its own line at debug.
    pub fn failed(&self, r: Resource, cause: &dyn std::fmt::Display) -> bool {
        self.fail(r, cause, r.grace())
    }

    /// [`Outages::failed`] without the grace: a check that stands for every
    /// subscription (the start's credential check) failed.
    pub fn failed_for_all(&self, r: Resource, cause: &dyn std::fmt::Display) -> bool {
        self.fail(r, cause, Duration::ZERO)
    }

    fn fail(&self, r: Resource, cause: &dyn std::fmt::Display, grace: Duration) -> bool {
        let now = Instant::now();
        let cause = cause.to_string();
        let mut m = self.lock();
        let f = m.entry(r).or_insert_with(|| Failing {
            since: now,
            cause: String::new(),
            tries: 0,
            declared: None,
            logged: now,
            recovering: None,
        });
        f.tries += 1;
        f.recovering = None;
        f.cause = cause;
        match f.declared {
            None if now.duration_since(f.since) >= grace => {
                f.declared = Some(now);
                f.logged = now;
                tracing::error!(
                    resource = r.label(),
                    cause = %f.cause,
                    failing_s = now.duration_since(f.since).as_secs(),
                    "{} is unavailable; retrying (at most a minute apart) until it answers",
                    r.describe()
                );
                crate::metrics::resource(r.label(), false, now.duration_since(f.since));
                true
            }
            None => false,
            Some(_) => {
                if now.duration_since(f.logged) >= LOG_EVERY {
                    f.logged = now;
                    tracing::error!(
                        resource = r.label(),
                        cause = %f.cause,
                        lasted_s = now.duration_since(f.since).as_secs(),
                        failed_tries = f.tries,
                        "{} is still unavailable; retrying",
                        r.describe()
                    );
                }
                true
            }
        }
    }

    /// A try at `r` succeeded: failures within the grace are forgotten; a
    /// declared outage ends once successes held for [`RECOVERY_HOLD`].
    pub fn recovered(&self, r: Resource) {
        let now = Instant::now();
        let mut m = self.lock();
        let Some(f) = m.get_mut(&r) else {
            return;
        };
        if f.declared.is_some() {
            let since = *f.recovering.get_or_insert(now);
            if now.duration_since(since) < RECOVERY_HOLD {
                return;
            }
        }
        if let Some(f) = m.remove(&r) {
            drop(m);
            end(r, &f);
        }
    }

    /// Ends the outages whose recovery held (called on the supervisor's
    /// tick, for a resource no one tries again soon).
    pub fn settle(&self) {
        let mut m = self.lock();
        let held: Vec<Resource> = m
            .iter()
            .filter(|(_, f)| f.recovering.is_some_and(|t| t.elapsed() >= RECOVERY_HOLD))
            .map(|(r, _)| *r)
            .collect();
        for r in held {
            if let Some(f) = m.remove(&r) {
                end(r, &f);
            }
        }
    }

    /// Whether an outage of `r` is declared now.
    pub fn is_down(&self, r: Resource) -> bool {
        self.lock().get(&r).is_some_and(|f| f.declared.is_some())
    }

    /// The declared outages, oldest resource order.
    pub fn current(&self) -> Vec<Outage> {
        self.lock()
            .iter()
            .filter(|(_, f)| f.declared.is_some())
            .map(|(r, f)| Outage {
                resource: *r,
                lasted: f.since.elapsed(),
                cause: f.cause.clone(),
            })
            .collect()
    }

    /// Sets every resource's gauges (at start, so that alerting sees them
    /// before any failure, and at each scrape, so that the outage's length
    /// grows).
    pub fn publish(&self) {
        let m = self.lock();
        for r in Resource::ALL {
            match m.get(&r) {
                Some(f) if f.declared.is_some() => {
                    crate::metrics::resource(r.label(), false, f.since.elapsed())
                }
                _ => crate::metrics::resource(r.label(), true, Duration::ZERO),
            }
        }
    }
}

/// The end of an outage (or of failures within the grace, silently).
fn end(r: Resource, f: &Failing) {
    if f.declared.is_none() {
        return;
    }
    let lasted = f.since.elapsed();
    tracing::info!(
        resource = r.label(),
        lasted_s = lasted.as_secs(),
        failed_tries = f.tries,
        "{} is available again after {}s",
        r.describe(),
        lasted.as_secs()
    );
    crate::metrics::resource(r.label(), true, Duration::ZERO);
}

/// The level of a caller's own line about a failure: debug while an outage
/// (`declared`, as [`Outages::failed`] answers) says it for all, else warn.
pub fn quiet_if(declared: bool) -> tracing::Level {
    if declared {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    }
}

/// Waits between tries at a resource that is out: the backoff's next delay,
/// at most [`MAX_RETRY`].
pub fn next_delay(delays: &mut impl Iterator<Item = Duration>) -> Duration {
    delays.next().unwrap_or(MAX_RETRY).min(MAX_RETRY)
}

/// The backoff for tries at a resource that is out: from a second to a minute.
pub fn backoff() -> crate::retry::Backoff {
    crate::retry::Backoff {
        base: Duration::from_secs(1),
        max: MAX_RETRY,
        retries: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_is_an_outage_at_once_and_a_success_ends_it() {
        let o = Outages::default();
        assert!(o.failed(Resource::StateStore, &"database or disk is full"));
        assert!(o.is_down(Resource::StateStore));
        let now = o.current();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].resource, Resource::StateStore);
        assert!(
            now[0]
                .to_string()
                .contains("the state database unavailable")
        );
        assert!(now[0].to_string().contains("disk is full"));
        // A success alone does not end it (a full disk takes small writes)...
        o.recovered(Resource::StateStore);
        assert!(o.is_down(Resource::StateStore));
        // ...a failure after it continues the same outage...
        assert!(o.failed(Resource::StateStore, &"database or disk is full"));
        o.recovered(Resource::StateStore);
        // ...successes that hold end it.
        let mut m = o.lock();
        if let Some(f) = m.get_mut(&Resource::StateStore) {
            f.recovering = Some(Instant::now() - RECOVERY_HOLD);
        }
        drop(m);
        o.recovered(Resource::StateStore);
        assert!(!o.is_down(Resource::StateStore));
        assert!(o.current().is_empty());
    }

    #[test]
    fn one_subscriptions_arm_failure_is_not_an_outage() {
        let o = Outages::default();
        assert!(!o.failed(Resource::Arm, &"HTTP 500"));
        assert!(!o.is_down(Resource::Arm));
        assert!(o.current().is_empty());
        // Another subscription's read succeeds: the count starts again.
        o.recovered(Resource::Arm);
        assert!(!o.failed(Resource::Arm, &"HTTP 500"));
        assert!(o.current().is_empty());
    }

    #[test]
    fn the_retry_delay_is_capped_at_a_minute() {
        let mut d = backoff().delays();
        let waits: Vec<Duration> = (0..12).map(|_| next_delay(&mut d)).collect();
        assert!(waits.iter().all(|w| *w <= MAX_RETRY));
        assert!(waits[11] >= Duration::from_secs(30));
    }
}
