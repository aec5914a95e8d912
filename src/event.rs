//! One activity log entry and one page of them, as the Activity Logs - List call
//! returns them.
//!
//! Parsing is lenient: an entry keeps every field it arrived with (unknown ones
//! included, in their order), `LocalizableString`s may be `{"value": null}`, and
//! fields may be missing. Only three things are extracted, because the poller's
//! guarantees rest on them: the `eventDataId` (de-duplication), the
//! `eventTimestamp` (the watermark) and `status.value` (which entries are kept).
//! An entry without a usable id or timestamp is not dropped: it is reported as a
//! [`Malformed`] entry so that the caller can quarantine it where people see it.

use std::hash::{Hash, Hasher};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// An instant with the activity log's 100 ns precision.
pub type Timestamp = DateTime<Utc>;

/// Truncates to whole 100 ns ticks, the precision Azure stores and filters on.
pub fn to_ticks(t: Timestamp) -> Timestamp {
    let nanos = t.timestamp_subsec_nanos();
    let keep = nanos - nanos % 100;
    DateTime::from_timestamp(t.timestamp(), keep).unwrap_or(t)
}

/// `2015-01-21T22:14:26.9792776Z`: the form Azure's `$filter` and entries use.
pub fn format_ticks(t: Timestamp) -> String {
    let t = to_ticks(t);
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

/// Parses an RFC 3339 timestamp with any number of fractional digits and any
/// offset (`Z` or `+00:00`), as entries and webhooks both use.
pub fn parse_timestamp(s: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Nanoseconds since the epoch, for storage. Saturates outside 1677..2262.
pub fn to_nanos(t: Timestamp) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

pub fn from_nanos(n: i64) -> Timestamp {
    DateTime::from_timestamp_nanos(n)
}

pub fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An activity log entry whose identity and time are known. Its text is kept
/// exactly as received and never re-serialized: recording it is a copy.
#[derive(Debug, Clone)]
pub struct Entry {
    pub event_data_id: String,
    pub event_timestamp: Timestamp,
    /// `status.value`, when present.
    pub status: Option<String>,
    /// What the delivery journal keeps of it besides id, time and status.
    pub trail: Trail,
    /// The entry exactly as received.
    pub raw: Box<RawValue>,
}

/// The fields of an entry the delivery journal keeps to find it again
/// (`trace`): read with the id, timestamp and status in the same pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trail {
    pub submission_timestamp: Option<Timestamp>,
    pub resource_id: Option<String>,
    /// `operationName.value`.
    pub operation: Option<String>,
    pub caller: Option<String>,
    pub correlation_id: Option<String>,
}

impl Entry {
    /// Every field of the entry, in order.
    pub fn fields(&self) -> Map<String, Value> {
        object(&self.raw)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.event_data_id == other.event_data_id
            && self.event_timestamp == other.event_timestamp
            && self.status == other.status
            && self.trail == other.trail
            && self.raw.get() == other.raw.get()
    }
}

/// An entry the poller cannot identify, kept whole for people to look at.
#[derive(Debug, Clone)]
pub struct Malformed {
    /// A stable key derived from the content, so a re-queried copy is recognised.
    pub key: String,
    pub status: Option<String>,
    pub reason: String,
    pub raw: Box<RawValue>,
}

impl Malformed {
    pub fn fields(&self) -> Map<String, Value> {
        object(&self.raw)
    }
}

impl PartialEq for Malformed {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.reason == other.reason && self.raw.get() == other.raw.get()
    }
}

fn object(raw: &RawValue) -> Map<String, Value> {
    serde_json::from_str(raw.get()).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Entry(Entry),
    Malformed(Malformed),
}

impl Item {
    pub fn status(&self) -> Option<&str> {
        match self {
            Item::Entry(e) => e.status.as_deref(),
            Item::Malformed(m) => m.status.as_deref(),
        }
    }
}

/// One page of the List call.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Item>,
    pub next_link: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("page is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("page has no \"value\" array")]
    NoValue,
    #[error("page \"value\" item {index} is not an object")]
    NotAnObject { index: usize },
    #[error("page \"nextLink\" is not a string")]
    BadNextLink,
}

#[derive(Deserialize)]
struct RawPage {
    value: Option<Vec<Box<RawValue>>>,
    #[serde(rename = "nextLink")]
    next_link: Option<Value>,
}

