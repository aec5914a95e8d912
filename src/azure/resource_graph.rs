//! Guardrails' event handlers in up to 1,000 subscriptions a query, through
//! Azure Resource Graph, so that 10,000 subscriptions are checked in a few
//! dozen requests instead of 20,000 ARM reads.
//!
//! `POST {arm}/providers/Microsoft.ResourceGraph/resources?api-version=2022-10-01`
//! with `{"subscriptions": [...], "query": QUERY, "options": {"$top",
//! "$skipToken", "resultFormat": "objectArray"}}`; the answer is
//! `{"totalRecords", "count", "data": [...], "$skipToken"?, "resultTruncated"}`,
//! and the next page is the same request with the answer's `$skipToken`.
//! Resource Graph takes at most 1,000 subscriptions and returns at most 1,000
//! rows a request. It is on the ARM endpoint of the configured cloud, with
//! the same token; Reader on a subscription is enough to see it there.
//!
//! [`QUERY`] is one `union`: from `resourcecontainers`, each subscription the
//! principal can see and its `turbot_rg`; from `resources`, the handlers'
//! action group (its `enabled` only: never the webhook receivers, whose URI
//! holds a Guardrails token) and the activity log alerts that name it. A
//! subscription Resource Graph does not show is **not** clear: the caller
//! checks it with the per-subscription ARM reads instead ([`Fallback`]), as it
//! does every subscription of a batch that Resource Graph refused (403) or
//! could not answer.
//!
//! Requests are retried as every ARM request is ([`super::arm`]); between
//! them, Resource Graph's own quota per principal is kept: when an answer's
//! `x-ms-user-quota-remaining` reaches 0, the next request waits
//! `x-ms-user-quota-resets-after`.
//!
//! Wiring into detection: group the `detect` subscriptions by credential,
//! call [`ResourceGraphClient::check`] once per group, use
//! [`GraphHandlers::state`] for every subscription in [`Checked::handlers`],
//! and the two ARM reads for every one in [`Checked::fallback`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use url::Url;

use super::arm::{Arm, AzureError, Pacing, arm_detail};
use super::credential::TokenSource;
use super::handlers::{Handlers, routes_to};
use crate::heartbeat::Heartbeat;
use crate::retry::Backoff;

pub const API_VERSION: &str = "2022-10-01";
pub const PATH: &str = "providers/Microsoft.ResourceGraph/resources";
/// Subscriptions Resource Graph takes in one request.
pub const MAX_SUBSCRIPTIONS: usize = 1000;
/// Rows Resource Graph returns in one page at most (`$top`).
pub const MAX_TOP: usize = 1000;
/// Batches queried at the same time: enough to overlap round trips, few
/// enough to stay near Resource Graph's quota (about 15 requests in 5 s).
const BATCHES_IN_FLIGHT: usize = 3;
/// Pages followed at most for one batch: 1,000 subscriptions yield a few
/// thousand rows, so this many pages means an answer that never ends.
const MAX_PAGES: usize = 100;
/// The longest wait for Resource Graph's quota to reset that is believed.
const MAX_QUOTA_WAIT: Duration = Duration::from_secs(60);

/// The poller's one query. Each row is one of: `subscription` (one per
/// subscription the principal sees), `resourceGroup` (its `turbot_rg`),
/// `actionGroup` (the handlers' action group, with `enabled`), `alert` (an
/// activity log alert naming that action group: one row per naming entry,
/// with `enabled` and the lowercased `actionGroupId`). Sorted by `id`, which
/// Resource Graph needs to page in a stable order.
pub const QUERY: &str = "resourcecontainers
| where type =~ 'microsoft.resources/subscriptions' or (type =~ 'microsoft.resources/subscriptions/resourcegroups' and name =~ 'turbot_rg')
| project id, subscriptionId, entry = iff(type =~ 'microsoft.resources/subscriptions', 'subscription', 'resourceGroup'), enabled = bool(null), actionGroupId = ''
| union (resources
    | where type =~ 'microsoft.insights/actiongroups' and resourceGroup =~ 'turbot_rg' and name =~ 'turbot_azure_event_handler_action_group'
    | project id, subscriptionId, entry = 'actionGroup', enabled = tobool(properties.enabled), actionGroupId = '')
