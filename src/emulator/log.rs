//! The emulated activity log: entries generated at a seeded random pace, each
//! visible only from its `submissionTimestamp`, kept newest-first per
//! subscription, and the snapshots that page through a query's results.
//!
//! Entries look like real ones (modelled on `../shared/fixtures/activity-log-schema`):
//! every category, Started/Accepted/Succeeded/Failed entries sharing a
//! correlation id, 7-digit timestamps, `claims`, `httpRequest`, `properties`.
//! Each is serialized once, when generated, so that serving pages is copying.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use super::scenario::{Late, Scenario};
use crate::event::{Timestamp, format_ticks};

/// One generated entry.
#[derive(Debug)]
pub struct Stored {
    pub subscription: String,
    pub id: String,
    pub ts: Timestamp,
    pub visible_at: Timestamp,
    pub status: &'static str,
    pub resource_group: String,
    pub resource_uri: String,
    pub resource_provider: String,
    pub correlation_id: String,
    /// The entry as JSON, ready to be served.
    pub json: Box<str>,
}

/// What a query selects beyond the time range (the spec allows one of these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Narrow {
    None,
    ResourceGroupName(String),
    ResourceUri(String),
    ResourceProvider(String),
    CorrelationId(String),
}

impl Narrow {
    fn admits(&self, e: &Stored) -> bool {
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        match self {
            Narrow::None => true,
            Narrow::ResourceGroupName(v) => eq(&e.resource_group, v),
            Narrow::ResourceUri(v) => eq(&e.resource_uri, v),
            Narrow::ResourceProvider(v) => eq(&e.resource_provider, v),
            Narrow::CorrelationId(v) => eq(&e.correlation_id, v),
        }
    }
}

/// A query's results, frozen at its first page so that paging is stable.
pub type Snapshot = Arc<Vec<Arc<Stored>>>;

const CATEGORIES: [(&str, u32); 8] = [
    ("Administrative", 80),
    ("Policy", 6),
    ("Security", 2),
    ("ServiceHealth", 2),
    ("ResourceHealth", 3),
    ("Recommendation", 2),
    ("Alert", 2),
    ("Autoscale", 3),
];

/// Seeded generation, per-subscription storage, snapshots.
pub struct ActivityLog {
    rng: fastrand::Rng,
    scenario: Scenario,
    started: Timestamp,
    /// Newest first is served; stored oldest first by generation time.
    entries: BTreeMap<String, Vec<Arc<Stored>>>,
    /// Fractional operations carried to the next tick, per subscription.
    carry: HashMap<String, f64>,
    last_tick: Timestamp,
    generating: bool,
    snapshots: HashMap<u64, Snapshot>,
    snapshot_order: VecDeque<u64>,
    next_snapshot: u64,
    counter: u64,
}

impl ActivityLog {
    pub fn new(scenario: Scenario) -> ActivityLog {
        let now = Utc::now();
        let mut log = ActivityLog {
            rng: fastrand::Rng::with_seed(scenario.seed),
            started: now,
            entries: BTreeMap::new(),
            carry: HashMap::new(),
            last_tick: now,
            generating: true,
            snapshots: HashMap::new(),
            snapshot_order: VecDeque::new(),
            next_snapshot: 1,
            counter: 0,
            scenario,
        };
        let subs = log.scenario.subscriptions.clone();
        for s in &subs {
            log.entries.entry(s.id.clone()).or_default();
            let span =
                chrono::Duration::from_std(s.backlog_span).unwrap_or(chrono::Duration::hours(1));
            for i in 0..s.backlog {
                let frac = (i as f64 + 0.5) / s.backlog as f64;
                let at = now - span
                    + chrono::Duration::milliseconds(
                        (frac * span.num_milliseconds() as f64) as i64,
                    );
                log.operation(&s.id, s.succeeded, at, Some(now), s.backlog_succeeded_only);
            }
        }
        log
    }

