//! Keeping leases: which subscriptions this instance polls and delivers when
//! several share a PostgreSQL state (`[ha]`).
//!
//! A [`Keeper`] runs a lease round every third of `[ha] lease` (and at once
//! when the configured subscriptions change): the heartbeat, renewal, taking
//! free or expired leases up to this instance's share, giving back the excess
//! (see `Store::lease_round`). What it holds is published on the store's
//! `held` channel, which the supervisor (`daemon.rs`) follows to start and
//! stop subscription tasks, and the store itself follows to deliver only
//! held subscriptions' events. A round that keeps failing for a whole lease
//! drops every subscription: another instance may own them by then. With
//! SQLite, a round holds every configured subscription.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{Config, HaConfig};
use crate::health::Health;
use crate::outage::Resource;
use crate::store::{LeaseReport, Share, Store, StoreError};

/// The configured subscriptions' ids, shared with the configuration: each
/// round reads them, and the list is passed on, not copied.
pub type Wanted = Arc<[Arc<str>]>;

/// Every configured subscription's id.
pub fn configured(config: &Config) -> Wanted {
    config.subscriptions.iter().map(|s| s.id.shared()).collect()
}

/// The lease round task; stopped (and its leases kept until [`Store::leave`])
/// when dropped through [`Keeper::stop`].
pub struct Keeper {
    wanted: watch::Sender<Wanted>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// One round, bounded in time so that a hung database cannot hold leases
/// that may already be lost.
pub async fn round(
    store: &Store,
    wanted: &[Arc<str>],
    ha: HaConfig,
    share: Share,
) -> Result<LeaseReport, StoreError> {
    match tokio::time::timeout(ha.lease / 2, store.lease_round(wanted, ha.lease, share)).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Pool {
            context: "renewing leases",
            reason: format!("no answer within {}ms", (ha.lease / 2).as_millis()),
        }),
    }
}

impl Keeper {
    /// Starts renewing; the first round was made by the caller (at `last_ok`).
    pub fn spawn(
        store: Store,
        health: Arc<Health>,
        ha: HaConfig,
        share: Share,
        wanted: Wanted,
    ) -> Keeper {
        let (wanted, wanted_rx) = watch::channel(wanted);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(store, health, ha, share, wanted_rx, stop_rx));
        Keeper { wanted, stop, task }
    }

    /// The configured subscriptions changed (a reload): a round now.
    pub fn want(&self, wanted: Wanted) {
        self.wanted.send_replace(wanted);
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    store: Store,
    health: Arc<Health>,
    ha: HaConfig,
    share: Share,
    mut wanted: watch::Receiver<Wanted>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(ha.renew_every().max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_ok = Instant::now();
    // Said once per outage, not every round.
    let mut dropped = false;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = wanted.changed() => {}
            _ = tick.tick() => {}
        }
        let subs = wanted.borrow_and_update().clone();
        match round(&store, &subs, ha, share).await {
            Ok(report) => {
                last_ok = Instant::now();
                dropped = false;
                // With SQLite a round reads nothing: it says nothing of the database.
                if store.shared() {
                    health.outages.recovered(Resource::StateStore);
                }
                health.leases(report.held.len(), report.share, report.live);
                tracing::debug!(
                    held = report.held.len(),
                    share = report.share,
                    live = report.live,
                    "lease round"
                );
            }
            Err(e) => {
                let declared = health.outages.failed(Resource::StateStore, &e);
                let since = last_ok.elapsed();
                if since >= ha.lease {
                    if !dropped {
                        tracing::error!(error = %e, "cannot renew leases for a whole lease: dropping every subscription until the state database answers");
                        dropped = true;
                    }
                    store.drop_all_leases();
                    health.leases(0, 1, 1);
                }
                crate::log_at!(crate::outage::quiet_if(declared), error = %e, "cannot renew leases; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    /// The keeper's list references the configuration's ids, not copies.
    #[test]
    fn the_wanted_list_shares_the_configured_ids() {
        let c = crate::config::sample(&["00000000-0000-4000-8000-000000000001"]);
        let ids = super::configured(&c);
        assert_eq!(ids.len(), 1);
        assert!(Arc::ptr_eq(&ids[0], &c.subscriptions[0].id.shared()));
    }
}
