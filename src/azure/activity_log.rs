//! The Activity Logs - List call: one page at a time, with retries.
//!
//! `GET {arm}/subscriptions/{id}/providers/Microsoft.Insights/eventtypes/management/values`
//! with `api-version=2015-04-01` and a `$filter` on `eventTimestamp`. Pages are
//! linked by an opaque `nextLink`, followed unchanged, but only to the same
//! origin: the bearer token must never leave for another host.
//!
//! Every GET (pages here; the handlers' reads in `detect.rs`) takes a read from
//! its subscription's budget ([`super::budget`]) and is retried as every ARM
//! request is ([`super::arm`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use url::Url;

use super::arm::Arm;
pub use super::arm::{AzureError, Got, describe};
use super::budget::{ReadBudget, Reads};
use super::credential::TokenSource;
use crate::event::{Page, Timestamp, format_ticks};
use crate::heartbeat::Heartbeat;
use crate::retry::Backoff;

pub const API_VERSION: &str = "2015-04-01";

/// One fetched page, with what the response said about Azure's clock.
#[derive(Debug)]
pub struct Fetched {
    pub page: Page,
    /// The response's `Date` header: Azure's "now" when it answered.
    pub server_date: Option<Timestamp>,
    pub bytes: usize,
    /// Requests this page took, retries included.
    pub requests: usize,
    /// Time spent waiting on `Retry-After`.
    pub throttled: Duration,
    /// This page's share of [`PAGE_BYTES_IN_HAND`], held until the page is
    /// dropped: keep the `Fetched` until the page is recorded.
    pub turn: Option<PageTurn>,
}

/// The bytes of pages parsed and being recorded at once, in the whole
/// process. A page's JSON is parsed into entries and normalized events
/// (about three times its size again) before it is recorded: sixteen
/// catch-up slices doing that at once held about 30 MiB (a page of 200
/// entries is about 480 KB of JSON), where the two cores that parse them,
/// and the one SQLite connection that records them, go no faster with more
/// than a few. Reads in flight are not limited by it (a page waiting for
/// its turn holds only its body); an empty poll's page (a few hundred bytes)
/// takes one KiB of it, so thousands of them never wait.
pub const PAGE_BYTES_IN_HAND: usize = 2 << 20;
static IN_HAND: Semaphore = Semaphore::const_new(PAGE_BYTES_IN_HAND / 1024);

/// A page's turn to be parsed and recorded (see [`PAGE_BYTES_IN_HAND`]).
#[derive(Debug)]
pub struct PageTurn(#[allow(dead_code)] SemaphorePermit<'static>);

impl PageTurn {
    /// Waits for `bytes` (whole KiB, at least one, at most the whole budget)
    /// of `budget`. `None` only if it was closed (never, for [`IN_HAND`]).
    async fn take(budget: &'static Semaphore, bytes: usize) -> Option<PageTurn> {
        let total = PAGE_BYTES_IN_HAND / 1024;
        let kib = (bytes / 1024).clamp(1, total);
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        budget.acquire_many(kib).await.ok().map(PageTurn)
    }
}

#[derive(Debug)]
pub struct ActivityLogClient {
    arm: Arm,
    base: Url,
    /// ARM's read budget per subscription and principal, shared by every
    /// client of the process (polls, catch-up slices, detection).
    budget: Arc<ReadBudget>,
}

impl ActivityLogClient {
    pub fn new(
        http: reqwest::Client,
        base: Url,
        backoff: Backoff,
        request_timeout: Duration,
        budget: Arc<ReadBudget>,
    ) -> Self {
        ActivityLogClient {
            arm: Arm::new(http, backoff, request_timeout),
            base,
            budget,
        }
    }

    /// The first page's URL for entries with `start <= eventTimestamp <= end`.
    pub fn first_page(&self, subscription_id: &str, start: Timestamp, end: Timestamp) -> Url {
        let mut url = self.base.clone();
        let path = format!(
            "{}/subscriptions/{subscription_id}/providers/Microsoft.Insights/eventtypes/management/values",
            self.base.path().trim_end_matches('/')
        );
        url.set_path(&path);
        url.query_pairs_mut()
            .clear()
            .append_pair("api-version", API_VERSION)
            .append_pair(
                "$filter",
                &format!(
                    "eventTimestamp ge '{}' and eventTimestamp le '{}'",
                    format_ticks(start),
                    format_ticks(end)
                ),
            );
        url
    }

    /// Checks a `nextLink` before following it.
    pub fn next_page(&self, link: &str) -> Result<Url, AzureError> {
        let url = Url::parse(link).map_err(AzureError::BadNextLink)?;
        if url.origin() != self.base.origin() {
            return Err(AzureError::ForeignNextLink {
                found: url.origin().ascii_serialization(),
                expected: self.base.origin().ascii_serialization(),
            });
        }
        Ok(url)
    }

    /// Fetches one page, retrying what is worth retrying.
    pub async fn fetch(
        &self,
        url: &Url,
        tokens: &Arc<TokenSource>,
        beat: &Heartbeat,
    ) -> Result<Fetched, AzureError> {
        let got = self.get(url, tokens, beat).await?;
        let turn = PageTurn::take(&IN_HAND, got.body.len()).await;
        let page = Page::parse(&got.body)?;
        Ok(Fetched {
            page,
            server_date: got.server_date,
            bytes: got.body.len(),
            requests: got.requests,
            throttled: got.throttled,
            turn,
        })
    }

    /// A URL on Azure Resource Manager: `path` below the base, with `api-version`.
    pub fn arm_url(&self, path: &str, api_version: &str) -> Url {
        super::arm::url(&self.base, path, api_version)
    }

    /// One ARM GET, whatever it reads (activity log pages, action groups,
    /// alerts, subscriptions), retrying what is worth retrying, after a read
    /// from its subscription's budget. Any answer other than 2xx after the
    /// retries is an [`AzureError`].
    pub async fn get(
        &self,
        url: &Url,
        tokens: &Arc<TokenSource>,
        beat: &Heartbeat,
    ) -> Result<Got, AzureError> {
        let reads = Reads {
            budget: &self.budget,
            key: super::budget::subscription_of(url).map(|s| format!("{}/{s}", tokens.name())),
        };
        self.arm
            .send(|http| http.get(url.clone()), tokens, beat, &reads)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> &'static Semaphore {
        Box::leak(Box::new(Semaphore::new(PAGE_BYTES_IN_HAND / 1024)))
    }

    #[tokio::test]
    async fn full_pages_take_turns_and_empty_ones_pass() {
        let b = budget();
        // Four full pages of 512 KiB fill the budget; a fifth waits.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(PageTurn::take(b, 512 * 1024).await);
        }
        let fifth = tokio::time::timeout(Duration::from_millis(50), PageTurn::take(b, 512 * 1024));
        assert!(fifth.await.is_err(), "a fifth full page waits for its turn");
        // Its turn comes when one is recorded (dropped).
        held.pop();
        assert!(PageTurn::take(b, 512 * 1024).await.is_some());
        // A page bigger than the whole budget still gets a turn (alone).
        drop(held);
        let huge = PageTurn::take(b, 64 << 20).await;
        assert!(huge.is_some());
        drop(huge);
        // Empty polls' pages: a KiB each, thousands at once.
        let mut empty = Vec::new();
        for _ in 0..2000 {
            empty.push(PageTurn::take(b, 300).await);
        }
        assert_eq!(empty.iter().filter(|t| t.is_some()).count(), 2000);
    }
}
