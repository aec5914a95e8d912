//! Waiting for what a test expects: a condition polled until it holds or a
//! deadline passes, never a fixed sleep.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Polls `check` every 50 ms until it holds (true) or `limit` passes (false).
pub async fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it holds, or panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, check: impl FnMut() -> bool) {
    if !within(limit, check).await {
        panic!("timed out after {limit:?} waiting for: {what}");
    }
}

/// [`eventually`] for a check that is itself a request (a query, an HTTP
/// GET): polled every 100 ms.
pub async fn eventually_async<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
