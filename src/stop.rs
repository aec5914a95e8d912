//! A subscription's stop signal, and its answer: two flags and a `Notify`,
//! about 64 bytes on the heap. The supervisor says [`Stop::stop`]; the
//! timetable (`timetable.rs`) says [`Stop::end`] once the subscription's
//! last poll is over, which a successor on the same subscription, or the
//! daemon's shutdown, waits for. A `watch` channel (what the daemon's few
//! other tasks use) is about 340 bytes: at 10,000 subscriptions, one each
//! was 3 MiB of the daemon's memory for a signal sent once.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Told once to stop; every waiter wakes, and every later wait ends at once.
/// Then ended once nothing of it runs any more.
#[derive(Debug, Default)]
pub struct Stop {
    stopped: AtomicBool,
    ended: AtomicBool,
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
        self.until(Self::is_stopped).await;
    }

    /// Nothing of the subscription runs any more: its last poll is over.
    pub fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Ends once [`Stop::end`] has been called (at once if it was).
    pub async fn ended(&self) {
        self.until(Self::is_ended).await;
    }

    async fn until(&self, done: fn(&Self) -> bool) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a signal between the two
            // still wakes this wait.
            notified.as_mut().enable();
            if done(self) {
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

    #[tokio::test]
    async fn an_end_wakes_its_waiters_and_is_not_a_stop() {
        let stop = Arc::new(Stop::default());
        let s = stop.clone();
        let waiter = tokio::spawn(async move { s.ended().await });
        tokio::task::yield_now().await;
        stop.stop();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished() && !stop.is_ended());
        stop.end();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter was not woken")
            .expect("the waiter panicked");
        assert!(stop.is_ended());
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
