//! When polls happen: every subscription on its own interval (the daemon), or
//! each once up to now (`--once`). Polls run concurrently, as many at a time
//! as the read limit allows (`read_limit.rs`: sized by the polls due and
//! their round trip, under `[azure] concurrency`); a failing subscription is
//! logged and retried on its next interval without holding up the others.
//!
//! Each poll writes one line. In the daemon a poll that found nothing new,
//! delivered nothing, was neither late nor throttled and did not fail writes
//! it at debug, and the minute's summary (`summary.rs`) counts it: at 10,000
//! subscriptions a line per poll would be 167 a second, past journald's rate
//! limit. `--once` writes every line at INFO: a person reads them.
//!
//! In the daemon, when each subscription's next poll is due is the
//! timetable's (`timetable.rs`: one timer for all of them); what a poll
//! does when it is due is here. A poll dropped mid-way (past the grace
//! period) is safe: every page is its own transaction and an unfinished
//! window is simply queried again.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::app::App;
use crate::config::SubscriptionConfig;
use crate::event::{Timestamp, rfc3339};
use crate::forward::ForwardError;
use crate::heartbeat::Heartbeat;
use crate::outage::{Resource, quiet_if};
use crate::poll::{PollError, PollReport};
use crate::store::{Share, StoreError};
use crate::summary::PollFacts;

/// Where in each interval a subscription polls: a stable spread from its id,
/// on a grid of tenths of a second, so that the subscriptions sharing a
/// tenth wake together (ten bursts of wake-ups a second at most, instead of
/// one per subscription: idle CPU measured 0.47% of a core for 1,000
/// subscriptions all in one burst, 1.21% spread to the nanosecond). A grid
/// of whole seconds woke 167 polls together at 10,000 subscriptions a
/// minute; over a WAN each burst found the previous one's connections still
/// busy and opened its own, 600-773 ARM connections where a steady 167 polls
/// a second at 0.5 s need about 85 (BENCHMARKS.md section 8).
pub(crate) fn phase(id: &str, interval: Duration) -> Duration {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let tenths = u64::try_from(interval.as_millis() / 100)
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis((h % tenths) * 100)
}

/// When a subscription task started at `now` polls first, and the first
/// point after that of its grid (`origin + phase + k x interval`, where every
/// later poll falls), so that each interval counted from the process start
/// has one poll of each subscription.
///
/// The first polls are spread over what is left of the first interval by
/// phase, rather than all made at once: at 10,000 subscriptions "at once"
/// held 600 ARM connections open together (and their buffers: 100 MiB), for
/// a schedule that asks for 167 polls a second. A subscription that is
/// `owed` a poll (see [`overdue`]), or a task started an interval or more
/// after the process (a reload, a lease taken over), polls at once.
pub(crate) fn first_poll(
    origin: Instant,
    now: Instant,
    phase: Duration,
    interval: Duration,
    owed: bool,
) -> (Instant, Instant) {
    let elapsed = now.saturating_duration_since(origin);
    let first = if owed || elapsed >= interval {
        now
    } else {
        // Scaled into the rest of the first interval: phase 0 now, the last
        // phase just before the interval ends.
        now + phase.mul_f64((interval - elapsed).as_secs_f64() / interval.as_secs_f64())
    };
    let since_phase = first.saturating_duration_since(origin + phase);
    let next = if first < origin + phase {
        origin + phase
    } else {
        let k = since_phase.as_nanos() / interval.as_nanos().max(1) + 1;
        origin + phase + interval * u32::try_from(k).unwrap_or(u32::MAX)
    };
    (first, next)
}

