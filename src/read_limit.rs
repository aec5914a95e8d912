//! How many polls (ARM reads) may be in flight: sized by what the poller
//! observes, not by a fixed number.
//!
//! Little's law says how many requests are in flight on average: the rate at
//! which they arrive times how long each takes. Polls arrive at the rate the
//! schedule sets (10,000 subscriptions every minute: 167 a second) and each
//! holds its permit for a round trip or a few (an empty poll is one List
//! call). The limit grows only where polls queue, and shrinks to what
//! demand needs where they do not. Every [`ADJUST_EVERY`]:
//! - while polls wait and every permit is taken, and the queue would take
//!   more than a tenth of the shortest interval (1 to 10 s, see
//!   [`ReadLimit::follow_intervals`]) to drain at the current limit (a start when
//!   every subscription is owed a poll, or a latency that rose), the limit
//!   doubles, like TCP's slow start, so a WAN's hundreds of reads in flight
//!   are reached in a second or two instead of a minute. A shorter queue
//!   waits: its polls are on time within their interval, and each permit
//!   that comes back hands its warm connection to the next poll. That is
//!   what keeps connections few: HTTP/1.1 holds one per read in flight, and
//!   a limit above what is needed lets every poll that finds no idle
//!   connection open one, which the client's pool races against a
//!   connection coming back and keeps too. A start's first polls each open
//!   a connection (TCP and TLS first: three round trips over a WAN where a
//!   warm one takes one), and growing on their measured time let 507 ARM
//!   connections open at the 10,000-subscription start where 230 do now
//!   (BENCHMARKS.md section 11);
//! - otherwise the limit comes down to [`HEADROOM`] times the measured
//!   arrival rate times the measured time a poll holds its permit (Little's
//!   law, with room for bursty arrivals and varying round trips), never
//!   below the polls in flight;
//! - when ARM throttles (HTTP 429) a good part of the polls
//!   ([`THROTTLED_SHARE`] of the recent ones), the limit is cut by a quarter
//!   and held there for [`THROTTLE_HOLD`]: more reads in flight would only be
//!   refused. One subscription whose own budget runs dry (another tool
//!   reading it with the same identity) is not a reason to slow the others:
//!   its read budget paces its reads (`azure/budget.rs`), and its 429s alone
//!   stay under that share;
//! - everything stays between [`MIN_LIMIT`] and the cap, `[azure]
//!   concurrency` (`"auto"`: [`DEFAULT_CAP`], enough for 10,000 subscriptions
//!   at one-second round trips with room for a start's backlog), or the
//!   number `[azure] concurrency = N` gives. The cap is there to bound memory
//!   and connections, not to tune throughput.
//!
//! The limit is a `tokio` semaphore that grows by adding permits and shrinks
//! by forgetting permits as they come back, so no poll in flight is ever
//! interrupted by a smaller limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The cap of `[azure] concurrency = "auto"` (the configuration owns it).
pub use crate::config::DEFAULT_READ_CAP as DEFAULT_CAP;
/// The limit never goes below this, whatever was measured.
pub const MIN_LIMIT: usize = 4;
/// The least limit a start begins from, before anything is measured.
const INITIAL_LIMIT: usize = 32;
/// What a poll is taken to hold its permit for until one has finished: a
/// List call on a new connection over a WAN (TCP and TLS handshakes first).
const ASSUMED_HOLD: f64 = 1.0;
/// How often the limit follows the measurements.
pub const ADJUST_EVERY: Duration = Duration::from_millis(250);
/// The limit is this many times what Little's law says is in flight on
/// average: arrivals are bursty (polls of many subscriptions share a second
/// of the interval) and round trips vary.
pub const HEADROOM: f64 = 2.0;
/// A backlog that drains within this at the current limit does not grow
/// it: its polls wait a little, on connections already open. Until the
/// schedule says otherwise ([`ReadLimit::follow_intervals`]).
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// The wait a backlog may take follows the schedule: a tenth of the
/// shortest interval (a poll that waits that long is on time by a wide
/// margin), within these bounds. At 10,000 subscriptions a minute, 2 s was
/// short enough that a start's first polls, each opening its connection
/// (three round trips where a warm one takes one) on two busy cores,
/// sometimes doubled the limit: 544 ARM connections where 232 do.
const QUEUE_WAIT_MIN: Duration = Duration::from_secs(1);
const QUEUE_WAIT_MAX: Duration = Duration::from_secs(10);
/// After a cut for throttling, the limit does not grow for this long.
pub const THROTTLE_HOLD: Duration = Duration::from_secs(30);
/// A cut for throttling leaves this fraction of the limit.
const THROTTLE_DECREASE: f64 = 0.75;
/// The share of recent polls that must have been throttled for a cut: a
/// moving average over finished polls, each weighing [`SHARE_ALPHA`], so a
/// handful of throttled polls in a row from nothing is enough, and one
/// subscription throttled once an interval among many is not.
pub const THROTTLED_SHARE: f64 = 0.1;
const SHARE_ALPHA: f64 = 1.0 / 32.0;
/// At most one cut this often: the polls in flight when ARM started
/// refusing all report it, for one cause.
const CUT_EVERY: Duration = Duration::from_secs(1);
/// Weight of the newest measurement in the moving averages.
const RATE_ALPHA: f64 = 0.3;
const HOLD_ALPHA: f64 = 0.1;
/// Below this many arrivals in an adjustment window, the rate is too noisy to
/// shrink on (an idle poller keeps what it has until polls come again).
const MIN_ARRIVALS_TO_SHRINK: u64 = 1;

