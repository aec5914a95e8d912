//! The emulated Guardrails raw event endpoint: `POST /api/v5/events/raw?token=...`.
//! It checks the token in the URL, records the `eventDataId` of every event it
//! accepts (whatever the format), and goes through the scenario's outages:
//! 503 (`unavailable`), 500 (`error`), slow answers, or cut connections
//! (`refuse`, the event is not recorded).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Shared;
use super::scenario::OutageMode;

/// The eventDataId of a posted document, in any of the three formats.
pub fn posted_id(doc: &serde_json::Value) -> Option<&str> {
    [
        doc.pointer("/data/context/activityLog/eventDataId"),
        doc.pointer("/data/alertContext/eventDataId"),
        doc.get("eventDataId"),
    ]
    .into_iter()
    .flatten()
    .find_map(|v| v.as_str())
}

pub async fn receive(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    body: bytes::Bytes,
) -> Response {
    if q.get("token").map(String::as_str) != Some(shared.ingest_token.as_str()) {
        return StatusCode::UNAUTHORIZED.into_response();
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
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(id) = posted_id(&doc) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    shared.record_delivery(id);
    StatusCode::ACCEPTED.into_response()
}
