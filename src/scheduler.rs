//! When polls happen: every subscription on its own interval (the daemon), or
//! each once up to now (`--once`). Polls run concurrently, at most
//! `[azure] concurrency` at a time; a failing subscription is logged and retried
//! on its next interval without holding up the others.
//!
//! Shutdown (mini-redis style): a `watch` channel tells every task to stop.
//! Subscription tasks stop at their next wait; a poll in flight is given the
//! grace period to finish, then dropped, which is safe because every page is
//! its own transaction and an unfinished window is simply queried again.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::app::App;
use crate::config::SubscriptionConfig;
use crate::event::{Timestamp, rfc3339};
use crate::forward::ForwardError;
use crate::poll::{PollError, PollReport};

/// How one subscription's `--once` pass ended.
#[derive(Debug)]
pub struct OnceResult {
    pub subscription: String,
    pub outcome: Result<PollReport, PollError>,
}

/// How a `--once` run ended.
#[derive(Debug)]
pub struct OnceSummary {
    pub polls: Vec<OnceResult>,
    pub delivery: Result<u64, ForwardError>,
}

impl OnceSummary {
    pub fn succeeded(&self) -> bool {
        self.polls.iter().all(|p| p.outcome.is_ok()) && self.delivery.is_ok()
    }
}

/// Polls one subscription and writes its log line; the result is also noted in
/// the state database for `status`.
async fn poll_and_log(
    app: &App,
    sub: &SubscriptionConfig,
    since: Option<Timestamp>,
) -> Result<PollReport, PollError> {
    let started = Instant::now();
    let outcome = match app.tokens_for(sub) {
        Some(tokens) => app.poller.poll(sub, &tokens, since).await,
        None => Err(PollError::Store(crate::store::StoreError::Task(format!(
            "credential {:?} is not built",
            sub.credential
        )))),
    };
    let now = Utc::now();
    let note = match &outcome {
        Ok(r) => {
            let delivered = app.forwarder.delivered.take(sub.id.as_str());
            tracing::info!(
                subscription = %sub.label(),
                window_start = r.window_start.map(rfc3339).unwrap_or_default(),
                window_end = r.window_end.map(rfc3339).unwrap_or_default(),
                queries = r.queries,
                pages = r.pages,
                requests = r.requests,
                fetched = r.fetched,
                kept = r.kept,
                skipped = r.skipped_status,
                new = r.new,
                duplicate = r.duplicate,
                quarantined = r.quarantined,
                delivered,
                lag_s = r.lag(app.poller.now()).map(|d| d.as_secs()).unwrap_or_default(),
                throttled_s = r.throttled.as_secs_f64(),
                took_ms = started.elapsed().as_millis() as u64,
                "poll complete"
            );
            if let Some(skew) = r.skew
                && skew.num_seconds().abs() > 5
            {
                tracing::warn!(
                    subscription = %sub.label(),
                    skew_s = skew.num_seconds(),
                    "this host's clock differs from Azure's; the watermark follows Azure's clock"
                );
            }
            "ok".to_string()
        }
        Err(e) => {
            tracing::error!(subscription = %sub.label(), error = %e, "poll failed; retrying on the next interval");
            format!("error: {e}")
        }
    };
    let id = sub.id.as_str().to_string();
    if let Err(e) = app.store.call(move |s| s.note_poll(&id, now, &note)).await {
        tracing::warn!(error = %e, "cannot note the poll result");
    }
    outcome
}

/// One pass over every subscription, then delivery of everything queued.
pub async fn run_once(
    app: Arc<App>,
    since: Option<Timestamp>,
    give_up_after: Duration,
) -> OnceSummary {
    let permits = Arc::new(Semaphore::new(app.config.azure.concurrency));
    let mut tasks = JoinSet::new();
    // Deliver while polling, so a long catch-up does not pile up the outbox.
    let (stop_tx, stop_rx) = watch::channel(false);
    let forwarding = {
        let app = app.clone();
        tokio::spawn(async move { app.forwarder.run(app.outbox_ready.clone(), stop_rx).await })
    };
    for i in 0..app.config.subscriptions.len() {
        let app = app.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let sub = &app.config.subscriptions[i];
            let outcome = poll_and_log(&app, sub, since).await;
            OnceResult {
                subscription: sub.label(),
                outcome,
            }
        });
    }
    let mut polls = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(r) => polls.push(r),
            Err(e) => tracing::error!(error = %e, "a poll task failed"),
        }
    }
    let _ = stop_tx.send(true);
    let early = match forwarding.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ForwardError::Store(e)),
        Err(e) => Err(ForwardError::Store(crate::store::StoreError::Task(
            e.to_string(),
        ))),
    };
    let delivery = match early {
        Ok(()) => app.forwarder.drain(give_up_after).await,
        Err(e) => Err(e),
    };
    polls.sort_by(|a, b| a.subscription.cmp(&b.subscription));
    OnceSummary { polls, delivery }
}

/// The daemon: polls every subscription on its interval and delivers
/// continuously until `shutdown` turns true; then finishes within `grace`.
/// If the forwarder cannot go on (the state database failed), everything stops
/// and the error is returned, so that the service manager restarts us.
pub async fn run_daemon(
    app: Arc<App>,
    since: Option<Timestamp>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> Result<(), crate::store::StoreError> {
    // Tasks listen to `stop`, which the caller's `shutdown` or a failure sets.
    let (stop_tx, stop) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(app.config.azure.concurrency));
    let mut polls = JoinSet::new();
    for i in 0..app.config.subscriptions.len() {
        let app = app.clone();
        let permits = permits.clone();
        let mut stop = stop.clone();
        polls.spawn(async move {
            let sub = &app.config.subscriptions[i];
            let mut tick = tokio::time::interval(sub.schedule.interval());
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {}
                }
                if *stop.borrow() {
                    break;
                }
                let Ok(_permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let _ = poll_and_log(&app, sub, since).await;
            }
        });
    }
    let mut forwarder = {
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move { app.forwarder.run(app.outbox_ready.clone(), stop).await })
    };

    let failed = tokio::select! {
        _ = async {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        } => None,
        ended = &mut forwarder => Some(match ended {
            Ok(Ok(())) => crate::store::StoreError::Task("the forwarder stopped".into()),
            Ok(Err(e)) => e,
            Err(e) => crate::store::StoreError::Task(e.to_string()),
        }),
    };
    let _ = stop_tx.send(true);
    if let Some(e) = &failed {
        tracing::error!(error = %e, "delivery cannot continue; stopping");
    }
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: finishing work in flight"
    );
    let deadline = Instant::now() + grace;
    let drained = tokio::time::timeout_at(deadline, async {
        while polls.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "grace period over: abandoning polls in flight (their windows are queried again on the next start)"
        );
        polls.abort_all();
    }
    if let Some(e) = failed {
        return Err(e);
    }
    match tokio::time::timeout_at(deadline + Duration::from_secs(1), forwarder).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(crate::store::StoreError::Task(e.to_string())),
        Err(_) => {
            tracing::warn!(
                "grace period over: abandoning deliveries in flight (they stay in the outbox)"
            );
            Ok(())
        }
    }
}
