//! The running daemon's checks: every `[detection] interval` (and at once
//! after a reload) each `detect` subscription is asked about again; a live
//! one is paused, a clear one resumed, and a failed check keeps the last
//! known state. [`Pauses`] is the paused set, a `watch` channel that every
//! subscription task follows (`scheduler.rs`), kept across reloads.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Checks, Detection, Verdict};
use crate::config::{EventHandlers, OnUnknown, SubscriptionConfig};
use crate::outage::Resource;

/// The paused subscriptions (id to why), which every subscription task follows.
pub type Paused = BTreeMap<String, String>;

/// The shared, live pause state, kept across reloads.
#[derive(Debug)]
pub struct Pauses {
    tx: watch::Sender<Paused>,
}

impl Default for Pauses {
    fn default() -> Self {
        Pauses {
            tx: watch::channel(Paused::new()).0,
        }
    }
}

impl Pauses {
    pub fn subscribe(&self) -> watch::Receiver<Paused> {
        self.tx.subscribe()
    }

    pub fn is_paused(&self, id: &str) -> bool {
        self.tx.borrow().contains_key(id)
    }

    pub fn snapshot(&self) -> Paused {
        self.tx.borrow().clone()
    }

    /// Pauses `id` (or changes why); true when it was not paused before.
    pub fn pause(&self, id: &str, why: &str) -> bool {
        let mut newly = false;
        self.tx.send_if_modified(|m| {
            newly = !m.contains_key(id);
            let changed = m.get(id).map(String::as_str) != Some(why);
            m.insert(id.to_string(), why.to_string());
            changed
        });
        newly
    }

    /// Resumes `id`; true when it was paused.
    pub fn resume(&self, id: &str) -> bool {
        self.tx.send_if_modified(|m| m.remove(id).is_some())
    }

    /// Forgets every subscription `keep` does not keep.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.tx.send_if_modified(|m| {
            let before = m.len();
            m.retain(|k, _| keep(k));
            m.len() != before
        });
    }
}

/// The first check of a subscription added by a reload has not run yet.
pub const AWAITING_FIRST_CHECK: &str = "awaiting its first event handler check";

/// The running daemon's detection: checks every `detect` subscription (now
/// when `at_once`, else after one interval: the start check has just run)
/// and then every `interval`, until `stop`. Live ones are paused, clear ones
/// resumed; a failed check keeps the last known state (a subscription still
/// waiting for its first check stays paused unless `on_unknown = "poll"`).
pub async fn run(checks: Arc<Checks>, at_once: bool, mut stop: watch::Receiver<bool>) {
    let every = checks.settings.interval;
    let first = if at_once {
        tokio::time::Instant::now()
    } else {
        tokio::time::Instant::now() + every
    };
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        checks.round().await;
    }
}

impl Checks {
    /// One round: subscriptions no longer detected are resumed, the others
    /// asked about and paused or resumed by what was found.
    async fn round(&self) {
        let subs = self.detected();
        for s in &self.subscriptions {
            if s.event_handlers != EventHandlers::Detect && self.pauses.resume(s.id.as_str()) {
                self.health.resumed(s.id.as_str());
                crate::metrics::paused(s.id.as_str(), false);
            }
        }
        if subs.is_empty() {
            return;
        }
        let results = self.detect_all(&subs).await;
        for (sub, detection) in results {
            self.apply(&sub, &detection).await;
        }
    }

    /// Acts on one subscription's detection, and notes it for `status`.
    async fn apply(&self, sub: &SubscriptionConfig, detection: &Detection) {
        let verdict = detection.verdict();
        let detail = verdict.detail();
        let api_out = match &detection.guardrails {
            Some(Ok(_)) => {
                self.health.outages.recovered(Resource::GuardrailsApi);
                false
            }
            Some(Err(e)) => self.health.outages.failed(Resource::GuardrailsApi, e),
            None => false,
        };
        let state = match &verdict {
            Verdict::Live(found) => self.pause_fed(sub, found, &detail),
            Verdict::Clear(seen) => self.resume_clear(sub, seen),
            Verdict::Unknown(errors) => self.keep_last_state(sub, errors, api_out),
        };
        self.note(sub.id.as_str(), chrono::Utc::now(), state, detail)
            .await;
    }

    /// Something else feeds `sub` (`why`: the verdict's detail): its polls
    /// stop (what is queued is still delivered).
    fn pause_fed(&self, sub: &SubscriptionConfig, found: &[String], why: &str) -> &'static str {
        let id = sub.id.as_str();
        self.pauses.pause(id, why);
        self.health.paused(id, why);
        crate::metrics::paused(id, true);
        crate::metrics::detection_check("live");
        tracing::error!(
            subscription_id = %sub.id,
            subscription_name = sub.name.as_deref(),
            found = %found.join("; "),
            "Guardrails event handlers or its own poller feed this subscription: polling paused (events already queued are still delivered)"
        );
        "paused"
    }

    /// Nothing else feeds `sub`: a paused one resumes from its watermark.
    fn resume_clear(&self, sub: &SubscriptionConfig, seen: &[String]) -> &'static str {
        let id = sub.id.as_str();
        crate::metrics::detection_check("clear");
        if self.pauses.resume(id) {
            self.health.resumed(id);
            crate::metrics::paused(id, false);
            tracing::info!(
                subscription_id = %sub.id,
                subscription_name = sub.name.as_deref(),
                seen = %seen.join("; "),
                "nothing else feeds this subscription any more: polling resumes from its watermark"
            );
        }
        "clear"
    }

    /// The check failed: `sub` keeps its last known state, except one still
    /// awaiting its first check, which `on_unknown` decides.
    /// `quiet`: an outage says it for all (`outage.rs`); this line is at debug.
    fn keep_last_state(
        &self,
        sub: &SubscriptionConfig,
        errors: &[String],
        quiet: bool,
    ) -> &'static str {
        let id = sub.id.as_str();
        crate::metrics::detection_check("unknown");
        crate::metrics::detection_failed(id);
        let first_check = self
            .pauses
            .snapshot()
            .get(id)
            .is_some_and(|w| w == AWAITING_FIRST_CHECK);
        if first_check && self.settings.on_unknown == OnUnknown::Poll {
            self.pauses.resume(id);
            self.health.resumed(id);
            crate::metrics::paused(id, false);
        } else if first_check {
            let why = format!("event handler check failed: {}", errors.join("; "));
            self.pauses.pause(id, &why);
            self.health.paused(id, &why);
        }
        crate::log_at!(
            crate::outage::quiet_if(quiet),
            subscription_id = %sub.id,
            subscription_name = sub.name.as_deref(),
            error = %errors.join("; "),
            paused = self.pauses.is_paused(id),
            "the event handler check failed; the subscription keeps its last known state"
        );
        if self.pauses.is_paused(id) {
            "paused"
        } else {
            "unknown"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_say_what_changed() {
        let p = Pauses::default();
        let rx = p.subscribe();
        assert!(p.pause("a", "why"));
        assert!(!p.pause("a", "why again"));
        assert!(rx.borrow().get("a").is_some_and(|w| w == "why again"));
        assert!(p.resume("a"));
        assert!(!p.resume("a"));
        p.pause("b", "x");
        p.retain(|_| false);
        assert!(!p.is_paused("b"));
    }
}
