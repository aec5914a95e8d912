//! The published Azure samples in `../shared/fixtures` (see the `SOURCES.md`
//! of each folder) against the library: every REST sample parses into the
//! entries the poller keeps, and every rendered format has the shape of the
//! matching Action Group webhook sample. The folders are walked, so a newly
//! added sample is covered without touching this file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use azure_activity_poller::config::Format;
use azure_activity_poller::event::{
    Entry, Item, Page, PageError, format_ticks, localizable, parse_json_lenient, parse_timestamp,
};
use azure_activity_poller::format::render;
use serde_json::{Map, Value};

/// Fields that the webhook carries as JSON-encoded strings (SOURCES.md, mapping 3).
const STRINGIFIED: [&str; 2] = ["claims", "httpRequest"];

// ------------------------------------------------------------- loading ----

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// One fixture file: its bytes, and its JSON when it is JSON (leniently).
struct Fixture {
    name: String,
    raw: Vec<u8>,
    json: Option<Value>,
    strict_json: bool,
}

impl Fixture {
    fn json(&self) -> &Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not JSON", self.name))
    }

    fn object(&self) -> &Map<String, Value> {
        self.json()
            .as_object()
            .unwrap_or_else(|| panic!("{} is not a JSON object", self.name))
    }
}

/// Every `.json` file under `folder` (recursively), sorted by path.
fn load(folder: &str) -> Vec<Fixture> {
    let root = fixtures_root();
    let mut paths = Vec::new();
    let mut dirs = vec![root.join(folder)];
    while let Some(dir) = dirs.pop() {
        let listing = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for path in listing.map(|e| e.unwrap().path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "json") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let raw = std::fs::read(&path).unwrap();
            let name = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            Fixture {
                name,
                json: parse_json_lenient::<Value>(&raw).ok(),
                strict_json: serde_json::from_slice::<Value>(&raw).is_ok(),
                raw,
            }
        })
        .collect()
}

fn load_one(name: &str) -> Fixture {
    let (folder, file) = name.rsplit_once('/').unwrap();
    load(folder)
        .into_iter()
        .find(|f| f.name.ends_with(&format!("/{file}")))
        .unwrap_or_else(|| panic!("fixture {name} is missing"))
}

/// The fixtures of `folder` that are JSON (the intentionally invalid ones are
/// left out, and `skipped` says which they must be).
fn load_valid(folder: &str, skipped: &[&str]) -> Vec<Fixture> {
    let (valid, invalid): (Vec<_>, Vec<_>) = load(folder).into_iter().partition(|f| f.strict_json);
    let invalid: Vec<_> = invalid.iter().map(|f| f.name.as_str()).collect();
    let expected: Vec<_> = skipped.iter().map(|s| format!("{folder}/{s}")).collect();
    assert_eq!(invalid, expected, "invalid JSON fixtures in {folder}");
    valid
}

/// The same page body `Page::parse` would get from Azure for one entry, built
/// from the file's bytes (so that invalid samples stay invalid).
fn wrap_in_page(entry: &[u8]) -> Vec<u8> {
    [b"{\"value\":[".as_slice(), entry, b"]}".as_slice()].concat()
}

fn only_entry(page: &Page, what: &str) -> Entry {
    assert_eq!(page.items.len(), 1, "{what}: {page:?}");
    expect_entry(&page.items[0], what).clone()
}

fn expect_entry<'a>(item: &'a Item, what: &str) -> &'a Entry {
    match item {
        Item::Entry(e) => e,
        Item::Malformed(m) => panic!("{what}: malformed entry: {}", m.reason),
    }
}

fn field<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| {
        v.get(k)
            .unwrap_or_else(|| panic!("no {k:?} in {path:?} of {v}"))
    })
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    field(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn obj_at<'a>(v: &'a Value, path: &[&str]) -> &'a Map<String, Value> {
    field(v, path)
        .as_object()
        .unwrap_or_else(|| panic!("{path:?} is not an object"))
}

// -------------------------------------------------------- REST entries ----

/// How a file of `activity-log-schema/` is shaped.
#[derive(Debug, PartialEq)]
enum Shape {
    /// One REST `EventData` entry.
    Entry,
    /// The diagnostic-settings export shape: `{"records": [...]}` or one record.
    Export,
}

