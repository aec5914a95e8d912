//! Normalizes a REST `EventData` entry into the document an Azure Monitor Action
//! Group webhook would POST for it, so that Guardrails' raw event path consumes
//! polled events exactly like pushed ones.
//!
//! The mapping (see `../shared/fixtures/action-group-webhook/SOURCES.md`):
//! LocalizableStrings become their `value`; `category.value` becomes
//! `eventSource`; `claims` and `httpRequest` objects become JSON-encoded strings;
//! every other field is carried unchanged, unknown ones included.

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::config::Format;
use crate::event::localizable;

/// Fields that are LocalizableStrings in the REST model.
const LOCALIZABLE: [&str; 7] = [
    "status",
    "subStatus",
    "operationName",
    "resourceProviderName",
    "resourceType",
    "category",
    "eventName",
];

/// Fields that the webhook carries as JSON-encoded strings.
const STRINGIFIED: [&str; 2] = ["claims", "httpRequest"];

/// The body to POST for one entry, from the entry's text as received.
///
/// `event-data` is the text itself; `activity-log-alert` is written straight
/// from the entry's fields without building a tree (the forwarder's hot path);
/// `common-alert-schema` goes through [`render`].
pub fn render_bytes(format: Format, entry: &str) -> Result<Vec<u8>, String> {
    let not_object = |e: &dyn std::fmt::Display| format!("stored entry is not a JSON object: {e}");
    match format {
        Format::EventData if entry.trim_start().starts_with('{') => Ok(entry.as_bytes().to_vec()),
        Format::EventData => Err(not_object(&"it does not start with '{'")),
        Format::ActivityLogAlert => match serde_json::from_str::<Pairs<'_>>(entry) {
            Ok(pairs) => Ok(activity_log_alert(&pairs.0)),
            // Escaped keys and the like: the general path.
            Err(_) => {
                let fields: Map<String, Value> =
                    serde_json::from_str(entry).map_err(|e| not_object(&e))?;
                serde_json::to_vec(&render(format, &fields)).map_err(|e| e.to_string())
            }
        },
        Format::CommonAlertSchema => {
            let fields: Map<String, Value> =
                serde_json::from_str(entry).map_err(|e| not_object(&e))?;
            serde_json::to_vec(&render(format, &fields)).map_err(|e| e.to_string())
        }
    }
}

/// An object's fields in order, values unparsed.
struct Pairs<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Pairs<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Pairs<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Pairs<'de>, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(32));
                while let Some(pair) = map.next_entry::<&'de str, &'de RawValue>()? {
                    v.push(pair);
                }
                Ok(Pairs(v))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// `{"schemaId":"Microsoft.Insights/activityLogs","data":{...}}`, written directly.
