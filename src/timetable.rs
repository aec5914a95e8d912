//! The daemon's one timer: when each subscription polls next.
//!
//! One task holds every subscription held by this instance in a
//! `DelayQueue` (tokio-util's hashed timer wheel) and drives each poll when
//! it is due, alongside the others; between polls a subscription is an
//! [`Entry`] of 112 bytes, not a task of its own. A task per
//! subscription, each with its own timer, was 768 bytes of task plus its
//! timer's allocation: 7.7 MiB of the daemon's heap at 10,000 subscriptions
//! (BENCHMARKS.md section 11).
//!
//! What a subscription's life looks like (the rules of the task each used
//! to be, unchanged):
//!
//! - **Start**: it waits for its predecessor on the same subscription (a
//!   reload, a lease given back and taken again) to end, so that two never
//!   poll it at once; then it reads its watermark ([`overdue`], a few at a
//!   time) and polls at its phase of the first interval, or at once when it
//!   is owed one (`scheduler.rs`: [`first_poll`]).
//! - **Due**: its poll waits for a read permit (`read_limit.rs`), says
//!   when it starts late, and polls unless the subscription is paused (a
//!   pause mid-poll abandons it: `scheduler.rs`). The next tick follows
//!   tokio's `MissedTickBehavior::Delay`: one interval after the due time,
//!   or after the late tick.
//! - **Paused** when due: it is parked and polls at once when the pause
//!   lifts, then goes on on its grid.
//! - **Stopped** (the supervisor's [`Timetable::stop`]): an idle one leaves at
//!   once, a poll waiting for its permit gives up, a poll running finishes
//!   (the supervisor's grace period bounds it). Then [`Stop::end`] says it
//!   is over. A poll that panics is logged and the subscription goes on.
//!
//! Aborting the timetable's task (the end of the grace period) drops every
//! poll in flight, which is safe: every page is its own transaction and an
//! unfinished window is queried again.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::app::App;
use crate::config::SubscriptionConfig;
use crate::detect::Pauses;
use crate::event::Timestamp;
use crate::heartbeat::Heartbeat;
use crate::scheduler::{
    Reporting, first_poll, note_start_delay, overdue, phase, poll_unless_paused,
};
use crate::stop::Stop;

/// How many subscriptions read their watermark for [`overdue`] at once: at
/// a start every one asks, and each read's state (kilobytes) waiting for the
/// store would add up.
const OVERDUE_CHECKS: usize = 8;

/// tokio's `Interval` counts a tick this late as missed (and, with
/// `MissedTickBehavior::Delay`, starts the next interval from it).
const MISSED_AFTER: Duration = Duration::from_millis(5);

/// The handle of the timetable's task, held by the supervisor.
pub struct Timetable {
    tx: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    serial: u64,
}

/// A subscription on the timetable, as the supervisor holds it.
#[derive(Debug)]
pub struct Ticket {
    serial: u64,
    stop: Arc<Stop>,
}

impl Ticket {
    /// What a successor, or the shutdown, waits on ([`Stop::ended`]).
    pub fn ending(&self) -> Arc<Stop> {
        self.stop.clone()
    }
}

enum Command {
    Add(Box<Entry>),
    Cancel(u64),
}