| union (resources
    | where type =~ 'microsoft.insights/activitylogalerts'
    | mv-expand actionGroup = properties.actions.actionGroups
    | extend actionGroupId = tolower(tostring(actionGroup.actionGroupId))
    | where actionGroupId contains '/resourcegroups/turbot_rg/providers/microsoft.insights/actiongroups/turbot_azure_event_handler_action_group'
    | project id, subscriptionId, entry = 'alert', enabled = tobool(properties.enabled), actionGroupId)
| order by id asc";

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Resource Graph will not answer this principal: check with ARM reads.
    #[error(
        "Resource Graph refused the query (HTTP {status}{})",
        arm_detail(code, message)
    )]
    Refused {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error(
        "Resource Graph rejected the query (HTTP {status}{})",
        arm_detail(code, message)
    )]
    Rejected {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// Throttled, unavailable, or no token, after the retries.
    #[error("Resource Graph: {0}")]
    Unavailable(AzureError),
    #[error("Resource Graph answered something unreadable: {0}")]
    Malformed(String),
    #[error(
        "Resource Graph's answer is incomplete: {got} of {total} rows, and no $skipToken for the rest"
    )]
    Incomplete { got: usize, total: u64 },
    #[error("Resource Graph's answer did not end after {0} pages")]
    Endless(usize),
    #[error("Resource Graph takes at most {MAX_SUBSCRIPTIONS} subscriptions a query, not {0}")]
    TooManySubscriptions(usize),
}

impl GraphError {
    /// True when Resource Graph refused this principal (401 after a fresh
    /// token, or 403): asking again will not help until its role changes.
    pub fn is_refused(&self) -> bool {
        matches!(self, GraphError::Refused { .. })
    }
}

impl From<AzureError> for GraphError {
    fn from(e: AzureError) -> Self {
        match e {
            AzureError::Denied {
                status,
                code,
                message,
            } => GraphError::Refused {
                status,
                code,
                message,
            },
            AzureError::Rejected {
                status,
                code,
                message,
            } => GraphError::Rejected {
                status,
                code,
                message,
            },
            other => GraphError::Unavailable(other),
        }
    }
}

/// What Resource Graph shows of the handlers in one subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphHandlers {
    /// `turbot_rg` exists.
    pub resource_group: bool,
    /// `Some(enabled)` when the handlers' action group exists in it (an
    /// absent `enabled` counts as enabled, as ARM defaults it).
    pub action_group: Option<bool>,
    /// Enabled activity log alerts in the subscription that route to that
    /// action group (0 when there is none).
    pub alerts: usize,
}

impl GraphHandlers {
    /// The same state the per-subscription ARM reads would find.
    pub fn state(&self) -> Handlers {
        Handlers::from_parts(self.resource_group, self.action_group, self.alerts)
    }
}

impl From<GraphHandlers> for Handlers {
    fn from(g: GraphHandlers) -> Handlers {
        g.state()
    }
}

/// One batch's answer.
#[derive(Debug, Default)]
pub struct GraphAnswer {
    /// Each asked-for subscription Resource Graph shows (lowercased id).
    pub handlers: BTreeMap<String, GraphHandlers>,
    /// Asked for, but not shown: the principal cannot see it in Resource
    /// Graph, so nothing is known of it.
    pub unseen: BTreeSet<String>,
    /// Pages read.
    pub pages: usize,
    /// HTTP requests made, retries included.
    pub requests: usize,
}

/// Why a subscription must be checked with the per-subscription ARM reads.
#[derive(Debug, Clone)]
pub enum Fallback {
    /// Resource Graph did not show it.
    Unseen,
    /// Its batch failed (shared by every subscription of the batch; when
    /// [`GraphError::is_refused`], later batches were not asked).
    Failed(Arc<GraphError>),
}

/// Every asked-for subscription, in exactly one of the two maps.
#[derive(Debug, Default)]
pub struct Checked {
    /// Answered by Resource Graph (lowercased id).
    pub handlers: BTreeMap<String, GraphHandlers>,
    /// To check with the ARM reads instead (lowercased id), and why.
    pub fallback: BTreeMap<String, Fallback>,
    /// Pages read, over all batches.
    pub pages: usize,
    /// HTTP requests made, retries included.
    pub requests: usize,
}

/// Resource Graph's per-principal quota, learnt from its answers: when it is
/// spent, the moment each credential may query again.
#[derive(Debug, Default)]
struct Quota {
    resumes: Mutex<HashMap<String, Instant>>,
}

/// One credential's view of the [`Quota`], as a request's [`Pacing`].
struct QuotaOf<'a> {
    quota: &'a Quota,
    credential: &'a str,
}

