//! A subscription task's stop signal: a flag and a `Notify`, about 64 bytes
//! on the heap. A `watch` channel (what the daemon's few other tasks use) is
//! about 340: at 10,000 subscriptions, one each was 3 MiB of the daemon's
//! memory for a signal sent once.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Told once to stop; every waiter wakes, and every later wait ends at once.
#[derive(Debug, Default)]
pub struct Stop {
    stopped: AtomicBool,
    notify: Notify,
}

impl Stop {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Ends once [`Stop::stop`] has been called (at once if it was).
    pub async fn stopped(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a stop between the two
            // still wakes this wait.
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_stop_wakes_every_waiter_and_later_waits_end_at_once() {
        let stop = Arc::new(Stop::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = stop.clone();
                tokio::spawn(async move { s.stopped().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!stop.is_stopped());
        stop.stop();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("a waiter was not woken")
                .expect("the waiter panicked");
        }
        tokio::time::timeout(Duration::from_secs(10), stop.stopped())
            .await
            .expect("a wait after the stop did not end");
    }

    #[test]
    fn it_is_small() {
        assert!(
            std::mem::size_of::<Stop>() <= 64,
            "{}",
            std::mem::size_of::<Stop>()
        );
    }
}
