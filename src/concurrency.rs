//! Adaptive request concurrency for the forwarder, after Vector's (its
//! `sinks/util/adaptive_concurrency`): how many POSTs may be in flight is
//! learned from the endpoint's answers instead of fixed.
//!
//! Time is cut into windows of about one round trip. At the end of each:
//! - back-pressure seen (429, 503, a timeout, a refused connection): the limit
//!   is halved when nothing else got through in the window (the endpoint is
//!   refusing or gone), and cut by a tenth when some did (it is at its
//!   capacity: Vector's `decrease_ratio`, which keeps a saw-tooth just under
//!   the capacity instead of falling to half of it at every probe);
//! - else, the window's mean round-trip time well above the long-run mean
//!   (queueing at the endpoint): the limit shrinks by a tenth;
//! - else, if the limit was reached during the window (more would have been
//!   sent), it grows: doubling while no decrease has happened yet (slow
//!   start, so a WAN's hundreds of POSTs in flight are reached in a few round
//!   trips), then by one per window (additive increase).
//!
//! Slow start ends on back-pressure, or when a window's round trip is more
//! than twice the shortest seen (queueing has doubled it, as TCP's HyStart
//! reads delay), not on the long-run test above: a catch-up's first windows
//! are few samples on a busy host, whose noise (a tenth above the mean is
//! common) used to end slow start at a handful of POSTs in flight, leaving
//! additive increase to climb to a WAN's hundreds one window at a time
//! (a 100,000-entry burst: 4,189 delivered in the first 10 s, then 3,100/s).
//!
//! The long-run round-trip time is an exponentially weighted mean and
//! variance of the windows' means. A fixed limit (`[guardrails] concurrency =
//! N`) turns all of this off.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one request's answer says about the endpoint's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// An answer came (success, or an error about the request itself).
    Answered,
    /// The endpoint is overloaded or unreachable: 429, 503, timeout, refused.
    BackPressure,
}

/// Where an adaptive limit starts: like TCP's initial window (RFC 6928's
/// ten segments), a first round trip that any endpoint takes, so that slow
/// start reaches a WAN's hundreds of POSTs four round trips sooner than
/// from one. An endpoint that cannot take it pushes back, and the limit
/// halves.
pub const INITIAL_WINDOW: usize = 16;

/// The weight of the newest window in the long-run means.
const EWMA_ALPHA: f64 = 0.4;
/// A window this much slower than the long-run mean (in standard deviations,
/// and at least this fraction of the mean) means queueing at the endpoint.
const RTT_DEVIATIONS: f64 = 2.5;
const RTT_MIN_RISE: f64 = 0.1;
/// Decrease on a rising round-trip time.
const RTT_DECREASE: f64 = 0.9;
/// In slow start, a window this many times slower than the shortest one
/// seen means queueing: slow start ends.
const SLOW_START_RTT_RISE: f64 = 2.0;
/// Decrease on back-pressure alone (nothing else got through in the window).
const BACKPRESSURE_DECREASE: f64 = 0.5;
/// Decrease on back-pressure among successes (at the endpoint's capacity).
const AT_CAPACITY_DECREASE: f64 = 0.9;
/// Below this, POSTs are not paced: the timer's granularity is a millisecond.
const MIN_SPACING: Duration = Duration::from_micros(250);
/// The shortest window, so that loopback's microseconds do not make one
/// window per request.
const MIN_WINDOW: Duration = Duration::from_millis(5);

#[derive(Debug)]
struct State {
    limit: usize,
    slow_start: bool,
    window_start: Instant,
    samples: usize,
    rtt_sum: f64,
    reached_limit: bool,
    back_pressure: bool,
    /// Long-run mean and variance of the windows' mean round-trip times (s).
    mean: Option<f64>,
    var: f64,
    /// The shortest window mean seen (s): the round trip without queueing.
    min_rtt: Option<f64>,
}

#[derive(Debug)]
pub struct Concurrency {
    min: usize,
    max: usize,
    adaptive: bool,
    state: Mutex<State>,
}

impl Concurrency {
    /// An adaptive limit between 1 and `max`, starting at `initial`.
    pub fn adaptive(initial: usize, max: usize) -> Self {
        let max = max.max(1);
        Concurrency {
            min: 1,
            max,
            adaptive: true,
            state: Mutex::new(State {
                limit: initial.clamp(1, max),
                slow_start: true,
                window_start: Instant::now(),
                samples: 0,
                rtt_sum: 0.0,
                reached_limit: false,
                back_pressure: false,
                mean: None,
                var: 0.0,
                min_rtt: None,
            }),
        }
    }

