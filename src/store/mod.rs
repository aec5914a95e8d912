//! The state store: per subscription a [`Cursor`] (the watermark), the
//! `eventDataId`s already recorded within the look-back, an outbox of events
//! not yet acknowledged by the endpoint, a dead-letter table of events the
//! endpoint rejected or the poller could not identify, and (shared state only)
//! a lease per subscription saying which running instance owns it.
//!
//! One async interface, [`Store`], over two backends with the same schema
//! concepts and the same transaction boundaries:
//! - `sqlite.rs`: one file, one process (the default). Its connection is
//!   synchronous and every call runs on a thread of its own, in turn.
//!   Leases are trivially held.
//! - `postgres.rs`: a PostgreSQL database shared by every instance (`[state]
//!   url`), for running two or more for high availability. Leases live in the
//!   database, taken and renewed on its clock; every write that moves a
//!   watermark or deletes an outbox row checks the lease in its own
//!   transaction (a fence), so an instance that stalled past its lease cannot
//!   move state another instance now owns.
//!
//! Either way, a page's new events and its watermark move commit together,
//! and an outbox row is deleted only after the endpoint's 2xx. Both
//! transactions also write the delivery journal (`journal.rs`), what
//! `trace` reads.

pub mod copy;
pub mod journal;
pub mod postgres;
pub mod sqlite;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::StateConfig;
use crate::event::{Entry, Malformed, Timestamp};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The SQLite schema this build reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: cannot open: {source}")]
    Open {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database {path}: cannot create its directory: {source}")]
    Directory {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state database {path} is not an SQLite database (refusing to overwrite it; move it away to start afresh)"
    )]
    NotADatabase { path: std::path::PathBuf },
    #[error(
        "state database {location} has schema version {found}, newer than this build's {supported}; run a newer azure-activity-poller"
    )]
    NewerSchema {
        location: String,
        found: i64,
        supported: i64,
    },
    #[error("state database: {context}: {source}")]
    Sqlite {
        context: &'static str,
        source: rusqlite::Error,
    },
    #[error("state database {location}: cannot connect: {reason}")]
    Connect { location: String, reason: String },
    #[error("state database {location}: {reason}")]
    Tls { location: String, reason: String },
    #[error("state database: {context}: {}", error_chain(.source))]
    Postgres {
        context: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("state database: {context}: no connection: {reason}")]
    Pool {
        context: &'static str,
        reason: String,
    },
    #[error("state database {location} has no poller schema yet: the poller has not run with it")]
    NoSchema { location: String },
    #[error(
        "subscription {subscription}: this instance no longer holds its lease; the write was refused and the subscription dropped"
    )]
    LeaseLost { subscription: String },
    #[error(
        "subscription {subscription}: another live instance holds its lease; it polls and delivers it"
    )]
    HeldElsewhere { subscription: String },
    #[error("state database {location} is not empty ({what}); refusing to copy into it")]
    NotEmpty { location: String, what: String },
    #[error("state database: a background task failed: {0}")]
    Task(String),
}

/// An error with its causes, as `outer: cause: cause` (see
/// [`crate::with_causes`]).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::with_causes(e.to_string(), e.source())
}

impl StoreError {
    /// About who owns a subscription, not about the state: try again later.
    pub fn is_lease(&self) -> bool {
        matches!(
            self,
            StoreError::LeaseLost { .. } | StoreError::HeldElsewhere { .. }
        )
    }

    /// The state itself is unusable by this build (exit 78 rather than 74).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StoreError::NotADatabase { .. }
                | StoreError::NewerSchema { .. }
                | StoreError::NoSchema { .. }
                | StoreError::Tls { .. }
                | StoreError::NotEmpty { .. }
        )
    }
}

/// Where a subscription's polling stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Every entry with an `eventTimestamp` at or before this was visible to a
    /// completed, recorded query (subject to the look-back window for late ones).
    pub watermark: Timestamp,
    /// Seen ids older than this were pruned: no query may start before it, or
    /// entries could be delivered twice.
    pub pruned_before: Timestamp,
}

/// The watermark move that closes a window, committed with its last page.
#[derive(Debug, Clone, Copy)]
pub struct Advance {
    pub watermark: Timestamp,
    /// Seen ids with an `eventTimestamp` before this are dropped.
    pub prune_before: Timestamp,
}

/// What recording one page did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Entries queued for delivery.
    pub new: usize,
    /// Entries already recorded by an earlier query.
    pub duplicate: usize,
    /// Unidentifiable entries newly put in the dead-letter table.
    pub quarantined: usize,
}

