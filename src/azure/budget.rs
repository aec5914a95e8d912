//! Azure Resource Manager's read budget, spent on purpose rather than
//! discovered through 429s.
//!
//! ARM meters reads per subscription and principal with a token bucket (250
//! reads of burst, refilled at 25 per second). A parallel catch-up, the
//! detection checks and the polls all draw on the same bucket, so every ARM
//! GET here first takes a token from a client-side copy of it, keyed like
//! ARM's (credential and subscription), and every answer's
//! `x-ms-ratelimit-remaining-subscription-reads` brings the copy down to what
//! ARM says is left (never up: other clients of the same principal spend
//! too). A request waits for its token instead of being refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A full bucket is what an absent one means, so buckets refilled to full
/// are dropped this often: an idle subscription's bucket refills within a
/// fraction of a second of its poll, and 10,000 kept for nothing were 2 MiB
/// and more (a map, a key each).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Buckets {
    map: HashMap<String, Bucket>,
    swept: Instant,
}

#[derive(Debug)]
pub struct ReadBudget {
    burst: f64,
    per_second: f64,
    buckets: Mutex<Buckets>,
}

impl ReadBudget {
    pub fn new(burst: u32, per_second: f64) -> Self {
        ReadBudget {
            burst: f64::from(burst.max(1)),
            per_second: per_second.max(0.001),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the buckets that are full again (at most once per [`SWEEP_EVERY`]).
    fn sweep(&self, b: &mut Buckets, now: Instant) {
        if now.saturating_duration_since(b.swept) < SWEEP_EVERY {
            return;
        }
        b.swept = now;
        b.map.retain(|_, bucket| {
            self.refill(bucket, now);
            bucket.tokens < self.burst
        });
        // Give back what a start's or a burst's many buckets took.
        if b.map.capacity() > 4 * b.map.len().max(16) {
            b.map.shrink_to_fit();
        }
    }

    /// Takes a read from `b` if it has one; otherwise how long until it will.
    fn take(&self, b: &mut Bucket, now: Instant) -> Option<Duration> {
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.at = now;
    }

    /// Takes one read from `key`'s budget, waiting until there is one;
    /// returns how long it waited.
    pub async fn acquire(&self, key: &str) -> Duration {
        let started = Instant::now();
        loop {
            let wait = {
                let mut guard = self.lock();
                let now = Instant::now();
                self.sweep(&mut guard, now);
                // The key is copied only for a bucket not yet kept.
                match guard.map.get_mut(key) {
                    Some(b) => self.take(b, now),
                    None => {
                        let mut b = Bucket {
                            tokens: self.burst,
                            at: now,
                        };
                        let wait = self.take(&mut b, now);
                        guard.map.insert(key.to_string(), b);
                        wait
                    }
                }
            };
            match wait {
                None => return started.elapsed(),
                Some(w) => tokio::time::sleep(w).await,
            }
        }
    }

    /// ARM said `remaining` reads are left for `key`.
    pub fn observe(&self, key: &str, remaining: u64) {
        let remaining = remaining as f64;
        let mut m = self.lock();
        let now = Instant::now();
        match m.map.get_mut(key) {
            Some(b) => {
                self.refill(b, now);
                b.tokens = b.tokens.min(remaining);
            }
            // Swept while its read was out (full again): full is what ARM
            // lowers from.
            None if remaining < self.burst => {
                m.map.insert(
                    key.to_string(),
                    Bucket {
                        tokens: remaining,
                        at: now,
                    },
                );
            }
            None => {}
        }
    }

    /// What is left for `key` now (for tests and logs).
    pub fn available(&self, key: &str) -> f64 {
        let mut m = self.lock();
        let now = Instant::now();
        match m.map.get_mut(key) {
            Some(b) => {
                self.refill(b, now);
                b.tokens
            }
            None => self.burst,
        }
    }
}

/// One ARM read's pacing: a token from its subscription's budget before it is
/// sent (none for a URL outside any subscription), and ARM's remaining count
/// from every answer.
pub(super) struct Reads<'a> {
    pub budget: &'a ReadBudget,
    /// `credential/subscription`, as ARM keys the bucket.
    pub key: Option<String>,
}

impl super::arm::Pacing for Reads<'_> {
    async fn admit(&self) {
        if let Some(key) = &self.key {
            let waited = self.budget.acquire(key).await;
            if !waited.is_zero() {
                crate::metrics::budget_wait(waited.as_secs_f64());
            }
        }
    }

    fn observe(&self, headers: &reqwest::header::HeaderMap) {
        if let Some(key) = &self.key
            && let Some(remaining) = headers
                .get("x-ms-ratelimit-remaining-subscription-reads")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        {
            self.budget.observe(key, remaining);
        }
    }
}

/// The subscription a Resource Manager URL is about, if any.
pub fn subscription_of(url: &url::Url) -> Option<String> {
    let mut segments = url.path_segments()?;
    while let Some(s) = segments.next() {
        if s.eq_ignore_ascii_case("subscriptions") {
            return segments
                .next()
                .filter(|id| !id.is_empty())
                .map(str::to_ascii_lowercase);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_burst_is_free_then_reads_are_paced() {
        let b = ReadBudget::new(5, 100.0);
        for _ in 0..5 {
            assert!(b.acquire("k").await < Duration::from_millis(5));
        }
        // The sixth waits for the refill: about 10 ms at 100 per second.
        let waited = b.acquire("k").await;
        assert!(waited >= Duration::from_millis(5), "{waited:?}");
        // Another key has its own bucket.
        assert!(b.acquire("other").await < Duration::from_millis(5));
    }

    #[test]
    fn arm_s_remaining_count_only_lowers_the_budget() {
        let b = ReadBudget::new(250, 25.0);
        futures::executor::block_on(b.acquire("k"));
        b.observe("k", 10);
        assert!(b.available("k") <= 10.5);
        b.observe("k", 200);
        assert!(b.available("k") <= 10.5);
    }

    #[test]
    fn full_buckets_are_dropped_and_arm_s_count_still_lowers_a_dropped_one() {
        let b = ReadBudget::new(250, 25.0);
        futures::executor::block_on(b.acquire("idle"));
        futures::executor::block_on(b.acquire("busy"));
        b.observe("busy", 10);
        let later = Instant::now() + Duration::from_secs(2);
        {
            let mut m = b.lock();
            b.sweep(&mut m, later);
            // "idle" refilled to its burst: dropped; "busy" is at about 60.
            assert_eq!(m.map.keys().collect::<Vec<_>>(), vec!["busy"]);
        }
        assert!(b.available("idle") >= 250.0);
        // ARM's count for a key swept while its read was out still counts.
        b.observe("idle", 7);
        assert!(b.available("idle") <= 7.5, "{}", b.available("idle"));
    }

    #[test]
    fn the_subscription_is_read_from_the_path() {
        let u = url::Url::parse("https://management.azure.com/subscriptions/ABC-1/providers/x?a=b")
            .unwrap();
        assert_eq!(subscription_of(&u).as_deref(), Some("abc-1"));
        let u =
            url::Url::parse("https://management.azure.com/subscriptions?api-version=1").unwrap();
        assert_eq!(subscription_of(&u), None);
    }
}
