//! The forwarder: drains the outbox to the Guardrails ingestion endpoint.
//!
//! Events leave one per POST, rendered in the configured [`Format`], taken
//! from the outbox round-robin across subscriptions (oldest first within one;
//! see `Store::next_batch`), as many in flight as the adaptive limit allows
//! (`concurrency.rs`: it grows while the endpoint keeps up and shrinks on
//! 429/503 or a rising round-trip time). Connections are kept alive and
//! reused; over https the client offers HTTP/2 and uses it when the endpoint
//! accepts (ALPN). An event is removed from the outbox only after the
//! endpoint answers 2xx, so a crash at any moment can at worst send again the
//! events whose POST succeeded just before it.
//!
//! What each answer means:
//! - 2xx: delivered; the row is deleted.
//! - 400, 409, 413, 415, 422 and other 4xx about the event itself: rejected for
//!   good; the event moves to the dead-letter table (see `dead-letters`), is
//!   logged, and is not retried.
//! - 401, 403, 404, 405: the URL or its token is wrong, not the event. Nothing is
//!   dead-lettered; delivery pauses and retries with backoff, loudly, until the
//!   operator fixes the URL (events keep accumulating in the outbox meanwhile).
//! - 408, 429, 5xx, timeouts, refused connections: retried, that event not
//!   before its `Retry-After`; 429, 502-504, 408, timeouts and refused
//!   connections are also back-pressure, which lowers the limit. Delivery as a
//!   whole backs off only when nothing gets through even at the lowest limit.
//! - Any answer whose reply is past [`REPLY_LIMIT`] or cut off: not an answer
//!   at all, a 2xx included, and never dead-lettered; retried as its status
//!   says, else a reply cut off (or timed out) as back-pressure, one past
//!   the limit as a failure.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use tokio::sync::{Notify, watch};

use crate::concurrency::{Concurrency, Signal};
use crate::config::{DeliveryConcurrency, Format, GuardrailsConfig, IngestUrl};
use crate::http::{Limit, describe};
use crate::outage::{self, Outages, Resource};
use crate::retry::{Backoff, retry_after};
use crate::store::{OutboxEvent, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the ingestion endpoint is unavailable ({last}); {pending} event(s) stay in the outbox for the next run"
    )]
    Unavailable { pending: i64, last: String },
}

/// How often an idle forwarder looks at the outbox anyway: events put back by
/// `dead-letters retry` (another process) are noticed within this.
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// The most of a reply that is read: the endpoint answers with a status
/// only, so anything near this is not the endpoint (a broken proxy).
pub const REPLY_LIMIT: Limit = Limit::kib(64);

/// The outcome of one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A 2xx, with its status (for the journal).
    Acked(u16),
    /// Rejected for good: dead-letter it.
    Rejected(String),
    /// Try again later; the endpoint may have said when.
    Retry {
        reason: String,
        after: Option<Duration>,
        kind: RetryKind,
    },
}

/// Why a delivery is to be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// The endpoint is overloaded or unreachable: fewer POSTs in flight.
    BackPressure,
    /// It failed (500, ...): retry, the limit stays.
    Failed,
    /// The URL or its token is not accepted: nothing gets through until an
    /// operator fixes it.
    Misconfigured,
}

/// What a POST's non-2xx answer means (see the module's comment); `after`
/// is its `Retry-After`.
fn answer(status: StatusCode, after: Option<Duration>) -> Delivery {
    let reason = format!("HTTP {status}");
    match status {
        StatusCode::REQUEST_TIMEOUT
        | StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Delivery::Retry {
            reason,
            after,
            kind: RetryKind::BackPressure,
        },
        StatusCode::UNAUTHORIZED
        | StatusCode::FORBIDDEN
        | StatusCode::NOT_FOUND
        | StatusCode::METHOD_NOT_ALLOWED => Delivery::Retry {
            reason: format!(
                "{reason}: the ingestion URL or its token is not accepted; check [guardrails] ingest_url"
            ),
            after,
            kind: RetryKind::Misconfigured,
        },
        s if s.is_client_error() => Delivery::Rejected(reason),
        _ => Delivery::Retry {
            reason,
            after,
            kind: RetryKind::Failed,
        },
    }
}