    pub fn started(&self) -> Timestamp {
        self.started
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Stops creating new entries (late ones already created still appear).
    pub fn stop_generating(&mut self) {
        self.generate(Utc::now());
        self.generating = false;
    }

    /// Creates the operations due between the last tick and `now`.
    pub fn generate(&mut self, now: Timestamp) {
        if !self.generating || now <= self.last_tick {
            return;
        }
        let dt = (now - self.last_tick).num_microseconds().unwrap_or(0) as f64 / 1e6;
        let from = self.last_tick;
        self.last_tick = now;
        let subs = self.scenario.subscriptions.clone();
        for s in subs {
            let due = self.carry.get(&s.id).copied().unwrap_or(0.0) + s.rate_per_minute / 60.0 * dt;
            let whole = due.floor();
            self.carry.insert(s.id.clone(), due - whole);
            for _ in 0..(whole as u64) {
                let offset = self.rng.f64() * dt;
                let at = from + chrono::Duration::microseconds((offset * 1e6) as i64);
                self.operation(&s.id, s.succeeded, at, None, false);
            }
        }
    }

    fn delay(&mut self, late: &Late) -> Duration {
        let uniform = |rng: &mut fastrand::Rng, lo: Duration, hi: Duration| {
            let span = hi.saturating_sub(lo).as_micros() as u64;
            lo + Duration::from_micros(if span == 0 { 0 } else { rng.u64(0..=span) })
        };
        if late.fraction > 0.0 && self.rng.f64() < late.fraction {
            uniform(&mut self.rng, late.late_min, late.late_max)
        } else {
            uniform(&mut self.rng, late.delay_min, late.delay_max)
        }
    }

    fn guid(&mut self) -> String {
        let r = &mut self.rng;
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            r.u32(..),
            r.u16(..),
            r.u16(..0x1000),
            r.u16(0x8000..0xc000),
            r.u64(..1 << 48)
        )
    }

    /// One operation: its entries, with statuses that follow each other.
    fn operation(
        &mut self,
        sub: &str,
        succeeded: f64,
        at: Timestamp,
        visible_cap: Option<Timestamp>,
        only_succeeded: bool,
    ) {
        let total: u32 = CATEGORIES.iter().map(|c| c.1).sum();
        let mut pick = self.rng.u32(0..total);
        let mut category = CATEGORIES[0].0;
        for (c, w) in CATEGORIES {
            if pick < w {
                category = c;
                break;
            }
            pick -= w;
        }
        if only_succeeded {
            category = "Administrative";
        }
        let statuses: Vec<(&'static str, i64)> = match category {
            _ if only_succeeded => vec![("Succeeded", 0)],
            "Administrative" => {
                let end = if self.rng.f64() < succeeded {
                    "Succeeded"
                } else {
                    "Failed"
                };
                let mut v = vec![("Started", 0)];
                if self.rng.bool() {
                    v.push(("Accepted", 150));
                }
                v.push((end, 400 + self.rng.i64(0..3000)));
                v
            }
            "Policy" | "Recommendation" | "Autoscale" | "Security" => {
                let end = if self.rng.f64() < succeeded {
                    "Succeeded"
                } else {
                    "Failed"
                };
                vec![(end, 0)]
            }
            "ServiceHealth" => vec![(
                if self.rng.bool() {
                    "Active"
                } else {
                    "Resolved"
                },
                0,
            )],
            "ResourceHealth" => vec![(
                ["Active", "Resolved", "Updated", "In Progress"][self.rng.usize(0..4)],
                0,
            )],
            _ => vec![("Activated", 0)],
        };
        let correlation = self.guid();
        let operation_id = self.guid();
        let rg = format!("rg-{:02}", self.rng.u8(0..20));
        let vm = format!("vm-{:04}", self.rng.u16(0..5000));
        let caller = format!("user{}@contoso.com", self.rng.u8(0..50));
        let late = self.scenario.late.clone();
        for (status, after_ms) in statuses {
            let mut ts = at + chrono::Duration::milliseconds(after_ms);
            let mut visible_at =
                ts + chrono::Duration::from_std(self.delay(&late)).unwrap_or_default();
            if let Some(cap) = visible_cap {
                // A backlog entry happened, and was submitted, before the start.
                ts = ts.min(cap);
                visible_at = visible_at.min(cap).max(ts);
            }
            let id = self.guid();
            self.counter += 1;
            let e = self.entry(Fields {
                sub,
                id: &id,
                ts,
                visible_at,
                status,
                category,
                correlation: &correlation,
                operation_id: &operation_id,
                rg: &rg,
                vm: &vm,
                caller: &caller,
            });
            self.entries
                .entry(sub.to_string())
                .or_default()
                .push(Arc::new(e));
        }
    }