    /// A fixed limit.
    pub fn fixed(limit: usize) -> Self {
        let mut c = Self::adaptive(limit, limit);
        c.adaptive = false;
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_adaptive(&self) -> bool {
        self.adaptive
    }

    /// POSTs allowed in flight now.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// How far apart to start POSTs so that a round trip's worth of them is
    /// spread over the round trip instead of leaving in a burst (an
    /// endpoint that refuses beyond a hard cap sees the in-flight count the
    /// limit means, not its peaks). `None` while no round trip has been
    /// measured, with a fixed limit, or when the spacing is below what a
    /// timer can keep (loopback).
    pub fn spacing(&self) -> Option<Duration> {
        if !self.adaptive {
            return None;
        }
        let s = self.lock();
        let gap = s.mean? / s.limit.max(1) as f64;
        (gap >= MIN_SPACING.as_secs_f64()).then(|| Duration::from_secs_f64(gap))
    }

    /// True when the limit cannot go lower: back-pressure now means waiting.
    pub fn at_floor(&self) -> bool {
        !self.adaptive || self.lock().limit <= self.min
    }

    /// After delivery paused because nothing got through even at the floor
    /// (an outage): grow by doubling again once answers come back, as TCP
    /// re-enters slow start after a timeout.
    pub fn restart(&self) {
        if self.adaptive {
            let mut s = self.lock();
            if s.limit <= self.min {
                s.slow_start = true;
            }
        }
    }

    /// Notes that `in_flight` POSTs were started, for "the limit was reached".
    pub fn started(&self, in_flight: usize) {
        let mut s = self.lock();
        if in_flight >= s.limit {
            s.reached_limit = true;
        }
    }

    /// Notes one request's round-trip time and what its answer said.
    pub fn observe(&self, rtt: Duration, signal: Signal) {
        if !self.adaptive {
            return;
        }
        let mut s = self.lock();
        match signal {
            Signal::Answered => {
                s.samples += 1;
                s.rtt_sum += rtt.as_secs_f64();
            }
            Signal::BackPressure => s.back_pressure = true,
        }
        let window = s
            .mean
            .map_or(MIN_WINDOW, Duration::from_secs_f64)
            .max(MIN_WINDOW);
        if s.window_start.elapsed() < window || (s.samples == 0 && !s.back_pressure) {
            return;
        }
        self.end_window(&mut s);
    }

    fn end_window(&self, s: &mut State) {
        let current = (s.samples > 0).then(|| s.rtt_sum / s.samples as f64);
        let old = s.limit;
        if s.back_pressure {
            let ratio = if s.samples == 0 {
                BACKPRESSURE_DECREASE
            } else {
                AT_CAPACITY_DECREASE
            };
            s.limit = ((s.limit as f64 * ratio) as usize).max(self.min);
            s.slow_start = false;
        } else if let Some(cur) = current
            && rtt_rose(s, cur)
        {
            s.limit = ((s.limit as f64 * RTT_DECREASE) as usize).max(self.min);
            s.slow_start = false;
        } else if s.reached_limit {
            s.limit = if s.slow_start {
                s.limit.saturating_mul(2)
            } else {
                s.limit + 1
            }
            .min(self.max);
        }
        if let Some(cur) = current {
            s.min_rtt = Some(s.min_rtt.map_or(cur, |m| m.min(cur)));
            match s.mean {
                None => s.mean = Some(cur),
                Some(mean) => {
                    let diff = cur - mean;
                    let incr = EWMA_ALPHA * diff;
                    s.mean = Some(mean + incr);
                    s.var = (1.0 - EWMA_ALPHA) * (s.var + diff * incr);
                }
            }
        }
        if s.limit != old {
            crate::metrics::concurrency_limit(s.limit);
            tracing::debug!(
                from = old,
                to = s.limit,
                rtt_ms = current.map(|c| c * 1000.0),
                "delivery concurrency limit changed"
            );
        }
        s.window_start = Instant::now();
        s.samples = 0;
        s.rtt_sum = 0.0;
        s.reached_limit = false;
        s.back_pressure = false;
    }
}

/// Whether a window's mean round trip `cur` says the endpoint is queueing.
fn rtt_rose(s: &State, cur: f64) -> bool {
    if s.slow_start {
        return s.min_rtt.is_some_and(|m| cur > m * SLOW_START_RTT_RISE);
    }
    s.mean
        .is_some_and(|mean| cur > mean + (RTT_DEVIATIONS * s.var.sqrt()).max(mean * RTT_MIN_RISE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `c` against an endpoint that answers in `rtt` up to `capacity`
    /// requests in flight and pushes back above it; returns the limits seen.
    fn simulate(c: &Concurrency, capacity: usize, rounds: usize) -> Vec<usize> {
        let mut seen = Vec::new();
        for _ in 0..rounds {
            let limit = c.limit();
            c.started(limit);
            // One window: what fits is answered, the rest pushed back.
            c.lock().window_start = Instant::now();
            let answered = limit.min(capacity);
            for _ in 1..answered {
                c.observe(Duration::from_millis(50), Signal::Answered);
            }
            c.lock().window_start = Instant::now() - Duration::from_secs(1);
            let last = if limit > capacity {
                Signal::BackPressure
            } else {
                Signal::Answered
            };
            c.observe(Duration::from_millis(50), last);
            seen.push(c.limit());
        }
        seen
    }

    #[test]
    fn it_grows_fast_then_settles_near_the_endpoints_capacity() {
        let c = Concurrency::adaptive(1, 512);
        let seen = simulate(&c, 64, 200);
        // Slow start reaches the neighbourhood in a handful of windows.
        assert!(seen[..8].iter().any(|l| *l >= 32), "{seen:?}");
        // Then it saws around the capacity, never far above it for long.
        let tail = &seen[100..];
        // Probing above it costs under 1% of the requests (the 429s).
        let rejected: usize = tail.iter().map(|l| l.saturating_sub(64)).sum();
        let sent: usize = tail.iter().sum();
        assert!(rejected * 100 < sent, "{rejected} of {sent}: {tail:?}");
        let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
        assert!(
            mean >= 0.6 * 64.0,
            "uses most of the capacity: {mean} {tail:?}"
        );
    }

    #[test]
    fn posts_are_spread_over_a_round_trip_only_when_it_is_long_enough() {
        let c = Concurrency::adaptive(40, 64);
        assert_eq!(c.spacing(), None, "no round trip measured yet");
        c.lock().window_start = Instant::now() - Duration::from_secs(1);
        c.observe(Duration::from_millis(100), Signal::Answered);
        // 100 ms over the limit, whatever it became.
        let limit = c.limit() as f64;
        let gap = c.spacing().expect("paced").as_secs_f64();
        assert!((gap - 0.1 / limit).abs() < 1e-6, "{gap} for {limit}");
        // Loopback: a round trip of microseconds is not paced.
        let fast = Concurrency::adaptive(40, 64);
        fast.lock().window_start = Instant::now() - Duration::from_secs(1);
        fast.observe(Duration::from_micros(300), Signal::Answered);
        assert_eq!(fast.spacing(), None);
        // A fixed limit is not paced either.
        assert_eq!(Concurrency::fixed(8).spacing(), None);
    }

    #[test]
    fn back_pressure_halves_and_the_floor_is_one() {
        let c = Concurrency::adaptive(40, 64);
        c.lock().window_start = Instant::now() - Duration::from_secs(1);
        c.observe(Duration::from_millis(50), Signal::BackPressure);
        assert_eq!(c.limit(), 20);
        for _ in 0..10 {
            c.lock().window_start = Instant::now() - Duration::from_secs(1);
            c.observe(Duration::from_millis(50), Signal::BackPressure);
        }
        assert_eq!(c.limit(), 1);
        assert!(c.at_floor());
    }

    #[test]
    fn a_rising_round_trip_time_shrinks_the_limit() {
        let c = Concurrency::adaptive(50, 64);
        for _ in 0..20 {
            c.lock().window_start = Instant::now() - Duration::from_secs(1);
            c.observe(Duration::from_millis(50), Signal::Answered);
        }
        let before = c.limit();
        c.lock().window_start = Instant::now() - Duration::from_secs(1);
        c.observe(Duration::from_millis(400), Signal::Answered);
        assert!(c.limit() < before, "{} -> {}", before, c.limit());
    }

    #[test]
    fn after_an_outage_it_grows_fast_again() {
        let c = Concurrency::adaptive(64, 256);
        simulate(&c, 0, 20);
        assert_eq!(c.limit(), 1);
        c.restart();
        let seen = simulate(&c, 1000, 8);
        assert!(seen[7] >= 64, "{seen:?}");
    }

    /// One window in which the limit was reached, with a mean round trip of `ms`.
    fn window(c: &Concurrency, ms: u64) {
        let limit = c.limit();
        c.started(limit);
        c.lock().window_start = Instant::now() - Duration::from_secs(1);
        c.observe(Duration::from_millis(ms), Signal::Answered);
    }

    #[test]
    fn slow_start_rides_out_round_trip_noise_and_ends_on_queueing() {
        let c = Concurrency::adaptive(1, 1024);
        // A busy host: round trips 50 to 80 ms, no queueing at the endpoint.
        for ms in [50, 60, 80, 55, 70, 65, 75, 60, 50] {
            window(&c, ms);
        }
        assert_eq!(c.limit(), 512, "doubled through nine windows of noise");
        // Queueing doubles the round trip: slow start ends, the limit backs off.
        window(&c, 120);
        assert!(c.limit() < 512, "{}", c.limit());
        let after = c.limit();
        window(&c, 50);
        assert_eq!(c.limit(), after + 1, "additive increase from here");
    }

    #[test]
    fn a_fixed_limit_never_moves() {
        let c = Concurrency::fixed(8);
        simulate(&c, 2, 50);
        assert_eq!(c.limit(), 8);
        assert!(c.at_floor());
    }
}
