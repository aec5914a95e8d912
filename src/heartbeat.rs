//! A subscription task's heartbeat, for the watchdog (`daemon.rs`): a task
//! busy in a poll beats at every request (`azure/arm.rs`), so one that stops
//! beating while busy is taken for hung. A leaf: the ARM client and the poll
//! both use it, and neither should import the other for it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// When a subscription's task last showed progress, for the watchdog: a task
/// busy in a poll must beat at every request, or it is taken for hung.
#[derive(Debug, Default)]
pub struct Heartbeat {
    last_ms: AtomicU64,
    busy: AtomicBool,
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
        self.last_ms.store(process_millis(), Ordering::Relaxed);
    }
    pub fn set_busy(&self, busy: bool) {
        self.beat();
        self.busy.store(busy, Ordering::Relaxed);
    }
    /// Busy without a beat for longer than `limit`.
    pub fn stalled(&self, limit: Duration) -> bool {
        let busy = self.busy.load(Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        busy && process_millis().saturating_sub(last) > limit.as_millis() as u64
    }
}
