//! The emulator's own behaviour, as a client sees it over HTTP: the Activity
//! Logs - List call (filter grammar, paging, narrowing, late visibility,
//! throttling, faults), the Entra ID token endpoint over TLS, and the
//! Guardrails ingestion endpoint with the report built from what it received.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use azure_activity_poller::config::Format;
use azure_activity_poller::emulator::{CLIENT_ID, Emulator, Scenario, TENANT_ID};
use azure_activity_poller::event::{Timestamp, format_ticks, parse_timestamp};
use azure_activity_poller::format::render;
use chrono::Utc;
use futures::StreamExt;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

const SUB_A: &str = "089bd33f-d4ec-47fe-8ba5-0753aa5c5b33";
const SUB_B: &str = "5c6a1f2e-7d3b-4e8a-9f10-2b3c4d5e6f70";
const API: &str = "2015-04-01";

/// `backlog` operations spread over the last hour in each of two
/// subscriptions, no live traffic; `extra` appends tables such as `[azure]`.
fn backlog(seed: u64, page_size: usize, backlog: usize, extra: &str) -> String {
    let mut s = format!("seed = {seed}\npage_size = {page_size}\n");
    for sub in [SUB_A, SUB_B] {
        s.push_str(&format!(
            "[[subscription]]\nid = \"{sub}\"\nrate_per_minute = 0\nbacklog = {backlog}\n"
        ));
    }
    s + extra
}

/// `eventTimestamp ge '<now - ago>'`, 7 fractional digits.
fn since(ago: chrono::Duration) -> String {
    format!("eventTimestamp ge '{}'", format_ticks(Utc::now() - ago))
}

fn hour() -> String {
    since(chrono::Duration::hours(2))
}

fn at(e: &Value, field: &str) -> Timestamp {
    parse_timestamp(e[field].as_str().unwrap()).unwrap()
}

fn text<'a>(e: &'a Value, field: &str) -> &'a str {
    e[field]["value"].as_str().unwrap_or_default()
}

/// The clauses that narrow a query, and the field each one matches.
const NARROWING: [&str; 4] = [
    "correlationId",
    "resourceGroupName",
    "resourceUri",
    "resourceProvider",
];

fn narrowed<'a>(e: &'a Value, clause: &str) -> &'a str {
    match clause {
        "resourceUri" => e["resourceId"].as_str().unwrap(),
        "resourceProvider" => text(e, "resourceProviderName"),
        field => e[field].as_str().unwrap(),
    }
}

fn id(e: &Value) -> String {
    e["eventDataId"].as_str().unwrap().to_string()
}

/// An emulator and a client signed in to it.
struct Client {
    emu: Emulator,
    http: reqwest::Client,
    token: String,
}

