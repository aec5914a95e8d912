//! Normalizes a REST `EventData` entry into the document an Azure Monitor Action
//! Group webhook would POST for it, so that Guardrails' raw event path consumes
//! polled events exactly like pushed ones.
//!
//! The mapping (see `../shared/fixtures/action-group-webhook/SOURCES.md`):
//! LocalizableStrings become their `value`; `category.value` becomes
//! `eventSource`; `claims` and `httpRequest` objects become JSON-encoded strings;
//! every other field is carried unchanged, unknown ones included.

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