fn shape(f: &Fixture) -> Shape {
    let o = f.object();
    if o.contains_key("eventTimestamp") {
        Shape::Entry
    } else if o.contains_key("records") || o.contains_key("time") {
        Shape::Export
    } else {
        panic!("{}: neither an entry nor an export record", f.name)
    }
}

/// The single-entry files of `activity-log-schema/`.
fn single_entry_fixtures() -> Vec<Fixture> {
    load("activity-log-schema")
        .into_iter()
        .filter(|f| shape(f) == Shape::Entry)
        .collect()
}

/// Every REST entry of the fixtures, with a name: the single-entry files and
/// the entries of the REST example pages.
fn all_rest_entries() -> Vec<(String, Map<String, Value>)> {
    let mut out: Vec<_> = single_entry_fixtures()
        .into_iter()
        .map(|f| (f.name.clone(), f.object().clone()))
        .collect();
    for f in load("azure-rest-api-specs") {
        if let Some(body) = f.json().pointer("/responses/200/body") {
            for (i, v) in body["value"].as_array().unwrap().iter().enumerate() {
                out.push((format!("{}#{i}", f.name), v.as_object().unwrap().clone()));
            }
        }
    }
    out
}

/// A REST `LocalizableString`: `{"value": ..., "localizedValue": ...}`.
fn is_localizable(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        o.contains_key("value") && o.keys().all(|k| k == "value" || k == "localizedValue")
    })
}

fn is_null_localizable(v: &Value) -> bool {
    is_localizable(v) && v["value"].is_null()
}

/// The `.../events/{eventDataId}/ticks/...` segment of a resource id.
fn id_segment(id: &str) -> &str {
    let parts: Vec<&str> = id.split('/').collect();
    let at = parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case("events"))
        .unwrap_or_else(|| panic!("no events segment in {id}"));
    parts[at + 1]
}

/// `s` as [`format_ticks`] writes it: UTC, 7 fractional digits. Only for the
/// `Z` and `+00:00` forms, the only ones the samples use.
fn expected_ticks(s: &str) -> String {
    let offset = offset(s);
    assert!(offset == "Z" || offset == "+00:00", "{s}: offset {offset}");
    let digits = &s[20..20 + fraction_digits(s)];
    format!("{}.{digits:0<7.7}Z", &s[..19])
}

/// The UTC offset of an RFC 3339 timestamp: `Z` or the last 6 characters.
fn offset(s: &str) -> &str {
    if s.ends_with(['Z', 'z']) {
        &s[s.len() - 1..]
    } else {
        &s[s.len() - 6..]
    }
}

fn fraction_digits(s: &str) -> usize {
    s.get(19..)
        .and_then(|r| r.strip_prefix('.'))
        .map_or(0, |r| r.chars().take_while(char::is_ascii_digit).count())
}

/// What the poller must have extracted from `source`, and kept of it.
fn check_entry(what: &str, e: &Entry, source: &Map<String, Value>) {
    let ts = source["eventTimestamp"].as_str().unwrap();
    assert_eq!(
        format_ticks(e.event_timestamp),
        expected_ticks(ts),
        "{what}"
    );
    let status = source.get("status").and_then(|s| match s {
        Value::Object(o) => o.get("value").and_then(Value::as_str),
        other => other.as_str(),
    });
    assert_eq!(e.status.as_deref(), status, "{what}: status.value");
    assert_eq!(&e.fields(), source, "{what}: fields as received");
}

// ------------------------------------------------------------ 1. parse ----