    fn entry(&mut self, f: Fields<'_>) -> Stored {
        let provider = match f.category {
            "Policy" => "Microsoft.Authorization",
            "Security" => "Microsoft.Security",
            "ServiceHealth" => "Microsoft.ServiceHealth",
            "ResourceHealth" => "Microsoft.Resourcehealth",
            "Recommendation" => "Microsoft.Advisor",
            "Alert" => "Microsoft.Insights",
            "Autoscale" => "microsoft.insights",
            _ => "Microsoft.Compute",
        };
        let resource = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            f.sub, f.rg, f.vm
        );
        let operation = match f.category {
            "Policy" => "Microsoft.Authorization/policies/audit/action".to_string(),
            "ServiceHealth" => "Microsoft.ServiceHealth/incident/action".to_string(),
            "ResourceHealth" => "Microsoft.Resourcehealth/healthevent/Activated/action".to_string(),
            "Recommendation" => "Microsoft.Advisor/recommendations/available/action".to_string(),
            "Autoscale" => "Microsoft.Insights/AutoscaleSettings/Scaleup/Action".to_string(),
            "Alert" => "Microsoft.Insights/AlertRules/Activated/Action".to_string(),
            "Security" => "Microsoft.Security/locations/alerts/activate/action".to_string(),
            _ => ["write", "delete", "start/action", "restart/action"][self.rng.usize(0..4)]
                .to_string(),
        };
        let operation = if f.category == "Administrative" {
            format!("Microsoft.Compute/virtualMachines/{operation}")
        } else {
            operation
        };
        let sub_status = match f.status {
            "Succeeded" => json!({"value": "OK", "localizedValue": "OK (HTTP Status Code: 200)"}),
            "Accepted" => {
                json!({"value": "Accepted", "localizedValue": "Accepted (HTTP Status Code: 202)"})
            }
            "Failed" => {
                json!({"value": "Conflict", "localizedValue": "Conflict (HTTP Status Code: 409)"})
            }
            _ => json!({"value": null}),
        };
        let ticks = f.ts.timestamp_nanos_opt().unwrap_or(0) / 100 + 621_355_968_000_000_000;
        let value = json!({
            "authorization": {
                "action": operation,
                "scope": resource,
            },
            "caller": f.caller,
            "channels": "Operation",
            "claims": {
                "aud": "https://management.core.windows.net/",
                "iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
                "iat": f.ts.timestamp().to_string(),
                "nbf": f.ts.timestamp().to_string(),
                "exp": (f.ts.timestamp() + 3600).to_string(),
                "ver": "1.0",
                "http://schemas.microsoft.com/identity/claims/tenantid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn": f.caller,
                "appid": "c44b4083-3bb0-49c1-b47d-974e53cbdf3c",
                "http://schemas.microsoft.com/identity/claims/scope": "user_impersonation",
            },
            "correlationId": f.correlation,
            "description": "",
            "eventDataId": f.id,
            "eventName": {"value": if f.status == "Started" { "BeginRequest" } else { "EndRequest" }, "localizedValue": if f.status == "Started" { "Begin request" } else { "End request" }},
            "category": {"value": f.category, "localizedValue": f.category},
            "eventTimestamp": format_ticks(f.ts),
            "id": format!("{resource}/events/{}/ticks/{ticks}", f.id),
            "level": if f.status == "Failed" { "Error" } else { "Informational" },
            "operationId": f.operation_id,
            "operationName": {"value": operation, "localizedValue": operation},
            "resourceGroupName": f.rg,
            "resourceProviderName": {"value": provider, "localizedValue": provider},
            "resourceType": {"value": "Microsoft.Compute/virtualMachines", "localizedValue": "Microsoft.Compute/virtualMachines"},
            "resourceId": resource,
            "status": {"value": f.status, "localizedValue": f.status},
            "subStatus": sub_status,
            "submissionTimestamp": format_ticks(f.visible_at),
            "subscriptionId": f.sub,
            "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "properties": {
                "statusCode": if f.status == "Failed" { "Conflict" } else { "OK" },
                "serviceRequestId": f.operation_id,
                "eventCategory": f.category,
            },
            "relatedEvents": [],
            "httpRequest": {
                "clientRequestId": f.correlation,
                "clientIpAddress": format!("10.{}.{}.{}", self.rng.u8(..), self.rng.u8(..), self.rng.u8(1..255)),
                "method": "PUT",
            },
        });
        Stored {
            subscription: f.sub.to_string(),
            id: f.id.to_string(),
            ts: f.ts,
            visible_at: f.visible_at,
            status: f.status,
            resource_group: f.rg.to_string(),
            resource_uri: resource,
            resource_provider: provider.to_string(),
            correlation_id: f.correlation.to_string(),
            json: value.to_string().into_boxed_str(),
        }
    }

    /// Entries of `sub` with `start <= ts <= end` visible at `now`, newest first,
    /// frozen under a new snapshot id.
    pub fn query(
        &mut self,
        sub: &str,
        start: Timestamp,
        end: Timestamp,
        narrow: &Narrow,
        now: Timestamp,
    ) -> (u64, Snapshot) {
        self.generate(now);
        let mut found: Vec<Arc<Stored>> = self
            .entries
            .get(sub)
            .map(|v| {
                v.iter()
                    .filter(|e| {
                        e.ts >= start && e.ts <= end && e.visible_at <= now && narrow.admits(e)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        found.sort_by_key(|e| std::cmp::Reverse(e.ts));
        let id = self.next_snapshot;
        self.next_snapshot += 1;
        let snap = Arc::new(found);
        self.snapshots.insert(id, snap.clone());
        self.snapshot_order.push_back(id);
        while self.snapshot_order.len() > 512 {
            if let Some(old) = self.snapshot_order.pop_front() {
                self.snapshots.remove(&old);
            }
        }
        (id, snap)
    }

    pub fn snapshot(&self, id: u64) -> Option<Snapshot> {
        self.snapshots.get(&id).cloned()
    }

    /// Every entry visible by `now` whose status is in `statuses`.
    pub fn visible_with_status(&mut self, statuses: &[&str], now: Timestamp) -> Vec<Arc<Stored>> {
        self.generate(now);
        self.entries
            .values()
            .flatten()
            .filter(|e| {
                e.visible_at <= now && statuses.iter().any(|s| s.eq_ignore_ascii_case(e.status))
            })
            .cloned()
            .collect()
    }

    /// When the last entry generated so far becomes visible.
    pub fn last_visible_at(&self) -> Option<Timestamp> {
        self.entries.values().flatten().map(|e| e.visible_at).max()
    }

    pub fn generated(&self) -> BTreeMap<String, usize> {
        self.entries
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }

    pub fn get_json(e: &Stored) -> Value {
        serde_json::from_str(&e.json).unwrap_or(Value::Null)
    }
}

struct Fields<'a> {
    sub: &'a str,
    id: &'a str,
    ts: Timestamp,
    visible_at: Timestamp,
    status: &'static str,
    category: &'static str,
    correlation: &'a str,
    operation_id: &'a str,
    rg: &'a str,
    vm: &'a str,
    caller: &'a str,
}