impl Pacing for QuotaOf<'_> {
    async fn admit(&self) {
        let resumes = {
            let m = self.quota.resumes.lock().unwrap_or_else(|p| p.into_inner());
            m.get(self.credential).copied()
        };
        if let Some(at) = resumes
            && at > Instant::now()
        {
            tracing::debug!(
                credential = self.credential,
                wait_ms = (at - Instant::now()).as_millis() as u64,
                "waiting for Resource Graph's quota to reset"
            );
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
    }

    fn observe(&self, headers: &HeaderMap) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let remaining =
            header("x-ms-user-quota-remaining").and_then(|v| v.trim().parse::<i64>().ok());
        let resets = header("x-ms-user-quota-resets-after").and_then(parse_resets_after);
        if let (Some(remaining), Some(resets)) = (remaining, resets)
            && remaining <= 0
        {
            self.quota
                .resumes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    self.credential.to_string(),
                    Instant::now() + resets.min(MAX_QUOTA_WAIT),
                );
        }
    }
}

/// `x-ms-user-quota-resets-after`: `hh:mm:ss`, the seconds possibly with a fraction.
fn parse_resets_after(v: &str) -> Option<Duration> {
    let mut parts = v.trim().split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let secs = h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60;
    let frac = s
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)?;
    Some(Duration::from_secs(secs) + Duration::from_secs_f64(frac))
}

/// A row of [`QUERY`]'s answer: only the projected columns are read (a
/// column absent or null reads as empty).
#[derive(Debug, Deserialize)]
struct Row {
    #[serde(default, deserialize_with = "text")]
    id: String,
    #[serde(default, rename = "subscriptionId", deserialize_with = "text")]
    subscription_id: String,
    #[serde(default, deserialize_with = "text")]
    entry: String,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default, rename = "actionGroupId", deserialize_with = "text")]
    action_group_id: String,
}

/// A string column, null read as empty.
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Deserialize)]
struct Page {
    #[serde(rename = "totalRecords")]
    total_records: u64,
    data: Vec<Row>,
    #[serde(default, rename = "$skipToken")]
    skip_token: Option<String>,
}

/// Queries Resource Graph for the handlers.
#[derive(Debug)]
pub struct ResourceGraphClient {
    arm: Arm,
    url: Url,
    top: usize,
    quota: Quota,
}

impl ResourceGraphClient {
    /// `base`: the ARM endpoint of the configured cloud.
    pub fn new(
        http: reqwest::Client,
        base: &Url,
        backoff: Backoff,
        request_timeout: Duration,
    ) -> Self {
        ResourceGraphClient {
            arm: Arm::new(http, backoff, request_timeout),
            url: super::arm::url(base, PATH, API_VERSION),
            top: MAX_TOP,
            quota: Quota::default(),
        }
    }

    /// Rows per page (`$top`), 1 to 1,000; 1,000 unless set.
    pub fn with_page_size(mut self, top: usize) -> Self {
        self.top = top.clamp(1, MAX_TOP);
        self
    }

    /// Every subscription of `subscription_ids`, in batches of 1,000 (a few
    /// at a time): answered by Resource Graph, or to be checked with the ARM
    /// reads. Once Resource Graph refuses a batch, the batches not yet asked
    /// fall back without asking.
    pub async fn check(&self, subscription_ids: &[String], tokens: &Arc<TokenSource>) -> Checked {
        let ids = normalize(subscription_ids);
        let refused: Mutex<Option<Arc<GraphError>>> = Mutex::new(None);
        let refused = &refused;
        // The futures are made first: a stream holding the closure that makes
        // them would not be `Send` for every lifetime, as a spawned task
        // (the daemon's detection) needs.
        let queries: Vec<_> = ids
            .chunks(MAX_SUBSCRIPTIONS)
            .map(|batch| async move {
                let earlier = refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let result = match earlier {
                    Some(e) => Err(e),
                    None => self.query_batch(batch, tokens).await.map_err(|e| {
                        let e = Arc::new(e);
                        if e.is_refused() {
                            *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                        }
                        e
                    }),
                };
                (batch.to_vec(), result)
            })
            .collect();
        let batches: Vec<_> = futures::stream::iter(queries)
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .collect()
            .await;
        let mut checked = Checked::default();
        for (batch, result) in batches {
            match result {
                Ok(answer) => {
                    checked.pages += answer.pages;
                    checked.requests += answer.requests;
                    checked.handlers.extend(answer.handlers);
                    checked
                        .fallback
                        .extend(answer.unseen.into_iter().map(|s| (s, Fallback::Unseen)));
                }
                Err(e) => {
                    tracing::warn!(subscriptions = batch.len(), error = %e, "Resource Graph could not check a batch; checking it with ARM reads");
                    checked
                        .fallback
                        .extend(batch.into_iter().map(|s| (s, Fallback::Failed(e.clone()))));
                }
            }
        }
        checked
    }

