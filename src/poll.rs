//! One poll of one subscription: query -> keep -> record, window by window.
//!
//! A poll queries `eventTimestamp` from `watermark - window` (never before the
//! point where seen ids were pruned) to now, follows every `nextLink`, keeps the
//! entries whose status is configured, and records the new ones in the outbox,
//! one transaction per page. The last page's transaction also moves the
//! watermark to the query's end, so the watermark never passes an entry that
//! is not durably recorded. A watermark far behind (a first run with `--since`,
//! a long outage) is caught up in chunks of [`CATCH_UP_CHUNK`], each committed
//! on its own.
//!
//! Clock skew: the query's end is this host's "now", but the watermark moves only
//! as far as Azure's own clock (the `Date` header, less its one-second
//! resolution), so a host clock running ahead cannot skip entries Azure has yet
//! to stamp.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;

use crate::azure::{ActivityLogClient, AzureError, TokenSource};
use crate::config::{RETENTION, SubscriptionConfig};
use crate::event::{Entry, Item, Malformed, Timestamp, rfc3339, to_ticks};
use crate::store::{Advance, Cursor, Store, StoreError};

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
    pub fn is_transient(&self) -> bool {
        match self {
            PollError::Azure(e) => e.is_transient(),
            PollError::Store(_) => false,
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
    pub watermark: Option<Timestamp>,
    /// Azure's clock minus ours, when a `Date` header told.
    pub skew: Option<chrono::Duration>,
}

impl PollReport {
    pub fn lag(&self, now: Timestamp) -> Option<Duration> {
        self.watermark
            .map(|w| (now - w).to_std().unwrap_or(Duration::ZERO))
    }
}

/// When a subscription's task last showed progress, for the watchdog: a task
/// busy in a poll must beat at every request, or it is taken for hung.
#[derive(Debug, Default)]
pub struct Heartbeat {
    last_ms: std::sync::atomic::AtomicU64,
    busy: std::sync::atomic::AtomicBool,
}

fn process_millis() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_ms
            .store(process_millis(), std::sync::atomic::Ordering::Relaxed);
    }
    pub fn set_busy(&self, busy: bool) {
        self.beat();
        self.busy.store(busy, std::sync::atomic::Ordering::Relaxed);
    }
    /// Busy without a beat for longer than `limit`.
    pub fn stalled(&self, limit: Duration) -> bool {
        let busy = self.busy.load(std::sync::atomic::Ordering::Relaxed);
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        busy && process_millis().saturating_sub(last) > limit.as_millis() as u64
    }
}

/// Polls subscriptions; shared by every subscription's task.
pub struct Poller {
    pub client: ActivityLogClient,
    pub store: Store,
    /// Woken whenever new events are queued.
    pub outbox_ready: Arc<Notify>,
    /// Azure's clock minus ours, from the last `Date` header seen.
    pub skew: std::sync::Mutex<Option<chrono::Duration>>,
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
        let id = sub.id.as_str().to_string();
        let window =
            chrono::Duration::from_std(sub.schedule.window()).unwrap_or(chrono::Duration::MAX);
        let existing = {
            let id = id.clone();
            self.store.call(move |s| s.cursor(&id)).await?
        };
        if existing.is_none() && since.is_none() && self.skew().is_none() {
            // A first run starts one window before Azure's "now", not ours:
            // ask Azure for the time with an empty query before placing it.
            let now = to_ticks(Utc::now());
            let probe = self.client.first_page(&id, now, now);
            let fetched = self.client.fetch(&probe, tokens, beat).await?;
            self.learn_skew(fetched.server_date);
        }
        let mut cursor = {
            let id = id.clone();
            let start = since.unwrap_or_else(|| self.now() - window);
            self.store
                .call(move |s| match s.cursor(&id)? {
                    Some(c) => Ok(c),
                    None => s.init_cursor(&id, to_ticks(start)),
                })
                .await?
        };
        let mut report = PollReport::default();
        loop {
            let now = to_ticks(self.now());
            let (start, end) = self.bounds(sub, &cursor, now);
            report.window_start.get_or_insert(start);
            report.window_end = Some(end);
            report.queries += 1;
            let watermark = self
                .query(sub, tokens, start, end, &mut report, beat)
                .await?;
            cursor.watermark = cursor.watermark.max(watermark);
            cursor.pruned_before = cursor.pruned_before.max(watermark - window);
            report.watermark = Some(cursor.watermark);
            // A chunk that ended before now leaves more to catch up.
            if end >= now || watermark < end {
                break;
            }
        }
        Ok(report)
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
        let window =
            chrono::Duration::from_std(sub.schedule.window()).unwrap_or(chrono::Duration::MAX);
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

    /// Drains one query to its last page; returns the watermark it committed.
    async fn query(
        &self,
        sub: &SubscriptionConfig,
        tokens: &Arc<TokenSource>,
        start: Timestamp,
        end: Timestamp,
        report: &mut PollReport,
        beat: &Heartbeat,
    ) -> Result<Timestamp, PollError> {
        let window =
            chrono::Duration::from_std(sub.schedule.window()).unwrap_or(chrono::Duration::MAX);
        let id = sub.id.as_str().to_string();
        let mut url = self.client.first_page(&id, start, end);
        let mut watermark = end;
        let mut first = true;
        loop {
            let requested_at = Utc::now();
            let fetched = self.client.fetch(&url, tokens, beat).await?;
            report.pages += 1;
            report.requests += fetched.requests;
            report.bytes += fetched.bytes;
            report.throttled += fetched.throttled;
            self.learn_skew(fetched.server_date);
            if first {
                first = false;
                if let Some(date) = fetched.server_date {
                    report.skew = Some(date - requested_at);
                    // `Date` has one-second resolution and was stamped after the
                    // query started: a second less is safe.
                    let azure_now = date - chrono::Duration::seconds(1);
                    if azure_now < watermark {
                        watermark = to_ticks(azure_now);
                    }
                }
            }
            let mut entries: Vec<Entry> = Vec::new();
            let mut malformed: Vec<(Malformed, Timestamp)> = Vec::new();
            for item in fetched.page.items {
                report.fetched += 1;
                // An entry without a status cannot be judged: keep it rather than lose it.
                let kept = item.status().is_none_or(|s| sub.keeps(s));
                if !kept {
                    report.skipped_status += 1;
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
            let next = match &fetched.page.next_link {
                Some(link) => Some(self.client.next_page(link)?),
                None => None,
            };
            let advance = next.is_none().then(|| Advance {
                watermark,
                prune_before: watermark.max(start) - window,
            });
            let sub_id = id.clone();
            let rec = self
                .store
                .call(move |s| s.record_page(&sub_id, &entries, &malformed, advance))
                .await?;
            report.new += rec.new;
            report.duplicate += rec.duplicate;
            report.quarantined += rec.quarantined;
            if rec.new > 0 {
                self.outbox_ready.notify_one();
            }
            match next {
                Some(u) => url = u,
                None => return Ok(watermark.max(start)),
            }
        }
    }
}
