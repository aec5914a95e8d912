//! Pruning the delivery journal (`store/journal.rs`) in the background:
//! every [`PRUNE_EVERY`], the rows fetched longer than `[journal]
//! retention` ago go, oldest first, a small batch per transaction with a
//! pause between batches, so that a large backlog of expired rows never
//! holds the state (SQLite's one connection, or PostgreSQL's locks) for
//! longer than one batch: polls and deliveries slip in between. With the
//! journal off (`retention = "0"`), what it held goes the same way.
//!
//! Nothing here is per subscription: an idle daemon's pruning is one look
//! at the oldest rows a minute, whatever the number of subscriptions. On
//! shared state every instance prunes; batches skip the rows another
//! instance is deleting (see `store/postgres/journal.rs`).

use std::time::Duration;

use tokio::sync::watch;

use crate::store::journal::PRUNE_BATCH;
use crate::store::{Store, StoreError};

/// How often the journal is pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The pause between two batches of one pruning pass.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// Prunes every [`PRUNE_EVERY`] until `stop` says so; errors are logged
/// and the next pass tries again (pruning late costs only disk).
pub async fn run(store: Store, retention: Option<Duration>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = prune(&store, retention, Some(&mut stop)).await {
            tracing::warn!(error = %e, "cannot prune the delivery journal; trying again in a minute");
        }
    }
}

/// One pruning pass: batches until the rows fetched before the retention
/// (all of them when the journal is off) are gone, or `stop` says so.
/// Returns how many rows went.
pub async fn prune(
    store: &Store,
    retention: Option<Duration>,
    mut stop: Option<&mut watch::Receiver<bool>>,
) -> Result<usize, StoreError> {
    let keep = retention
        .and_then(|r| chrono::Duration::from_std(r).ok())
        .unwrap_or_default();
    let before = chrono::Utc::now() - keep;
    let mut total = 0;
    loop {
        let n = store.prune_journal(before).await?;
        total += n;
        if i64::try_from(n).unwrap_or(i64::MAX) < PRUNE_BATCH {
            break;
        }
        match stop.as_deref_mut() {
            Some(stop) => {
                tokio::select! {
                    _ = tokio::time::sleep(BETWEEN_BATCHES) => {}
                    _ = stop.changed() => break,
                }
            }
            None => tokio::time::sleep(BETWEEN_BATCHES).await,
        }
    }
    if total > 0 {
        tracing::debug!(rows = total, "delivery journal pruned");
    }
    Ok(total)
}