/// Whether a subscription is owed a poll at once, before its turn in the
/// first interval: its watermark is more than two intervals behind (the
/// daemon was stopped for a while, or the instance that held it stopped
/// polling it), so entries wait. One never polled owes nothing yet: its
/// first poll places its look-back (one window) from then.
pub(crate) async fn overdue(app: &App, sub: &SubscriptionConfig) -> bool {
    let Ok(Some(cursor)) = app.store.cursor(sub.id.as_str()).await else {
        return false;
    };
    (app.poller.now() - cursor.watermark)
        .to_std()
        .is_ok_and(|behind| behind > sub.schedule.interval() * 2)
}

/// A subscription's "polls start late" warning is repeated at most this often.
const LATE_WARNING_EVERY: Duration = Duration::from_secs(600);

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

/// How a poll's line is written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reporting {
    /// `--once`: at INFO, every one.
    Once,
    /// The daemon: counted in the summary; at debug when there is nothing
    /// to read in it. `late`: it started more than an interval late.
    Daemon { late: bool },
}

/// Polls one subscription and writes its log line; the result is also noted in
/// the state database for `status`, and a throttled poll tells the read limit.
async fn poll_and_log(
    app: &App,
    sub: &SubscriptionConfig,
    since: Option<Timestamp>,
    beat: &Heartbeat,
    reporting: Reporting,
) -> Result<PollReport, PollError> {
    let started = Instant::now();
    let outcome = match app.tokens_for(sub) {
        Some(tokens) => app.poller.poll(sub, &tokens, since, beat).await,
        None => Err(PollError::Store(StoreError::Task(format!(
            "credential {:?} is not built",
            sub.credential
        )))),
    };
    let now = Utc::now();
    let throttled = match &outcome {
        Ok(r) => !r.throttled.is_zero(),
        Err(PollError::Azure(e)) => e.is_throttled(),
        Err(_) => false,
    };
    if throttled {
        app.reads.throttled();
    }
    let note = match &outcome {
        Ok(r) => {
            log_complete(app, sub, r, started, reporting);
            "ok".to_string()
        }
        Err(e) => {
            // During an outage, `outage.rs` says it once a minute for all.
            let outage = e.outage().is_some_and(|r| app.health.outages.failed(r, e));
            let level = if outage && matches!(reporting, Reporting::Daemon { .. }) {
                tracing::Level::DEBUG
            } else {
                tracing::Level::ERROR
            };
            crate::log_at!(level, subscription_id = %sub.id,
                subscription_name = sub.name.as_deref(), error = %e, "poll failed; retrying on the next interval");
            if let Reporting::Daemon { .. } = reporting {
                app.summary.poll(&PollFacts {
                    subscription: sub.id.as_str(),
                    ok: false,
                    ..PollFacts::default()
                });
            }
            format!("error: {e}")
        }
    };
    let id = sub.id.as_str().to_string();
    match &outcome {
        Ok(r) => {
            for r in [Resource::StateStore, Resource::Arm, Resource::EntraId] {
                app.health.outages.recovered(r);
            }
            app.health.succeeded(&id);
            let lag = r.lag(app.poller.now()).map(|d| d.as_secs_f64());
            crate::metrics::poll_finished(
                &id,
                Some(&r.counts()),
                started.elapsed().as_secs_f64(),
                lag,
            );
        }
        Err(e) => {
            app.health.failed(&id, &e.to_string());
            crate::metrics::poll_finished(&id, None, started.elapsed().as_secs_f64(), None);
        }
    }
    if let Err(e) = app.store.note_poll(&id, now, note).await {
        let level = quiet_if(app.health.outages.failed(Resource::StateStore, &e));
        crate::log_at!(level, error = %e, "cannot note the poll result");
    }
    outcome
}

