//! The emulated Guardrails raw event endpoint: `POST /api/v5/events/raw?token=...`.
//! It checks the token in the URL, records the `eventDataId` of every event it
//! accepts (whatever the format), and goes through the scenario's outages:
//! 503 (`unavailable`), 500 (`error`), slow answers, or cut connections
//! (`refuse`, the event is not recorded). With a capacity (`[endpoint]`), each
//! accepted event takes `service_time`, and a request beyond `max_in_flight`
//! at once is answered 429 with `Retry-After: 1`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Shared;
use super::scenario::{Endpoint, OutageMode};

/// The endpoint's capacity and what it answered.
#[derive(Debug, Default)]
pub struct Capacity {
    max_in_flight: usize,
    service_time: Duration,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    requests: AtomicU64,
    throttled: AtomicU64,
}

/// A request being served; it leaves the count when dropped.
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the endpoint answered, for the report.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CapacityReport {
    /// POSTs with a valid token.
    pub requests: u64,
    /// Of those, answered 429 because `max_in_flight` were being served.
    pub throttled: u64,
    pub peak_in_flight: usize,
    /// 0: no limit.
    pub max_in_flight: usize,
    pub service_time_ms: u64,
}

impl Capacity {
    pub fn new(endpoint: &Endpoint) -> Capacity {
        Capacity {
            max_in_flight: endpoint.max_in_flight,
            service_time: endpoint.service_time,
            ..Capacity::default()
        }
    }

    /// Counts a request in, or `None` (counted as throttled) when
    /// `max_in_flight` are being served already.
    pub fn admit(&self) -> Option<InFlight<'_>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let guard = InFlight(&self.in_flight);
        if self.max_in_flight > 0 && n > self.max_in_flight {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.peak_in_flight.fetch_max(n, Ordering::Relaxed);
        Some(guard)
    }

    pub fn report(&self) -> CapacityReport {
        CapacityReport {
            requests: self.requests.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            peak_in_flight: self.peak_in_flight.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight,
            service_time_ms: self.service_time.as_millis() as u64,
        }
    }
}

/// The eventDataId of a posted document, read without building its tree: only
/// the three places it can be are parsed, everything else is skipped.
pub fn posted_event_data_id(body: &[u8]) -> Option<String> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    struct Id {
        #[serde(rename = "eventDataId")]
        event_data_id: Option<String>,
    }
    #[derive(Deserialize)]
    struct Context {
        #[serde(rename = "activityLog")]
        activity_log: Option<Id>,
    }
    #[derive(Deserialize)]
    struct Data {
        context: Option<Context>,
        #[serde(rename = "alertContext")]
        alert_context: Option<Id>,
    }
    #[derive(Deserialize)]
    struct Posted {
        data: Option<Data>,
        #[serde(rename = "eventDataId")]
        event_data_id: Option<String>,
    }
    let p: Posted = serde_json::from_slice(body).ok()?;
    let data = p.data.as_ref();
    data.and_then(|d| d.context.as_ref())
        .and_then(|c| c.activity_log.as_ref())
        .and_then(|a| a.event_data_id.clone())
        .or_else(|| {
            data.and_then(|d| d.alert_context.as_ref())
                .and_then(|a| a.event_data_id.clone())
        })
        .or(p.event_data_id)
}

pub async fn receive(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    body: bytes::Bytes,
) -> Response {
    if q.get("token").map(String::as_str) != Some(shared.ingest_token.as_str()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(_in_flight) = shared.endpoint.admit() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "too many requests in flight",
        )
            .into_response();
    };
    if !shared.endpoint.service_time.is_zero() {
        tokio::time::sleep(shared.endpoint.service_time).await;
    }
    match shared.outage() {
        Some((OutageMode::Unavailable, _)) => {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some((OutageMode::Error, _)) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Some((OutageMode::Refuse, _)) => return super::arm::refused_response(),
        Some((OutageMode::Slow, delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let Some(id) = posted_event_data_id(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    shared.record_delivery(&id);
    StatusCode::ACCEPTED.into_response()
}