/// What sets the limit now, for `status`, the metrics and the late-poll warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// What the measured demand needs (with headroom).
    Demand,
    /// The cap: demand would take more.
    Cap,
    /// ARM throttled a poll recently.
    Throttled,
}

impl Bound {
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Demand => "demand",
            Bound::Cap => "cap",
            Bound::Throttled => "throttled",
        }
    }
}

/// A snapshot of the limit and what it is measured on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    pub limit: usize,
    pub cap: usize,
    pub in_flight: usize,
    pub waiting: usize,
    /// Polls arriving per second (moving average).
    pub arrivals_per_second: f64,
    /// Seconds a poll holds its permit (moving average).
    pub hold_seconds: f64,
    pub bound: Bound,
}

impl Figure {
    /// Why polls may start late, for the late-poll warning.
    pub fn explain(&self) -> String {
        match self.bound {
            Bound::Cap => format!(
                "polls in flight are at the cap of {} ([azure] concurrency); at {:.0} polls a second taking {:.2} s each, more are needed: raise the cap",
                self.cap, self.arrivals_per_second, self.hold_seconds
            ),
            Bound::Throttled => format!(
                "Azure Resource Manager throttled reads (HTTP 429): polls in flight are held at {} until it stops",
                self.limit
            ),
            Bound::Demand => format!(
                "polls in flight ({} of at most {}) were growing to meet demand ({:.0} polls a second taking {:.2} s each)",
                self.limit, self.cap, self.arrivals_per_second, self.hold_seconds
            ),
        }
    }
}

#[derive(Debug)]
struct State {
    limit: usize,
    /// Permits to forget as they come back (the limit shrank below what is held).
    debt: usize,
    in_flight: usize,
    waiting: usize,
    window_start: Instant,
    arrivals: u64,
    rate: Option<f64>,
    hold: Option<f64>,
    /// Throttled polls reported and not yet counted in `throttled_share`
    /// (a poll reports before its permit comes back).
    throttled_reports: u64,
    /// Of the recent polls, the share that was throttled (moving average).
    throttled_share: f64,
    /// A throttled poll was reported since the last cut (and its burst):
    /// without one, a share still decaying after the throttling ended cuts
    /// no more.
    throttled_since_cut: bool,
    /// The last cut for throttling.
    throttled_at: Option<Instant>,
    bound: Bound,
    /// See [`ReadLimit::follow_intervals`].
    queue_wait: Duration,
}

impl State {
    fn cut_lately(&self, now: Instant) -> bool {
        self.throttled_at
            .is_some_and(|t| now.duration_since(t) < CUT_EVERY)
    }
}

