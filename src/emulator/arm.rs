//! The emulated Azure Resource Manager: the Activity Logs - List call as the
//! spec (`activityLogs_API.json`) and `DOMAIN.md` describe it.
//!
//! - `api-version=2015-04-01` only; a bearer token issued by the emulated
//!   Entra ID is required.
//! - `$filter`: `eventTimestamp ge '<t>'` (required) `and eventTimestamp le '<t>'`
//!   (optional), and at most one of `resourceGroupName`, `resourceUri`,
//!   `resourceProvider`, `correlationId` `eq '<v>'`. Anything else is a 400
//!   with an ARM error body; so is a start older than 90 days.
//! - Newest first, pages of `page_size` linked by an opaque `$skiptoken`.
//! - Faults from the scenario: 429 with `Retry-After` (at random, or from a
//!   token bucket of 250 reads refilled at 25 per second per subscription),
//!   5xx, and connections cut mid-response.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::Shared;
use super::log::Narrow;
use crate::event::{Timestamp, parse_timestamp};

/// Why a `$filter` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

/// A parsed `$filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub narrow: Narrow,
}

/// Parses the spec's `$filter` grammar.
pub fn parse_filter(text: &str) -> Result<Filter, FilterError> {
    let err = |m: String| Err(FilterError(m));
    let mut start = None;
    let mut end = None;
    let mut narrow = Narrow::None;
    let clauses = split_and(text);
    if clauses.is_empty() {
        return err("$filter is empty".into());
    }
    for clause in clauses {
        let clause = clause.trim();
        let mut parts = clause.splitn(3, char::is_whitespace);
        let (Some(field), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return err(format!("cannot parse the clause {clause:?}"));
        };
        let value = value.trim();
        let Some(value) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else {
            return err(format!("the value in {clause:?} must be in single quotes"));
        };
        let op = op.to_ascii_lowercase();
        match (field.to_ascii_lowercase().as_str(), op.as_str()) {
            ("eventtimestamp", "ge") | ("eventtimestamp", "le") => {
                let Some(t) = parse_timestamp(value) else {
                    return err(format!("{value:?} is not a valid time"));
                };
                let slot = if op == "ge" { &mut start } else { &mut end };
                if slot.replace(t).is_some() {
                    return err(format!("eventTimestamp {op} appears twice"));
                }
            }
            (
                f @ ("resourcegroupname" | "resourceuri" | "resourceprovider" | "correlationid"),
                "eq",
            ) => {
                if narrow != Narrow::None {
                    return err("only one of resourceGroupName, resourceUri, resourceProvider, correlationId may be given".into());
                }
                narrow = match f {
                    "resourcegroupname" => Narrow::ResourceGroupName(value.into()),
                    "resourceuri" => Narrow::ResourceUri(value.into()),
                    "resourceprovider" => Narrow::ResourceProvider(value.into()),
                    _ => Narrow::CorrelationId(value.into()),
                };
            }
            _ => return err(format!("the clause {clause:?} is not supported")),
        }
    }
    let Some(start) = start else {
        return err("$filter must contain eventTimestamp ge '<start>'".into());
    };
    if let Some(end) = end
        && end < start
    {
        return err("the end time is before the start time".into());
    }
    Ok(Filter { start, end, narrow })
}

/// Splits on ` and ` outside quotes, case-insensitively.
fn split_and(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut last = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            quoted = !quoted;
        } else if !quoted
            && i + 5 <= bytes.len()
            && bytes[i] == b' '
            && text
                .get(i..i + 5)
                .is_some_and(|w| w.eq_ignore_ascii_case(" and "))
        {
            out.push(&text[last..i]);
            i += 5;
            last = i;
            continue;
        }
        i += 1;
    }
    if last < text.len() && !text[last..].trim().is_empty() {
        out.push(&text[last..]);
    }
    out
}