impl Timetable {
    /// Starts the timetable's task; `pauses` are the subscriptions something
    /// else feeds (shared by every configuration a reload builds).
    pub fn spawn(pauses: Arc<Pauses>) -> Timetable {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(rx, pauses));
        Timetable {
            tx,
            task,
            serial: 0,
        }
    }

    /// Puts a subscription on the timetable; it starts once `previous` (the
    /// last one on the same subscription, stopped) has ended.
    pub fn add(
        &mut self,
        app: Arc<App>,
        sub: Arc<SubscriptionConfig>,
        since: Option<Timestamp>,
        beat: Arc<Heartbeat>,
        previous: Option<Arc<Stop>>,
    ) -> Ticket {
        self.serial += 1;
        let stop = Arc::new(Stop::default());
        let entry = Entry {
            serial: self.serial,
            app,
            sub,
            since,
            stop: stop.clone(),
            beat,
            previous,
            next: None,
            warned_late: None,
        };
        // A timetable whose task is gone drops the entry, which ends it: its
        // successor and the shutdown do not wait for it.
        let _ = self.tx.send(Command::Add(Box::new(entry)));
        Ticket {
            serial: self.serial,
            stop,
        }
    }

    /// Stops a subscription: at once when it is idle, after its poll when
    /// one runs. Its [`Ticket::ending`] says when it is over.
    pub fn stop(&self, ticket: &Ticket) {
        ticket.stop.stop();
        let _ = self.tx.send(Command::Cancel(ticket.serial));
    }

    /// The timetable's task, for the supervisor to notice its end (a panic:
    /// nothing would poll any more).
    pub fn task(&mut self) -> &mut JoinHandle<()> {
        &mut self.task
    }

    /// Drops every subscription and the polls in flight (past the grace
    /// period).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// One subscription between its polls.
struct Entry {
    serial: u64,
    app: Arc<App>,
    sub: Arc<SubscriptionConfig>,
    since: Option<Timestamp>,
    stop: Arc<Stop>,
    beat: Arc<Heartbeat>,
    /// Until it starts: its predecessor on the same subscription.
    previous: Option<Arc<Stop>>,
    /// The tick after the one it waits for or polls on (`None` before its
    /// first poll is placed).
    next: Option<Instant>,
    /// When it last warned of late polls.
    warned_late: Option<Instant>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.beat.set_busy(false);
        self.stop.end();
    }
}

/// Where an entry is.
enum At {
    /// Waiting for its predecessor or for its watermark's read.
    Starting,
    /// On the timer.
    Queued(delay_queue::Key),
    /// Its poll runs.
    Polling,
    /// Due while paused: polls when the pause lifts.
    Parked,
}

type Start = Pin<Box<dyn Future<Output = (u64, bool)> + Send>>;

/// A poll running: its entry's serial, and what it gave back (`None`: it
/// panicked).
type Running = Pin<Box<dyn Future<Output = (u64, Option<Turned>)> + Send>>;

/// What a poll gives back: when it last warned of a late poll, and
/// whether the subscription goes on (false: told to stop, or the read limit
/// is closed).
type Turned = (Option<Instant>, bool);

/// The timetable's state, owned by its task.
#[derive(Default)]
struct State {
    /// Boxed: the table has room for up to twice its entries, and a slot
    /// of a pointer rather than an entry saved 0.4 MiB at 10,000.
    entries: HashMap<u64, (Box<Entry>, At)>,
    queue: DelayQueue<u64>,
    /// Starting entries whose predecessor has ended, waiting for a turn to
    /// read their watermark.
    to_check: VecDeque<u64>,
    /// Entries waiting for their predecessor to end.
    awaiting: FuturesUnordered<Pin<Box<dyn Future<Output = u64> + Send>>>,
    /// Watermark reads, at most [`OVERDUE_CHECKS`].
    checking: FuturesUnordered<Start>,
    /// The polls running, each with its entry's serial (and `None` when it
    /// panicked). Driven by this task rather than spawned: a task per poll
    /// cost 8% more CPU at 10,000 subscriptions (its spawn, and a wake-up of
    /// this task from another thread when it ended).
    polls: FuturesUnordered<Running>,
}