    /// One batch of at most [`MAX_SUBSCRIPTIONS`], every page of it.
    pub async fn query_batch(
        &self,
        subscription_ids: &[String],
        tokens: &Arc<TokenSource>,
    ) -> Result<GraphAnswer, GraphError> {
        let asked = normalize(subscription_ids);
        if asked.len() > MAX_SUBSCRIPTIONS {
            return Err(GraphError::TooManySubscriptions(asked.len()));
        }
        let mut answer = GraphAnswer::default();
        if asked.is_empty() {
            return Ok(answer);
        }
        let beat = Heartbeat::default();
        let pacing = QuotaOf {
            quota: &self.quota,
            credential: tokens.name(),
        };
        let mut rows = Vec::new();
        let mut total = 0;
        let mut skip_token: Option<String> = None;
        while answer.pages < MAX_PAGES {
            let body = bytes::Bytes::from(request_body(&asked, self.top, skip_token.as_deref()));
            let got = self
                .arm
                .send(
                    |http| {
                        http.post(self.url.clone())
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(body.clone())
                    },
                    tokens,
                    &beat,
                    &pacing,
                )
                .await?;
            answer.pages += 1;
            answer.requests += got.requests;
            let page: Page = serde_json::from_slice(&got.body)
                .map_err(|e| GraphError::Malformed(redacted(&e)))?;
            if answer.pages == 1 {
                total = page.total_records;
            }
            rows.extend(page.data);
            match page.skip_token.filter(|t| !t.is_empty()) {
                Some(t) => skip_token = Some(t),
                None => {
                    if (rows.len() as u64) < total {
                        return Err(GraphError::Incomplete {
                            got: rows.len(),
                            total,
                        });
                    }
                    tracing::debug!(
                        subscriptions = asked.len(),
                        rows = rows.len(),
                        pages = answer.pages,
                        "Resource Graph answered a batch"
                    );
                    fold(&asked, rows, &mut answer)?;
                    return Ok(answer);
                }
            }
        }
        Err(GraphError::Endless(answer.pages))
    }
}

/// Lowercased, without duplicates, in their first order.
fn normalize(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && seen.insert(s.clone()))
        .collect()
}

/// The request for one page.
fn request_body(subscriptions: &[String], top: usize, skip_token: Option<&str>) -> String {
    let mut options = serde_json::json!({ "$top": top, "resultFormat": "objectArray" });
    if let Some(t) = skip_token {
        options["$skipToken"] = serde_json::Value::from(t);
    }
    serde_json::json!({
        "subscriptions": subscriptions,
        "query": QUERY,
        "options": options,
    })
    .to_string()
}

/// A JSON error without the values it quotes: an unexpected string in an
/// answer could be anything, a webhook URI with its token included.
fn redacted(e: &serde_json::Error) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in e.to_string().chars() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
                out.push_str("…\"");
            }
        } else {
            if c == '"' {
                quoted = true;
            }
            out.push(c);
        }
    }
    out
}

/// What one subscription's rows said.
#[derive(Default)]
struct Seen {
    visible: bool,
    resource_group: bool,
    /// The action group's id and `enabled`.
    action_group: Option<(String, bool)>,
    /// Each alert row: its id, `enabled`, and the action group it names.
    alerts: Vec<(String, bool, String)>,
}