fn check_rest_example(f: &Fixture) -> usize {
    let body = f.json().pointer("/responses/200/body").unwrap();
    let page = Page::parse(&serde_json::to_vec(body).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", f.name));
    assert_eq!(
        page.next_link.as_deref(),
        Some(str_at(body, &["nextLink"])),
        "{}",
        f.name
    );
    let sources = body["value"].as_array().unwrap();
    assert_eq!(page.items.len(), sources.len(), "{}", f.name);
    let mut fallbacks = 0;
    for (item, source) in page.items.iter().zip(sources) {
        let source = source.as_object().unwrap();
        let e = expect_entry(item, &f.name);
        let id = match source.get("eventDataId") {
            Some(id) => id.as_str().unwrap(),
            None => {
                let select = str_at(f.json(), &["parameters", "$select"]);
                assert!(!select.split(',').any(|s| s.trim() == "eventDataId"));
                fallbacks += 1;
                id_segment(source["id"].as_str().unwrap())
            }
        };
        assert_eq!(e.event_data_id, id, "{}", f.name);
        let ts = source["eventTimestamp"].as_str().unwrap();
        assert_eq!(fraction_digits(ts), 7, "{}: {ts}", f.name);
        assert_eq!(format_ticks(e.event_timestamp), ts, "{}", f.name);
        check_entry(&f.name, e, source);
    }
    fallbacks
}

fn check_swagger(f: &Fixture) {
    let v = f.json();
    assert_eq!(str_at(v, &["info", "version"]), "2015-04-01");
    let path =
        "/subscriptions/{subscriptionId}/providers/Microsoft.Insights/eventtypes/management/values";
    let params = field(v, &["paths", path, "get", "parameters"]);
    let refs: Vec<&str> = params
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.get("$ref").and_then(Value::as_str))
        .collect();
    assert!(
        refs.iter().any(|r| r.ends_with("/ApiVersionParameter")),
        "{refs:?}"
    );
}

#[test]
fn rest_api_specs_parse_into_entries() {
    let (mut examples, mut swaggers, mut fallbacks) = (0, 0, 0);
    for f in load("azure-rest-api-specs") {
        let v = f.json();
        if v.get("swagger").is_some() {
            check_swagger(&f);
            swaggers += 1;
        } else {
            fallbacks += check_rest_example(&f);
            examples += 1;
        }
    }
    assert_eq!((examples, swaggers), (3, 1), "REST examples, swagger files");
    assert_eq!(fallbacks, 1, "entries identified by their resource id");
}

#[test]
fn activity_log_schema_samples_parse_or_fail_cleanly() {
    let (mut entries, mut exports, mut lenient_only) = (0, 0, 0);
    let (mut null_localizables, mut channels, mut related) = (0, 0, 0);
    for f in load("activity-log-schema") {
        match shape(&f) {
            Shape::Entry => {
                let source = f.object();
                let page = Page::parse(&wrap_in_page(&f.raw))
                    .unwrap_or_else(|e| panic!("{}: {e}", f.name));
                assert_eq!(page.next_link, None);
                let e = only_entry(&page, &f.name);
                assert_eq!(e.event_data_id, str_at(f.json(), &["eventDataId"]));
                check_entry(&f.name, &e, source);
                for v in source.values().filter(|v| is_null_localizable(v)) {
                    assert_eq!(localizable(Some(v)), None, "{}", f.name);
                    null_localizables += 1;
                }
                channels += usize::from(e.fields().contains_key("channels"));
                related += usize::from(e.fields().contains_key("relatedEvents"));
                entries += 1;
            }
            Shape::Export => {
                assert!(matches!(Page::parse(&f.raw), Err(PageError::NoValue)));
                exports += 1;
            }
        }
        lenient_only += usize::from(!f.strict_json);
    }
    assert_eq!((entries, exports), (8, 3), "entries, export-shaped files");
    assert_eq!(lenient_only, 1, "files only the lenient parser reads");
    assert!(null_localizables >= 4, "{null_localizables}");
    assert!(channels >= 8 && related >= 5, "{channels} {related}");
}

#[test]
fn policy_sample_with_raw_line_breaks_parses_leniently() {
    let f = load_one("activity-log-schema/policy.json");
    assert!(serde_json::from_slice::<Value>(&f.raw).is_err());
    let e = only_entry(&Page::parse(&wrap_in_page(&f.raw)).unwrap(), &f.name);
    assert_eq!(e.event_data_id, "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e");
    assert_eq!(e.status.as_deref(), Some("Succeeded"));
    let fields = Value::Object(e.fields());
    let policies = str_at(&fields, &["properties", "policies"]);
    assert!(
        policies.contains("/Microsoft.\n            Authorization/policyDefinitions/"),
        "{policies}"
    );
}

// ----------------------------------------------------------- 2. shapes ----

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The JSON types each key has in the samples.
type Kinds = BTreeMap<String, BTreeSet<&'static str>>;