/// Delivered-event counts per subscription, read and reset by the poll log line.
#[derive(Debug, Default, Clone)]
pub struct Delivered(Arc<Mutex<HashMap<String, u64>>>);

impl Delivered {
    fn add(&self, subscription: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(subscription.to_string()).or_default() += 1;
    }
    pub fn take(&self, subscription: &str) -> u64 {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(subscription).unwrap_or(0)
    }
}

/// What one round of delivery did.
#[derive(Debug, Default)]
struct Round {
    attempted: usize,
    acked: usize,
    retry: Option<(String, Option<Duration>)>,
    /// The state database failed: no more POSTs leave in this round.
    store_error: Option<StoreError>,
}

pub struct Forwarder {
    poster: Poster,
    limit: Arc<Concurrency>,
    store: Store,
    backoff: Backoff,
    pub delivered: Delivered,
    /// Events that were told to wait (`Retry-After`), and until when.
    not_before: Mutex<HashMap<i64, Instant>>,
    /// The subscription served last, where the next batch's rotation starts.
    last_served: Mutex<Option<String>>,
    /// Where outages of the endpoint and the state database are told.
    outages: Arc<Outages>,
    /// Outcomes the state database did not take yet.
    unwritten: Mutex<Unwritten>,
    progress: crate::progress::Progress,
}

/// Outcomes of completed POSTs that the state database did not take (full,
/// read-only, gone): events the endpoint accepted, or rejected for good,
/// by sequence number (and subscription). They stay in the outbox until
/// written, so every outbox read skips them and every round writes them
/// before anything else is sent: none is sent twice. POSTs in flight when
/// the write failed are completed and their outcomes held the same way.
#[derive(Debug, Default)]
struct Unwritten {
    acks: Vec<Accepted>,
    rejects: Vec<(i64, String)>,
}

/// An event the endpoint accepted: its outbox sequence number, the HTTP
/// status (for the journal) and its subscription.
type Accepted = (i64, u16, String);

/// The smallest outbox read, so that a low limit does not mean tiny reads.
const MIN_BATCH: usize = 32;

/// What a POST needs, owned: each one runs as a task of its own, so that it
/// makes progress (and its round trip is timed) however busy the round that
/// started it is with the state database.
#[derive(Clone)]
struct Poster {
    http: reqwest::Client,
    url: IngestUrl,
    format: Format,
    timeout: Duration,
    limit: Arc<Concurrency>,
}

impl Poster {
    /// POSTs one event, and tells the concurrency limit how it went.
    async fn deliver(&self, event: &OutboxEvent) -> Delivery {
        let started = Instant::now();
        let outcome = self.post(event).await;
        let signal = match &outcome {
            Delivery::Retry {
                kind: RetryKind::BackPressure,
                ..
            } => Signal::BackPressure,
            _ => Signal::Answered,
        };
        self.limit.observe(started.elapsed(), signal);
        outcome
    }

