//! Progress of a `--once` run on a terminal: one bar per subscription with
//! the share of its window covered so far, entries fetched and delivered, the
//! rate and an estimate of the time left (indicatif's bars, redrawn four
//! times a second).
//!
//! Only a person at a terminal sees it: [`Screen`] exists only when stderr is
//! one, and `telemetry.rs` makes it only for `--once` with text logs (never
//! for JSON or the journal). Log lines then go through the screen
//! ([`Screen`] is their writer), which lifts the bars, writes the line and
//! draws them again, so that neither tears the other.
//!
//! The poller and the forwarder know nothing of bars: they hold a
//! [`Progress`], off unless `--once` turned it on, and tell it what they did
//! (a window begun, a part of it covered, a page fetched, an event
//! delivered). Each is a lookup and a few relaxed atomic adds, nothing when
//! off; the bars read the counts at their own tick.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{HumanCount, HumanDuration, MultiProgress, ProgressBar, ProgressStyle};

use crate::config::SubscriptionConfig;
use crate::event::Timestamp;

/// More subscriptions than this share one last line: a terminal is only so
/// tall.
const MAX_ROWS: usize = 12;

/// How often the bars take in the counts.
const TICK: Duration = Duration::from_millis(250);

/// Bars count per mille of the window, so that every bar has the same scale.
const SCALE: u64 = 1000;

/// The terminal the bars are drawn on: stderr, when it is one.
#[derive(Debug, Clone)]
pub struct Screen(MultiProgress);

impl Screen {
    /// Stderr, if it is a terminal.
    pub fn stderr() -> Option<Screen> {
        io::stderr()
            .is_terminal()
            .then(|| Screen(MultiProgress::new()))
    }
}

/// Log lines written through the screen: the bars are lifted, the line is
/// written, and the bars are drawn again below it.
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Screen {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(self.0.clone())
    }
}

/// One log line on its way to the screen (`tracing` writes an event's
/// formatted text in one `write_all`).
pub struct LogLine(MultiProgress);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.suspend(|| io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Where a subscription's `--once` pass is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not started: waiting for a read slot (or its lease).
    Waiting = 0,
    Polling = 1,
    /// Polled up to now; delivery may go on.
    Polled = 2,
    Failed = 3,
}

impl Stage {
    fn of(v: u8) -> Stage {
        match v {
            1 => Stage::Polling,
            2 => Stage::Polled,
            3 => Stage::Failed,
            _ => Stage::Waiting,
        }
    }
}

/// One subscription's counts, written by the poll and the forwarder, read by
/// the bars. Times are microseconds (since the epoch, or since the board
/// began); 0 is "not yet".
#[derive(Debug, Default)]
struct Counts {
    from: AtomicI64,
    to: AtomicI64,
    covered: AtomicI64,
    began: AtomicU64,
    /// When the poll ended (its rate is over the time it polled).
    ended: AtomicU64,
    fetched: AtomicU64,
    queued: AtomicU64,
    delivered: AtomicU64,
    stage: AtomicU8,
}

#[derive(Debug)]
struct Board {
    born: Instant,
    counts: HashMap<String, Arc<Counts>>,
}

/// What the poller and the forwarder report to. Cheap to clone; off (every
/// report a no-op) until [`Progress::show`] turns it on.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<OnceLock<Board>>);

impl Progress {
    /// The reports of one subscription's poll (a no-op when off).
    pub fn track(&self, subscription: &str) -> Track {
        Track {
            counts: self.counts(subscription).cloned(),
            born: self.0.get().map(|b| b.born),
        }
    }

    /// One event of `subscription` delivered.
    pub fn delivered(&self, subscription: &str) {
        if let Some(c) = self.counts(subscription) {
            c.delivered.fetch_add(1, Relaxed);
        }
    }

    fn counts(&self, subscription: &str) -> Option<&Arc<Counts>> {
        self.0.get()?.counts.get(subscription)
    }

