//! The fake Guardrails ingestion endpoint, `POST /api/v5/events/raw?token=...`:
//! it checks the token, records every body, and can be taken down, made to
//! reject events, slowed, given a capacity above which it answers 429, or
//! made to answer with a reply without end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{Shared, endless_body, lock};

pub const INGEST_TOKEN: &str = "ingest-token-DO-NOT-LOG-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    Up,
    Down(u16),
    /// 202, with a reply that never ends; the event is not counted received.
    EndlessReply,
}

#[derive(Default)]
pub struct IngestState {
    pub received: Vec<Value>,
    pub attempts: usize,
    pub mode: Option<IngestMode>,
    /// eventDataIds answered with 400.
    pub reject: HashSet<String>,
    pub delay: Option<Duration>,
    /// Above this many POSTs in flight, answer 429 with `Retry-After: 1`.
    pub capacity: Option<usize>,
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub throttled: usize,
    /// The token accepted in place of `INGEST_TOKEN`, once rotated.
    pub token: Option<String>,
    /// Bytes the endless replies handed to the server so far.
    pub flooded: Arc<AtomicU64>,
}

/// The eventDataId of a posted document, whatever its format.
pub fn posted_id(doc: &Value) -> Option<String> {
    let candidates = [
        doc.pointer("/data/context/activityLog/eventDataId"),
        doc.pointer("/data/alertContext/eventDataId"),
        doc.get("eventDataId"),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|v| v.as_str().map(str::to_string))
}

pub(super) async fn ingest_handler(
    State(st): State<Shared<IngestState>>,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    let delay = {
        let mut s = lock(&st);
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        if s.capacity.is_some_and(|c| s.in_flight > c) {
            s.in_flight -= 1;
            s.attempts += 1;
            s.throttled += 1;
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
        }
        s.delay
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut s = lock(&st);
    s.in_flight -= 1;
    s.attempts += 1;
    let accepted = s.token.as_deref().unwrap_or(INGEST_TOKEN);
    if q.get("token").map(String::as_str) != Some(accepted) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match s.mode {
        Some(IngestMode::Down(code)) => {
            return StatusCode::from_u16(code)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
                .into_response();
        }
        Some(IngestMode::EndlessReply) => {
            let body = endless_body("", s.flooded.clone());
            return (StatusCode::ACCEPTED, body).into_response();
        }
        _ => {}
    }
    let Ok(doc) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if posted_id(&doc).is_some_and(|id| s.reject.contains(&id)) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    s.received.push(doc);
    StatusCode::ACCEPTED.into_response()
}
