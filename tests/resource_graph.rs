//! The event handlers of many subscriptions through Azure Resource Graph
//! (`src/azure/resource_graph.rs`), against the emulator and, for answers the
//! emulator never gives (a 429 then a page, a 401, malformed or truncated
//! answers, rows carrying a webhook URI), a small fake in this file.
//!
//! Tokens come from the emulator's Entra ID in every test: the real
//! `ClientSecretCredential` signs in over TLS.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use azure_activity_poller::azure::TokenSource;
use azure_activity_poller::azure::handlers::Handlers;
use azure_activity_poller::azure::resource_graph::{
    Checked, Fallback, GraphAnswer, GraphError, GraphHandlers, QUERY, ResourceGraphClient,
};
use azure_activity_poller::config::CredentialConfig;
use azure_activity_poller::emulator::{CLIENT_ID, Emulator, Scenario, TENANT_ID};
use azure_activity_poller::retry::Backoff;
use serde_json::{Value, json};
use url::Url;

/// The `n`th subscription id of a test.
fn sub(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// An emulator, an HTTP client trusting its CA, and tokens from its Entra ID.
struct Setup {
    emu: Emulator,
    http: reqwest::Client,
    tokens: Arc<TokenSource>,
}

async fn setup(scenario: &str) -> Setup {
    let scenario = Scenario::parse(scenario, "test").unwrap();
    let emu = Emulator::start(scenario, IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .unwrap();
    let ca = reqwest::Certificate::from_pem(emu.ca_pem.as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let tokens = TokenSource::new(
        "emulator",
        CredentialConfig::ClientSecret {
            tenant_id: TENANT_ID.into(),
            client_id: CLIENT_ID.into(),
            client_secret: emu.client_secret().to_string().into(),
        },
        Url::parse(&format!("https://{}", emu.login)).unwrap(),
        "https://management.azure.com/.default".into(),
        http.clone(),
        Duration::from_secs(10),
    )
    .unwrap();
    Setup {
        emu,
        http,
        tokens: Arc::new(tokens),
    }
}

fn backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
        retries: Some(4),
    }
}

impl Setup {
    /// A client for the emulator's Resource Graph.
    fn graph(&self) -> ResourceGraphClient {
        self.graph_at(self.emu.arm)
    }

    /// A client for Resource Graph at `arm` (a fake's address).
    fn graph_at(&self, arm: SocketAddr) -> ResourceGraphClient {
        ResourceGraphClient::new(
            self.http.clone(),
            &Url::parse(&format!("http://{arm}")).unwrap(),
            backoff(),
            Duration::from_secs(10),
        )
    }

    async fn token(&self) -> String {
        use secrecy::ExposeSecret;
        self.tokens
            .token()
            .await
            .unwrap()
            .expose_secret()
            .to_string()
    }

    /// A raw query to the emulator's Resource Graph.
    async fn post(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!(
                "http://{}/providers/Microsoft.ResourceGraph/resources?api-version=2022-10-01",
                self.emu.arm
            ))
            .bearer_auth(self.token().await)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

/// A scenario naming `subs` (no traffic), with extra lines for some of them.
fn scenario(subs: impl IntoIterator<Item = String>, special: &BTreeMap<String, &str>) -> String {
    let mut s = String::from("seed = 3\n");
    for id in subs {
        s.push_str(&format!(
            "[[subscription]]\nid = \"{id}\"\nrate_per_minute = 0\n{}\n",
            special.get(&id).copied().unwrap_or("")
        ));
    }
    s
}

const LIVE: &str = "event_handlers_from = \"0s\"";
const DISABLED: &str = "event_handlers_from = \"0s\"\nevent_handlers = \"disabled\"";
const NO_ALERTS: &str = "event_handlers_from = \"0s\"\nevent_handlers = \"no_alerts\"";
const REMOVED: &str = "event_handlers_from = \"0s\"\nevent_handlers_until = \"1ms\"";

/// The handlers every state of a test expects, by subscription number.
fn specials() -> Vec<(usize, &'static str, Handlers)> {
    vec![
        (0, LIVE, Handlers::Live { alerts: 2 }),
        (999, LIVE, Handlers::Live { alerts: 2 }),
        (1000, DISABLED, Handlers::Disabled { alerts: 2 }),
        (1717, NO_ALERTS, Handlers::NoAlerts),
        (2500, REMOVED, Handlers::NoActionGroup),
        (2997, LIVE, Handlers::Live { alerts: 2 }),
    ]
}

/// What the emulator's ARM reads (the fallback's two GETs) say of `id`.
async fn arm_reads(s: &Setup, id: &str) -> Handlers {
    let token = s.token().await;
    let groups = s
        .http
        .get(format!(
            "http://{}/subscriptions/{id}/resourceGroups/turbot_rg/providers/Microsoft.Insights/actionGroups?api-version=2023-01-01",
            s.emu.arm
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    if groups.status() == StatusCode::NOT_FOUND {
        return Handlers::NoResourceGroup;
    }
    let groups: Value = groups.json().await.unwrap();
    let Some(group) = groups["value"].as_array().unwrap().first() else {
        return Handlers::NoActionGroup;
    };
    let alerts: Value = s
        .http
        .get(format!(
            "http://{}/subscriptions/{id}/providers/Microsoft.Insights/activityLogAlerts?api-version=2020-10-01",
            s.emu.arm
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let routing = alerts["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["properties"]["enabled"] == true)
        .filter(|a| {
            a["properties"]["actions"]["actionGroups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| {
                    g["actionGroupId"]
                        .as_str()
                        .unwrap()
                        .eq_ignore_ascii_case(group["id"].as_str().unwrap())
                })
        })
        .count();
    Handlers::from_parts(true, group["properties"]["enabled"].as_bool(), routing)
}

/// 3,000 subscriptions, two of which the principal cannot see: three batches
/// of 1,000, a handful of pages, every state right, the unseen two to be
/// checked with ARM reads, and the same answers as those reads give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_subscriptions_are_checked_in_three_batches() {
    let special: BTreeMap<String, &str> = specials()
        .into_iter()
        .map(|(n, s, _)| (sub(n), s))
        .collect();
    // 2998 and 2999 are asked for, but not in the scenario: invisible.
    let s = setup(&scenario((0..2998).map(sub), &special)).await;
    let ids: Vec<String> = (0..3000).map(sub).collect();
    let started = Instant::now();
    let checked = s.graph().check(&ids, &s.tokens).await;
    let took = started.elapsed();

    assert_eq!(checked.handlers.len(), 2998);
    assert_eq!(checked.fallback.len(), 2);
    for n in [2998, 2999] {
        assert!(matches!(checked.fallback[&sub(n)], Fallback::Unseen));
    }
    for (n, _, expected) in specials() {
        assert_eq!(
            checked.handlers[&sub(n)].state(),
            expected,
            "subscription {n}"
        );
        assert_eq!(arm_reads(&s, &sub(n)).await, expected, "ARM reads of {n}");
    }
    let special_ids: Vec<String> = specials().iter().map(|(n, _, _)| sub(*n)).collect();
    for (id, h) in &checked.handlers {
        if !special_ids.contains(id) {
            assert_eq!(*h, GraphHandlers::default(), "{id}");
            assert_eq!(h.state(), Handlers::NoResourceGroup);
        }
    }
    // A batch of 1,000 subscriptions is 1,000 rows and a few: two pages each.
    let calls = s.emu.resource_graph_calls();
    assert_eq!(checked.pages, 6, "{calls:?}");
    assert_eq!(calls.answered, 6);
    assert_eq!(calls.requests, 6, "no retries: {calls:?}");
    assert_eq!(checked.requests, 6);
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// The scale: 10,000 subscriptions at 500 ms a round trip, within
/// Resource Graph's quota (15 queries in 5 s), are checked in seconds; the
/// per-subscription ARM reads would take 20,000 GETs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscriptions_at_half_a_second_a_round_trip() {
    // One live subscription a batch: two pages each, 20 queries in all.
    let special: BTreeMap<String, &str> = (0..10).map(|b| (sub(b * 1000 + 7), LIVE)).collect();
    let s = setup(
        &(scenario((0..10_000).map(sub), &special) + "[resource_graph]\nlatency = \"500ms\"\n"),
    )
    .await;
    let ids: Vec<String> = (0..10_000).map(sub).collect();
    let started = Instant::now();
    let checked = s.graph().check(&ids, &s.tokens).await;
    let took = started.elapsed();
    assert_eq!(checked.handlers.len(), 10_000);
    assert!(checked.fallback.is_empty());
    let live = checked
        .handlers
        .values()
        .filter(|h| h.state().live())
        .count();
    assert_eq!(live, 10);
    assert_eq!(checked.pages, 20);
    // 20 queries, 3 batches at a time, 2 pages a batch: 4 rounds of 2 pages
    // at 0.5 s, and one wait for the quota's next 5 s window.
    assert!(took < Duration::from_secs(15), "{took:?}");
    eprintln!("10,000 subscriptions checked in {took:?}");
}

/// With 7 rows a page, every page is followed by its `$skipToken`, and the
/// answer is the same as with 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_pages_follow_the_skip_token() {
    let special: BTreeMap<String, &str> =
        [(sub(3), LIVE), (sub(10), DISABLED), (sub(20), NO_ALERTS)]
            .into_iter()
            .collect();
    let s = setup(&(scenario((0..40).map(sub), &special) + "[resource_graph]\nquota = 0\n")).await;
    let ids: Vec<String> = (0..40).map(sub).collect();
    let whole = s.graph().query_batch(&ids, &s.tokens).await.unwrap();
    assert_eq!(whole.pages, 1);
    let paged = s
        .graph()
        .with_page_size(7)
        .query_batch(&ids, &s.tokens)
        .await
        .unwrap();
    assert_eq!(paged.handlers, whole.handlers);
    // A row per subscription, 4 more for the live one and for the disabled
    // one, 2 for the one without alerts: 50 rows, 8 pages of up to 7.
    assert_eq!(paged.pages, 8);
    assert_eq!(s.emu.resource_graph_calls().answered, 9);
    assert_eq!(
        paged.handlers[&sub(3)].state(),
        Handlers::Live { alerts: 2 }
    );
    assert_eq!(
        paged.handlers[&sub(10)].state(),
        Handlers::Disabled { alerts: 2 }
    );
    assert_eq!(paged.handlers[&sub(20)].state(), Handlers::NoAlerts);
}

/// Resource Graph refusing (403) is its own error, so the caller falls back;
/// a batched check falls back for every subscription and stops asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_a_distinct_error_and_everything_falls_back() {
    let s = setup(
        &(scenario((0..3).map(sub), &BTreeMap::new()) + "[resource_graph]\nenabled = false\n"),
    )
    .await;
    let ids: Vec<String> = (0..5000).map(sub).collect();
    let e = s
        .graph()
        .query_batch(&ids[..10], &s.tokens)
        .await
        .unwrap_err();
    assert!(e.is_refused(), "{e}");
    match &e {
        GraphError::Refused { status, code, .. } => {
            assert_eq!(*status, 403);
            assert_eq!(code.as_deref(), Some("AuthorizationFailed"));
        }
        other => panic!("not a refusal: {other:?}"),
    }
    assert!(e.to_string().starts_with("Resource Graph refused"), "{e}");

    let checked: Checked = s.graph().check(&ids, &s.tokens).await;
    assert!(checked.handlers.is_empty());
    assert_eq!(checked.fallback.len(), 5000);
    assert!(
        checked
            .fallback
            .values()
            .all(|f| matches!(f, Fallback::Failed(e) if e.is_refused()))
    );
    // Five batches, at most three in flight: once one was refused, the
    // batches not yet sent were not (one refusal before, for the single batch).
    let refused = s.emu.resource_graph_calls().refused - 1;
    assert!((1..=3).contains(&refused), "{refused} of 5 batches sent");
}

/// A quota of 2 queries a second: the client waits for it (its
/// `x-ms-user-quota-*` headers, or a 429's `Retry-After`) and every batch is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_is_waited_for() {
    let s = setup(
        &(scenario((0..5).map(sub), &[(sub(4), LIVE)].into_iter().collect())
            + "[resource_graph]\nquota = 2\nquota_window = \"1s\"\n"),
    )
    .await;
    let ids: Vec<String> = (0..5000).map(sub).collect();
    let started = Instant::now();
    let checked = s.graph().check(&ids, &s.tokens).await;
    assert_eq!(checked.handlers.len(), 5);
    assert_eq!(
        checked.handlers[&sub(4)].state(),
        Handlers::Live { alerts: 2 }
    );
    assert!(
        checked
            .fallback
            .values()
            .all(|f| matches!(f, Fallback::Unseen)),
        "{:?}",
        checked
            .fallback
            .values()
            .find(|f| !matches!(f, Fallback::Unseen))
    );
    let calls = s.emu.resource_graph_calls();
    assert_eq!(calls.answered, 5, "{calls:?}");
    // Five queries at two a second: at least two windows were waited for.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// The emulator answers only the poller's query, with ARM's error shape, and
/// never shows a webhook URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_answers_only_the_poller_s_query() {
    let s = setup(&scenario(
        (0..2).map(sub),
        &[(sub(1), LIVE)].into_iter().collect(),
    ))
    .await;
    let ids = vec![sub(0), sub(1)];
    let resp = s
        .post(&json!({"subscriptions": ids, "query": "resources | project id, properties"}))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BadRequest");
    assert_eq!(body["error"]["details"][0]["code"], "InvalidQuery");

    for options in [
        json!({"$top": 0}),
        json!({"$top": 1001}),
        json!({"resultFormat": "table"}),
        json!({"$skipToken": "nonsense"}),
    ] {
        let resp = s
            .post(&json!({"subscriptions": ids, "query": QUERY, "options": options}))
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{options}");
    }
    let many: Vec<String> = (0..1001).map(sub).collect();
    let resp = s
        .post(&json!({"subscriptions": many, "query": QUERY}))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // The client does not even ask.
    let e = s.graph().query_batch(&many, &s.tokens).await.unwrap_err();
    assert!(matches!(e, GraphError::TooManySubscriptions(1001)), "{e}");

    let resp = s.post(&json!({"subscriptions": ids, "query": QUERY})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-ms-user-quota-remaining"));
    let text = resp.text().await.unwrap();
    let secret = s.emu.ingest_url();
    let token = secret.rsplit('=').next().unwrap();
    assert!(!text.contains(token), "{text}");
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["totalRecords"], 6);
    assert_eq!(page["count"], 6);
    assert_eq!(page["resultTruncated"], "false");
    assert!(page.get("$skipToken").is_none());
    let checked = s.graph().check(&ids, &s.tokens).await;
    assert!(!format!("{checked:?}").contains(token));
    assert_eq!(s.emu.report(&["Succeeded"]).resource_graph.rejected, 6);
}

/// One scripted answer: status, headers, body.
type Answer = (StatusCode, Vec<(&'static str, String)>, String);

/// A scripted Resource Graph: each POST gets the next answer (the last one
/// repeats); the requests' bodies are kept.
#[derive(Clone, Default)]
struct Fake {
    script: Arc<Mutex<VecDeque<Answer>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Fake {
    async fn start(script: Vec<Answer>) -> (Fake, SocketAddr) {
        let fake = Fake {
            script: Arc::new(Mutex::new(script.into())),
            bodies: Arc::default(),
        };
        let state = fake.clone();
        let app = axum::Router::new().route(
            "/providers/Microsoft.ResourceGraph/resources",
            axum::routing::post(move |body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    state
                        .bodies
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    let mut script = state.script.lock().unwrap();
                    let (status, headers, body) = if script.len() > 1 {
                        script.pop_front().unwrap()
                    } else {
                        script.front().cloned().unwrap()
                    };
                    let mut r: Response = (status, body).into_response();
                    for (k, v) in headers {
                        r.headers_mut().insert(k, v.parse().unwrap());
                    }
                    r
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (fake, addr)
    }

    fn requests(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

impl Setup {
    /// Subscription 1's batch, asked of a fake answering `script`.
    async fn ask_fake(&self, script: Vec<Answer>) -> (Result<GraphAnswer, GraphError>, Fake) {
        let (fake, addr) = Fake::start(script).await;
        let result = self
            .graph_at(addr)
            .query_batch(&[sub(1)], &self.tokens)
            .await;
        (result, fake)
    }
}

const SECRET: &str = "https://gateway.example/api/v5/events/raw?token=SECRET-jwt-abc";

/// A valid one-page answer for subscription 1, live, whose rows also carry
/// what the query never projects (a webhook URI with its token).
fn live_page() -> String {
    let s = sub(1);
    let group = format!(
        "/subscriptions/{s}/resourceGroups/turbot_rg/providers/microsoft.insights/actionGroups/turbot_azure_event_handler_action_group"
    );
    let extra = json!({"webhookReceivers": [{"serviceUri": SECRET}]});
    json!({
        "totalRecords": 4, "count": 4, "resultTruncated": "false", "facets": [],
        "data": [
            {"id": format!("/subscriptions/{s}"), "subscriptionId": s, "entry": "subscription", "enabled": null, "actionGroupId": ""},
            {"id": format!("/subscriptions/{s}/resourceGroups/turbot_rg"), "subscriptionId": s, "entry": "resourceGroup", "enabled": null, "actionGroupId": ""},
            {"id": group, "subscriptionId": s, "entry": "actionGroup", "enabled": true, "actionGroupId": "", "properties": extra, "serviceUri": SECRET},
            {"id": format!("/subscriptions/{s}/resourceGroups/turbot_rg/providers/microsoft.insights/activityLogAlerts/a"), "subscriptionId": s, "entry": "alert", "enabled": true, "actionGroupId": group.to_ascii_lowercase()},
        ],
    })
    .to_string()
}

/// A 429 with `Retry-After: 1` is waited for, then the page is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_retried() {
    let s = setup(&scenario([sub(1)], &BTreeMap::new())).await;
    let started = Instant::now();
    let (answer, fake) = s
        .ask_fake(vec![
            (
                StatusCode::TOO_MANY_REQUESTS,
                vec![
                    ("retry-after", "1".into()),
                    ("x-ms-user-quota-remaining", "0".into()),
                    ("x-ms-user-quota-resets-after", "00:00:01".into()),
                ],
                json!({"error": {"code": "RateLimiting", "message": "slow down"}}).to_string(),
            ),
            (StatusCode::OK, vec![], live_page()),
        ])
        .await;
    let answer = answer.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        answer.handlers[&sub(1)].state(),
        Handlers::Live { alerts: 1 }
    );
    assert_eq!((answer.pages, answer.requests), (1, 2));
    assert_eq!(fake.requests(), 2);
    // The webhook URI the rows carried is in no output.
    assert!(!format!("{answer:?}").contains("SECRET"));
}

/// A 401 refreshes the token once and the query is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_the_token_once() {
    let s = setup(&scenario([sub(1)], &BTreeMap::new())).await;
    let (answer, fake) = s
        .ask_fake(vec![
            (
                StatusCode::UNAUTHORIZED,
                vec![],
                json!({"error": {"code": "ExpiredAuthenticationToken", "message": "expired"}})
                    .to_string(),
            ),
            (StatusCode::OK, vec![], live_page()),
        ])
        .await;
    let answer = answer.unwrap();
    assert_eq!(answer.handlers.len(), 1);
    assert_eq!(fake.requests(), 2);
    // Every request was the poller's query for the batch.
    for body in fake.bodies.lock().unwrap().iter() {
        assert_eq!(body["query"], QUERY);
        assert_eq!(body["subscriptions"], json!([sub(1)]));
    }
}

/// Answers that cannot be read are errors that name Resource Graph and quote
/// nothing from the answer; none panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_an_error_naming_resource_graph() {
    let s = setup(&scenario([sub(1)], &BTreeMap::new())).await;
    let row = |entry: Value, enabled: Value| {
        json!({"totalRecords": 1, "count": 1, "resultTruncated": "false",
            "data": [{"id": "x", "subscriptionId": sub(1), "entry": entry, "enabled": enabled, "actionGroupId": ""}]})
        .to_string()
    };
    for (body, what) in [
        ("not json".to_string(), "not JSON"),
        (String::new(), "empty"),
        (
            json!({"totalRecords": 0, "data": {"columns": [], "rows": []}}).to_string(),
            "a table",
        ),
        (json!({"data": []}).to_string(), "no totalRecords"),
        (
            row(json!("subscription"), json!(SECRET)),
            "a URI for enabled",
        ),
        (row(json!(SECRET), json!(true)), "a URI for the entry"),
        (
            json!({"totalRecords": 1, "data": [SECRET]}).to_string(),
            "a URI for a row",
        ),
    ] {
        let e = s
            .ask_fake(vec![(StatusCode::OK, vec![], body)])
            .await
            .0
            .unwrap_err();
        assert!(matches!(e, GraphError::Malformed(_)), "{what}: {e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("Resource Graph answered something unreadable"),
            "{what}: {text}"
        );
        assert!(
            !text.contains("SECRET") && !format!("{e:?}").contains("SECRET"),
            "{what}: {text}"
        );
    }

    // Fewer rows than totalRecords, and no $skipToken for the rest.
    let truncated = json!({"totalRecords": 5, "count": 1, "resultTruncated": "true",
        "data": [{"id": "x", "subscriptionId": sub(1), "entry": "subscription"}]})
    .to_string();
    let e = s
        .ask_fake(vec![(StatusCode::OK, vec![], truncated)])
        .await
        .0
        .unwrap_err();
    assert!(
        matches!(e, GraphError::Incomplete { got: 1, total: 5 }),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("Resource Graph"), "{e}");

    // An answer that pages forever ends.
    let endless =
        json!({"totalRecords": 1, "count": 0, "data": [], "$skipToken": "again"}).to_string();
    let (e, fake) = s.ask_fake(vec![(StatusCode::OK, vec![], endless)]).await;
    let e = e.unwrap_err();
    assert!(matches!(e, GraphError::Endless(_)), "{e:?}");
    assert_eq!(fake.requests(), 100);

    // A 400 is a rejection with ARM's code and message.
    let e = s
        .ask_fake(vec![(
            StatusCode::BAD_REQUEST,
            vec![],
            json!({"error": {"code": "BadRequest", "message": "Query is invalid"}}).to_string(),
        )])
        .await
        .0
        .unwrap_err();
    assert!(!e.is_refused());
    assert_eq!(
        e.to_string(),
        "Resource Graph rejected the query (HTTP 400, BadRequest: Query is invalid)"
    );
}