/// The "poll complete" line (with what was delivered since the last one),
/// at debug for a quiet poll of the daemon, and a warning when this host's
/// clock is off Azure's.
fn log_complete(
    app: &App,
    sub: &SubscriptionConfig,
    r: &PollReport,
    started: Instant,
    reporting: Reporting,
) {
    let delivered = app.forwarder.delivered.take(sub.id.as_str());
    let lag = r.lag(app.poller.now());
    let facts = PollFacts {
        subscription: sub.id.as_str(),
        ok: true,
        fetched: r.fetched,
        new: r.new,
        quarantined: r.quarantined,
        delivered,
        throttled: r.throttled,
        lag,
    };
    let quiet = match reporting {
        Reporting::Once => false,
        Reporting::Daemon { late } => {
            app.summary.poll(&facts);
            facts.quiet() && !late
        }
    };
    // One line, two levels: `tracing` takes a level known where the event is.
    macro_rules! poll_complete {
        ($level:expr) => {
            tracing::event!(
                $level,
                subscription_id = %sub.id,
                subscription_name = sub.name.as_deref(),
                window_start = r.window_start.map(rfc3339).unwrap_or_default(),
                window_end = r.window_end.map(rfc3339).unwrap_or_default(),
                queries = r.queries,
                pages = r.pages,
                requests = r.requests,
                bytes = r.bytes,
                fetched = r.fetched,
                kept = r.kept,
                skipped = r.skipped_status,
                new = r.new,
                duplicate = r.duplicate,
                quarantined = r.quarantined,
                delivered,
                lag_s = lag.map(|d| d.as_secs()).unwrap_or_default(),
                throttled_s = r.throttled.as_secs_f64(),
                took_ms = started.elapsed().as_millis() as u64,
                "poll complete"
            )
        };
    }
    if quiet {
        poll_complete!(tracing::Level::DEBUG);
    } else {
        poll_complete!(tracing::Level::INFO);
    }
    if let Some(skew) = r.skew
        && skew.num_seconds().abs() > 5
    {
        tracing::warn!(
            subscription_id = %sub.id,
            subscription_name = sub.name.as_deref(),
            skew_s = skew.num_seconds(),
            "this host's clock differs from Azure's; the watermark follows Azure's clock"
        );
    }
}

/// Takes the lease of every configured subscription for `--once`, waiting up
/// to one lease for those another instance holds (a killed one's expire).
async fn take_leases(
    app: &App,
    ids: &[Arc<str>],
) -> Result<std::collections::BTreeSet<Arc<str>>, String> {
    let ha = app.config.ha;
    let deadline = Instant::now() + ha.lease + ha.renew_every();
    loop {
        let report = crate::lease::round(&app.store, ids, ha, Share::All)
            .await
            .map_err(|e| e.to_string())?;
        if ids.iter().all(|id| report.held.contains(id)) || Instant::now() >= deadline {
            return Ok(report.held);
        }
        tracing::info!(
            held = report.held.len(),
            configured = ids.len(),
            "another instance holds some subscriptions; waiting up to a lease for them"
        );
        tokio::time::sleep(ha.renew_every()).await;
    }
}

/// One pass over every subscription, then delivery of everything queued.
pub async fn run_once(
    app: Arc<App>,
    since: Option<Timestamp>,
    give_up_after: Duration,
) -> OnceSummary {
    // On shared state, only the subscriptions no other live instance holds,
    // kept for the whole run.
    let ids = crate::lease::configured(&app.config);
    let taken = take_leases(&app, &ids).await;
    let held = taken.clone().unwrap_or_default();
    let keeper = crate::lease::Keeper::spawn(
        app.store.clone(),
        app.health.clone(),
        app.config.ha,
        Share::All,
        held.iter().cloned().collect(),
    );
    // Deliver while polling, so a long catch-up does not pile up the outbox.
    let (stop_tx, stop_rx) = watch::channel(false);
    let forwarding = {
        let app = app.clone();
        tokio::spawn(async move { app.forwarder.run(app.outbox_ready.clone(), stop_rx).await })
    };
    let mut polls = poll_held(&app, since, &taken).await;
    let _ = stop_tx.send(true);
    let early = match forwarding.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ForwardError::Store(e)),
        Err(e) => Err(ForwardError::Store(StoreError::Task(e.to_string()))),
    };
    let delivery = match early {
        Ok(()) => app.forwarder.drain(give_up_after).await,
        Err(e) => Err(e),
    };
    keeper.stop().await;
    if let Err(e) = app.store.leave().await {
        tracing::warn!(error = %e, "cannot give the leases back; they expire on their own");
    }
    polls.sort_by(|a, b| a.subscription.cmp(&b.subscription));
    OnceSummary { polls, delivery }
}