async fn start(scenario: &str) -> Client {
    let scenario = Scenario::parse(scenario, "test").unwrap();
    let emu = Emulator::start(scenario, IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .unwrap();
    let ca = reqwest::Certificate::from_pem(emu.ca_pem.as_bytes()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let secret = emu.client_secret().to_string();
    let resp = request_token(&http, &emu, &secret).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    let token = body["access_token"].as_str().unwrap().to_string();
    Client { emu, http, token }
}

async fn request_token(http: &reqwest::Client, emu: &Emulator, secret: &str) -> Response {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", CLIENT_ID)
        .append_pair("client_secret", secret)
        .append_pair("grant_type", "client_credentials")
        .append_pair("scope", "https://management.azure.com/.default")
        .finish();
    http.post(format!(
        "https://{}/{TENANT_ID}/oauth2/v2.0/token",
        emu.login
    ))
    .header("content-type", "application/x-www-form-urlencoded")
    .body(form)
    .send()
    .await
    .unwrap()
}

/// Asserts an ARM error answer with `status`; returns its `error.code`.
async fn arm_error(resp: Response, status: StatusCode) -> String {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.is_empty(), "{body}");
    body["error"]["code"].as_str().unwrap().to_string()
}

impl Client {
    /// The list call with these query parameters and this bearer token.
    fn request(&self, sub: &str, query: &[(&str, &str)], token: Option<&str>) -> RequestBuilder {
        let base = format!(
            "http://{}/subscriptions/{sub}/providers/Microsoft.Insights/eventtypes/management/values",
            self.emu.arm
        );
        let req = self
            .http
            .get(url::Url::parse_with_params(&base, query).unwrap());
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn get_with(&self, sub: &str, query: &[(&str, &str)], token: Option<&str>) -> Response {
        self.request(sub, query, token).send().await.unwrap()
    }

    async fn list(&self, sub: &str, filter: &str) -> Response {
        let query = [("api-version", API), ("$filter", filter)];
        self.get_with(sub, &query, Some(&self.token)).await
    }

    async fn follow(&self, url: &str) -> Response {
        let req = self.http.get(url).bearer_auth(&self.token);
        req.send().await.unwrap()
    }

    /// Every page of a query, following `nextLink` unchanged.
    async fn pages(&self, sub: &str, filter: &str) -> Vec<Value> {
        let mut resp = self.list(sub, filter).await;
        let mut pages = Vec::new();
        loop {
            assert_eq!(resp.status(), StatusCode::OK);
            let page: Value = resp.json().await.unwrap();
            let next = page["nextLink"].as_str().map(str::to_string);
            pages.push(page);
            match next {
                Some(url) => resp = self.follow(&url).await,
                None => return pages,
            }
        }
    }

    async fn entries(&self, sub: &str, filter: &str) -> Vec<Value> {
        let pages = self.pages(sub, filter).await;
        pages
            .iter()
            .flat_map(|p| p["value"].as_array().unwrap().clone())
            .collect()
    }

    async fn post(&self, url: &str, doc: &Value) -> reqwest::Result<Response> {
        self.http.post(url).json(doc).send().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_filter_forms_are_accepted() {
    let c = start(&backlog(1, 200, 20, "")).await;
    let e = c.entries(SUB_A, &hour()).await;
    assert!(!e.is_empty());
    let le = format!(
        "{} and eventTimestamp le '{}'",
        hour(),
        format_ticks(Utc::now())
    );
    let mut filters = vec![hour(), le.clone()];
    for clause in NARROWING {
        let n = format!("{clause} eq '{}'", narrowed(&e[0], clause));
        filters.push(format!("{le} and {n}"));
        filters.push(format!("{} and {n}", hour()));
    }
    for f in filters {
        let resp = c.list(SUB_A, &f).await;
        assert_eq!(resp.status(), StatusCode::OK, "refused {f:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(!body["value"].as_array().unwrap().is_empty(), "{f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_else_is_a_400_with_an_arm_error() {
    let c = start(&backlog(1, 200, 5, "")).await;
    let now = format_ticks(Utc::now());
    let start = format_ticks(Utc::now() - chrono::Duration::hours(1));
    let bad = [
        format!("eventTimestamp le '{now}'"),
        format!("eventTimestamp ge '{start}' and status eq 'Succeeded'"),
        format!("eventTimestamp ge {start}"),
        format!("eventTimestamp gt '{start}'"),
        format!(
            "eventTimestamp ge '{start}' and resourceGroupName eq 'rg-01' and correlationId eq 'x'"
        ),
        format!("eventTimestamp ge '{now}' and eventTimestamp le '{start}'"),
        since(chrono::Duration::days(91)),
        String::new(),
    ];
    for f in &bad {
        let code = arm_error(c.list(SUB_A, f).await, StatusCode::BAD_REQUEST).await;
        assert_eq!(code, "BadRequest", "{f:?}");
    }
    let token = Some(c.token.as_str());
    let no_filter = c.get_with(SUB_A, &[("api-version", API)], token).await;
    arm_error(no_filter, StatusCode::BAD_REQUEST).await;
    let f = hour();
    for (query, code) in [
        (vec![("$filter", f.as_str())], "MissingApiVersionParameter"),
        (
            vec![
                ("api-version", "2017-03-01-preview"),
                ("$filter", f.as_str()),
            ],
            "InvalidApiVersionParameter",
        ),
    ] {
        let resp = c.get_with(SUB_A, &query, token).await;
        assert_eq!(arm_error(resp, StatusCode::BAD_REQUEST).await, code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unknown_token_is_401() {
    let c = start(&backlog(1, 200, 5, "")).await;
    let query = [("api-version", API), ("$filter", &hour())];
    for token in [None, Some("emulated-0000"), Some("")] {
        let resp = c.get_with(SUB_A, &query, token).await;
        assert!(resp.headers().contains_key("www-authenticate"));
        let code = arm_error(resp, StatusCode::UNAUTHORIZED).await;
        assert_eq!(code, "InvalidAuthenticationToken");
    }
    let wrong = request_token(&c.http, &c.emu, "not-the-secret").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
}

fn assert_ticks(s: &str) {
    let (whole, frac) = s.split_once('.').unwrap();
    assert_eq!(whole.len(), 19, "{s}");
    assert_eq!(frac.len(), 8, "{s}");
    assert!(frac[..7].bytes().all(|b| b.is_ascii_digit()) && frac.ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_every_entry_once_newest_first() {
    let c = start(&backlog(5, 7, 40, "")).await;
    let generated = c.emu.report(&[]).subscriptions[0].generated;
    assert!(generated > 40, "each operation yields 1 to 3 entries");
    let pages = c.pages(SUB_A, &hour()).await;
    assert_eq!(pages.len(), generated.div_ceil(7));
    for p in &pages[..pages.len() - 1] {
        assert_eq!(p["value"].as_array().unwrap().len(), 7);
        let link = p["nextLink"].as_str().unwrap();
        assert!(link.contains("$skiptoken=") && !link.contains("eventTimestamp"));
    }
    let entries: Vec<Value> = pages
        .iter()
        .flat_map(|p| p["value"].as_array().unwrap().clone())
        .collect();
    assert_eq!(entries.len(), generated);
    let ids: HashSet<String> = entries.iter().map(id).collect();
    assert_eq!(ids.len(), generated, "duplicate eventDataId");
    let times: Vec<Timestamp> = entries.iter().map(|e| at(e, "eventTimestamp")).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "not newest first");
    for e in &entries {
        assert_ticks(e["eventTimestamp"].as_str().unwrap());
        assert_ticks(e["submissionTimestamp"].as_str().unwrap());
        for f in ["claims", "httpRequest", "properties"] {
            assert!(e[f].is_object(), "{f} in {e}");
        }
        for f in ["status", "category", "operationName"] {
            assert!(e[f]["value"].is_string() && e[f]["localizedValue"].is_string());
        }
        assert_eq!(e["subscriptionId"], SUB_A);
    }
    let token = Some(c.token.as_str());
    for garbage in [
        "garbage",
        "00000000000000ff0000000000",
        "zzzzzzzzzzzzzzzzzzzzzzzzzz",
    ] {
        let query = [("api-version", API), ("$skiptoken", garbage)];
        let resp = c.get_with(SUB_A, &query, token).await;
        let code = arm_error(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(code, "InvalidSkipToken", "{garbage}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_returns_exactly_the_matching_entries() {
    let c = start(&backlog(9, 50, 60, "")).await;
    let all = c.entries(SUB_A, &hour()).await;
    let op = all
        .iter()
        .find(|e| text(e, "status") == "Started")
        .expect("an Administrative operation");
    for clause in NARROWING {
        let value = narrowed(op, clause);
        let filter = format!("{} and {clause} eq '{value}'", hour());
        let got: Vec<String> = c.entries(SUB_A, &filter).await.iter().map(id).collect();
        let want: Vec<String> = all
            .iter()
            .filter(|e| narrowed(e, clause).eq_ignore_ascii_case(value))
            .map(id)
            .collect();
        assert_eq!(got, want, "{clause}");
        assert!(want.len() < all.len() || clause == "resourceProvider");
    }
    let filter = format!(
        "{} and correlationId eq '{}'",
        hour(),
        op["correlationId"].as_str().unwrap()
    );
    let statuses: Vec<String> = c
        .entries(SUB_A, &filter)
        .await
        .iter()
        .map(|e| text(e, "status").to_string())
        .collect();
    let ends = ["Succeeded", "Failed"];
    assert!(matches!(statuses.len(), 2 | 3), "{statuses:?}");
    assert!(ends.contains(&statuses[0].as_str()), "{statuses:?}");
    assert_eq!(statuses.last().unwrap(), "Started");
    assert!(statuses.len() == 2 || statuses[1] == "Accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_invisible_until_their_submission_timestamp() {
    let started = Instant::now();
    let c = start(&format!(
        "seed = 3\n[[subscription]]\nid = \"{SUB_A}\"\nrate_per_minute = 600\n\
         [late]\nfraction = 1.0\nlate_min = \"3s\"\nlate_max = \"3s\"\n"
    ))
    .await;
    let filter = since(chrono::Duration::minutes(5));
    let deadline = started + Duration::from_secs(10);
    // Every poll: (sent at, ids returned).
    let mut polls: Vec<(Timestamp, HashSet<String>)> = Vec::new();
    while polls.iter().filter(|p| !p.1.is_empty()).count() < 3 {
        assert!(Instant::now() < deadline, "nothing became visible");
        let sent = Utc::now();
        let entries = c.entries(SUB_A, &filter).await;
        let received = Utc::now();
        if !entries.is_empty() {
            assert!(
                started.elapsed() >= Duration::from_secs(3),
                "visible too soon"
            );
        }
        for e in &entries {
            let submitted = at(e, "submissionTimestamp");
            assert!(submitted <= received, "returned before it was visible: {e}");
            let late = submitted - at(e, "eventTimestamp");
            assert_eq!(late, chrono::Duration::seconds(3));
            // Visible at an earlier poll: it must have been returned then.
            for (before, ids) in &polls {
                if submitted < *before - chrono::Duration::milliseconds(1) {
                    assert!(ids.contains(&id(e)), "visible but not returned: {e}");
                }
            }
        }
        polls.push((sent, entries.iter().map(id).collect()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(polls[0].1.is_empty(), "the first poll saw entries");
    assert!(c.emu.report(&[]).subscriptions[0].generated > polls.last().unwrap().1.len());
}

async fn status_of(c: &Client, sub: &str) -> (StatusCode, Option<u64>, Option<u64>, Value) {
    let resp = c.list(sub, &hour()).await;
    let header = |name: &str| {
        let value = resp.headers().get(name)?;
        value.to_str().ok()?.parse::<u64>().ok()
    };
    let retry_after = header("retry-after");
    let remaining = header("x-ms-ratelimit-remaining-subscription-reads");
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry_after, remaining, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_bucket_throttles_one_subscription() {
    let c = start(&backlog(1, 200, 0, "[azure]\ntoken_bucket = true\n")).await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let (status, _, left, _) = status_of(&c, SUB_A).await;
        assert_eq!(status, StatusCode::OK);
        remaining.push(left.unwrap());
    }
    assert_eq!(remaining[0], 249, "a full bucket holds 250 reads");
    let answers: Vec<_> = futures::stream::iter(0..257)
        .map(|_| status_of(&c, SUB_A))
        .buffer_unordered(16)
        .collect()
        .await;
    let throttled: Vec<_> = answers
        .iter()
        .filter(|a| a.0 == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(!throttled.is_empty(), "260 reads, none throttled");
    for (_, retry_after, _, body) in throttled {
        assert!(retry_after.is_some_and(|s| s >= 1));
        assert_eq!(body["error"]["code"], "SubscriptionRequestsThrottled");
    }
    let least = answers.iter().filter_map(|a| a.2).min().unwrap();
    assert!(least < remaining[0], "remaining reads never went down");
    assert_eq!(status_of(&c, SUB_B).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_rate_of_one_throttles_everything() {
    let extra = "[azure]\nthrottle_rate = 1.0\nretry_after = \"2s\"\n";
    let c = start(&backlog(1, 200, 5, extra)).await;
    for sub in [SUB_A, SUB_B, SUB_A] {
        let (status, retry_after, _, body) = status_of(&c, sub).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry_after, Some(2));
        assert!(body["error"]["message"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_are_5xx_and_drops_cut_the_body() {
    let c = start(&backlog(1, 200, 5, "[azure]\nerror_rate = 1.0\n")).await;
    for _ in 0..10 {
        let (status, _, _, body) = status_of(&c, SUB_A).await;
        let codes = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::SERVICE_UNAVAILABLE,
        ];
        assert!(codes.contains(&status), "{status}");
        assert!(body["error"]["code"].is_string());
    }
    let c = start(&backlog(1, 200, 20, "[azure]\ndrop_rate = 1.0\n")).await;
    for _ in 0..3 {
        let query = [("api-version", API), ("$filter", &hour())];
        match c.request(SUB_A, &query, Some(&c.token)).send().await {
            Ok(resp) => assert!(resp.bytes().await.is_err(), "the whole body was read"),
            Err(e) => assert!(e.is_request(), "{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_dropped_response_is_a_200_cut_half_way() {
    let c = start(&backlog(1, 200, 20, "[azure]\ndrop_rate = 1.0\n")).await;
    let resp = c.list(SUB_A, &hour()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.is_err(), "the whole body was read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn no_entry_is_submitted_before_it_happened() {
    let scenario = format!(
        "[[subscription]]\nid = \"{SUB_A}\"\nrate_per_minute = 0\nbacklog = 20\nbacklog_span = \"2s\"\n"
    );
    let c = start(&scenario).await;
    let later = format_ticks(Utc::now() + chrono::Duration::hours(1));
    let filter = format!("{} and eventTimestamp le '{later}'", hour());
    for e in c.entries(SUB_A, &filter).await {
        let event = at(&e, "eventTimestamp");
        assert!(
            at(&e, "submissionTimestamp") >= event,
            "submitted before it happened: {e}"
        );
    }
    // So the report expects entries that a query ending now cannot return yet.
    let listed = succeeded(&c, SUB_A).await.len();
    assert_eq!(c.emu.report(&["Succeeded"]).expected(), listed);
}

/// (status, category, eventDataId) of every entry of both subscriptions.
async fn listing(c: &Client) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for sub in [SUB_A, SUB_B] {
        for e in c.entries(sub, &hour()).await {
            let row = (text(&e, "status"), text(&e, "category"), id(&e));
            out.push((row.0.to_string(), row.1.to_string(), row.2));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_log() {
    let one = listing(&start(&backlog(11, 25, 30, "")).await).await;
    let two = listing(&start(&backlog(11, 25, 30, "")).await).await;
    let other = listing(&start(&backlog(12, 25, 30, "")).await).await;
    assert!(one.len() > 60);
    assert_eq!(one, two, "same seed, different log");
    let ids: HashSet<&String> = one.iter().map(|r| &r.2).collect();
    assert!(other.iter().all(|r| !ids.contains(&r.2)), "seeds share ids");
}

async fn succeeded(c: &Client, sub: &str) -> Vec<Value> {
    let entries = c.entries(sub, &hour()).await;
    let ok = |e: &Value| text(e, "status") == "Succeeded";
    entries.into_iter().filter(ok).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_endpoint_records_deliveries() {
    let c = start(&backlog(2, 200, 10, "")).await;
    let entry = succeeded(&c, SUB_A).await.remove(0);
    let doc = render(Format::ActivityLogAlert, entry.as_object().unwrap());
    let wrong = format!("http://{}/api/v5/events/raw?token=wrong", c.emu.ingest);
    let resp = c.post(&wrong, &doc).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(c.emu.report(&["Succeeded"]).delivered(), 0);
    let url = c.emu.ingest_url();
    for duplicates in [0, 1] {
        let resp = c.post(&url, &doc).await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let report = c.emu.report(&["Succeeded"]);
        let a = &report.subscriptions[0];
        assert_eq!((a.subscription.as_str(), a.delivered), (SUB_A, 1));
        assert_eq!(a.duplicates, duplicates);
        assert_eq!(report.subscriptions[1].delivered, 0);
        assert!(report.unexpected.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_outages_record_nothing() {
    for mode in ["unavailable", "refuse"] {
        let outage =
            format!("[[endpoint_outage]]\nat = \"0s\"\nduration = \"60s\"\nmode = \"{mode}\"\n");
        let c = start(&backlog(2, 200, 10, &outage)).await;
        let entry = succeeded(&c, SUB_A).await.remove(0);
        let doc = json!({"eventDataId": id(&entry)});
        let answer = c.post(&c.emu.ingest_url(), &doc).await;
        if mode == "unavailable" {
            assert_eq!(answer.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        } else if let Ok(resp) = answer {
            assert!(resp.bytes().await.is_err(), "the connection was not cut");
        }
        let report = c.emu.report(&["Succeeded"]);
        assert_eq!(report.delivered(), 0, "{mode}");
        assert!(report.unexpected.is_empty(), "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_expects_every_visible_succeeded_entry() {
    let c = start(&backlog(4, 30, 40, "")).await;
    let mut docs = Vec::new();
    for (i, sub) in [SUB_A, SUB_B].into_iter().enumerate() {
        let ok = succeeded(&c, sub).await;
        let report = c.emu.report(&["Succeeded"]);
        let r = &report.subscriptions[i];
        assert_eq!((r.subscription.as_str(), r.expected), (sub, ok.len()));
        assert_eq!(r.missing.len(), ok.len());
        docs.extend(ok.iter().map(|e| json!({"eventDataId": id(e)})));
    }
    assert!(!docs.is_empty());
    let url = c.emu.ingest_url();
    let answers: Vec<_> = futures::stream::iter(&docs)
        .map(|d| c.post(&url, d))
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().unwrap().status().is_success())
    );
    let report = c.emu.report(&["Succeeded"]);
    assert_eq!(report.missing(), 0);
    assert_eq!(report.duplicates(), 0);
    assert_eq!(
        (report.delivered(), report.expected()),
        (docs.len(), docs.len())
    );
    assert!(report.unexpected.is_empty());
    for r in &report.subscriptions {
        assert!(r.lag_p50_ms <= r.lag_p99_ms && r.lag_p99_ms <= r.lag_max_ms);
        // Everything delivered: the lag so far is the lag.
        assert_eq!(
            (r.lag_so_far_p50_ms, r.lag_so_far_p99_ms),
            (r.lag_p50_ms, r.lag_p99_ms)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_the_endpoint_answers_429_and_counts_it() {
    let capacity = "[endpoint]\nmax_in_flight = 2\nservice_time = \"3s\"\n";
    let c = start(&backlog(5, 200, 20, capacity)).await;
    let ok = succeeded(&c, SUB_A).await;
    assert!(ok.len() >= 3, "{}", ok.len());
    let url = c.emu.ingest_url();
    let docs: Vec<Value> = ok[..3]
        .iter()
        .map(|e| json!({"eventDataId": id(e)}))
        .collect();
    // Two requests fill the endpoint for 3 s.
    let held: Vec<_> = docs[..2]
        .iter()
        .map(|d| tokio::spawn(c.http.post(&url).json(d).send()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.emu.report(&["Succeeded"]).endpoint.requests < 2 {
        assert!(Instant::now() < deadline, "the two requests never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let third = c.post(&url, &docs[2]).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        third
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    for h in held {
        assert!(h.await.unwrap().unwrap().status().is_success());
    }
    let report = c.emu.report(&["Succeeded"]);
    let e = report.endpoint;
    assert_eq!(
        (e.requests, e.throttled, e.peak_in_flight, e.max_in_flight),
        (3, 1, 2, 2)
    );
    assert_eq!(e.service_time_ms, 3000);
    // The refused event was not recorded; the two served ones were.
    assert_eq!(report.delivered(), 2);
    // Once they are served, there is room again.
    let again = c.post(&url, &docs[2]).await.unwrap();
    assert!(again.status().is_success());
    assert_eq!(c.emu.report(&["Succeeded"]).endpoint.throttled, 1);
}

/// What the event handler detection reads: `turbot_rg` missing before the
/// handlers appear (404), the action group and two alerts routing to it
/// while they are live, an empty resource group after they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_handlers_appear_and_go_as_the_scenario_says() {
    let scenario = format!(
        "[[subscription]]\nid = \"{SUB_A}\"\nrate_per_minute = 0\nevent_handlers_from = \"1s\"\nevent_handlers_until = \"3s\"\n"
    );
    let c = start(&scenario).await;
    let groups = format!(
        "http://{}/subscriptions/{SUB_A}/resourceGroups/turbot_rg/providers/Microsoft.Insights/actionGroups?api-version=2023-01-01",
        c.emu.arm
    );
    let alerts = format!(
        "http://{}/subscriptions/{SUB_A}/providers/Microsoft.Insights/activityLogAlerts?api-version=2020-10-01",
        c.emu.arm
    );
    let get = |url: String| c.http.get(url).bearer_auth(&c.token).send();
    let code = arm_error(get(groups.clone()).await.unwrap(), StatusCode::NOT_FOUND).await;
    assert_eq!(code, "ResourceGroupNotFound");
    // Without a token: 401, like every ARM read.
    let resp = c.http.get(groups.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_live = false;
    let mut seen_gone = false;
    while Instant::now() < deadline && !seen_gone {
        let resp = get(groups.clone()).await.unwrap();
        if resp.status() == StatusCode::OK {
            let body: Value = resp.json().await.unwrap();
            let value = body["value"].as_array().cloned().unwrap_or_default();
            if let Some(g) = value.first() {
                assert_eq!(g["name"], "turbot_azure_event_handler_action_group");
                assert_eq!(g["properties"]["enabled"], true);
                let a: Value = get(alerts.clone()).await.unwrap().json().await.unwrap();
                let routing = a["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|x| {
                        x["properties"]["actions"]["actionGroups"][0]["actionGroupId"]
                            .as_str()
                            .is_some_and(|id| id.eq_ignore_ascii_case(g["id"].as_str().unwrap()))
                    })
                    .count();
                // The handlers may have gone between the two reads (the
                // window closes at 3 s): judge the alerts only when the
                // action group is still there after they were read.
                let still: Value = get(groups.clone()).await.unwrap().json().await.unwrap();
                let still_live = still["value"].as_array().is_some_and(|v| !v.is_empty());
                if still_live {
                    assert_eq!(routing, 2);
                    seen_live = true;
                } else if seen_live {
                    seen_gone = true;
                }
            } else if seen_live {
                seen_gone = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_live && seen_gone, "live {seen_live}, gone {seen_gone}");
}