fn kinds_of<'a>(samples: impl IntoIterator<Item = &'a Map<String, Value>>) -> Kinds {
    let mut kinds = Kinds::new();
    for (k, v) in samples.into_iter().flatten() {
        kinds.entry(k.clone()).or_default().insert(kind(v));
    }
    kinds
}

/// Compares the types of the keys `ours` shares with the samples. A
/// LocalizableString whose value is null may come out as null. Returns the
/// keys compared.
fn assert_kinds(
    what: &str,
    ours: &Map<String, Value>,
    samples: &Kinds,
    source: &Map<String, Value>,
) -> BTreeSet<String> {
    let mut compared = BTreeSet::new();
    for (k, allowed) in samples {
        let Some(v) = ours.get(k) else { continue };
        let null_source = v.is_null() && source.get(k).is_some_and(is_null_localizable);
        assert!(
            allowed.contains(kind(v)) || null_source,
            "{what}: {k} is {} ({v}), samples have {allowed:?}",
            kind(v)
        );
        compared.insert(k.clone());
    }
    compared
}

/// `flat` carries every field of `source` with the webhook conventions.
fn assert_carried(what: &str, source: &Map<String, Value>, flat: &Map<String, Value>) {
    for (k, v) in source {
        let out = flat
            .get(k)
            .unwrap_or_else(|| panic!("{what}: {k} not carried"));
        if is_localizable(v) {
            assert_eq!(out, &v["value"], "{what}: {k}");
        } else if STRINGIFIED.contains(&k.as_str()) && (v.is_object() || v.is_array()) {
            let text = out.as_str().unwrap_or_else(|| panic!("{what}: {k} {out}"));
            assert_eq!(
                &serde_json::from_str::<Value>(text).unwrap(),
                v,
                "{what}: {k}"
            );
        } else {
            assert_eq!(out, v, "{what}: {k}");
        }
    }
    let category = localizable(source.get("category"));
    assert_eq!(
        flat.get("eventSource").and_then(Value::as_str),
        category,
        "{what}: eventSource"
    );
    let extra: Vec<_> = flat
        .keys()
        .filter(|k| !source.contains_key(*k) && *k != "eventSource")
        .collect();
    assert!(
        extra.is_empty(),
        "{what}: fields not in the entry: {extra:?}"
    );
}