pub fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// An opaque token: which snapshot (or other fingerprint), and where in it.
pub(super) fn skiptoken(snapshot: u64, offset: usize) -> String {
    format!("{snapshot:016x}{offset:010x}")
}

pub(super) fn parse_skiptoken(t: &str) -> Option<(u64, usize)> {
    if t.len() != 26 {
        return None;
    }
    let snap = u64::from_str_radix(t.get(..16)?, 16).ok()?;
    let off = usize::from_str_radix(t.get(16..)?, 16).ok()?;
    Some((snap, off))
}

/// `GET /subscriptions/{sub}/providers/{provider}/eventtypes/management/values`
pub async fn list(
    State(shared): State<Arc<Shared>>,
    Path((subscription, provider)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !provider.eq_ignore_ascii_case("microsoft.insights") {
        return arm_error(
            StatusCode::NOT_FOUND,
            "NoRegisteredProviderFound",
            "no such provider",
        );
    }
    match q.get("api-version").map(String::as_str) {
        Some("2015-04-01") => {}
        Some(v) => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "InvalidApiVersionParameter",
                &format!(
                    "The api-version '{v}' is invalid. The supported versions are '2015-04-01'."
                ),
            );
        }
        None => {
            return arm_error(
                StatusCode::BAD_REQUEST,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            );
        }
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|b| shared.token_valid(b)) {
        let mut r = arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        );
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer authorization_uri=\"https://login.microsoftonline.com/\", error=\"invalid_token\""),
        );
        return r;
    }
    shared.count_request(&subscription);
    let (remaining, throttled) = shared.throttle(&subscription);
    if let Some(retry_after) = throttled {
        let mut r = arm_error(
            StatusCode::TOO_MANY_REQUESTS,
            "SubscriptionRequestsThrottled",
            &format!(
                "Number of read requests for subscription '{subscription}' exceeded the limit. Please try again after '{retry_after}' seconds."
            ),
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(retry_after));
        return r;
    }
    if let Some(status) = shared.injected_error() {
        return arm_error(
            status,
            "InternalServerError",
            "Encountered internal server error.",
        );
    }
    let now = Utc::now();
    let page_size = shared.page_size();
    let (snapshot_id, snapshot, offset) = match q.get("$skiptoken") {
        Some(t) => {
            let Some((id, off)) = parse_skiptoken(t) else {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidSkipToken",
                    "The $skiptoken is invalid.",
                );
            };
            match shared.log().snapshot(id) {
                Some(s) => (id, s, off),
                None => {
                    return arm_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidSkipToken",
                        "The $skiptoken has expired.",
                    );
                }
            }
        }
        None => {
            let Some(text) = q.get("$filter") else {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "The $filter query parameter is required.",
                );
            };
            let filter = match parse_filter(text) {
                Ok(f) => f,
                Err(FilterError(m)) => {
                    return arm_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("The $filter '{text}' is invalid: {m}."),
                    );
                }
            };
            if filter.start < now - chrono::Duration::days(90) {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "The start time of the query is more than 90 days ago. Activity log entries are kept for 90 days.",
                );
            }
            let end = filter.end.unwrap_or(now);
            let (id, snap) =
                shared
                    .log()
                    .query(&subscription, filter.start, end, &filter.narrow, now);
            (id, snap, 0)
        }
    };
    let select: Option<Vec<String>> = q.get("$select").map(|s| {
        s.split(',')
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .collect()
    });
    let page = snapshot.iter().skip(offset).take(page_size);
    let mut body = String::with_capacity(page_size * 2048 + 256);
    body.push_str("{\"value\":[");
    for (i, e) in page.enumerate() {
        if i > 0 {
            body.push(',');
        }
        match &select {
            None => body.push_str(&e.json),
            Some(fields) => {
                let full = super::log::ActivityLog::get_json(e);
                let mut out = serde_json::Map::new();
                for f in fields {
                    if let Some(v) = full.get(f) {
                        out.insert(f.clone(), v.clone());
                    }
                }
                body.push_str(&serde_json::Value::Object(out).to_string());
            }
        }
    }
    body.push(']');
    if offset + page_size < snapshot.len() {
        let host = headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1");
        let mut link = format!(
            "{}://{host}/subscriptions/{subscription}/providers/microsoft.insights/eventtypes/management/values?api-version=2015-04-01&$skiptoken={}",
            shared.arm_scheme,
            skiptoken(snapshot_id, offset + page_size)
        );
        if let Some(s) = q.get("$select") {
            link.push_str("&$select=");
            link.push_str(&url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>());
        }
        body.push_str(",\"nextLink\":");
        body.push_str(&serde_json::Value::String(link).to_string());
    }
    body.push('}');
    let mut resp = if shared.injected_drop() {
        cut_response(body)
    } else {
        (
            StatusCode::OK,
            [("content-type", "application/json; charset=utf-8")],
            body,
        )
            .into_response()
    };
    resp.headers_mut().insert(
        "x-ms-ratelimit-remaining-subscription-reads",
        HeaderValue::from(remaining),
    );
    resp
}