#[derive(Debug)]
struct Inner {
    semaphore: Arc<Semaphore>,
    /// `[azure] concurrency`, which a reload may change.
    cap: AtomicUsize,
    state: Mutex<State>,
}

/// The shared limit of polls in flight. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadLimit {
    inner: Arc<Inner>,
}

/// One poll's permit; given back (or forgotten, when the limit shrank) on drop.
#[derive(Debug)]
pub struct ReadPermit {
    permit: Option<OwnedSemaphorePermit>,
    inner: Arc<Inner>,
    since: Instant,
}

impl ReadLimit {
    /// A limit that follows demand, between [`MIN_LIMIT`] and `cap`.
    pub fn new(cap: usize) -> Self {
        Self::for_schedule(cap, 0.0)
    }

    /// A limit that begins where the schedule's polls (`polls_per_second`,
    /// every subscription once per interval) need it, by Little's law with
    /// [`ASSUMED_HOLD`], at least [`INITIAL_LIMIT`]. Without headroom: the
    /// first polls open their connections, and a limit that binds then
    /// keeps them to about this many (each permit that comes back hands its
    /// connection on), where one that does not let 507 open at the
    /// 10,000-subscription start. A small first limit that let polls queue
    /// used to release them at once when it grew (729 connections); the
    /// queue's own wait ([`QUEUE_WAIT`]) now decides that. It counts every
    /// configured subscription, also those another instance holds: demand
    /// shrinks it once polls are measured.
    pub fn for_schedule(cap: usize, polls_per_second: f64) -> Self {
        let cap = cap.max(1);
        let needed = (polls_per_second.max(0.0) * ASSUMED_HOLD).ceil();
        let limit = (needed.min(cap as f64) as usize)
            .max(INITIAL_LIMIT)
            .min(cap);
        ReadLimit {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(limit)),
                cap: AtomicUsize::new(cap),
                state: Mutex::new(State {
                    limit,
                    debt: 0,
                    in_flight: 0,
                    waiting: 0,
                    window_start: Instant::now(),
                    arrivals: 0,
                    rate: None,
                    hold: None,
                    throttled_reports: 0,
                    throttled_share: 0.0,
                    throttled_since_cut: false,
                    throttled_at: None,
                    bound: Bound::Demand,
                    queue_wait: QUEUE_WAIT,
                }),
            }),
        }
    }

    pub fn cap(&self) -> usize {
        self.inner.cap()
    }

    /// How long a backlog may take to drain before the limit grows: a tenth
    /// of `shortest`, the shortest interval configured (between 1 and 10 s).
    pub fn follow_intervals(&self, shortest: Duration) {
        let wait = (shortest / 10).clamp(QUEUE_WAIT_MIN, QUEUE_WAIT_MAX);
        self.inner.lock().queue_wait = wait;
    }

    /// A reload changed `[azure] concurrency`: the limit keeps what it
    /// measured and moves under the new cap at once (polls in flight above
    /// it finish).
    pub fn set_cap(&self, cap: usize) {
        let cap = cap.max(1);
        let mut s = self.inner.lock();
        self.inner.cap.store(cap, Ordering::Relaxed);
        let limit = s.limit;
        self.inner.set(&mut s, limit);
    }

    /// Waits for a permit. `None` only if the limit was closed.
    pub async fn acquire(&self) -> Option<ReadPermit> {
        {
            let mut s = self.inner.lock();
            s.arrivals += 1;
            s.waiting += 1;
            self.inner.adjust(&mut s, Instant::now());
        }
        // Counted out of the waiting however the wait ends, dropped too (a
        // task told to stop while it waits): a waiter counted forever would
        // look like a backlog and double the limit for nothing.
        let waiter = Waiter(&self.inner);
        let acquired = self.inner.semaphore.clone().acquire_owned().await;
        drop(waiter);
        let permit = acquired.ok()?;
        {
            let mut s = self.inner.lock();
            s.in_flight += 1;
            crate::metrics::arm_read_limit(s.limit, s.in_flight);
        }
        Some(ReadPermit {
            permit: Some(permit),
            inner: self.inner.clone(),
            since: Instant::now(),
        })
    }

    /// ARM throttled a poll (HTTP 429), reported while the poll holds its
    /// permit: counted when the permit comes back, where the limit is cut if
    /// throttling is broad.
    pub fn throttled(&self) {
        let mut s = self.inner.lock();
        s.throttled_reports += 1;
        // Reports within a second of a cut are of the burst it answered.
        if !s.cut_lately(Instant::now()) {
            s.throttled_since_cut = true;
        }
    }

    /// The limit now and what it rests on.
    pub fn figure(&self) -> Figure {
        let mut s = self.inner.lock();
        self.inner.adjust(&mut s, Instant::now());
        Figure {
            limit: s.limit,
            cap: self.inner.cap(),
            in_flight: s.in_flight,
            waiting: s.waiting,
            arrivals_per_second: s.rate.unwrap_or(0.0),
            hold_seconds: s.hold.unwrap_or(0.0),
            bound: s.bound,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// Follows the measurements, at most once per [`ADJUST_EVERY`].
    fn adjust(&self, s: &mut State, now: Instant) {
        let elapsed = now.duration_since(s.window_start);
        if elapsed < ADJUST_EVERY {
            return;
        }
        let rate = s.arrivals as f64 / elapsed.as_secs_f64();
        s.rate = Some(match s.rate {
            Some(r) => r + RATE_ALPHA * (rate - r),
            None => rate,
        });
        let shrink_ok = s.arrivals >= MIN_ARRIVALS_TO_SHRINK;
        s.arrivals = 0;
        s.window_start = now;
        let throttled = s
            .throttled_at
            .is_some_and(|t| now.duration_since(t) < THROTTLE_HOLD);
        let saturated = s.waiting > 0 && self.semaphore.available_permits() == 0;
        let mut target = if saturated {
            // How long the queue takes to drain at this limit, each poll
            // holding its permit the mean time (or, before one has
            // finished, the assumed time).
            let hold = s.hold.unwrap_or(ASSUMED_HOLD);
            let drain = s.waiting as f64 * hold / s.limit.max(1) as f64;
            if drain > s.queue_wait.as_secs_f64() {
                s.limit.saturating_mul(2)
            } else {
                s.limit
            }
        } else if shrink_ok {
            // Little's law, with headroom: down to what demand needs, never
            // below what is in flight (a smaller limit would only show once
            // those finish, and the next window measures again).
            let demand = match (s.rate, s.hold) {
                (Some(rate), Some(hold)) => (HEADROOM * rate * hold).ceil() as usize,
                _ => s.limit,
            };
            demand.min(s.limit).max(s.in_flight)
        } else {
            // No poll arrived: nothing measured to shrink on.
            s.limit
        };
        target = target.max(MIN_LIMIT);
        if throttled {
            target = target.min(s.limit);
        }
        let capped = target > self.cap();
        let before = s.limit;
        self.set(s, target.min(self.cap()));
        if s.limit != before {
            tracing::debug!(
                from = before,
                to = s.limit,
                in_flight = s.in_flight,
                waiting = s.waiting,
                arrivals_per_second = s.rate.unwrap_or(0.0),
                hold_seconds = s.hold.unwrap_or(0.0),
                "read limit moved"
            );
        }
        s.bound = if throttled {
            Bound::Throttled
        } else if capped {
            Bound::Cap
        } else {
            Bound::Demand
        };
    }

    /// One poll finished: the throttled share follows it, and a broad
    /// throttling cuts the limit (at most once per [`CUT_EVERY`]).
    fn finished(&self, s: &mut State, now: Instant) {
        let throttled = if s.throttled_reports > 0 {
            s.throttled_reports -= 1;
            1.0
        } else {
            0.0
        };
        s.throttled_share += SHARE_ALPHA * (throttled - s.throttled_share);
        if s.throttled_since_cut && s.throttled_share >= THROTTLED_SHARE && !s.cut_lately(now) {
            s.throttled_since_cut = false;
            s.throttled_at = Some(now);
            let target = ((s.limit as f64 * THROTTLE_DECREASE) as usize).max(MIN_LIMIT);
            self.set(s, target);
            s.bound = Bound::Throttled;
        }
    }

    /// Moves the limit to `target`: adds permits, or forgets free ones and
    /// owes the rest until they come back.
    fn set(&self, s: &mut State, target: usize) {
        let cap = self.cap();
        let target = target.clamp(MIN_LIMIT.min(cap), cap);
        if target > s.limit {
            let mut more = target - s.limit;
            // Cancel debt first: those permits are still out.
            let cancel = more.min(s.debt);
            s.debt -= cancel;
            more -= cancel;
            self.semaphore.add_permits(more);
        } else if target < s.limit {
            let less = s.limit - target;
            let forgotten = self.semaphore.forget_permits(less);
            s.debt += less - forgotten;
        }
        s.limit = target;
        crate::metrics::arm_read_limit(target, s.in_flight);
    }
}

/// One poll waiting for a permit.
struct Waiter<'a>(&'a Inner);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.waiting = s.waiting.saturating_sub(1);
    }
}

