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
