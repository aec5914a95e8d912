//! One poll of one subscription: query -> keep -> record, window by window.
//!
//! A poll queries `eventTimestamp` from `watermark - window` (never before the
//! point where seen ids were pruned) to now, follows every `nextLink`, keeps the
//! entries whose status is configured, and records the new ones in the outbox,
//! one transaction per page. The last page's transaction also moves the
//! watermark to the query's end, so the watermark never passes an entry that
//! is not durably recorded.
//!
//! A watermark far behind (a first run with `--since`, an outage, a restart
//! after a day) is caught up in **time slices queried in parallel**
//! (`catch_up.rs`, planned by `slices.rs`): up to `[azure] catch_up_slices`
//! queries in flight, each page recorded as it comes, a slice whose page
//! comes back full split over the free slots, and the watermark moved only
//! over the contiguous prefix of finished slices. A crash loses nothing,
//! because everything past the watermark is queried again and its seen ids
//! stop duplicates. ARM's read budget (`azure/budget.rs`) paces the slices
//! together.
//!
//! Clock skew: the query's end is this host's "now", but the watermark moves only
//! as far as Azure's own clock (the `Date` header, less its one-second
//! resolution), so a host clock running ahead cannot skip entries Azure has yet
//! to stamp.

mod catch_up;
mod slices;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use url::Url;

use crate::azure::activity_log::Fetched;
use crate::azure::{ActivityLogClient, AzureError, TokenSource};
use crate::config::{RETENTION, SubscriptionConfig};
use crate::event::{Entry, Item, Malformed, Timestamp, rfc3339, to_ticks};
use crate::heartbeat::Heartbeat;
use crate::outage::Resource;
use crate::store::{Advance, Cursor, Recorded, Store, StoreError};
use slices::Reach;

/// The longest stretch one query covers beyond the look-back.
pub const CATCH_UP_CHUNK: Duration = Duration::from_secs(3600);

/// Skews within this are the `Date` header's own imprecision, not a clock problem.
const SKEW_TOLERANCE: chrono::Duration = chrono::Duration::seconds(2);

/// Margin kept from the 90-day retention edge, so a query is never refused for
/// starting a moment too early.
const RETENTION_MARGIN: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Azure(#[from] AzureError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PollError {
    /// The resource whose outage this may be (see `outage.rs`): the state
    /// database failing, Azure unavailable after its retries (not
    /// throttling: that is sized by the read limit), no token.
    pub fn outage(&self) -> Option<Resource> {
        match self {
            PollError::Store(e) if !e.is_lease() && !e.is_config() => Some(Resource::StateStore),
            PollError::Azure(AzureError::Credential(c)) if c.is_outage() => Some(Resource::EntraId),
            PollError::Azure(AzureError::Exhausted {
                throttled: false, ..
            }) => Some(Resource::Arm),
            _ => None,
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            PollError::Azure(e) => e.is_transient(),
            PollError::Store(e) => e.is_lease(),
        }
    }
}

/// What one poll did, for the log line and the metrics.
#[derive(Debug, Default, Clone)]
pub struct PollReport {
    pub window_start: Option<Timestamp>,
    pub window_end: Option<Timestamp>,
    pub queries: usize,
    pub pages: usize,
    pub requests: usize,
    pub bytes: usize,
    pub fetched: usize,
    pub kept: usize,
    pub skipped_status: usize,
    pub new: usize,
    pub duplicate: usize,
    pub quarantined: usize,
    pub throttled: Duration,
    /// Times a catch-up slice whose page came back full was split.
    pub splits: usize,
    pub watermark: Option<Timestamp>,
    /// Azure's clock minus ours, when a `Date` header told.
    pub skew: Option<chrono::Duration>,
}

impl PollReport {
    /// Adds what another query of the same poll did.
    fn absorb(&mut self, other: PollReport) {
        self.queries += other.queries;
        self.pages += other.pages;
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.fetched += other.fetched;
        self.kept += other.kept;
        self.skipped_status += other.skipped_status;
        self.new += other.new;
        self.duplicate += other.duplicate;
        self.quarantined += other.quarantined;
        self.throttled += other.throttled;
        self.skew = other.skew.or(self.skew);
    }

    /// Counts one fetched page.
    fn count_page(&mut self, fetched: &Fetched) {
        self.pages += 1;
        self.requests += fetched.requests;
        self.bytes += fetched.bytes;
        self.throttled += fetched.throttled;
    }