/// The only fields the poller reads itself; everything else is skipped
/// unparsed.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "eventDataId", borrow, default)]
    event_data_id: Option<&'a RawValue>,
    #[serde(rename = "eventTimestamp", borrow, default)]
    event_timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(rename = "submissionTimestamp", borrow, default)]
    submission_timestamp: Option<&'a RawValue>,
    #[serde(rename = "resourceId", borrow, default)]
    resource_id: Option<&'a RawValue>,
    #[serde(rename = "operationName", borrow, default)]
    operation_name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    caller: Option<&'a RawValue>,
    #[serde(rename = "correlationId", borrow, default)]
    correlation_id: Option<&'a RawValue>,
}

impl Page {
    /// Parses a response body of the List call.
    pub fn parse(body: &[u8]) -> Result<Page, PageError> {
        let raw: RawPage = parse_json_lenient(body).map_err(PageError::NotJson)?;
        let values = raw.value.ok_or(PageError::NoValue)?;
        let mut items = Vec::with_capacity(values.len());
        for (index, v) in values.into_iter().enumerate() {
            if !v.get().starts_with('{') {
                return Err(PageError::NotAnObject { index });
            }
            items.push(Item::from_raw(v));
        }
        let next_link = match raw.next_link {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(PageError::BadNextLink),
        };
        Ok(Page { items, next_link })
    }
}

/// A JSON string's value; `None` for anything else.
fn string(v: Option<&RawValue>) -> Option<String> {
    let text = v?.get();
    text.starts_with('"')
        .then(|| serde_json::from_str::<String>(text).ok())
        .flatten()
}

/// A LocalizableString's `value`, or a plain string.
fn localizable_raw(v: Option<&RawValue>) -> Option<String> {
    #[derive(Deserialize)]
    struct Localizable {
        #[serde(default)]
        value: Option<Value>,
    }
    let text = v?.get();
    if text.starts_with('{') {
        serde_json::from_str::<Localizable>(text)
            .ok()?
            .value
            .and_then(|v| v.as_str().map(str::to_string))
    } else {
        string(v)
    }
}

impl Item {
    /// Classifies one entry object (any JSON object).
    pub fn from_fields(fields: Map<String, Value>) -> Item {
        // A map always serializes; the fallback keeps this total all the same.
        let raw =
            serde_json::value::to_raw_value(&fields).unwrap_or_else(|_| RawValue::NULL.to_owned());
        Item::from_raw(raw)
    }

    /// Classifies one entry from its text, which must be a JSON object.
    pub fn from_raw(raw: Box<RawValue>) -> Item {
        let (id, ts_raw, status, trail) = match serde_json::from_str::<Probe<'_>>(raw.get()) {
            Ok(p) => (
                string(p.event_data_id)
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .or_else(|| string(p.id).and_then(|id| id_from_resource_id(&id))),
                p.event_timestamp
                    .map(|t| (string(Some(t)), t.get().to_string())),
                localizable_raw(p.status),
                Trail {
                    submission_timestamp: string(p.submission_timestamp)
                        .as_deref()
                        .and_then(parse_timestamp),
                    resource_id: string(p.resource_id),
                    operation: localizable_raw(p.operation_name),
                    caller: string(p.caller),
                    correlation_id: string(p.correlation_id),
                },
            ),
            // Duplicate keys and the like: read it the slow way (last key wins).
            Err(_) => {
                let fields = object(&raw);
                let get = |k: &str| fields.get(k).and_then(Value::as_str).map(str::to_string);
                (
                    get("eventDataId")
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .or_else(|| get("id").and_then(|id| id_from_resource_id(&id))),
                    fields
                        .get("eventTimestamp")
                        .map(|t| (t.as_str().map(str::to_string), t.to_string())),
                    localizable(fields.get("status")).map(str::to_string),
                    Trail {
                        submission_timestamp: get("submissionTimestamp")
                            .as_deref()
                            .and_then(parse_timestamp),
                        resource_id: get("resourceId"),
                        operation: localizable(fields.get("operationName")).map(str::to_string),
                        caller: get("caller"),
                        correlation_id: get("correlationId"),
                    },
                )
            }
        };
        let ts = ts_raw
            .as_ref()
            .and_then(|(s, _)| s.as_deref())
            .and_then(parse_timestamp);
        match (id, ts) {
            (Some(event_data_id), Some(event_timestamp)) => Item::Entry(Entry {
                event_data_id,
                event_timestamp: to_ticks(event_timestamp),
                status,
                trail,
                raw,
            }),
            (id, _) => {
                let reason = match (id.is_some(), &ts_raw) {
                    (false, _) => "entry has no eventDataId".to_string(),
                    (true, None) => "entry has no eventTimestamp".to_string(),
                    (true, Some((Some(s), _))) => {
                        format!("entry has an unparseable eventTimestamp {s:?}")
                    }
                    (true, Some((None, text))) => {
                        format!("entry has an unparseable eventTimestamp {text}")
                    }
                };
                Item::Malformed(Malformed {
                    key: content_key(raw.get()),
                    status,
                    reason,
                    raw,
                })
            }
        }
    }
}