fn key_set(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

/// The webhook samples that shape checks compare against.
struct Samples {
    activity_log: Kinds,
    essentials: Value,
    common: Value,
    alert_context: Kinds,
}

impl Samples {
    fn load() -> Samples {
        let legacy = load_valid("action-group-webhook/activity-log-alert", &["common.json"]);
        assert_eq!(legacy.len(), 5, "legacy webhook samples");
        let activity_log = kinds_of(
            legacy
                .iter()
                .map(|f| obj_at(f.json(), &["data", "context", "activityLog"])),
        );
        let common = load_one(
            "action-group-webhook/common-alert-schema/alerts-payload-samples_test-action_administrative.json",
        )
        .json()
        .clone();
        Samples {
            activity_log,
            essentials: field(&common, &["data", "essentials"]).clone(),
            alert_context: kinds_of([obj_at(&common, &["data", "alertContext"])]),
            common,
        }
    }
}

/// Keys whose types were compared, per format.
struct Compared {
    activity_log: BTreeSet<String>,
    alert_context: BTreeSet<String>,
}

/// Renders `source` in every format and checks each against the samples.
fn check_formats(what: &str, source: &Map<String, Value>, samples: &Samples) -> Compared {
    let alert = render(Format::ActivityLogAlert, source);
    assert_eq!(
        key_set(&alert),
        BTreeSet::from(["schemaId", "data"]),
        "{what}"
    );
    assert_eq!(alert["schemaId"], "Microsoft.Insights/activityLogs");
    assert_eq!(alert["data"]["status"], "Activated");
    assert!(alert["data"]["properties"].is_object(), "{what}");
    let log = obj_at(&alert, &["data", "context", "activityLog"]);
    assert_carried(what, source, log);
    let activity_log = assert_kinds(what, log, &samples.activity_log, source);

    let common = render(Format::CommonAlertSchema, source);
    assert_eq!(key_set(&common), key_set(&samples.common), "{what}");
    assert_eq!(common["schemaId"], samples.common["schemaId"]);
    let data = key_set(&common["data"]);
    assert!(
        data.is_superset(&key_set(&samples.common["data"])),
        "{what}: {data:?}"
    );
    let essentials = obj_at(&common, &["data", "essentials"]);
    for (k, v) in samples.essentials.as_object().unwrap() {
        let ours = essentials
            .get(k)
            .unwrap_or_else(|| panic!("{what}: no essentials.{k}"));
        assert_eq!(kind(ours), kind(v), "{what}: essentials.{k} = {ours}");
    }
    assert_eq!(essentials["signalType"], "Activity Log");
    assert_eq!(essentials["monitorCondition"], "Fired");
    let service = localizable(source.get("category")).map_or("Activity Log".to_string(), |c| {
        format!("Activity Log - {c}")
    });
    assert_eq!(essentials["monitoringService"], service.as_str(), "{what}");
    let context = obj_at(&common, &["data", "alertContext"]);
    assert_eq!(context, log, "{what}: alertContext is the activityLog body");
    let alert_context = assert_kinds(what, context, &samples.alert_context, source);

    assert_eq!(
        render(Format::EventData, source),
        Value::Object(source.clone()),
        "{what}"
    );
    Compared {
        activity_log,
        alert_context,
    }
}

#[test]
fn administrative_entry_renders_like_the_webhook_samples() {
    let samples = Samples::load();
    let f = load_one("activity-log-schema/administrative.json");
    let compared = check_formats(&f.name, f.object(), &samples);
    let alert = render(Format::ActivityLogAlert, f.object());
    let log = &alert["data"]["context"]["activityLog"];
    for k in [
        "claims",
        "status",
        "subStatus",
        "operationName",
        "resourceProviderName",
        "resourceType",
        "eventSource",
    ] {
        assert!(compared.activity_log.contains(k), "{k} not compared");
        assert!(log[k].is_string(), "{k}: {}", log[k]);
    }
    assert!(log["authorization"].is_object());
    assert_eq!(log["eventSource"], "Administrative");
    assert_eq!(log["status"], "Succeeded");
    assert!(compared.alert_context.contains("authorization"));
    let common = render(Format::CommonAlertSchema, f.object());
    assert_eq!(
        common["data"]["essentials"]["monitoringService"],
        "Activity Log - Administrative"
    );
}

#[test]
fn every_rest_entry_renders_like_the_webhook_samples() {
    let samples = Samples::load();
    let entries = all_rest_entries();
    assert_eq!(
        entries.len(),
        11,
        "8 single-entry files and 3 example entries"
    );
    let mut compared = BTreeSet::new();
    for (name, source) in &entries {
        compared.extend(check_formats(name, source, &samples).activity_log);
    }
    assert!(compared.contains("httpRequest"), "{compared:?}");
}

// ------------------------------------------------------- 3. timestamps ----

fn collect_timestamps(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match v.as_str() {
                    Some(s) if k.ends_with("Timestamp") || k.ends_with("DateTime") => {
                        out.push(s.to_string());
                    }
                    _ => collect_timestamps(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_timestamps(v, out)),
        _ => {}
    }
}

#[test]
fn webhook_timestamps_parse() {
    let mut files = load_valid("action-group-webhook/activity-log-alert", &["common.json"]);
    files.extend(load_valid("action-group-webhook/common-alert-schema", &[]));
    assert_eq!(files.len(), 20, "webhook samples");
    let mut stamps = Vec::new();
    for f in &files {
        collect_timestamps(f.json(), &mut stamps);
    }
    let mut forms = BTreeSet::new();
    for s in &stamps {
        let t = parse_timestamp(s).unwrap_or_else(|| panic!("{s} does not parse"));
        assert_eq!(format_ticks(t), expected_ticks(s), "{s}");
        forms.insert((offset(s), fraction_digits(s)));
    }
    let offsets: BTreeSet<_> = forms.iter().map(|f| f.0).collect();
    let digits: BTreeSet<_> = forms.iter().map(|f| f.1).collect();
    assert_eq!(offsets, BTreeSet::from(["+00:00", "Z"]), "{stamps:?}");
    assert!(
        digits.is_superset(&BTreeSet::from([0, 3, 6, 7])),
        "{digits:?}"
    );
}