/// Sorts the rows out per asked-for subscription into `answer`.
fn fold(asked: &[String], rows: Vec<Row>, answer: &mut GraphAnswer) -> Result<(), GraphError> {
    let asked_set: HashSet<&str> = asked.iter().map(String::as_str).collect();
    let mut seen: HashMap<String, Seen> = HashMap::new();
    for row in rows {
        let sub = row.subscription_id.to_ascii_lowercase();
        if !asked_set.contains(sub.as_str()) {
            // Not asked for: it cannot make an asked-for subscription clear.
            continue;
        }
        let s = seen.entry(sub).or_default();
        let enabled = row.enabled.unwrap_or(true);
        match row.entry.as_str() {
            "subscription" => s.visible = true,
            "resourceGroup" => s.resource_group = true,
            "actionGroup" => s.action_group = Some((row.id, enabled)),
            "alert" => s.alerts.push((row.id, enabled, row.action_group_id)),
            _ => {
                return Err(GraphError::Malformed(
                    "a row is neither a subscription, a resource group, an action group nor an alert"
                        .into(),
                ));
            }
        }
    }
    for sub in asked {
        let Some(s) = seen.remove(sub).filter(|s| s.visible) else {
            answer.unseen.insert(sub.clone());
            continue;
        };
        let alerts = match &s.action_group {
            None => 0,
            Some((group_id, _)) => {
                // An alert naming the group twice is one alert.
                let mut counted = HashSet::new();
                s.alerts
                    .iter()
                    .filter(|(_, enabled, named)| *enabled && routes_to(named, group_id))
                    .filter(|(id, _, _)| id.is_empty() || counted.insert(id.to_ascii_lowercase()))
                    .count()
            }
        };
        answer.handlers.insert(
            sub.clone(),
            GraphHandlers {
                resource_group: s.resource_group,
                action_group: s.action_group.map(|(_, enabled)| enabled),
                alerts,
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::handlers::{ACTION_GROUP, RESOURCE_GROUP};

    const A: &str = "00000000-0000-4000-8000-00000000000a";
    const B: &str = "00000000-0000-4000-8000-00000000000b";

    fn group(sub: &str) -> String {
        format!(
            "/subscriptions/{sub}/resourceGroups/turbot_rg/providers/microsoft.insights/actionGroups/{ACTION_GROUP}"
        )
    }

    fn row(sub: &str, entry: &str, id: &str, enabled: Option<bool>, names: &str) -> Row {
        Row {
            id: id.into(),
            subscription_id: sub.into(),
            entry: entry.into(),
            enabled,
            action_group_id: names.to_ascii_lowercase(),
        }
    }

    fn folded(asked: &[&str], rows: Vec<Row>) -> GraphAnswer {
        let asked: Vec<String> = asked.iter().map(|s| s.to_string()).collect();
        let mut answer = GraphAnswer::default();
        fold(&asked, rows, &mut answer).unwrap();
        answer
    }

    #[test]
    fn the_query_names_the_handlers() {
        assert!(QUERY.contains(&format!("name =~ '{RESOURCE_GROUP}'")));
        assert!(QUERY.contains(&format!("name =~ '{ACTION_GROUP}'")));
        assert!(QUERY.contains(&format!(
            "/resourcegroups/{RESOURCE_GROUP}/providers/microsoft.insights/actiongroups/{ACTION_GROUP}"
        )));
        // Never the receivers: their URIs hold a token.
        assert!(!QUERY.to_ascii_lowercase().contains("receivers"));
    }

    #[test]
    fn rows_fold_into_each_subscription_s_state() {
        let alert = |n: &str, enabled, names: &str| {
            row(
                A,
                "alert",
                &format!(
                    "/subscriptions/{A}/resourceGroups/turbot_rg/providers/microsoft.insights/activityLogAlerts/{n}"
                ),
                enabled,
                names,
            )
        };
        let answer = folded(
            &[A, B],
            vec![
                row(A, "subscription", &format!("/subscriptions/{A}"), None, ""),
                row(A, "resourceGroup", "x/resourceGroups/turbot_rg", None, ""),
                row(A, "actionGroup", &group(A), None, ""),
                // Counted: enabled (or unsaid), naming the group, with any case or a slash.
                alert("one", Some(true), &group(A)),
                alert("two", None, &format!("{}/", group(A))),
                // Named twice: one alert.
                alert("two", None, &group(A)),
                // Not counted: disabled, or naming another subscription's group.
                alert("three", Some(false), &group(A)),
                alert("four", Some(true), &group(B)),
                row(B, "subscription", &format!("/subscriptions/{B}"), None, ""),
            ],
        );
        assert_eq!(
            answer.handlers[A],
            GraphHandlers {
                resource_group: true,
                action_group: Some(true),
                alerts: 2
            }
        );
        assert_eq!(answer.handlers[A].state(), Handlers::Live { alerts: 2 });
        assert_eq!(answer.handlers[B].state(), Handlers::NoResourceGroup);
        assert!(answer.unseen.is_empty());
    }

    #[test]
    fn a_subscription_without_its_own_row_is_unseen() {
        // Rows about it, but Resource Graph did not show the subscription itself.
        let answer = folded(
            &[A, B],
            vec![
                row(A, "resourceGroup", "x", None, ""),
                row(B, "subscription", "y", None, ""),
                // Not asked for: ignored.
                row("c", "subscription", "z", None, ""),
            ],
        );
        assert_eq!(answer.unseen, BTreeSet::from([A.to_string()]));
        assert_eq!(answer.handlers.len(), 1);
    }

    #[test]
    fn a_disabled_group_and_a_group_without_alerts() {
        let answer = folded(
            &[A, B],
            vec![
                row(A, "subscription", "a", None, ""),
                row(A, "resourceGroup", "a/rg", None, ""),
                row(A, "actionGroup", &group(A), Some(false), ""),
                row(A, "alert", "a/alert", Some(true), &group(A)),
                row(B, "subscription", "b", None, ""),
                row(B, "resourceGroup", "b/rg", None, ""),
                row(B, "actionGroup", &group(B), Some(true), ""),
            ],
        );
        assert_eq!(answer.handlers[A].state(), Handlers::Disabled { alerts: 1 });
        assert_eq!(answer.handlers[B].state(), Handlers::NoAlerts);
    }

    #[test]
    fn an_unknown_row_is_malformed() {
        let mut answer = GraphAnswer::default();
        let e = fold(
            &[A.to_string()],
            vec![row(A, "https://secret.example/?token=x", "", None, "")],
            &mut answer,
        )
        .unwrap_err();
        assert!(matches!(e, GraphError::Malformed(_)));
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn quota_resets_are_read_as_durations() {
        assert_eq!(parse_resets_after("00:00:03"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_resets_after("01:02:03.5"),
            Some(Duration::from_secs_f64(3723.5))
        );
        for bad in ["3", "00:03", "a:b:c", "00:00:-1", "00:00:00:01"] {
            assert_eq!(parse_resets_after(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_spent_quota_holds_the_next_request() {
        let quota = Quota::default();
        let pacing = QuotaOf {
            quota: &quota,
            credential: "c",
        };
        let mut h = HeaderMap::new();
        h.insert("x-ms-user-quota-remaining", "3".parse().unwrap());
        h.insert("x-ms-user-quota-resets-after", "00:00:05".parse().unwrap());
        pacing.observe(&h);
        assert!(quota.resumes.lock().unwrap().is_empty());
        h.insert("x-ms-user-quota-remaining", "0".parse().unwrap());
        pacing.observe(&h);
        let at = quota.resumes.lock().unwrap()["c"];
        assert!(at > Instant::now() + Duration::from_secs(4));
    }

    #[test]
    fn the_request_carries_the_batch_and_the_skip_token() {
        let subs = vec![A.to_string(), B.to_string()];
        let first: serde_json::Value = serde_json::from_str(&request_body(&subs, 7, None)).unwrap();
        assert_eq!(first["subscriptions"], serde_json::json!([A, B]));
        assert_eq!(first["query"], QUERY);
        assert_eq!(first["options"]["$top"], 7);
        assert_eq!(first["options"]["resultFormat"], "objectArray");
        assert!(first["options"].get("$skipToken").is_none());
        let next: serde_json::Value =
            serde_json::from_str(&request_body(&subs, 7, Some("tok"))).unwrap();
        assert_eq!(next["options"]["$skipToken"], "tok");
    }

    #[test]
    fn ids_are_lowercased_once_each() {
        let ids = vec![A.to_uppercase(), A.to_string(), " ".into(), B.into()];
        assert_eq!(normalize(&ids), vec![A.to_string(), B.to_string()]);
    }

    #[test]
    fn null_columns_read_as_empty() {
        let page: Page = serde_json::from_str(
            r#"{"totalRecords": 1, "data": [{"id": null, "subscriptionId": "a", "entry": "alert", "enabled": null, "actionGroupId": null}]}"#,
        )
        .unwrap();
        assert_eq!(page.data[0].id, "");
        assert_eq!(page.data[0].action_group_id, "");
        assert_eq!(page.data[0].enabled, None);
    }

    #[test]
    fn json_errors_do_not_quote_values() {
        let e = serde_json::from_str::<Page>(
            r#"{"totalRecords": 1, "data": [{"enabled": "https://h/?token=s\"ecret"}]}"#,
        )
        .unwrap_err();
        let text = redacted(&e);
        assert!(
            !text.contains("secret") && !text.contains("token"),
            "{text}"
        );
        assert!(text.contains("line 1"), "{text}");
    }
}