    /// Counts what recording one page did.
    fn count_recorded(&mut self, rec: &Recorded) {
        self.new += rec.new;
        self.duplicate += rec.duplicate;
        self.quarantined += rec.quarantined;
    }

    /// What the metrics count of it.
    pub fn counts(&self) -> crate::metrics::PollCounts {
        crate::metrics::PollCounts {
            fetched: self.fetched,
            kept: self.kept,
            skipped_status: self.skipped_status,
            duplicate: self.duplicate,
            quarantined: self.quarantined,
        }
    }

    pub fn lag(&self, now: Timestamp) -> Option<Duration> {
        self.watermark
            .map(|w| (now - w).to_std().unwrap_or(Duration::ZERO))
    }
}

/// Polls subscriptions; shared by every subscription's task.
pub struct Poller {
    pub client: ActivityLogClient,
    /// Slices of a long catch-up queried at the same time (1: one at a time).
    pub slices: usize,
    pub store: Store,
    /// Woken whenever new events are queued.
    pub outbox_ready: Arc<Notify>,
    /// Azure's clock minus ours, from the last `Date` header seen.
    pub skew: std::sync::Mutex<Option<chrono::Duration>>,
    /// What a `--once` run's progress bars are told (off otherwise).
    pub progress: crate::progress::Progress,
}

impl Poller {
    /// Brings `sub` up to now. `since` places a subscription without a watermark.
    pub async fn poll(
        &self,
        sub: &SubscriptionConfig,
        tokens: &Arc<TokenSource>,
        since: Option<Timestamp>,
        beat: &Heartbeat,
    ) -> Result<PollReport, PollError> {
        let window = window_of(sub);
        let mut cursor = self.cursor(sub, tokens, since, beat).await?;
        let mut report = PollReport::default();
        let track = self.progress.track(sub.id.as_str());
        loop {
            let now = to_ticks(self.now());
            let (start, end) = self.bounds(sub, &cursor, now);
            track.window(*report.window_start.get_or_insert(start), now);
            if now - cursor.watermark > window * 2 && self.slices > 1 {
                // More than two windows behind: the whole way to now, in
                // parallel slices. (A poll on schedule, about an interval
                // behind, and a first poll, one window behind, are one query.)
                let watermark = self
                    .catch_up(sub, tokens, start, now, &mut report, beat)
                    .await?;
                report.window_end = Some(now);
                cursor.watermark = cursor.watermark.max(watermark);
                cursor.pruned_before = cursor.pruned_before.max(watermark - window);
                report.watermark = Some(cursor.watermark);
                if watermark < now {
                    // Azure's clock is behind ours: the rest is the next poll's.
                    break;
                }
                continue;
            }
            report.window_end = Some(end);
            let (watermark, piece) = self.query(sub, tokens, start, end, beat).await?;
            report.absorb(piece);
            cursor.watermark = cursor.watermark.max(watermark);
            cursor.pruned_before = cursor.pruned_before.max(watermark - window);
            report.watermark = Some(cursor.watermark);
            track.reached(cursor.watermark);
            // A chunk that ended before now leaves more to catch up.
            if end >= now || watermark < end {
                break;
            }
        }
        Ok(report)
    }

    /// The subscription's cursor; a first run places it, at `since` or one
    /// window before now.
    async fn cursor(
        &self,
        sub: &SubscriptionConfig,
        tokens: &Arc<TokenSource>,
        since: Option<Timestamp>,
        beat: &Heartbeat,
    ) -> Result<Cursor, PollError> {
        let id = sub.id.as_str();
        let existing = self.store.cursor(id).await?;
        if existing.is_none() && since.is_none() && self.skew().is_none() {
            // A first run starts one window before Azure's "now", not ours:
            // ask Azure for the time with an empty query before placing it.
            let now = to_ticks(Utc::now());
            let probe = self.client.first_page(id, now, now);
            let fetched = self.client.fetch(&probe, tokens, beat).await?;
            self.learn_skew(fetched.server_date);
        }
        Ok(match existing {
            Some(c) => c,
            None => {
                let start = since.unwrap_or_else(|| self.now() - window_of(sub));
                self.store.init_cursor(id, to_ticks(start)).await?
            }
        })
    }