/// An event waiting for the endpoint's acknowledgement.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub seq: i64,
    pub subscription_id: String,
    pub event_data_id: String,
    pub entry: String,
    pub attempts: i64,
}

/// A dead letter, for `status` and `dead-letters list`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub seq: i64,
    pub subscription_id: String,
    pub event_data_id: String,
    pub reason: String,
    pub failed_at: Timestamp,
}

/// The last poll of a subscription, as `status` shows it.
#[derive(Debug, Clone)]
pub struct SubscriptionState {
    pub subscription_id: String,
    pub cursor: Option<Cursor>,
    pub last_poll_at: Option<Timestamp>,
    pub last_result: Option<String>,
    pub outbox: i64,
    pub dead_letters: i64,
    pub detection: Option<DetectionNote>,
    /// Who holds the subscription's lease, and until when (shared state only).
    pub lease: Option<LeaseNote>,
}

/// The last event handler check of a subscription, as the daemon noted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectionNote {
    /// `clear`, `paused` or `unknown`.
    pub state: String,
    pub detail: String,
    pub checked_at: Timestamp,
}

/// The limit of ARM reads in flight as a running daemon last published it
/// (`read_limit.rs`), for `status`: that process is the only one that knows
/// it, and `status` is another process.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadLimitNote {
    /// The instance that wrote it (shared state); `None` on SQLite, which
    /// one daemon uses.
    pub instance: Option<String>,
    pub limit: i64,
    pub cap: i64,
    pub in_flight: i64,
    pub waiting: i64,
    pub arrivals_per_second: f64,
    pub hold_seconds: f64,
    /// What sets the limit: `demand`, `cap` or `throttled`.
    pub bound: String,
    pub noted_at: Timestamp,
}

/// A subscription's lease as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseNote {
    pub holder: String,
    pub expires_at: Timestamp,
}

/// A running instance, as its heartbeat row shows it.
#[derive(Debug, Clone)]
pub struct InstanceRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub started_at: Timestamp,
    pub expires_at: Timestamp,
    pub live: bool,
}

/// This process among the instances sharing a database: an id made fresh at
/// each start, so that a restarted process or two on one host never mistake
/// each other's leases.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub host: String,
    pub pid: u32,
}

impl Instance {
    pub fn new() -> Instance {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown-host".into());
        Instance {
            id: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            host,
            pid: std::process::id(),
        }
    }
}

impl Default for Instance {
    fn default() -> Self {
        Instance::new()
    }
}

/// How many subscriptions a lease round may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// The daemon: configured / live instances, rounded up.
    Fair,
    /// `--once`: every subscription no live instance holds.
    All,
}

/// What a lease round found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseReport {
    pub held: BTreeSet<Arc<str>>,
    /// Live instances, this one included.
    pub live: usize,
    /// How many this instance should hold.
    pub share: usize,
}

/// Subscriptions this instance holds, shared by the store (which filters
/// delivery and drops a subscription whose fenced write was refused) and the
/// supervisor (which polls exactly these).
/// An id is shared with the configuration's, not copied (10,000 of them).
pub type Held = Arc<watch::Sender<BTreeSet<Arc<str>>>>;

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// The one store interface; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    held: Held,
    /// Pages and deliveries are journaled (`[journal] retention` not 0).
    journal: bool,
}

/// Runs a closure on the SQLite store's thread, so that disk waits do not
/// stall the runtime.
async fn blocking<R: Send + 'static>(
    store: &SqliteStore,
    f: impl FnOnce(&SqliteStore) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let s = store.clone();
    if !store.submit(Box::new(move || {
        let _ = tx.send(f(&s));
    })) {
        return Err(StoreError::Task(
            "the state store's thread has ended".into(),
        ));
    }
    rx.await
        .map_err(|_| StoreError::Task("a state store call panicked".into()))?
}

impl Store {
    /// Opens (creating or migrating) the configured state store.
    pub async fn open(state: &StateConfig, me: &Instance) -> Result<Store, StoreError> {
        let held: Held = Arc::new(watch::channel(BTreeSet::new()).0);
        let backend = match state {
            StateConfig::Sqlite(path) => {
                let path = path.clone();
                Backend::Sqlite(
                    tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                        .await
                        .map_err(|e| StoreError::Task(e.to_string()))??,
                )
            }
            StateConfig::Postgres(url) => {
                Backend::Postgres(PgStore::open(url, me, held.clone(), true).await?)
            }
        };
        Ok(Store {
            backend,
            held,
            journal: false,
        })
    }