async fn run(mut rx: mpsc::UnboundedReceiver<Command>, pauses: Arc<Pauses>) {
    let mut paused = pauses.subscribe();
    // Always: this task holds `pauses`, so its channel stays open.
    let mut pauses_open = true;
    let mut s = State::default();
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Command::Add(entry)) => s.add(entry),
                Some(Command::Cancel(serial)) => s.cancel(serial),
                // The supervisor is gone: so is every subscription.
                None => break,
            },
            Some(due) = s.queue.next(), if !s.queue.is_empty() => {
                let deadline = due.deadline();
                s.due(due.into_inner(), Some(deadline), &pauses);
            }
            Some((serial, turned)) = s.polls.next(), if !s.polls.is_empty() => {
                s.turned(serial, turned);
            }
            Some(serial) = s.awaiting.next(), if !s.awaiting.is_empty() => {
                s.to_check.push_back(serial);
            }
            Some((serial, owed)) = s.checking.next(), if !s.checking.is_empty() => {
                s.place(serial, owed);
            }
            changed = paused.changed(), if pauses_open => {
                pauses_open = changed.is_ok();
                paused.borrow_and_update();
                s.resume(&pauses);
            }
        }
        s.start_checks();
    }
}

impl State {
    fn add(&mut self, mut entry: Box<Entry>) {
        let serial = entry.serial;
        match entry.previous.take() {
            Some(previous) => self.awaiting.push(Box::pin(async move {
                previous.ended().await;
                serial
            })),
            None => self.to_check.push_back(serial),
        }
        self.entries.insert(serial, (entry, At::Starting));
    }

    fn cancel(&mut self, serial: u64) {
        let Some((_, at)) = self.entries.get(&serial) else {
            return;
        };
        match at {
            At::Queued(key) => {
                self.queue.remove(key);
                self.entries.remove(&serial);
            }
            At::Parked => {
                self.entries.remove(&serial);
            }
            // Seen when its start or poll is over.
            At::Starting | At::Polling => {}
        }
    }

    /// Begins the watermark reads that have a turn.
    fn start_checks(&mut self) {
        while self.checking.len() < OVERDUE_CHECKS {
            let Some(serial) = self.to_check.pop_front() else {
                return;
            };
            let Some((entry, _)) = live(&mut self.entries, serial) else {
                continue;
            };
            let (app, sub) = (entry.app.clone(), entry.sub.clone());
            self.checking.push(Box::pin(async move {
                let owed = Box::pin(overdue(&app, &sub)).await;
                (serial, owed)
            }));
        }
    }

    /// Places a started entry's first poll.
    fn place(&mut self, serial: u64, owed: bool) {
        let Some((entry, at)) = live(&mut self.entries, serial) else {
            return;
        };
        let interval = entry.sub.schedule.interval();
        let (first, next) = first_poll(
            entry.app.started,
            Instant::now(),
            phase(entry.sub.id.as_str(), interval),
            interval,
            owed,
        );
        entry.next = Some(next);
        *at = At::Queued(self.queue.insert_at(serial, first));
    }

    /// An entry's tick (`deadline`), or its resumption after a pause
    /// (`None`): it polls unless paused.
    fn due(&mut self, serial: u64, deadline: Option<Instant>, pauses: &Pauses) {
        let Some((entry, at)) = live(&mut self.entries, serial) else {
            return;
        };
        let interval = entry.sub.schedule.interval();
        let now = Instant::now();
        if let Some(deadline) = deadline {
            // The tick after this one, as tokio's `Interval` places it with
            // `MissedTickBehavior::Delay` (the first placed at the start).
            let after = entry.next.filter(|n| *n > deadline);
            entry.next = Some(after.unwrap_or(if now > deadline + MISSED_AFTER {
                now + interval
            } else {
                deadline + interval
            }));
        }
        if pauses.is_paused(entry.sub.id.as_str()) {
            *at = At::Parked;
            return;
        }
        *at = At::Polling;
        let turn = turn(
            entry.app.clone(),
            entry.sub.clone(),
            entry.since,
            entry.stop.clone(),
            entry.beat.clone(),
            deadline,
            entry.warned_late,
        );
        // A panic ends this poll only (its text could hold anything and is
        // not kept).
        let turn = std::panic::AssertUnwindSafe(turn).catch_unwind();
        self.polls
            .push(Box::pin(turn.map(move |r| (serial, r.ok()))));
    }