    /// The last known difference between Azure's clock and ours.
    pub fn skew(&self) -> Option<chrono::Duration> {
        *self.skew.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// "Now" for query ends and first placements: our clock, unless Azure's is
    /// known to be behind it by more than the `Date` header's resolution; then
    /// Azure's, so that a host clock running ahead never skips entries.
    pub fn now(&self) -> Timestamp {
        let local = Utc::now();
        match self.skew() {
            Some(skew) if skew < -SKEW_TOLERANCE => local + skew,
            _ => local,
        }
    }

    fn learn_skew(&self, server_date: Option<Timestamp>) {
        if let Some(date) = server_date {
            // `Date` is truncated to the second and stamped before we read it:
            // this errs toward "Azure is behind", the safe side.
            let skew = date - Utc::now();
            *self.skew.lock().unwrap_or_else(|p| p.into_inner()) = Some(skew);
        }
    }

    /// The next query's `[start, end]`.
    fn bounds(
        &self,
        sub: &SubscriptionConfig,
        cursor: &Cursor,
        now: Timestamp,
    ) -> (Timestamp, Timestamp) {
        let window = window_of(sub);
        let chunk = chrono::Duration::from_std(CATCH_UP_CHUNK).unwrap_or(chrono::Duration::MAX);
        let oldest = now
            - chrono::Duration::from_std(RETENTION - RETENTION_MARGIN)
                .unwrap_or(chrono::Duration::MAX);
        let mut start = (cursor.watermark - window).max(cursor.pruned_before);
        if start < oldest {
            tracing::warn!(
                subscription_id = %sub.id,
                subscription_name = sub.name.as_deref(),
                wanted = %rfc3339(start),
                from = %rfc3339(oldest),
                "the watermark is older than the activity log keeps (90 days); entries before {} can no longer be fetched",
                rfc3339(oldest)
            );
            start = oldest;
        }
        let end = (cursor.watermark.max(start) + chunk).min(now);
        (to_ticks(start), to_ticks(end.max(start)))
    }

    /// Drains one query to its last page; the last page's transaction moves
    /// the watermark. Returns how far it moved it (the query's end, or
    /// Azure's "now" when that is earlier), and what the query did.
    async fn query(
        &self,
        sub: &SubscriptionConfig,
        tokens: &Arc<TokenSource>,
        start: Timestamp,
        end: Timestamp,
        beat: &Heartbeat,
    ) -> Result<(Timestamp, PollReport), PollError> {
        let mut q = Query::new(&self.client, sub, start, end);
        while !q.is_done() {
            self.read_page(sub, tokens, &mut q, true, beat).await?;
        }
        Ok((q.safe_end.max(start), q.report))
    }

    /// Reads `q`'s next page and records what it keeps; with `commit`, the
    /// last page's transaction moves the watermark to the query's safe end.
    async fn read_page(
        &self,
        sub: &SubscriptionConfig,
        tokens: &Arc<TokenSource>,
        q: &mut Query,
        commit: bool,
        beat: &Heartbeat,
    ) -> Result<(), PollError> {
        let Some(url) = q.next.take() else {
            return Ok(());
        };
        let first = q.report.pages == 0;
        let requested_at = Utc::now();
        let fetched = self.client.fetch(&url, tokens, beat).await?;
        q.report.count_page(&fetched);
        self.learn_skew(fetched.server_date);
        if first && let Some(date) = fetched.server_date {
            q.report.skew = Some(date - requested_at);
            // `Date` has one-second resolution and was stamped after the
            // query started: a second less is safe.
            let azure_now = date - chrono::Duration::seconds(1);
            if azure_now < q.safe_end {
                q.safe_end = to_ticks(azure_now);
            }
        }
        // Of every entry on the page, whatever its status.
        let previous = q.reach;
        q.reach = Reach::of(fetched.page.items.iter().filter_map(|item| match item {
            Item::Entry(e) => Some(e.event_timestamp),
            Item::Malformed(_) => None,
        }));
        let fetched_count = fetched.page.items.len();
        let (entries, skipped, malformed) = keep(sub, fetched.page.items, q.end, &mut q.report);
        let next = match &fetched.page.next_link {
            Some(link) => Some(self.client.next_page(link)?),
            None => None,
        };
        if let Some(n) = &next {
            q.paging.check(n, previous, q.reach)?;
        }
        let window = window_of(sub);
        let advance = (commit && next.is_none()).then(|| Advance {
            watermark: q.safe_end,
            prune_before: q.safe_end.max(q.start) - window,
        });
        let rec = self
            .store
            .record_page(sub.id.as_str(), entries, skipped, malformed, advance)
            .await?;
        q.report.count_recorded(&rec);
        self.progress
            .track(sub.id.as_str())
            .page(fetched_count, rec.new);
        if rec.new > 0 {
            self.outbox_ready.notify_one();
        }
        q.next = next;
        Ok(())
    }
}

/// One query in progress: `[start, end]` read page by page, newest first.
struct Query {
    start: Timestamp,
    end: Timestamp,
    /// The next page to read; `None` once the last one was read.
    next: Option<Url>,
    /// How far the watermark may move once the query is done: its end, or
    /// Azure's "now" (from the first page's `Date`) when that is earlier.
    safe_end: Timestamp,
    /// The `eventTimestamp`s the last page read reached.
    reach: Option<Reach>,
    report: PollReport,
    paging: Paging,
}

/// Paging that never ends, noticed (a broken proxy or service): a
/// `nextLink` already followed in the same query, pages that stop moving
/// back in time, or more pages than any window holds. Each fails the poll;
/// the next interval tries again.
#[derive(Debug, Default)]
struct Paging {
    followed: std::collections::HashSet<String>,
    /// Pages in a row that reached no older entry than the one before.
    stalled: usize,
}

/// Pages in a row that do not move back in time before paging is taken
/// for a loop (pages hold about 200 entries; 100 pages of one instant is
/// no real log).
const MAX_STALLED_PAGES: usize = 100;

/// Pages one query may read: 20 million entries at about 200 a page, far
/// beyond what one query's window (at most an hour past the look-back)
/// holds.
const MAX_PAGES_PER_QUERY: usize = 100_000;

impl Paging {
    fn check(
        &mut self,
        next: &Url,
        previous: Option<Reach>,
        page: Option<Reach>,
    ) -> Result<(), AzureError> {
        let pages = self.followed.len() + 1;
        if !self.followed.insert(next.as_str().to_string()) {
            return Err(AzureError::EndlessPaging {
                pages,
                why: "a nextLink led back to a page already read in this query",
            });
        }
        if let (Some(prev), Some(this)) = (previous, page) {
            if this.oldest >= prev.oldest && this.newest >= prev.newest {
                self.stalled += 1;
            } else {
                self.stalled = 0;
            }
        }
        if self.stalled >= MAX_STALLED_PAGES {
            return Err(AzureError::EndlessPaging {
                pages,
                why: "pages stopped moving back in time",
            });
        }
        if pages > MAX_PAGES_PER_QUERY {
            return Err(AzureError::EndlessPaging {
                pages,
                why: "more pages than any window holds",
            });
        }
        Ok(())
    }
}

impl Query {
    fn new(
        client: &ActivityLogClient,
        sub: &SubscriptionConfig,
        start: Timestamp,
        end: Timestamp,
    ) -> Self {
        Query {
            start,
            end,
            next: Some(client.first_page(sub.id.as_str(), start, end)),
            safe_end: end,
            reach: None,
            report: PollReport {
                queries: 1,
                ..PollReport::default()
            },
            paging: Paging::default(),
        }
    }