/// The `value` of a LocalizableString, or a plain string where one is sent instead.
pub fn localizable(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("value").and_then(Value::as_str),
        _ => None,
    }
}

/// `.../events/{eventDataId}/ticks/{ticks}`: the resource id of an entry carries
/// its eventDataId, which helps when `$select` left `eventDataId` out.
fn id_from_resource_id(id: &str) -> Option<String> {
    let mut parts = id.split('/');
    while let Some(p) = parts.next() {
        if p.eq_ignore_ascii_case("events") {
            return parts.next().filter(|s| !s.is_empty()).map(str::to_string);
        }
    }
    None
}

fn content_key(text: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    format!("malformed:{:016x}", h.finish())
}

/// Parses JSON; if it fails because strings hold raw control characters (as
/// some published samples do), escapes them and tries once more.
pub fn parse_json_lenient<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, serde_json::Error> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) if e.to_string().contains("control character") => {
            serde_json::from_slice(&escape_control_in_strings(body)).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

fn escape_control_in_strings(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            } else if b < 0x20 {
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                continue;
            }
        } else if b == b'"' {
            in_string = true;
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ticks_format_with_seven_digits() {
        let t = parse_timestamp("2015-01-21T22:14:26.9792776Z").unwrap();
        assert_eq!(format_ticks(t), "2015-01-21T22:14:26.9792776Z");
        let t = parse_timestamp("2019-08-26T08:34:14+00:00").unwrap();
        assert_eq!(format_ticks(t), "2019-08-26T08:34:14.0000000Z");
        let t = parse_timestamp("2017-03-29T15:43:08.0019532+00:00").unwrap();
        assert_eq!(format_ticks(t), "2017-03-29T15:43:08.0019532Z");
    }

    #[test]
    fn entry_without_id_is_malformed_not_lost() {
        let item = Item::from_fields(
            json!({"eventTimestamp": "2020-01-01T00:00:00Z", "status": {"value": "Succeeded"}})
                .as_object()
                .unwrap()
                .clone(),
        );
        match item {
            Item::Malformed(m) => {
                assert_eq!(m.reason, "entry has no eventDataId");
                assert_eq!(m.status.as_deref(), Some("Succeeded"));
            }
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn event_data_id_falls_back_to_resource_id() {
        let item = Item::from_fields(
            json!({"id": "/subscriptions/s/events/abc-1/ticks/1", "eventTimestamp": "2020-01-01T00:00:00Z"})
                .as_object()
                .unwrap()
                .clone(),
        );
        match item {
            Item::Entry(e) => assert_eq!(e.event_data_id, "abc-1"),
            other => panic!("expected entry, got {other:?}"),
        }
    }

    #[test]
    fn page_errors_are_typed() {
        assert!(matches!(Page::parse(b"{"), Err(PageError::NotJson(_))));
        assert!(matches!(Page::parse(b"{}"), Err(PageError::NoValue)));
        assert!(matches!(
            Page::parse(b"{\"value\": [1]}"),
            Err(PageError::NotAnObject { index: 0 })
        ));
        assert!(matches!(
            Page::parse(b"{\"value\": [], \"nextLink\": 3}"),
            Err(PageError::BadNextLink)
        ));
        let p = Page::parse(b"{\"value\": [], \"nextLink\": null}").unwrap();
        assert_eq!(p.next_link, None);
    }

    #[test]
    fn raw_newlines_inside_strings_are_tolerated() {
        let v: Value = parse_json_lenient(b"{\"a\": \"x\ny\"}").unwrap();
        assert_eq!(v["a"], "x\ny");
    }
}