    async fn post(&self, event: &OutboxEvent) -> Delivery {
        let body = match crate::format::render_bytes(self.format, &event.entry) {
            Ok(b) => b,
            Err(reason) => return Delivery::Rejected(reason),
        };
        let sent = self
            .http
            .post(self.url.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(self.timeout)
            .send()
            .await;
        crate::metrics::endpoint_request(sent.as_ref().ok().map(|r| r.status().as_u16()));
        let resp = match sent {
            // reqwest errors print their URL, which holds the endpoint's token.
            Err(e) => {
                return Delivery::Retry {
                    reason: describe(&e.without_url()),
                    after: None,
                    kind: RetryKind::BackPressure,
                };
            }
            Ok(r) => r,
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        let outcome = if status.is_success() {
            Delivery::Acked(status.as_u16())
        } else {
            answer(status, after)
        };
        // Read whole (the connection is then reused): an answer counts only
        // once its reply has ended within the limit.
        match crate::http::read(resp, REPLY_LIMIT).await {
            Ok(_) => outcome,
            Err(e) => Delivery::Retry {
                reason: format!("HTTP {status}, but {e}"),
                after,
                kind: match outcome {
                    Delivery::Retry { kind, .. } => kind,
                    _ if e.is_too_large() => RetryKind::Failed,
                    _ => RetryKind::BackPressure,
                },
            },
        }
    }

    /// Delivers `ev`, not before `slot`.
    async fn deliver_at(
        self,
        ev: OutboxEvent,
        slot: Option<tokio::time::Instant>,
    ) -> (OutboxEvent, Delivery) {
        if let Some(at) = slot {
            tokio::time::sleep_until(at).await;
        }
        let outcome = self.deliver(&ev).await;
        (ev, outcome)
    }
}

/// A POST's task: aborted when dropped (a round abandoned at shutdown), and
/// a task that failed (a panic) is a failed delivery of its event, retried.
struct Flight {
    task: tokio::task::JoinHandle<(OutboxEvent, Delivery)>,
    /// The event's identity, for a task that ends without its outcome.
    event: OutboxEvent,
}

impl Flight {
    fn start(poster: &Poster, ev: OutboxEvent, slot: Option<tokio::time::Instant>) -> Flight {
        let event = OutboxEvent {
            seq: ev.seq,
            subscription_id: ev.subscription_id.clone(),
            event_data_id: ev.event_data_id.clone(),
            entry: String::new(),
            attempts: ev.attempts,
        };
        Flight {
            task: tokio::spawn(poster.clone().deliver_at(ev, slot)),
            event,
        }
    }
}

impl std::future::Future for Flight {
    type Output = (OutboxEvent, Delivery);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        std::pin::Pin::new(&mut this.task)
            .poll(cx)
            .map(|r| match r {
                Ok(done) => done,
                // Not the panic's message: it could hold what the POST was
                // built from (the URL and its token).
                Err(e) => (
                    this.event.clone(),
                    Delivery::Retry {
                        reason: format!(
                            "the delivery's task {} without an answer",
                            if e.is_panic() {
                                "panicked"
                            } else {
                                "was cancelled"
                            }
                        ),
                        after: None,
                        kind: RetryKind::Failed,
                    },
                ),
            })
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Forwarder {
    pub fn new(
        http: reqwest::Client,
        config: &GuardrailsConfig,
        store: Store,
        backoff: Backoff,
        delivered: Delivered,
        outages: Arc<Outages>,
    ) -> Self {
        let limit = Arc::new(match config.concurrency {
            DeliveryConcurrency::Adaptive { max } => {
                Concurrency::adaptive(crate::concurrency::INITIAL_WINDOW, max)
            }
            DeliveryConcurrency::Fixed(n) => Concurrency::fixed(n),
        });
        Forwarder {
            poster: Poster {
                http,
                url: config.ingest_url.clone(),
                format: config.format,
                timeout: config.timeout,
                limit: limit.clone(),
            },
            limit,
            store,
            backoff,
            delivered,
            not_before: Mutex::new(HashMap::new()),
            last_served: Mutex::new(None),
            outages,
            unwritten: Mutex::new(Unwritten::default()),
            progress: crate::progress::Progress::default(),
        }
    }

    /// Deliveries counted for a `--once` run's progress bars as well.
    pub fn with_progress(self, progress: crate::progress::Progress) -> Self {
        Forwarder { progress, ..self }
    }

    /// POSTs allowed in flight now.
    pub fn concurrency_limit(&self) -> usize {
        self.limit.limit()
    }

    /// Delivers waiting events, as many POSTs in flight as the limit allows,
    /// refilling as they complete, until the outbox is empty (but for events
    /// told to wait) or delivery must pause: the URL is refused, or nothing
    /// gets through even at the lowest limit. Outcomes are written as soon as
    /// their POSTs complete: those that complete together share one
    /// transaction. When the outbox cannot be read, or outcomes written, what
    /// is in flight is finished and written first, and the round ends saying
    /// so (`store_error`); `Err` only for a state this build cannot use.
    async fn round(&self) -> Result<Round, StoreError> {
        let mut round = Round::default();
        if let Err(e) = self.write_unwritten().await {
            if e.is_config() {
                return Err(e);
            }
            round.store_error = Some(e);
            return Ok(round);
        }
        let mut queue: VecDeque<OutboxEvent> = VecDeque::new();
        let mut flying: Vec<i64> = Vec::new();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut exhausted = false;
        let mut stop = false;
        // When the next POST may leave (pacing, see `Concurrency::spacing`).
        let mut next_slot = tokio::time::Instant::now();
        loop {
            if !stop {
                let limit = self.limit.limit();
                if queue.len() < limit && !exhausted {
                    match self.refill(&mut queue, &flying, limit).await {
                        Ok(e) => exhausted = e,
                        Err(e) => {
                            round.store_error = Some(e);
                            stop = true;
                        }
                    }
                }
                while !stop && in_flight.len() < limit {
                    let Some(ev) = queue.pop_front() else { break };
                    flying.push(ev.seq);
                    self.limit.started(in_flight.len() + 1);
                    let slot = self.pace(&mut next_slot);
                    in_flight.push(Flight::start(&self.poster, ev, slot));
                }
            }
            let Some(first) = in_flight.next().await else {
                break;
            };
            let mut done = vec![first];
            while let Some(Some(more)) = futures::FutureExt::now_or_never(in_flight.next()) {
                done.push(more);
            }
            // The freed slots are filled only once these outcomes are
            // written: what a crash can leave acknowledged but not written
            // (and so sent again) stays within the limit.
            round.attempted += done.len();
            stop |= self.settle(&done, &mut round).await?;
            stop |= round.store_error.is_some();
            flying.retain(|seq| !done.iter().any(|(ev, _)| ev.seq == *seq));
        }
        if round.retry.is_none()
            && let Some(due) = self.next_due()
        {
            // Only events told to wait are left: come back when the first is due.
            round.retry = Some((
                "waiting for Retry-After".into(),
                Some(due.saturating_duration_since(Instant::now())),
            ));
        }
        Ok(round)
    }

    /// Reads the next outbox batch into `queue`, round-robin from the
    /// subscription served last, skipping events in flight, queued, or told
    /// to wait; true when the outbox had nothing more.
    async fn refill(
        &self,
        queue: &mut VecDeque<OutboxEvent>,
        flying: &[i64],
        limit: usize,
    ) -> Result<bool, StoreError> {
        let mut skip: Vec<i64> = flying
            .iter()
            .copied()
            .chain(queue.iter().map(|e| e.seq))
            .collect();
        skip.extend(self.waiting());
        {
            let held = self.lock_unwritten();
            skip.extend(held.acks.iter().map(|(seq, _, _)| *seq));
            skip.extend(held.rejects.iter().map(|(seq, _)| *seq));
        }
        let want = (limit * 2).max(MIN_BATCH);
        let after = self.lock_last().clone();
        let batch = self.store.next_batch(want, skip, after).await?;
        let exhausted = batch.is_empty();
        if let Some(last) = batch.last() {
            *self.lock_last() = Some(last.subscription_id.clone());
        }
        queue.extend(batch);
        Ok(exhausted)
    }

    /// When the next POST may leave, if starts are paced (see
    /// `Concurrency::spacing`); moves `next_slot` one gap on.
    fn pace(&self, next_slot: &mut tokio::time::Instant) -> Option<tokio::time::Instant> {
        let gap = self.limit.spacing()?;
        let at = (*next_slot).max(tokio::time::Instant::now());
        *next_slot = at + gap;
        Some(at)
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_served.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        self.not_before.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events still waiting for their `Retry-After`; forgets those now due.
    fn waiting(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut w = self.lock_waiting();
        w.retain(|_, due| *due > now);
        w.keys().copied().collect()
    }

    fn next_due(&self) -> Option<Instant> {
        self.lock_waiting().values().min().copied()
    }

    /// Records the outcomes of completed POSTs in one transaction; true when
    /// delivery should pause (see `round`).
    async fn settle(
        &self,
        done: &[(OutboxEvent, Delivery)],
        round: &mut Round,
    ) -> Result<bool, StoreError> {
        let mut acks = Vec::new();
        let mut rejects = Vec::new();
        let mut failures = Vec::new();
        for (ev, outcome) in done {
            match outcome {
                Delivery::Acked(status) => acks.push((ev.seq, *status)),
                Delivery::Rejected(reason) => {
                    tracing::error!(
                        subscription_id = %ev.subscription_id,
                        event_data_id = %ev.event_data_id,
                        %reason,
                        "the ingestion endpoint rejected an event; moved to the dead-letter table"
                    );
                    rejects.push((ev.seq, reason.clone()));
                }
                Delivery::Retry { reason, after, .. } => {
                    failures.push((ev.seq, reason.clone()));
                    if let Some(a) = after {
                        self.lock_waiting().insert(ev.seq, Instant::now() + *a);
                    }
                    let after = round.retry.as_ref().and_then(|(_, a)| *a).max(*after);
                    round.retry = Some((reason.clone(), after));
                }
            }
        }
        let accepted: Vec<Accepted> = done
            .iter()
            .filter_map(|(ev, o)| match o {
                Delivery::Acked(status) => Some((ev.seq, *status, ev.subscription_id.clone())),
                _ => None,
            })
            .collect();
        let any_acked = !accepted.is_empty();
        round.acked += accepted.len();
        match self.store.settle(acks, rejects.clone(), failures).await {
            Ok(()) => self.count_delivered(&accepted),
            Err(e) if e.is_config() => return Err(e),
            Err(e) => {
                // Held, never sent again: written before anything else.
                let mut held = self.lock_unwritten();
                held.acks.extend(accepted);
                held.rejects.extend(rejects);
                drop(held);
                round.store_error.get_or_insert(e);
            }
        }
        let pause = self.pauses(done);
        if !pause && any_acked {
            round.retry = None;
        }
        Ok(pause)
    }

    /// Whether these outcomes pause delivery. A refused URL pauses it at
    /// once. Other retries pause it only when nothing gets through even at
    /// the lowest limit; while the limit can still shrink, or some POSTs
    /// succeed, delivery goes on.
    fn pauses(&self, done: &[(OutboxEvent, Delivery)]) -> bool {
        let retry = |kind: Option<RetryKind>| {
            done.iter().any(|(_, o)| match o {
                Delivery::Retry { kind: k, .. } => kind.is_none_or(|want| *k == want),
                _ => false,
            })
        };
        let any_acked = done.iter().any(|(_, o)| matches!(o, Delivery::Acked(_)));
        retry(Some(RetryKind::Misconfigured))
            || (retry(None) && !any_acked && self.limit.at_floor())
    }

    /// Writes the outcomes the state database did not take when their POSTs
    /// completed (see [`Unwritten`]).
    async fn write_unwritten(&self) -> Result<(), StoreError> {
        let (acks, rejects) = {
            let held = self.lock_unwritten();
            if held.acks.is_empty() && held.rejects.is_empty() {
                return Ok(());
            }
            (held.acks.clone(), held.rejects.clone())
        };
        let seqs = acks
            .iter()
            .map(|(seq, status, _)| (*seq, *status))
            .collect();
        self.store.settle(seqs, rejects, Vec::new()).await?;
        *self.lock_unwritten() = Unwritten::default();
        self.count_delivered(&acks);
        Ok(())
    }

    /// Counts events whose delivery is written, by subscription.
    fn count_delivered(&self, acks: &[Accepted]) {
        for (_, _, sub) in acks {
            self.delivered.add(sub);
            self.progress.delivered(sub);
            crate::metrics::delivered(sub);
        }
    }

    fn lock_unwritten(&self) -> std::sync::MutexGuard<'_, Unwritten> {
        self.unwritten.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `shutdown` turns true, waking when `ready` is notified.
    /// Outages of the endpoint or the state database are waited out (see
    /// `outage.rs`); only a state this build cannot use ends it.
    pub async fn run(
        &self,
        ready: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), StoreError> {
        let mut delays = self.backoff.delays();
        let mut store_delays = outage::backoff().delays();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let mut round = self.round().await?;
            if let Some(e) = round.store_error.take() {
                let declared = self.outages.failed(Resource::StateStore, &e);
                let wait = outage::next_delay(&mut store_delays);
                crate::log_at!(outage::quiet_if(declared), error = %e, retry_in_ms = wait.as_millis() as u64, "cannot read or write the outbox; retrying");
                if round.acked > 0 {
                    self.outages.recovered(Resource::Endpoint);
                } else if let Some((reason, _)) = &round.retry {
                    self.outages.failed(Resource::Endpoint, reason);
                }
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            self.outages.recovered(Resource::StateStore);
            store_delays = outage::backoff().delays();
            if round.acked > 0 {
                self.outages.recovered(Resource::Endpoint);
            }
            let pause = if let Some((reason, after)) = round.retry {
                self.limit.restart();
                let backoff = delays.next().unwrap_or(self.backoff.max);
                let delay = after.unwrap_or(backoff);
                let declared = round.acked == 0 && self.outages.failed(Resource::Endpoint, &reason);
                crate::log_at!(outage::quiet_if(declared), %reason, retry_in_ms = delay.as_millis() as u64, "delivery to the ingestion endpoint failed; will retry");
                Some(delay)
            } else if round.attempted == 0 {
                None
            } else {
                delays = self.backoff.delays();
                continue;
            };
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = ready.notified(), if pause.is_none() => {}
                _ = tokio::time::sleep(pause.unwrap_or(IDLE_RECHECK)) => {}
            }
        }
    }

    /// Delivers everything in the outbox, giving up once the endpoint has made no
    /// progress for `give_up_after`.
    pub async fn drain(&self, give_up_after: Duration) -> Result<u64, ForwardError> {
        let mut delays = self.backoff.delays();
        let mut delivered = 0u64;
        let mut stalled_since: Option<tokio::time::Instant> = None;
        loop {
            let mut round = self.round().await?;
            delivered += round.acked as u64;
            if let Some(e) = round.store_error.take() {
                // Waited out like the endpoint, within the same patience.
                let since = *stalled_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= give_up_after {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, "cannot read or write the outbox; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Done when nothing was left to try, not even events waiting for
            // their Retry-After.
            if round.attempted == 0 && round.retry.is_none() {
                return Ok(delivered);
            }
            let Some((reason, after)) = round.retry else {
                stalled_since = None;
                delays = self.backoff.delays();
                continue;
            };
            if round.acked > 0 {
                stalled_since = None;
            }
            let since = *stalled_since.get_or_insert_with(tokio::time::Instant::now);
            self.limit.restart();
            if since.elapsed() >= give_up_after {
                let pending = self.store.outbox_depth().await?;
                return Err(ForwardError::Unavailable {
                    pending,
                    last: reason,
                });
            }
            let delay = after
                .unwrap_or_else(|| delays.next().unwrap_or(self.backoff.max))
                .min(
                    give_up_after
                        .saturating_sub(since.elapsed())
                        .max(Duration::from_millis(10)),
                );
            tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "delivery to the ingestion endpoint failed; will retry");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64) -> OutboxEvent {
        OutboxEvent {
            seq,
            subscription_id: "00000000-0000-4000-8000-000000000001".into(),
            event_data_id: "e-1".into(),
            entry: String::new(),
            attempts: 0,
        }
    }

    /// A POST's task that panics is a failed delivery of its event (retried,
    /// never lost or dead-lettered), and the reason does not repeat the
    /// panic's message.
    #[tokio::test]
    async fn a_panicking_post_is_retried_and_its_message_kept_out() {
        let flight = Flight {
            task: tokio::spawn(async { panic!("https://ingest.example/api?token=SECRET-TOKEN") }),
            event: event(7),
        };
        let (ev, outcome) = flight.await;
        assert_eq!(ev.seq, 7);
        match outcome {
            Delivery::Retry { reason, kind, .. } => {
                assert_eq!(kind, RetryKind::Failed);
                assert!(reason.contains("panicked"), "{reason}");
                assert!(!reason.contains("SECRET-TOKEN"), "{reason}");
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    /// A flight dropped before its answer (a round abandoned at shutdown)
    /// stops its POST.
    #[tokio::test]
    async fn a_dropped_flight_aborts_its_post() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _keep = tx;
            std::future::pending::<(OutboxEvent, Delivery)>().await
        });
        drop(Flight {
            task,
            event: event(8),
        });
        // The task's end drops the sender: the receiver sees it closed.
        assert!(
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .is_ok(),
            "the POST's task was not aborted"
        );
    }
}