    /// Turns reporting on and draws a bar per subscription on `screen` (the
    /// first [`MAX_ROWS`]; the rest share a line) until [`Drawing::finish`].
    /// Runs on tokio. Only the first call draws: one run, one set of bars.
    pub fn show(
        &self,
        screen: &Screen,
        subscriptions: &[Arc<SubscriptionConfig>],
    ) -> Option<Drawing> {
        let board = Board {
            born: Instant::now(),
            counts: subscriptions
                .iter()
                .map(|s| (s.id.to_string(), Arc::default()))
                .collect(),
        };
        self.0.set(board).ok()?;
        let board = self.0.get()?;
        let rest_label = format!("{} more", subscriptions.len().saturating_sub(MAX_ROWS));
        let style = style(
            subscriptions
                .iter()
                .take(MAX_ROWS)
                .map(|s| name(s))
                .chain(Some(rest_label.clone()))
                .map(|n| n.chars().count())
                .max()
                .unwrap_or(0),
        );
        let bar_of = |prefix: String| {
            // Dressed before it is added, so that its first line is whole.
            let bar = ProgressBar::hidden();
            bar.set_length(SCALE);
            bar.set_style(style.clone());
            bar.set_prefix(prefix);
            bar.set_message("waiting");
            screen.0.add(bar)
        };
        let mut rows: Vec<Row> = subscriptions
            .iter()
            .take(MAX_ROWS)
            .filter_map(|s| {
                let counts = board.counts.get(s.id.as_str())?.clone();
                Some(Row {
                    bar: bar_of(name(s)),
                    counts: vec![counts],
                    paces: Mutex::default(),
                })
            })
            .collect();
        let rest: Vec<Arc<Counts>> = subscriptions
            .iter()
            .skip(MAX_ROWS)
            .filter_map(|s| board.counts.get(s.id.as_str()).cloned())
            .collect();
        if !rest.is_empty() {
            rows.push(Row {
                bar: bar_of(rest_label),
                counts: rest,
                paces: Mutex::default(),
            });
        }
        let rows = Arc::new(rows);
        let born = board.born;
        let ticker = {
            let rows = rows.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tick.tick().await;
                    for row in rows.iter() {
                        row.draw(born, None);
                    }
                }
            })
        };
        Some(Drawing { rows, born, ticker })
    }
}

/// The prefix of a subscription's bar: its name, else its id.
fn name(sub: &SubscriptionConfig) -> String {
    sub.name.clone().unwrap_or_else(|| sub.id.to_string())
}