    /// Opens an existing store without creating or migrating anything, for
    /// `status` and `dead-letters` next to a running daemon.
    pub async fn open_existing(state: &StateConfig) -> Result<Store, StoreError> {
        let held: Held = Arc::new(watch::channel(BTreeSet::new()).0);
        let backend = match state {
            StateConfig::Sqlite(path) => {
                let path = path.clone();
                Backend::Sqlite(
                    tokio::task::spawn_blocking(move || SqliteStore::open_existing(&path))
                        .await
                        .map_err(|e| StoreError::Task(e.to_string()))??,
                )
            }
            StateConfig::Postgres(url) => {
                Backend::Postgres(PgStore::open(url, &Instance::new(), held.clone(), false).await?)
            }
        };
        Ok(Store {
            backend,
            held,
            journal: false,
        })
    }

    /// Turns the delivery journal on or off for this process, and notes the
    /// start in the state (`journal_span`), so that `trace` knows since
    /// when the journal holds everything.
    pub async fn start_journal(&mut self, on: bool) -> Result<(), StoreError> {
        let now = chrono::Utc::now();
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.start_journal(on, now)).await?,
            Backend::Postgres(p) => p.start_journal(on, now).await?,
        }
        self.journal = on;
        Ok(())
    }

    /// One pruning batch: up to [`journal::PRUNE_BATCH`] of the oldest
    /// journal rows fetched before `before`; returns how many went.
    pub async fn prune_journal(&self, before: Timestamp) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.prune_journal(before)).await,
            Backend::Postgres(p) => p.prune_journal(before).await,
        }
    }

    /// Since when the journal holds everything; `None` on a state no daemon
    /// with a journal ran on (nothing is created here).
    pub async fn journal_span(&self) -> Result<Option<journal::JournalSpan>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, |s| s.journal_span()).await,
            Backend::Postgres(p) => p.journal_span().await,
        }
    }

    /// The journaled events matching `q`, oldest first (none without a journal).
    pub async fn trace(&self, q: journal::TraceQuery) -> Result<Vec<journal::Story>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.trace(&q)).await,
            Backend::Postgres(p) => p.trace(&q).await,
        }
    }

    /// Where the state lives, printable (a database URL's password redacted).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path().display().to_string(),
            Backend::Postgres(p) => p.describe(),
        }
    }

    /// True when instances share this store (leases matter).
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The subscriptions this instance holds, as they change.
    pub fn held(&self) -> watch::Receiver<BTreeSet<Arc<str>>> {
        self.held.subscribe()
    }

    pub async fn cursor(&self, subscription_id: &str) -> Result<Option<Cursor>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                let id = subscription_id.to_string();
                blocking(s, move |s| s.cursor(&id)).await
            }
            Backend::Postgres(p) => p.cursor(subscription_id).await,
        }
    }

    /// The subscription's cursor, created at `since` if it has none.
    pub async fn init_cursor(
        &self,
        subscription_id: &str,
        since: Timestamp,
    ) -> Result<Cursor, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                let id = subscription_id.to_string();
                blocking(s, move |s| s.init_cursor(&id, since)).await
            }
            Backend::Postgres(p) => p.init_cursor(subscription_id, since).await,
        }
    }

    /// Records one page's kept entries and quarantined ones in one transaction;
    /// with `advance`, moves the watermark and prunes seen ids in the same one.
    /// On shared state the transaction first checks that this instance still
    /// holds the subscription's lease ([`StoreError::LeaseLost`] if not).
    /// With the journal on, the new entries are journaled `queued` and the
    /// `skipped` ones (status not forwarded) `skipped`, in that transaction.
    pub async fn record_page(
        &self,
        subscription_id: &str,
        entries: Vec<Entry>,
        skipped: Vec<Entry>,
        malformed: Vec<(Malformed, Timestamp)>,
        advance: Option<Advance>,
    ) -> Result<Recorded, StoreError> {
        let journal = self.journal;
        match &self.backend {
            Backend::Sqlite(s) => {
                let id = subscription_id.to_string();
                blocking(s, move |s| {
                    s.record_page(&id, &entries, &skipped, &malformed, advance, journal)
                })
                .await
            }
            Backend::Postgres(p) => {
                p.record_page(
                    subscription_id,
                    &entries,
                    &skipped,
                    &malformed,
                    advance,
                    journal,
                )
                .await
            }
        }
    }

    /// Notes how a poll ended, for `status` and readiness.
    pub async fn note_poll(
        &self,
        subscription_id: &str,
        at: Timestamp,
        result: String,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                let id = subscription_id.to_string();
                blocking(s, move |s| s.note_poll(&id, at, &result)).await
            }
            Backend::Postgres(p) => p.note_poll(subscription_id, at, &result).await,
        }
    }

    /// Notes the last event handler check, for `status`.
    pub async fn note_detection(
        &self,
        subscription_id: &str,
        at: Timestamp,
        state: &'static str,
        detail: String,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                let id = subscription_id.to_string();
                blocking(s, move |s| s.note_detection(&id, at, state, &detail)).await
            }
            Backend::Postgres(p) => p.note_detection(subscription_id, at, state, &detail).await,
        }
    }

    /// Publishes this daemon's limit of ARM reads in flight, for `status`
    /// (on shared state, this instance's row).
    pub async fn note_read_limit(&self, note: ReadLimitNote) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.note_read_limit(&note)).await,
            Backend::Postgres(p) => p.note_read_limit(&note).await,
        }
    }

    /// The limits of ARM reads in flight the daemons published; none when
    /// no daemon has yet, or the state was written by a build that did not
    /// publish them (nothing is created here: `status` reads as it is).
    pub async fn read_limits(&self) -> Result<Vec<ReadLimitNote>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, |s| s.read_limits()).await,
            Backend::Postgres(p) => p.read_limits().await,
        }
    }

    /// Up to `limit` events waiting for delivery, skipping `in_flight`, shared
    /// round-robin among the subscriptions that have any waiting (see
    /// [`round_robin`]), starting after `after`. On shared state, only the
    /// subscriptions this instance holds.
    pub async fn next_batch(
        &self,
        limit: usize,
        in_flight: Vec<i64>,
        after: Option<String>,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                blocking(s, move |s| {
                    s.next_batch(limit, &in_flight, after.as_deref())
                })
                .await
            }
            Backend::Postgres(p) => p.next_batch(limit, &in_flight, after.as_deref()).await,
        }
    }

    /// Records delivery outcomes in one transaction: acknowledged events are
    /// forgotten, rejected ones become dead letters, failed ones count an
    /// attempt. On shared state, rows of subscriptions whose lease this
    /// instance lost are left alone (their new holder delivers them).
    /// `acks` carry the endpoint's HTTP status, for the journal.
    pub async fn settle(
        &self,
        acks: Vec<(i64, u16)>,
        rejects: Vec<(i64, String)>,
        failures: Vec<(i64, String)>,
    ) -> Result<(), StoreError> {
        let journal = self.journal;
        match &self.backend {
            Backend::Sqlite(s) => {
                blocking(s, move |s| s.settle(&acks, &rejects, &failures, journal)).await
            }
            Backend::Postgres(p) => p.settle(&acks, &rejects, &failures, journal).await,
        }
    }

    /// Puts dead letters back in the outbox (all when `seqs` is `None`);
    /// returns how many.
    pub async fn retry_dead_letters(&self, seqs: Option<Vec<i64>>) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.retry_dead_letters(seqs.as_deref())).await,
            Backend::Postgres(p) => p.retry_dead_letters(seqs.as_deref()).await,
        }
    }

    /// Deletes dead letters (all when `seqs` is `None`); returns how many.
    pub async fn drop_dead_letters(&self, seqs: Option<Vec<i64>>) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, move |s| s.drop_dead_letters(seqs.as_deref())).await,
            Backend::Postgres(p) => p.drop_dead_letters(seqs.as_deref()).await,
        }
    }

    pub async fn outbox_depth(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, |s| s.outbox_depth()).await,
            Backend::Postgres(p) => p.outbox_depth().await,
        }
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, |s| s.dead_letters()).await,
            Backend::Postgres(p) => p.dead_letters().await,
        }
    }

    /// Every subscription the store knows, with its counts.
    pub async fn states(&self) -> Result<Vec<SubscriptionState>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, |s| s.states()).await,
            Backend::Postgres(p) => p.states().await,
        }
    }

    /// The instances that share the store (none for SQLite).
    pub async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Vec::new()),
            Backend::Postgres(p) => p.instances().await,
        }
    }

    /// One lease round over the configured subscriptions `wanted` (each id
    /// once, as the configuration guarantees): renews
    /// what this instance holds, takes free and expired leases up to its
    /// `share`, gives back what it holds beyond it, and publishes the result
    /// (see [`Store::held`]). SQLite: every subscription, at once.
    pub async fn lease_round(
        &self,
        wanted: &[Arc<str>],
        lease: Duration,
        share: Share,
    ) -> Result<LeaseReport, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => {
                debug_assert!(
                    wanted.iter().collect::<BTreeSet<_>>().len() == wanted.len(),
                    "a subscription wanted twice"
                );
                // Built again only when the configuration changed (ids are
                // unique): a round every few seconds, on every subscription.
                self.held.send_if_modified(|h| {
                    let same = h.len() == wanted.len() && wanted.iter().all(|w| h.contains(w));
                    if !same {
                        *h = wanted.iter().cloned().collect();
                    }
                    !same
                });
                let held = self.held.borrow().clone();
                Ok(LeaseReport {
                    share: held.len(),
                    held,
                    live: 1,
                })
            }
            Backend::Postgres(p) => p.lease_round(wanted, lease, share).await,
        }
    }

    /// Forgets every lease (none held any more), as when the database could
    /// not be reached for a whole lease.
    pub fn drop_all_leases(&self) {
        if self.shared() {
            self.held.send_if_modified(|h| {
                let changed = !h.is_empty();
                h.clear();
                changed
            });
        }
    }

    /// Gives up every lease and the heartbeat, at a clean stop, so that the
    /// other instances take over at once rather than after the lease.
    ///
    /// On SQLite, waits for every call queued on the store's thread: a
    /// write whose caller the grace period abandoned (an outbox row settled
    /// after its 2xx) still commits before the process ends, as tokio's
    /// blocking pool, which ran them before, waited for its calls.
    pub async fn leave(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => blocking(s, |_| Ok(())).await,
            Backend::Postgres(p) => p.leave().await,
        }
    }
}