/// A connection dropped before any answer: the client sees a reset, not a
/// status. (An endpoint that sent a 2xx status line has accepted the event.)
pub fn refused_response() -> Response {
    let cut = futures::stream::iter([Err::<bytes::Bytes, _>(std::io::Error::other(
        "connection refused by the emulator",
    ))]);
    Response::new(Body::from_stream(cut))
}

/// A 200 whose body stops half-way: the connection is cut.
pub fn cut_response(body: String) -> Response {
    let half = body.len() / 2;
    let first = bytes::Bytes::from(body.into_bytes()).slice(..half);
    // The error comes a moment after the first chunk, so that the status line
    // and half the body are on the wire before the connection drops.
    let first = futures::stream::iter([Ok::<_, std::io::Error>(first)]);
    let cut = futures::stream::once(async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        Err(std::io::Error::other("connection cut by the emulator"))
    });
    let mut r = Response::new(Body::from_stream(futures::StreamExt::chain(first, cut)));
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_grammar_is_accepted() {
        let f = parse_filter(
            "eventTimestamp ge '2015-01-21T20:00:00Z' and eventTimestamp le '2015-01-23T20:00:00Z' and resourceGroupName eq 'MSSupportGroup'",
        )
        .unwrap();
        assert_eq!(f.narrow, Narrow::ResourceGroupName("MSSupportGroup".into()));
        assert!(f.end.is_some());
        let f = parse_filter("eventTimestamp ge '2015-01-21T20:00:00.1234567Z'").unwrap();
        assert_eq!(f.end, None);
        let f =
            parse_filter("eventTimestamp ge '2015-01-21T20:00:00Z' and correlationId eq 'a and b'")
                .unwrap();
        assert_eq!(f.narrow, Narrow::CorrelationId("a and b".into()));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "eventTimestamp le '2015-01-21T20:00:00Z'",
            "status eq 'Succeeded' and eventTimestamp ge '2015-01-21T20:00:00Z'",
            "eventTimestamp ge 2015-01-21T20:00:00Z",
            "eventTimestamp gt '2015-01-21T20:00:00Z'",
            "eventTimestamp ge 'yesterday'",
            "eventTimestamp ge '2015-01-21T20:00:00Z' and eventTimestamp ge '2015-01-22T20:00:00Z'",
            "eventTimestamp ge '2015-01-21T20:00:00Z' and resourceUri eq 'a' and correlationId eq 'b'",
            "eventTimestamp ge '2015-01-22T20:00:00Z' and eventTimestamp le '2015-01-21T20:00:00Z'",
        ] {
            assert!(parse_filter(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn skiptokens_round_trip() {
        assert_eq!(parse_skiptoken(&skiptoken(7, 400)), Some((7, 400)));
        assert_eq!(parse_skiptoken("nonsense"), None);
    }
}
