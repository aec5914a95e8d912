//! What the tests that run the real binary share (as linkerd2-proxy's
//! integration crate does: the product carries no test hooks). Fakes on
//! 127.0.0.1 with port 0, each in a file of its own:
//!
//! - `arm.rs`: Azure Resource Manager's Activity Logs - List call and the
//!   entries it serves (paging over a snapshot, late visibility, a skewed
//!   `Date`, injected faults);
//! - `detection.rs`: what detection reads (the handlers' action groups and
//!   alerts and the subscription list on the same ARM; the Guardrails
//!   GraphQL API);
//! - `entra_id.rs`: the Entra ID token endpoint, over TLS;
//! - `ingest.rs`: the Guardrails ingestion endpoint;
//! - `fakes.rs`: the three servers started together, and what a test sets
//!   and reads on them.
//!
//! Each can also answer with a body that never ends (`endless_body`).
//!
//! And the harness around them:
//!
//! - `harness.rs`: a test's directory, configuration and state backend, and
//!   the binary run against the fakes (`on_both_backends!`);
//! - `process.rs`: a finished run and a running daemon;
//! - `wait.rs`: polling with a deadline;
//! - `deliveries.rs`: comparing deliveries with expectations, event by event;
//! - `admin.rs`: the daemon's metrics and health endpoints;
//! - `postgres.rs`: a real PostgreSQL server of the test's own;
//! - `terminal.rs`: a pseudo-terminal for the binary's stderr.
#![allow(dead_code)]

pub mod admin;
pub mod arm;
pub mod deliveries;
pub mod detection;
pub mod entra_id;
pub mod fakes;
pub mod harness;
pub mod ingest;
pub mod postgres;
pub mod process;
pub mod terminal;
pub mod wait;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

// What the tests use most, at `support::`; each test crate uses a part of it.
#[allow(unused_imports)]
pub use self::{
    arm::{
        ArmRequest, AzureState, FakeEntry, Fault, Flood, SUB_A, SUB_B, arrived_late, entry,
        entry_ago, spread, ticks,
    },
    deliveries::{assert_at_least_once, assert_exactly_once, counts, ids},
    entra_id::{CLIENT_ID, CLIENT_SECRET, TENANT},
    fakes::Fakes,
    harness::{Backend, Harness},
    ingest::{INGEST_TOKEN, IngestMode, IngestState, posted_id},
    process::{Daemon, Run},
    wait::{eventually, eventually_async, within},
};

/// State a fake server shares with the test.
pub type Shared<T> = Arc<Mutex<T>>;

/// 64 KiB of JSON whitespace: what an endless body repeats.
static SPACES: [u8; 65536] = [b' '; 65536];

/// A body that starts with `start` and never ends (a broken proxy's), its
/// bytes counted into `sent` as the server takes them.
pub fn endless_body(start: &'static str, sent: Arc<AtomicU64>) -> axum::body::Body {
    sent.fetch_add(start.len() as u64, Ordering::Relaxed);
    let first = futures_util::stream::iter([Ok(bytes::Bytes::from_static(start.as_bytes()))]);
    let rest = futures_util::stream::repeat_with(move || {
        sent.fetch_add(SPACES.len() as u64, Ordering::Relaxed);
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(&SPACES))
    });
    axum::body::Body::from_stream(futures_util::StreamExt::chain(first, rest))
}

/// A poisoned lock (a test panicked holding it) still shows the state.
fn lock<T>(m: &Shared<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
