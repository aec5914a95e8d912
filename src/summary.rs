//! One INFO line a minute for what the quiet polls did.
//!
//! At 10,000 subscriptions a line per poll is 167 lines a second, past
//! journald's default rate limit (10,000 lines per 30 s per service), which
//! then drops lines, the important ones among them. So a poll that found
//! nothing and failed nothing logs at debug, a poll that queued or delivered
//! events, was late, throttled or failed logs at INFO or above as before, and
//! this summary says the rest: polls, entries, deliveries, the slowest lag and
//! late polls over the last period.
//!
//! The same task publishes the limit of ARM reads in flight to the state store
//! (at the start, every [`PUBLISH_EVERY`] and at the stop), where `status`,
//! another process, reads it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;

use crate::read_limit::{Figure, ReadLimit};
use crate::store::{ReadLimitNote, Store};

/// How often the summary is written.
pub const EVERY: Duration = Duration::from_secs(60);
/// How often the read limit is published for `status`: one small write, so
/// that `status` is at most this old.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    pub polls: u64,
    pub failed: u64,
    pub quiet: u64,
    pub late: u64,
    pub fetched: u64,
    pub new: u64,
    pub delivered: u64,
    pub throttled: Duration,
    /// The largest watermark lag seen, with its subscription.
    pub slowest: Option<(String, Duration)>,
}

/// What the polls since the last summary did. Shared by every subscription task.
#[derive(Debug, Default)]
pub struct Summary {
    totals: Mutex<Totals>,
}

/// One finished poll, as the summary counts it.
#[derive(Debug, Default, Clone, Copy)]
pub struct PollFacts<'a> {
    pub subscription: &'a str,
    pub ok: bool,
    pub fetched: usize,
    pub new: usize,
    /// Entries put in the dead-letter table because they could not be identified.
    pub quarantined: usize,
    pub delivered: u64,
    pub throttled: Duration,
    pub lag: Option<Duration>,
}

impl PollFacts<'_> {
    /// Nothing an operator needs to read this poll's own line for.
    pub fn quiet(&self) -> bool {
        self.ok
            && self.new == 0
            && self.quarantined == 0
            && self.delivered == 0
            && self.throttled.is_zero()
    }
}

impl Summary {
    fn lock(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn poll(&self, f: &PollFacts<'_>) {
        let mut t = self.lock();
        t.polls += 1;
        t.failed += u64::from(!f.ok);
        t.quiet += u64::from(f.quiet());
        t.fetched += f.fetched as u64;
        t.new += f.new as u64;
        t.delivered += f.delivered;
        t.throttled += f.throttled;
        if let Some(lag) = f.lag
            && t.slowest.as_ref().is_none_or(|(_, l)| lag > *l)
        {
            t.slowest = Some((f.subscription.to_string(), lag));
        }
    }

    pub fn late(&self) {
        self.lock().late += 1;
    }

    /// What was counted since the last call, and a fresh start.
    pub fn take(&self) -> Totals {
        std::mem::take(&mut *self.lock())
    }

    /// Writes the summary every [`EVERY`] until `stop` turns true (and once
    /// more then, for what the last period counted), and publishes the read
    /// limit every [`PUBLISH_EVERY`], at the start and at the stop.
    pub async fn run(&self, mut stop: watch::Receiver<bool>, reads: ReadLimit, store: Store) {
        let mut summary = tokio::time::interval(EVERY);
        summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        summary.tick().await;
        let mut publishing = tokio::time::interval(PUBLISH_EVERY);
        publishing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut period = Instant::now();
        loop {
            let stopping = tokio::select! {
                _ = publishing.tick() => {
                    publish(&store, reads.figure()).await;
                    continue;
                }
                _ = summary.tick() => false,
                // A dropped sender stops it too.
                changed = stop.changed() => changed.is_err() || *stop.borrow(),
            };
            self.write(period.elapsed(), reads.figure());
            period = Instant::now();
            if stopping {
                publish(&store, reads.figure()).await;
                break;
            }
        }
    }

    /// The summary line of a period, if anything happened in it.
    fn write(&self, period: Duration, figure: Figure) {
        let t = self.take();
        if t.polls == 0 && t.late == 0 {
            return;
        }
        let (slowest, lag) = t
            .slowest
            .map_or((String::new(), 0), |(s, l)| (s, l.as_secs()));
        tracing::info!(
            period_s = period.as_secs(),
            polls = t.polls,
            quiet = t.quiet,
            failed = t.failed,
            late = t.late,
            fetched = t.fetched,
            new = t.new,
            delivered = t.delivered,
            throttled_s = t.throttled.as_secs_f64(),
            slowest_subscription = %slowest,
            slowest_lag_s = lag,
            reads_limit = figure.limit,
            reads_cap = figure.cap,
            reads_bound = figure.bound.as_str(),
            "poll summary"
        );
    }
}

/// Writes the figure where `status` reads it; a failure only makes `status`
/// older, so it is logged and the daemon goes on.
async fn publish(store: &Store, f: Figure) {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let note = ReadLimitNote {
        instance: None,
        limit: count(f.limit),
        cap: count(f.cap),
        in_flight: count(f.in_flight),
        waiting: count(f.waiting),
        arrivals_per_second: f.arrivals_per_second,
        hold_seconds: f.hold_seconds,
        bound: f.bound.as_str().to_string(),
        noted_at: Utc::now(),
    };
    if let Err(e) = store.note_read_limit(note).await {
        tracing::warn!(error = %e, "cannot publish the read limit for `status`");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_polls_and_keeps_the_slowest_lag() {
        let s = Summary::default();
        let quiet = PollFacts {
            subscription: "a",
            ok: true,
            lag: Some(Duration::from_secs(70)),
            ..PollFacts::default()
        };
        assert!(quiet.quiet());
        s.poll(&quiet);
        let busy = PollFacts {
            subscription: "b",
            ok: true,
            fetched: 10,
            new: 4,
            delivered: 3,
            lag: Some(Duration::from_secs(300)),
            ..PollFacts::default()
        };
        assert!(!busy.quiet());
        s.poll(&busy);
        let failed = PollFacts {
            subscription: "c",
            ..PollFacts::default()
        };
        assert!(!failed.quiet());
        s.poll(&failed);
        s.late();
        let t = s.take();
        assert_eq!((t.polls, t.quiet, t.failed, t.late), (3, 1, 1, 1));
        assert_eq!((t.fetched, t.new, t.delivered), (10, 4, 3));
        assert_eq!(t.slowest, Some(("b".to_string(), Duration::from_secs(300))));
        assert_eq!(s.take(), Totals::default(), "a fresh period");
    }
}