/// A bar's line, the prefix padded to `width` (at most 40) columns.
fn style(width: usize) -> ProgressStyle {
    let width = width.min(40);
    let template = format!("{{prefix:<{width}}} [{{bar:24}}] {{percent:>3}}% {{msg}}");
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A stretch of the activity log, as `--since` takes it: to the minute from
/// an hour up ("29days 4h 12m"), else to the second.
fn span(d: Duration) -> String {
    let secs = d.as_secs();
    let secs = if secs >= 3600 { secs - secs % 60 } else { secs };
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Microseconds from `born` to now, at least 1 (0 is "not yet").
fn since(born: Instant) -> u64 {
    u64::try_from(born.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One subscription's poll, as the poller reports it.
#[derive(Debug, Clone)]
pub struct Track {
    counts: Option<Arc<Counts>>,
    born: Option<Instant>,
}

impl Track {
    /// The poll is reading `[from, to]` (the first `from` stays; `to` grows
    /// with "now" as a long catch-up goes on).
    pub fn window(&self, from: Timestamp, to: Timestamp) {
        let (Some(c), Some(born)) = (&self.counts, self.born) else {
            return;
        };
        let _ = c.began.compare_exchange(0, since(born), Relaxed, Relaxed);
        let _ = c
            .from
            .compare_exchange(0, from.timestamp_micros(), Relaxed, Relaxed);
        c.to.fetch_max(to.timestamp_micros(), Relaxed);
        let _ =
            c.stage
                .compare_exchange(Stage::Waiting as u8, Stage::Polling as u8, Relaxed, Relaxed);
    }

    /// Everything from the window's start to `t` is read.
    pub fn reached(&self, t: Timestamp) {
        self.cover(t, chrono::Duration::zero());
    }

    /// `span` of the window is read, counting as if it began at `from`: the
    /// window's start to `from` is read, and `span` of what follows (a
    /// catch-up's slices finish in any order).
    pub fn cover(&self, from: Timestamp, span: chrono::Duration) {
        if let Some(c) = &self.counts {
            let start = c.from.load(Relaxed);
            let covered = from.timestamp_micros() - start + span.num_microseconds().unwrap_or(0);
            c.covered.fetch_max(covered, Relaxed);
        }
    }

    /// A page read: `fetched` entries on it, `queued` of them new in the outbox.
    pub fn page(&self, fetched: usize, queued: usize) {
        if let Some(c) = &self.counts {
            c.fetched.fetch_add(fetched as u64, Relaxed);
            c.queued.fetch_add(queued as u64, Relaxed);
        }
    }

    /// The poll ended: up to now (`ok`), or failed.
    pub fn polled(&self, ok: bool) {
        let (Some(c), Some(born)) = (&self.counts, self.born) else {
            return;
        };
        let stage = if ok { Stage::Polled } else { Stage::Failed };
        c.stage.store(stage as u8, Relaxed);
        let _ = c.ended.compare_exchange(0, since(born), Relaxed, Relaxed);
    }
}

/// The bars while they are drawn.
pub struct Drawing {
    rows: Arc<Vec<Row>>,
    born: Instant,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drawing {
    /// The run is over: each bar's last state (done, failed, or what it
    /// still lacks), left on the terminal. `delivered`: the outbox was
    /// drained.
    pub fn finish(self, delivered: bool) {
        self.ticker.abort();
        for row in self.rows.iter() {
            row.draw(self.born, Some(delivered));
        }
    }
}

/// One line: a subscription, or the ones past [`MAX_ROWS`] together.
struct Row {
    bar: ProgressBar,
    counts: Vec<Arc<Counts>>,
    /// Deliveries counted at the last few ticks, for their pace.
    paces: Mutex<VecDeque<(Duration, u64)>>,
}

impl Row {
    /// Draws the counts; `last`: the run is over, and whether the outbox
    /// was drained.
    fn draw(&self, born: Instant, last: Option<bool>) {
        let now = born.elapsed();
        let seen: Vec<Snapshot> = self.counts.iter().map(|c| Snapshot::of(c, now)).collect();
        let mut s = Snapshot::sum(&seen);
        s.delivering = self.pace(now, s.delivered);
        let done = |stage| seen.iter().filter(|x| x.stage == stage).count();
        let (polled, failed) = (done(Stage::Polled), done(Stage::Failed));
        let mut msg = s.describe();
        if seen.len() > 1 {
            msg = format!("{polled} polled, {failed} failed · {msg}");
        }
        let position = (s.fraction() * SCALE as f64) as u64;
        let Some(drained) = last else {
            self.bar.set_message(msg);
            self.bar.set_position(position);
            return;
        };
        let verdict = match s.stage {
            Stage::Polled if drained => "done",
            Stage::Polled => "polled; delivery incomplete",
            Stage::Failed => "failed",
            Stage::Waiting | Stage::Polling => "not polled",
        };
        self.bar.set_message(format!("{verdict} · {msg}"));
        self.bar.set_position(position);
        if s.stage == Stage::Polled && drained {
            self.bar.finish();
        } else {
            self.bar.abandon();
        }
    }

    /// Notes `delivered` at `now`; the deliveries a second over the last
    /// [`DELIVERY_PACE`], once a second of them is seen.
    fn pace(&self, now: Duration, delivered: u64) -> Option<f64> {
        let mut paces = self.paces.lock().unwrap_or_else(|p| p.into_inner());
        paces.push_back((now, delivered));
        while paces
            .get(1)
            .is_some_and(|(t, _)| now.saturating_sub(*t) >= DELIVERY_PACE)
        {
            paces.pop_front();
        }
        let (t0, d0) = *paces.front()?;
        let secs = now.saturating_sub(t0).as_secs_f64();
        (secs >= 1.0).then(|| delivered.saturating_sub(d0) as f64 / secs)
    }
}

/// What is left of a subscription's pass, and about how long it takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Left {
    Reading(Duration),
    Delivering(Duration),
    Nothing,
    /// No pace to go by yet.
    Unknown,
}

/// How far back the pace of deliveries is measured.
const DELIVERY_PACE: Duration = Duration::from_secs(5);

/// The counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Snapshot {
    span: Duration,
    covered: Duration,
    /// Since the poll began.
    elapsed: Duration,
    /// How long it polled, once it ended.
    polled_for: Option<Duration>,
    /// Events delivered a second over the last [`DELIVERY_PACE`] (the
    /// bar's own measure: the counts do not keep time).
    delivering: Option<f64>,
    fetched: u64,
    queued: u64,
    delivered: u64,
    stage: Stage,
}

impl Snapshot {
    fn of(c: &Counts, now: Duration) -> Snapshot {
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let from = c.from.load(Relaxed);
        let span = micros(c.to.load(Relaxed) - from);
        let began = Duration::from_micros(c.began.load(Relaxed));
        let ended = c.ended.load(Relaxed);
        let elapsed = if began.is_zero() {
            Duration::ZERO
        } else {
            now.saturating_sub(began)
        };
        let polled_for = (ended != 0 && !began.is_zero())
            .then(|| Duration::from_micros(ended).saturating_sub(began));
        Snapshot {
            span,
            covered: micros(c.covered.load(Relaxed)).min(span),
            elapsed,
            polled_for,
            delivering: None,
            fetched: c.fetched.load(Relaxed),
            queued: c.queued.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            stage: Stage::of(c.stage.load(Relaxed)),
        }
    }

    /// Several subscriptions as one: counts and spans added, the longest
    /// elapsed, the stage of the one furthest behind (failed counts as
    /// ended).
    fn sum(all: &[Snapshot]) -> Snapshot {
        let rank = |s: Stage| match s {
            Stage::Waiting => 0,
            Stage::Polling => 1,
            Stage::Failed => 2,
            Stage::Polled => 3,
        };
        let mut total = Snapshot {
            span: Duration::ZERO,
            covered: Duration::ZERO,
            elapsed: Duration::ZERO,
            polled_for: None,
            delivering: None,
            fetched: 0,
            queued: 0,
            delivered: 0,
            stage: Stage::Polled,
        };
        for s in all {
            total.span += s.span;
            total.covered += s.covered;
            total.elapsed = total.elapsed.max(s.elapsed);
            total.polled_for = total.polled_for.max(s.polled_for);
            total.fetched += s.fetched;
            total.queued += s.queued;
            total.delivered += s.delivered;
            if rank(s.stage) < rank(total.stage) {
                total.stage = s.stage;
            }
        }
        total
    }

    /// The share of the window read (all of it once polled).
    fn fraction(&self) -> f64 {
        if self.stage == Stage::Polled {
            return 1.0;
        }
        if self.span.is_zero() {
            return 0.0;
        }
        (self.covered.as_secs_f64() / self.span.as_secs_f64()).clamp(0.0, 1.0)
    }

    /// Entries fetched a second while it polled.
    fn rate(&self) -> f64 {
        let secs = self.polled_for.unwrap_or(self.elapsed).as_secs_f64();
        if secs <= 0.0 {
            0.0
        } else {
            self.fetched as f64 / secs
        }
    }

    /// The time left. While the window is read: its rest at the pace it
    /// was read so far (deliveries then mostly wait for the reads, which
    /// share the state database with them, so their pace says nothing yet
    /// of the pace to come). Once it is read: the outbox still to deliver
    /// at the pace of the last few seconds' deliveries.
    fn left(&self) -> Left {
        match self.stage {
            Stage::Polling => {
                let f = self.fraction();
                let secs = self.elapsed.as_secs_f64() * (1.0 - f) / f;
                match Duration::try_from_secs_f64(secs) {
                    Ok(left) if f > 0.0 => Left::Reading(left),
                    _ => Left::Unknown,
                }
            }
            Stage::Polled => {
                let to_deliver = self.queued.saturating_sub(self.delivered);
                let rate = self.delivering.filter(|r| *r > 0.0);
                match rate {
                    _ if to_deliver == 0 => Left::Nothing,
                    Some(r) => Duration::try_from_secs_f64(to_deliver as f64 / r)
                        .map_or(Left::Unknown, Left::Delivering),
                    None => Left::Unknown,
                }
            }
            Stage::Waiting | Stage::Failed => Left::Unknown,
        }
    }

    /// The line after the bar.
    fn describe(&self) -> String {
        if self.stage == Stage::Waiting {
            return "waiting".into();
        }
        let covered = if self.stage == Stage::Polled {
            format!("{} covered", span(self.span))
        } else {
            format!("{} of {}", span(self.covered), span(self.span))
        };
        let counts = format!(
            "{covered} · {} fetched · {} delivered · {:.0}/s",
            HumanCount(self.fetched),
            HumanCount(self.delivered),
            self.rate()
        );
        match self.left() {
            Left::Reading(left) => format!("{counts} · {} left to read", HumanDuration(left)),
            Left::Delivering(left) => {
                format!("{counts} · {} left to deliver", HumanDuration(left))
            }
            Left::Nothing => format!("{counts} · in {}", HumanDuration(self.elapsed)),
            Left::Unknown if self.stage == Stage::Failed => counts,
            Left::Unknown => format!("{counts} · estimating"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stage: Stage, covered_h: u64, fetched: u64, queued: u64, delivered: u64) -> Snapshot {
        Snapshot {
            span: Duration::from_secs(10 * 3600),
            covered: Duration::from_secs(covered_h * 3600),
            elapsed: Duration::from_secs(60),
            polled_for: (stage == Stage::Polled).then(|| Duration::from_secs(40)),
            delivering: None,
            fetched,
            queued,
            delivered,
            stage,
        }
    }

    #[test]
    fn while_reading_the_time_left_follows_the_window_read_so_far() {
        // A quarter read in a minute: three minutes, however slowly the
        // deliveries go meanwhile.
        let s = Snapshot {
            covered: Duration::from_secs(9000),
            delivering: Some(0.5),
            ..at(Stage::Polling, 0, 100, 100, 3)
        };
        assert_eq!(s.left(), Left::Reading(Duration::from_secs(180)));
        assert_eq!(
            s.describe(),
            "2h 30m of 10h · 100 fetched · 3 delivered · 2/s · 3 minutes left to read"
        );
    }

    #[test]
    fn once_read_the_time_left_is_the_outbox_at_the_recent_pace() {
        // 800 still to deliver at 20 a second: 40 seconds.
        let s = Snapshot {
            delivering: Some(20.0),
            ..at(Stage::Polled, 5, 1000, 1000, 200)
        };
        assert_eq!(s.left(), Left::Delivering(Duration::from_secs(40)));
        assert!(
            s.describe().ends_with("40 seconds left to deliver"),
            "{}",
            s.describe()
        );
        // No pace yet: no guess.
        let s = at(Stage::Polled, 5, 1000, 1000, 200);
        assert_eq!(s.left(), Left::Unknown);
    }

    #[test]
    fn the_pace_of_deliveries_is_the_last_few_seconds() {
        let row = Row {
            bar: ProgressBar::hidden(),
            counts: Vec::new(),
            paces: Mutex::default(),
        };
        let at = Duration::from_secs;
        // A slow start, then 100 a second: the slow start is forgotten.
        assert_eq!(row.pace(at(0), 0), None);
        assert_eq!(row.pace(at(5), 10), Some(2.0));
        assert_eq!(row.pace(at(10), 510), Some(100.0));
        assert_eq!(row.pace(at(11), 610), Some(100.0));
    }

    #[test]
    fn no_estimate_without_a_pace() {
        assert_eq!(at(Stage::Polling, 0, 0, 0, 0).left(), Left::Unknown);
        assert_eq!(at(Stage::Failed, 5, 10, 10, 0).left(), Left::Unknown);
        assert!(
            at(Stage::Polling, 0, 0, 0, 0)
                .describe()
                .ends_with("estimating")
        );
        assert_eq!(at(Stage::Waiting, 0, 0, 0, 0).describe(), "waiting");
    }

    #[test]
    fn a_polled_and_delivered_subscription_is_whole_and_says_how_long_it_took() {
        // The rate is over the 40 s it polled, not the minute with delivery.
        let s = at(Stage::Polled, 3, 400, 400, 400);
        assert_eq!(s.fraction(), 1.0);
        assert_eq!(s.left(), Left::Nothing);
        assert_eq!(
            s.describe(),
            "10h covered · 400 fetched · 400 delivered · 10/s · in 60 seconds"
        );
    }

    #[test]
    fn several_subscriptions_add_up_and_wait_for_the_slowest() {
        let all = [
            at(Stage::Polled, 10, 5, 5, 5),
            at(Stage::Polling, 2, 7, 7, 3),
        ];
        let s = Snapshot::sum(&all);
        assert_eq!((s.fetched, s.queued, s.delivered), (12, 12, 8));
        assert_eq!(s.stage, Stage::Polling);
        assert_eq!(s.fraction(), 12.0 / 20.0);
    }

    #[test]
    fn reports_are_counted_and_nothing_is_when_off() {
        let off = Progress::default();
        off.track("a").page(5, 5);
        off.delivered("a");
        assert!(off.counts("a").is_none());

        let on = Progress::default();
        let board = Board {
            born: Instant::now(),
            counts: [("a".to_string(), Arc::default())].into(),
        };
        on.0.set(board).expect("first");
        let t = on.track("a");
        let from = crate::event::Timestamp::from_timestamp(1_700_000_000, 0).expect("time");
        t.window(from, from + chrono::Duration::hours(10));
        t.cover(
            from + chrono::Duration::hours(2),
            chrono::Duration::hours(3),
        );
        t.reached(from + chrono::Duration::hours(1));
        t.page(10, 4);
        on.delivered("a");
        on.delivered("b");
        let s = Snapshot::of(on.counts("a").expect("a"), Duration::from_secs(1));
        assert_eq!(s.span, Duration::from_secs(10 * 3600));
        assert_eq!(s.covered, Duration::from_secs(5 * 3600));
        assert_eq!((s.fetched, s.queued, s.delivered), (10, 4, 1));
        assert_eq!(s.stage, Stage::Polling);
        t.polled(true);
        assert_eq!(
            Snapshot::of(on.counts("a").expect("a"), Duration::ZERO).stage,
            Stage::Polled
        );
    }
}