fn activity_log_alert(pairs: &[(&str, &RawValue)]) -> Vec<u8> {
    let size: usize = pairs.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum();
    let mut out = Vec::with_capacity(size + 160);
    out.extend_from_slice(
        br#"{"schemaId":"Microsoft.Insights/activityLogs","data":{"status":"Activated","context":{"activityLog":{"#,
    );
    let mut category: Option<String> = None;
    let mut has_event_source = false;
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(&mut out, key);
        out.push(b':');
        let text = value.get();
        let nested = text.starts_with('{') || text.starts_with('[');
        if LOCALIZABLE.contains(key) && text.starts_with('{') {
            let v: Option<String> = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| localizable(Some(&v)).map(str::to_string));
            match &v {
                Some(s) => write_json_str(&mut out, s),
                None => out.extend_from_slice(b"null"),
            }
            if *key == "category" {
                category = v;
            }
        } else if STRINGIFIED.contains(key) && nested {
            let compact = serde_json::from_str::<Value>(text)
                .map_or_else(|_| text.to_string(), |v| v.to_string());
            write_json_str(&mut out, &compact);
        } else {
            out.extend_from_slice(text.as_bytes());
            if *key == "category" {
                category = serde_json::from_str::<String>(text).ok();
            }
        }
        has_event_source |= *key == "eventSource";
    }
    if !has_event_source && let Some(c) = category {
        if !pairs.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(br#""eventSource":"#);
        write_json_str(&mut out, &c);
    }
    out.extend_from_slice(br#"}},"properties":{}}}"#);
    out
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The document to POST for one entry.
pub fn render(format: Format, entry: &Map<String, Value>) -> Value {
    match format {
        Format::EventData => Value::Object(entry.clone()),
        Format::ActivityLogAlert => json!({
            "schemaId": "Microsoft.Insights/activityLogs",
            "data": {
                "status": "Activated",
                "context": { "activityLog": Value::Object(flatten(entry)) },
                "properties": {}
            }
        }),
        Format::CommonAlertSchema => common_alert(entry),
    }
}

/// The `activityLog` / `alertContext` body: the entry with webhook conventions.
pub fn flatten(entry: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::with_capacity(entry.len() + 1);
    for (k, v) in entry {
        let v = if LOCALIZABLE.contains(&k.as_str()) && v.is_object() {
            localizable(Some(v)).map_or(Value::Null, |s| Value::String(s.to_string()))
        } else if STRINGIFIED.contains(&k.as_str()) && (v.is_object() || v.is_array()) {
            Value::String(v.to_string())
        } else {
            v.clone()
        };
        out.insert(k.clone(), v);
    }
    if !out.contains_key("eventSource")
        && let Some(c) = localizable(entry.get("category"))
    {
        out.insert("eventSource".into(), Value::String(c.to_string()));
    }
    out
}

fn common_alert(entry: &Map<String, Value>) -> Value {
    let context = flatten(entry);
    let text = |k: &str| context.get(k).and_then(Value::as_str).unwrap_or("");
    let category = text("eventSource");
    let resource_id = text("resourceId");
    let subscription = text("subscriptionId");
    let event_id = text("eventDataId");
    let severity = match text("level") {
        "Critical" => "Sev0",
        "Error" => "Sev1",
        "Warning" => "Sev2",
        _ => "Sev4",
    };
    let monitoring_service = if category.is_empty() {
        "Activity Log".to_string()
    } else {
        format!("Activity Log - {category}")
    };
    let targets: Vec<Value> = if resource_id.is_empty() {
        Vec::new()
    } else {
        vec![Value::String(resource_id.to_ascii_lowercase())]
    };
    let items: Vec<Value> = resource_id
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .map(|s| vec![Value::String(s.to_string())])
        .unwrap_or_default();
    let fired = context
        .get("submissionTimestamp")
        .or_else(|| context.get("eventTimestamp"))
        .cloned()
        .unwrap_or(Value::Null);
    json!({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": format!("/subscriptions/{subscription}/providers/Microsoft.AlertsManagement/alerts/{event_id}"),
                "alertRule": "azure-activity-poller",
                "severity": severity,
                "signalType": "Activity Log",
                "monitorCondition": "Fired",
                "monitoringService": monitoring_service,
                "alertTargetIDs": targets,
                "configurationItems": items,
                "originAlertId": event_id,
                "firedDateTime": fired,
                "description": "",
                "essentialsVersion": "1.0",
                "alertContextVersion": "1.0"
            },
            "alertContext": Value::Object(context),
            "customProperties": null
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_writer_matches_the_tree_renderer() {
        let entry = json!({
            "status": {"value": "Succeeded", "localizedValue": "Succeeded"},
            "subStatus": {"value": null},
            "category": {"value": "Administrative"},
            "claims": {"aud": "x", "n": [1, 2]},
            "httpRequest": {"method": "PUT"},
            "authorization": {"action": "a"},
            "relatedEvents": [],
            "properties": {"k": "v \"quoted\""},
            "caller": null,
            "level": 3,
        });
        let map = entry.as_object().unwrap();
        for format in [
            Format::ActivityLogAlert,
            Format::CommonAlertSchema,
            Format::EventData,
        ] {
            let direct: Value =
                serde_json::from_slice(&render_bytes(format, &entry.to_string()).unwrap()).unwrap();
            assert_eq!(direct, render(format, map), "{format:?}");
        }
        // Pretty-printed input, an escaped key, eventSource already present.
        let text = "{\n  \"eventSource\": \"Security\",\n  \"a\\u0062\": 1\n}";
        let direct: Value =
            serde_json::from_slice(&render_bytes(Format::ActivityLogAlert, text).unwrap()).unwrap();
        let map: Map<String, Value> = serde_json::from_str(text).unwrap();
        assert_eq!(direct, render(Format::ActivityLogAlert, &map));
        assert!(render_bytes(Format::EventData, "[1]").is_err());
        assert!(render_bytes(Format::ActivityLogAlert, "nope").is_err());
    }

    #[test]
    fn localizable_strings_and_objects_follow_the_webhook() {
        let entry = json!({
            "status": {"value": "Succeeded", "localizedValue": "Succeeded"},
            "subStatus": {"value": null},
            "category": {"value": "Administrative"},
            "claims": {"aud": "x"},
            "httpRequest": {"method": "PUT"},
            "authorization": {"action": "a"},
            "relatedEvents": [],
        });
        let flat = flatten(entry.as_object().unwrap());
        assert_eq!(flat["status"], "Succeeded");
        assert_eq!(flat["subStatus"], Value::Null);
        assert_eq!(flat["eventSource"], "Administrative");
        assert_eq!(flat["claims"], "{\"aud\":\"x\"}");
        assert_eq!(flat["httpRequest"], "{\"method\":\"PUT\"}");
        assert_eq!(flat["authorization"], json!({"action": "a"}));
        assert_eq!(flat["relatedEvents"], json!([]));
    }
}