impl Drop for ReadPermit {
    fn drop(&mut self) {
        let held = self.since.elapsed().as_secs_f64();
        let mut s = self.inner.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.hold = Some(match s.hold {
            Some(h) => h + HOLD_ALPHA * (held - h),
            None => held,
        });
        if let Some(p) = self.permit.take() {
            if s.debt > 0 {
                s.debt -= 1;
                p.forget();
            } else {
                drop(p);
            }
        }
        let now = Instant::now();
        self.inner.finished(&mut s, now);
        self.inner.adjust(&mut s, now);
        crate::metrics::arm_read_limit(s.limit, s.in_flight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default cap, the limit moved to 200.
    fn at_200() -> ReadLimit {
        let l = ReadLimit::new(DEFAULT_CAP);
        {
            let mut s = l.inner.lock();
            l.inner.set(&mut s, 200);
        }
        l
    }

    fn available(l: &ReadLimit) -> usize {
        l.inner.semaphore.available_permits()
    }

    /// `n` polls that wait for a permit, once every one of them does.
    async fn queue(l: &ReadLimit, n: usize) -> Vec<tokio::task::JoinHandle<Option<ReadPermit>>> {
        let waiting: Vec<_> = (0..n)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire().await })
            })
            .collect();
        // The scheduler runs a few dozen at a time.
        for _ in 0..1000 {
            if l.figure().waiting == n {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(l.figure().waiting, n);
        waiting
    }

    #[test]
    fn the_first_limit_follows_the_schedule() {
        // 10,000 subscriptions every minute: 167 polls a second, 1 s each
        // until measured.
        let l = ReadLimit::for_schedule(DEFAULT_CAP, 10_000.0 / 60.0);
        assert_eq!(l.figure().limit, 167);
        assert_eq!(available(&l), 167);
        // A few subscriptions: the floor. Many more: the cap.
        assert_eq!(
            ReadLimit::for_schedule(DEFAULT_CAP, 1.0).figure().limit,
            INITIAL_LIMIT
        );
        assert_eq!(
            ReadLimit::for_schedule(DEFAULT_CAP, 1e6).figure().limit,
            DEFAULT_CAP
        );
        assert_eq!(ReadLimit::for_schedule(8, 100.0).figure().limit, 8);
        assert_eq!(
            ReadLimit::for_schedule(DEFAULT_CAP, f64::NAN)
                .figure()
                .limit,
            INITIAL_LIMIT
        );
    }

    #[tokio::test]
    async fn a_backlog_doubles_the_limit_up_to_the_cap() {
        let l = ReadLimit::new(100);
        let mut held = Vec::new();
        for _ in 0..INITIAL_LIMIT {
            held.push(l.acquire().await);
        }
        // 300 more polls due: they wait (3 s to drain even at the cap).
        let waiting = queue(&l, 300).await;
        let mut limits = Vec::new();
        for _ in 0..4 {
            // As if an adjustment window had passed.
            {
                let mut s = l.inner.lock();
                s.window_start -= ADJUST_EVERY;
                l.inner.adjust(&mut s, Instant::now());
            }
            tokio::task::yield_now().await;
            limits.push(l.figure().limit);
        }
        assert_eq!(limits, vec![64, 100, 100, 100], "doubling, then the cap");
        assert_eq!(l.figure().bound, Bound::Cap);
        for w in waiting {
            w.abort();
        }
        drop(held);
    }

    #[tokio::test]
    async fn a_backlog_that_drains_soon_waits_instead_of_doubling_the_limit() {
        let l = ReadLimit::new(DEFAULT_CAP);
        let held: Vec<_> = futures::future::join_all((0..INITIAL_LIMIT).map(|_| l.acquire())).await;
        // 20 polls wait behind 32 in flight of 1 s each: drained in 0.6 s.
        let waiting = queue(&l, 20).await;
        {
            let mut s = l.inner.lock();
            // Arrivals at 10 a second, not the burst this test made.
            (s.rate, s.arrivals) = (Some(10.0), 0);
            s.hold = Some(1.0);
            s.window_start -= ADJUST_EVERY;
            l.inner.adjust(&mut s, Instant::now());
            assert_eq!(s.limit, INITIAL_LIMIT, "a short queue does not grow it");
            // Slower polls (4 s each): 2.5 s to drain, so it doubles.
            s.hold = Some(4.0);
            s.window_start -= ADJUST_EVERY;
            l.inner.adjust(&mut s, Instant::now());
            assert_eq!(s.limit, 2 * INITIAL_LIMIT);
        }
        for w in waiting {
            w.abort();
        }
        drop(held);
    }

    #[tokio::test]
    async fn the_wait_a_backlog_may_take_follows_the_shortest_interval() {
        let l = ReadLimit::new(DEFAULT_CAP);
        l.follow_intervals(Duration::from_secs(60));
        let held: Vec<_> = futures::future::join_all((0..INITIAL_LIMIT).map(|_| l.acquire())).await;
        // 100 polls wait behind 32 in flight of 1.5 s each (a start's
        // polls, each opening its connection): drained in 4.7 s, well
        // within a minute's interval.
        let waiting = queue(&l, 100).await;
        {
            let mut s = l.inner.lock();
            (s.rate, s.arrivals, s.hold) = (Some(10.0), 0, Some(1.5));
            s.window_start -= ADJUST_EVERY;
            l.inner.adjust(&mut s, Instant::now());
            assert_eq!(s.limit, INITIAL_LIMIT, "a minute's interval waits 6 s");
        }
        // Every 10 s: a poll that waits 4.7 s is too late for comfort.
        l.follow_intervals(Duration::from_secs(10));
        {
            let mut s = l.inner.lock();
            s.window_start -= ADJUST_EVERY;
            l.inner.adjust(&mut s, Instant::now());
            assert_eq!(s.limit, 2 * INITIAL_LIMIT, "a 10 s interval waits 1 s");
        }
        for w in waiting {
            w.abort();
        }
        drop(held);
    }

    #[test]
    fn without_a_queue_the_limit_does_not_grow() {
        // A start's first polls, each opening its connection: 200 a second
        // at 1.5 s would be 600 with headroom. Nothing waits, so nothing
        // grows: a bigger limit would only let more connections open.
        let l = ReadLimit::for_schedule(DEFAULT_CAP, 167.0);
        let mut s = l.inner.lock();
        s.rate = Some(200.0);
        s.hold = Some(1.5);
        s.arrivals = 50;
        s.window_start -= ADJUST_EVERY;
        l.inner.adjust(&mut s, Instant::now());
        assert_eq!(s.limit, 167);
        assert_eq!(s.bound, Bound::Demand);
    }

    #[test]
    fn the_limit_follows_littles_law_and_shrinks_without_interrupting() {
        let l = at_200();
        {
            let mut s = l.inner.lock();
            s.in_flight = 0;
            // 100 polls a second, each holding its permit 0.5 s: 50 in
            // flight on average, 100 with headroom.
            s.rate = Some(100.0);
            s.hold = Some(0.5);
            s.arrivals = 25;
            s.window_start -= ADJUST_EVERY;
            l.inner.adjust(&mut s, Instant::now());
            assert_eq!(s.limit, 100);
            assert_eq!(s.bound, Bound::Demand);
            // Demand falls to 10 a second at 0.1 s: the floor.
            s.rate = Some(10.0);
            s.arrivals = 3;
            s.hold = Some(0.1);
            s.window_start -= ADJUST_EVERY;
            l.inner.adjust(&mut s, Instant::now());
            assert!(s.limit < 100, "{}", s.limit);
        }
        assert_eq!(available(&l), l.figure().limit);
    }

    #[tokio::test]
    async fn shrinking_below_what_is_held_owes_permits_until_they_return() {
        let l = ReadLimit::new(64);
        let held: Vec<_> = futures::future::join_all((0..INITIAL_LIMIT).map(|_| l.acquire())).await;
        {
            let mut s = l.inner.lock();
            l.inner.set(&mut s, 8);
            assert_eq!(s.debt, INITIAL_LIMIT - 8);
        }
        drop(held);
        // The 24 owed were forgotten as they came back: 8 remain.
        assert_eq!(available(&l), 8);
        assert_eq!(l.inner.lock().debt, 0);
    }

    #[tokio::test]
    async fn a_wait_given_up_is_no_longer_counted() {
        let l = ReadLimit::new(MIN_LIMIT);
        let held: Vec<_> = futures::future::join_all((0..MIN_LIMIT).map(|_| l.acquire())).await;
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(10), l.acquire()).await;
        assert!(gave_up.is_err());
        assert_eq!(l.figure().waiting, 0);
        drop(held);
    }

    #[tokio::test]
    async fn a_new_cap_applies_at_once_and_keeps_what_was_measured() {
        let l = at_200();
        l.inner.lock().hold = Some(0.5);
        l.set_cap(64);
        assert_eq!((l.figure().limit, l.cap()), (64, 64));
        assert_eq!(available(&l), 64);
        assert_eq!(l.inner.lock().hold, Some(0.5));
        // A higher cap lets demand take the limit up again, not at once.
        l.set_cap(1024);
        assert_eq!((l.figure().limit, l.cap()), (64, 1024));
    }

    /// `n` polls finish, `throttled` of them (the first ones) throttled.
    async fn polls(l: &ReadLimit, n: usize, throttled: usize) {
        for i in 0..n {
            let p = l.acquire().await;
            if i < throttled {
                l.throttled();
            }
            drop(p);
        }
    }

    #[tokio::test]
    async fn broad_throttling_cuts_the_limit_and_holds_it() {
        let l = at_200();
        // Four throttled polls in a row: a tenth of the recent ones.
        polls(&l, 4, 4).await;
        assert_eq!(l.figure().limit, 150);
        // More from the same burst of 429s, within a second: no second cut.
        polls(&l, 4, 4).await;
        assert_eq!(l.figure().limit, 150);
        {
            let mut s = l.inner.lock();
            // Demand would want more, and a backlog waits: held while throttled.
            s.rate = Some(1000.0);
            s.hold = Some(1.0);
            s.waiting = 10;
            s.in_flight = 150;
            s.window_start -= ADJUST_EVERY;
            l.inner.adjust(&mut s, Instant::now());
            assert_eq!(s.limit, 150);
            assert_eq!(s.bound, Bound::Throttled);
            s.waiting = 0;
            s.in_flight = 0;
            // A second later, with no new 429: the decaying share cuts no more.
            s.throttled_at = s.throttled_at.map(|t| t - CUT_EVERY);
        }
        polls(&l, 2, 0).await;
        assert_eq!(l.figure().limit, 150);
        assert!(l.figure().explain().contains("throttled"));
        // Throttling that goes on past the second cuts again.
        polls(&l, 2, 2).await;
        assert_eq!(l.figure().limit, 112);
    }

    #[tokio::test]
    async fn one_subscription_throttled_among_many_is_no_reason_to_cut() {
        let l = at_200();
        // One throttled poll in every hundred, for a while.
        for _ in 0..20 {
            polls(&l, 100, 1).await;
        }
        let f = l.figure();
        assert_eq!(f.limit, 200);
        assert_ne!(f.bound, Bound::Throttled);
    }
}
