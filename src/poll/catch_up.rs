//! The parallel catch-up: `[start, until]` read in time slices, up to
//! `[azure] catch_up_slices` queries in flight, one page of each at a time.
//!
//! Each query reads a page and comes back here, where the plan
//! (`slices.rs`) decides what next: a last page finishes its slice (and may
//! move the watermark over the contiguous prefix of finished slices); a full
//! page (one with a `nextLink`) splits the rest of its slice over the free
//! slots, or, with none free, follows its `nextLink`. Every page is recorded
//! as it comes (seen ids and outbox, no watermark move); the watermark moves
//! in a transaction of its own once the prefix grows. Every read takes its
//! token from the subscription's read budget first, which paces however
//! many queries the splits make: splits go as far as the budget allows.

use std::sync::Arc;

use futures::StreamExt;

use super::slices::SlicePlan;
use super::{Heartbeat, PollError, PollReport, Poller, Query, window_of};
use crate::azure::TokenSource;
use crate::config::SubscriptionConfig;
use crate::event::{Timestamp, rfc3339};
use crate::store::Advance;

impl Poller {
    /// Catches `[start, until]` up in parallel slices; returns the watermark
    /// committed (the end of the contiguous prefix of finished slices).
    pub(super) async fn catch_up(
        &self,
        sub: &SubscriptionConfig,
        tokens: &Arc<TokenSource>,
        start: Timestamp,
        until: Timestamp,
        report: &mut PollReport,
        beat: &Heartbeat,
    ) -> Result<Timestamp, PollError> {
        let window = window_of(sub);
        let mut plan = SlicePlan::cut(start, until, self.slices);
        let track = self.progress.track(sub.id.as_str());
        tracing::info!(
            subscription_id = %sub.id,
            subscription_name = sub.name.as_deref(),
            from = %rfc3339(start),
            to = %rfc3339(until),
            slices = plan.pending(),
            in_parallel = self.slices,
            "catching up in parallel time slices"
        );
        let read = |mut q: Query| async move {
            let result = self.read_page(sub, tokens, &mut q, false, beat).await;
            (q, result)
        };
        let mut running = futures::stream::FuturesUnordered::new();
        let mut failed: Option<PollError> = None;
        let mut longest_chain = 0;
        loop {
            while failed.is_none()
                && running.len() < self.slices
                && let Some((s, e)) = plan.take()
            {
                running.push(read(Query::new(&self.client, sub, s, e)));
            }
            let Some((q, result)) = running.next().await else {
                break;
            };
            longest_chain = longest_chain.max(q.report.pages);
            let finished = match result {
                Ok(()) => q.is_done(),
                Err(e) => {
                    // Pages in flight are read and recorded; nothing new
                    // starts and no query goes on. The prefix so far is
                    // committed.
                    failed.get_or_insert(e);
                    false
                }
            };
            if !finished && failed.is_none() && !self.split(sub, &mut plan, &q) {
                running.push(read(q));
                continue;
            }
            let moved = finished.then(|| plan.finish(q.start, q.safe_end)).flatten();
            report.absorb(q.report);
            track.cover(start, plan.covered());
            if let Some(watermark) = moved {
                let advance = Advance {
                    watermark,
                    prune_before: watermark - window,
                };
                self.store
                    .record_page(
                        sub.id.as_str(),
                        Vec::new(),
                        Vec::new(),
                        Vec::new(),
                        Some(advance),
                    )
                    .await?;
            }
        }
        report.splits += plan.splits();
        tracing::info!(
            subscription_id = %sub.id,
            subscription_name = sub.name.as_deref(),
            queries = report.queries,
            pages = report.pages,
            new = report.new,
            duplicate = report.duplicate,
            splits = plan.splits(),
            longest_chain,
            watermark = %rfc3339(plan.watermark()),
            stopped_by_error = failed.is_some(),
            "catching up: time slices done"
        );
        match failed {
            Some(e) => Err(e),
            None => Ok(plan.watermark()),
        }
    }

    /// `q` read a full page: splits the rest of its slice over the free
    /// slots, if any (see `SlicePlan::split_dense`). False: `q` is to follow
    /// its `nextLink`.
    fn split(&self, sub: &SubscriptionConfig, plan: &mut SlicePlan, q: &Query) -> bool {
        let Some(page) = q.reach else {
            return false;
        };
        let Some(pieces) = plan.split_dense(q.start, page, q.safe_end, self.slices) else {
            return false;
        };
        tracing::debug!(
            subscription_id = %sub.id,
            from = %rfc3339(q.start),
            to = %rfc3339(page.oldest),
            pieces,
            "a full page: the rest of its slice split into parallel slices"
        );
        true
    }
}