/// Shares a batch of `limit` events round-robin among `subs` (the
/// subscriptions with events waiting, in order), so that a subscription
/// catching up days of backlog never holds back another's fresh events: each
/// gets an equal share of the batch (the rest of it goes to those with more
/// waiting), oldest first within a subscription. The batch interleaves
/// subscriptions, starting after `after` (the one served last), so the order
/// of delivery rotates too. `read(sub, n)` returns up to `n` of a
/// subscription's oldest waiting events (not in flight).
pub async fn round_robin<F, Fut>(
    mut subs: Vec<String>,
    limit: usize,
    after: Option<&str>,
    mut read: F,
) -> Result<Vec<OutboxEvent>, StoreError>
where
    F: FnMut(String, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<OutboxEvent>, StoreError>>,
{
    if limit == 0 {
        return Ok(Vec::new());
    }
    if let Some(last) = after
        && let Some(i) = subs.iter().position(|s| s.as_str() > last)
    {
        subs.rotate_left(i);
    }
    let share = limit.div_ceil(subs.len().max(1));
    let mut per_sub: Vec<Vec<OutboxEvent>> = Vec::with_capacity(subs.len());
    let mut total = 0;
    for sub in &subs {
        if total >= limit {
            break;
        }
        let got = read(sub.clone(), share.min(limit - total)).await?;
        total += got.len();
        per_sub.push(got);
    }
    // What the quiet subscriptions left goes to those with more waiting.
    let mut i = 0;
    while total < limit && i < per_sub.len() {
        if per_sub[i].len() == share {
            let have = per_sub[i].len();
            let mut more = read(subs[i].clone(), have + (limit - total)).await?;
            let extra = more.split_off(have.min(more.len()));
            total += extra.len();
            per_sub[i].extend(extra);
        }
        i += 1;
    }
    // Interleave: the first of each subscription, then the second, ...
    let mut out = Vec::with_capacity(total);
    let mut iters: Vec<_> = per_sub.into_iter().map(Vec::into_iter).collect();
    while out.len() < total {
        for it in iters.iter_mut() {
            if let Some(e) = it.next() {
                out.push(e);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A write whose caller is gone (the grace period abandoned it) still
    /// commits before the process ends: leaving waits for it.
    #[tokio::test]
    async fn leaving_waits_for_every_call_queued_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateConfig::Sqlite(dir.path().join("s.db"));
        let store = Store::open(&state, &Instance::new()).await.unwrap();
        let Backend::Sqlite(s) = &store.backend else {
            panic!("a SQLite store");
        };
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        assert!(s.submit(Box::new(move || {
            // A slow write, nobody waiting for its answer.
            std::thread::sleep(Duration::from_millis(300));
            d.store(true, Ordering::SeqCst);
        })));
        store.leave().await.unwrap();
        assert!(
            done.load(Ordering::SeqCst),
            "left before the queued call ended"
        );
    }
}