    /// A poll is over (`None`: it panicked): the entry waits for its next tick.
    fn turned(&mut self, serial: u64, turned: Option<Turned>) {
        let Some((entry, _)) = self.entries.get_mut(&serial) else {
            return;
        };
        match turned {
            Some((warned_late, goes_on)) => {
                entry.warned_late = warned_late;
                if !goes_on {
                    self.entries.remove(&serial);
                    return;
                }
            }
            None => {
                // Its text could hold anything; the poll's window is queried
                // again on the next tick.
                tracing::error!(
                    subscription_id = %entry.sub.id,
                    subscription_name = entry.sub.name.as_deref(),
                    "a poll panicked; the subscription polls again on its next tick"
                );
            }
        }
        let Some((entry, at)) = live(&mut self.entries, serial) else {
            return;
        };
        if entry.app.pauses.is_paused(entry.sub.id.as_str()) {
            // Paused mid-poll (abandoned) or while waiting for its permit: it
            // polls once the pause lifts, not at its next tick.
            *at = At::Parked;
            return;
        }
        // A tick already past (the poll ran longer than an interval) is due
        // at once, and the one after it counts from then.
        let next = entry
            .next
            .unwrap_or_else(|| Instant::now() + entry.sub.schedule.interval());
        *at = At::Queued(self.queue.insert_at(serial, next));
    }

    /// The parked entries whose pause has lifted poll at once, then go on
    /// on their grid from the first tick after now.
    fn resume(&mut self, pauses: &Pauses) {
        let lifted: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, (e, at))| matches!(at, At::Parked) && !pauses.is_paused(e.sub.id.as_str()))
            .map(|(serial, _)| *serial)
            .collect();
        let now = Instant::now();
        for serial in lifted {
            if let Some((entry, _)) = self.entries.get_mut(&serial) {
                let interval = entry.sub.schedule.interval();
                if let Some(next) = entry.next.filter(|n| *n <= now) {
                    // Whole intervals on: the ticks it slept through.
                    let behind = now.duration_since(next).as_nanos() / interval.as_nanos().max(1);
                    let skip = u32::try_from(behind + 1).unwrap_or(u32::MAX);
                    entry.next = Some(next + interval.saturating_mul(skip));
                }
            }
            self.due(serial, None, pauses);
        }
    }
}

/// The entry `serial`, unless it is gone or told to stop (then it goes,
/// which ends it).
fn live(
    entries: &mut HashMap<u64, (Box<Entry>, At)>,
    serial: u64,
) -> Option<&mut (Box<Entry>, At)> {
    if entries.get(&serial)?.0.stop.is_stopped() {
        entries.remove(&serial);
        return None;
    }
    entries.get_mut(&serial)
}

/// One poll of a subscription: a read permit (given up when told to stop),
/// the late warning, then the poll unless paused.
async fn turn(
    app: Arc<App>,
    sub: Arc<SubscriptionConfig>,
    since: Option<Timestamp>,
    stop: Arc<Stop>,
    beat: Arc<Heartbeat>,
    due: Option<Instant>,
    mut warned_late: Option<Instant>,
) -> Turned {
    // Subscribed before the wait: a pause during it is seen.
    let mut paused = app.pauses.subscribe();
    let asked = Instant::now();
    let permit = tokio::select! {
        p = app.reads.acquire() => p,
        _ = stop.stopped() => return (warned_late, false),
    };
    let Some(_permit) = permit else {
        return (warned_late, false);
    };
    let late =
        due.is_some_and(|due| note_start_delay(&app, &sub, due, asked.elapsed(), &mut warned_late));
    beat.set_busy(true);
    poll_unless_paused(
        &app,
        &sub,
        since,
        &beat,
        &mut paused,
        Reporting::Daemon { late },
    )
    .await;
    beat.set_busy(false);
    (warned_late, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_between_polls_is_small() {
        // One per subscription for the daemon's life: at 10,000
        // subscriptions every 100 bytes here is 1 MB.
        let size = std::mem::size_of::<(Entry, At)>();
        println!("timetable entry: {size} bytes");
        assert!(size <= 160, "{size} bytes");
    }
}