    fn is_done(&self) -> bool {
        self.next.is_none()
    }
}

/// The items of one page that `sub` keeps (by status): entries to record,
/// and malformed ones to quarantine, stamped with the query's `end`; and
/// the entries it skips for their status, for the journal.
fn keep(
    sub: &SubscriptionConfig,
    items: Vec<Item>,
    end: Timestamp,
    report: &mut PollReport,
) -> (Vec<Entry>, Vec<Entry>, Vec<(Malformed, Timestamp)>) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut skipped: Vec<Entry> = Vec::new();
    let mut malformed: Vec<(Malformed, Timestamp)> = Vec::new();
    for item in items {
        report.fetched += 1;
        // An entry without a status cannot be judged: keep it rather than lose it.
        let kept = item.status().is_none_or(|s| sub.keeps(s));
        if !kept {
            report.skipped_status += 1;
            if let Item::Entry(e) = item {
                skipped.push(e);
            }
            continue;
        }
        report.kept += 1;
        match item {
            Item::Entry(e) => entries.push(e),
            Item::Malformed(m) => {
                tracing::warn!(
                    subscription_id = %sub.id,
                    subscription_name = sub.name.as_deref(),
                    reason = %m.reason,
                    key = %m.key,
                    "malformed activity log entry quarantined in the dead-letter table"
                );
                malformed.push((m, end));
            }
        }
    }
    (entries, skipped, malformed)
}

/// `sub`'s look-back window, as a span of time to do sums with.
fn window_of(sub: &SubscriptionConfig) -> chrono::Duration {
    chrono::Duration::from_std(sub.schedule.window()).unwrap_or(chrono::Duration::MAX)
}