/// Polls every subscription of `taken` (the leases `--once` holds), as many
/// at a time as the read limit allows; the others fail, saying why.
async fn poll_held(
    app: &Arc<App>,
    since: Option<Timestamp>,
    taken: &Result<std::collections::BTreeSet<Arc<str>>, String>,
) -> Vec<OnceResult> {
    let mut tasks = JoinSet::new();
    let mut polls = Vec::new();
    for (i, sub) in app.config.subscriptions.iter().enumerate() {
        let refused = match taken {
            Ok(held) if held.contains(sub.id.as_str()) => None,
            Ok(_) => Some(StoreError::HeldElsewhere {
                subscription: sub.id.to_string(),
            }),
            Err(reason) => Some(StoreError::Pool {
                context: "taking leases",
                reason: reason.clone(),
            }),
        };
        if let Some(refused) = refused {
            polls.push(OnceResult {
                subscription: sub.label(),
                outcome: Err(PollError::Store(refused)),
            });
            continue;
        }
        let app = app.clone();
        tasks.spawn(async move {
            let _permit = app.reads.acquire().await;
            let sub = &app.config.subscriptions[i];
            let outcome = Box::pin(poll_and_log(
                &app,
                sub,
                since,
                &Heartbeat::default(),
                Reporting::Once,
            ))
            .await;
            app.progress.track(sub.id.as_str()).polled(outcome.is_ok());
            OnceResult {
                subscription: sub.label(),
                outcome,
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(r) => polls.push(r),
            Err(e) => tracing::error!(error = %e, "a poll task failed"),
        }
    }
    polls
}

/// How late a poll due at `due` starts (after waiting `waited` for the read
/// limit); a warning (at most every [`LATE_WARNING_EVERY`]) that says what
/// held it when it is later than a whole interval. Whether it was.
pub(crate) fn note_start_delay(
    app: &App,
    sub: &SubscriptionConfig,
    due: Instant,
    waited: Duration,
    warned_late: &mut Option<Instant>,
) -> bool {
    let id = sub.id.as_str();
    let interval = sub.schedule.interval();
    let late = due.elapsed();
    crate::metrics::poll_start_delay(id, late.as_secs_f64());
    if late <= interval {
        return false;
    }
    crate::metrics::poll_late(id);
    app.summary.late();
    if warned_late.is_none_or(|w| w.elapsed() > LATE_WARNING_EVERY) {
        *warned_late = Some(Instant::now());
        let figure = app.reads.figure();
        // Most of the delay spent waiting for a permit: the read limit held
        // it. Otherwise its own previous poll ran past the tick.
        let limited_by = if waited * 2 >= late {
            figure.explain()
        } else {
            "the previous poll of this subscription ran past its interval (a catch-up, or Azure answering slowly)".to_string()
        };
        tracing::warn!(
            subscription_id = %sub.id,
            subscription_name = sub.name.as_deref(),
            late_s = late.as_secs_f64(),
            interval_s = interval.as_secs_f64(),
            waited_s = waited.as_secs_f64(),
            reads_limit = figure.limit,
            reads_cap = figure.cap,
            limited_by = %limited_by,
            "a poll started more than one interval late"
        );
    }
    true
}

/// One poll, abandoned if the subscription is paused while it runs.
pub(crate) async fn poll_unless_paused(
    app: &App,
    sub: &SubscriptionConfig,
    since: Option<Timestamp>,
    beat: &Heartbeat,
    paused: &mut watch::Receiver<crate::detect::Paused>,
    reporting: Reporting,
) {
    // On the heap, and only while it runs: the poll's state (pages, slices)
    // is many kilobytes, and inline it would make every idle subscription
    // task as large (10,000 of them: over 100 MiB).
    let mut poll = Box::pin(poll_and_log(app, sub, since, beat, reporting));
    loop {
        tokio::select! {
            _ = &mut poll => break,
            changed = paused.changed() => {
                if changed.is_err() {
                    let _ = (&mut poll).await;
                    break;
                }
                if paused.borrow().contains_key(sub.id.as_str()) {
                    tracing::warn!(
                        subscription_id = %sub.id,
                        subscription_name = sub.name.as_deref(),
                        "paused mid-poll: the poll is abandoned, and its window is queried again on resume"
                    );
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_stable_within_the_interval_and_spread() {
        let minute = Duration::from_secs(60);
        let a = phase("089bd33f-d4ec-47fe-8ba5-0753aa5c5b33", minute);
        assert_eq!(a, phase("089bd33f-d4ec-47fe-8ba5-0753aa5c5b33", minute));
        let phases: Vec<Duration> = (0..1000)
            .map(|i| phase(&format!("00000000-0000-4000-8000-{i:012x}"), minute))
            .collect();
        assert!(
            phases
                .iter()
                .all(|p| *p < minute && p.subsec_nanos() % 100_000_000 == 0)
        );
        // Tenths, not whole seconds: a second's subscriptions do not all wake together.
        let distinct: std::collections::BTreeSet<_> = phases.iter().collect();
        assert!(distinct.len() > 300, "{} distinct phases", distinct.len());
        // Spread: every 6-second tenth of the minute gets some.
        for tenth in 0..10 {
            let lo = Duration::from_secs(6 * tenth);
            let n = phases
                .iter()
                .filter(|p| **p >= lo && **p < lo + Duration::from_secs(6))
                .count();
            assert!(n > 50, "tenth {tenth}: {n}");
        }
    }

    #[test]
    fn first_polls_spread_over_the_rest_of_the_first_interval_and_keep_every_slot() {
        let minute = Duration::from_secs(60);
        let origin = Instant::now();
        for elapsed_ms in [0, 5_500, 30_000, 59_900] {
            let now = origin + Duration::from_millis(elapsed_ms);
            let mut firsts = Vec::new();
            for p in 0..60 {
                let phase = Duration::from_secs(p);
                let (first, next) = first_poll(origin, now, phase, minute, false);
                // Within the first interval counted from the process start,
                // and the grid goes on from the next one: no interval
                // without a poll, none with two but the first.
                assert!(first >= now && first < origin + minute, "phase {p}");
                assert_eq!(next, origin + phase + minute, "phase {p}");
                assert!(next - first <= minute, "phase {p}");
                firsts.push(first);
            }
            // Spread in phase order, the earliest at once.
            assert_eq!(firsts[0], now);
            assert!(firsts.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn an_owed_subscription_or_a_late_task_polls_at_once() {
        let minute = Duration::from_secs(60);
        let origin = Instant::now();
        let phase = Duration::from_secs(40);
        let now = origin + Duration::from_secs(5);
        let (first, next) = first_poll(origin, now, phase, minute, true);
        assert_eq!((first, next), (now, origin + phase));
        // A reload or a lease taken over an interval or more after the start.
        let now = origin + Duration::from_secs(130);
        let (first, next) = first_poll(origin, now, phase, minute, false);
        assert_eq!((first, next), (now, origin + phase + 2 * minute));
        // A zero phase (every interval under two seconds has it).
        let second = Duration::from_secs(1);
        let (first, next) = first_poll(origin, origin, Duration::ZERO, second, false);
        assert_eq!((first, next), (origin, origin + second));
    }
}
