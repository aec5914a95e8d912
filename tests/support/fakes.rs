//! `Fakes`: the fake ARM, Entra ID and Guardrails servers, started together
//! on 127.0.0.1 with port 0, and what a test does with them: add entries,
//! inject faults, set what detection finds, and read what was asked and what
//! was delivered.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::ingest::{IngestMode, IngestState, ingest_handler, posted_id};
use super::{
    ArmRequest, AzureState, FakeEntry, Fault, Flood, INGEST_TOKEN, Shared, arm,
    assert_exactly_once, detection, entra_id, eventually, lock,
};

pub struct Fakes {
    pub azure: Shared<AzureState>,
    pub ingest: Shared<IngestState>,
    pub graphql: Shared<detection::GraphqlState>,
    pub arm_addr: SocketAddr,
    pub login_addr: SocketAddr,
    pub ingest_addr: SocketAddr,
    pub ca_pem: String,
}

impl Fakes {
    pub async fn start() -> Fakes {
        let mut state = AzureState::default();
        state.page_size = 200;
        let azure = Arc::new(Mutex::new(state));
        let ingest = Arc::new(Mutex::new(IngestState::default()));
        let graphql = Arc::new(Mutex::new(detection::GraphqlState::default()));

        let arm = Router::new()
            .route(
                "/subscriptions/{sub}/providers/Microsoft.Insights/eventtypes/management/values",
                get(arm::list),
            )
            .route(
                "/subscriptions/{sub}/providers/microsoft.insights/eventtypes/management/values",
                get(arm::list),
            )
            .route(
                "/subscriptions/{sub}/resourceGroups/turbot_rg/providers/Microsoft.Insights/actionGroups",
                get(detection::action_groups),
            )
            .route(
                "/subscriptions/{sub}/providers/Microsoft.Insights/activityLogAlerts",
                get(detection::alerts),
            )
            .route("/subscriptions", get(detection::subscriptions))
            .route(
                "/providers/Microsoft.ResourceGraph/resources",
                post(detection::resource_graph),
            )
            .with_state(azure.clone());
        let login = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(entra_id::token))
            .with_state(azure.clone());
        let guardrails = Router::new()
            .route("/api/v5/events/raw", post(ingest_handler))
            .with_state(ingest.clone())
            .merge(
                Router::new()
                    .route("/api/latest/graphql", post(detection::graphql))
                    .with_state(graphql.clone()),
            );

        let bind = || async {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0")
        };
        let (l_arm, l_login, l_ingest) = (bind().await, bind().await, bind().await);
        let arm_addr = l_arm.local_addr().expect("addr");
        let login_addr = l_login.local_addr().expect("addr");
        let ingest_addr = l_ingest.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l_arm, arm).await });
        tokio::spawn(async move { axum::serve(l_ingest, guardrails).await });
        // The emulator's throwaway CA and TLS server, shared with these fakes.
        let tls = azure_activity_poller::emulator::tls::generate().expect("TLS certificate");
        tokio::spawn(azure_activity_poller::emulator::tls::serve(
            l_login,
            login,
            tls.config.clone(),
        ));
        Fakes {
            azure,
            ingest,
            graphql,
            arm_addr,
            login_addr,
            ingest_addr,
            ca_pem: tls.ca_pem,
        }
    }

    // ------------------------------------------------------------ Azure ----

    /// Adds entries to the activity log; returns their ids, the events a
    /// test then expects delivered.
    pub fn add(&self, entries: impl IntoIterator<Item = FakeEntry>) -> Vec<String> {
        let entries: Vec<FakeEntry> = entries.into_iter().collect();
        let ids = super::ids(&entries);
        lock(&self.azure).entries.extend(entries);
        ids
    }

    pub fn azure_now(&self) -> DateTime<Utc> {
        lock(&self.azure).now()
    }

    pub fn fault(&self, f: Fault) {
        lock(&self.azure).faults.push_back(f);
    }

    /// Entries a page of the List call holds at most.
    pub fn set_page_size(&self, n: usize) {
        lock(&self.azure).page_size = n;
    }

    /// The principal loses its role on `sub`: every read there is a 403.
    pub fn deny(&self, sub: &str) {
        lock(&self.azure).deny.insert(sub.to_string());
    }

    /// Every List call of `sub` answers 200 and a page without end
    /// (`Flood`), until [`Fakes::stop_flood`].
    pub fn flood(&self, sub: &str, how: Flood) {
        lock(&self.azure).floods.insert(sub.to_string(), how);
    }

    /// Every page of `sub` links back to its first page, without end.
    pub fn loop_pages(&self, sub: &str) {
        lock(&self.azure).looping.insert(sub.to_string());
    }

    pub fn stop_flood(&self, sub: &str) {
        lock(&self.azure).floods.remove(sub);
    }

    /// Token requests answer 200 and a body without end (or again as they should).
    pub fn flood_tokens(&self, on: bool) {
        lock(&self.azure).flood_tokens = on;
    }

    /// Bytes the endless answers of ARM and Entra ID handed to their
    /// servers so far.
    pub fn flooded(&self) -> u64 {
        lock(&self.azure).flooded.load(Ordering::Relaxed)
    }

    /// First pages of queries starting before `before` answer `by` later.
    pub fn hold_back_before(&self, before: DateTime<Utc>, by: Duration) {
        lock(&self.azure).slow_before = Some((before, by));
    }

    /// Every List answer takes `by` (ARM's round trip).
    pub fn set_arm_latency(&self, by: Duration) {
        lock(&self.azure).latency = Some(by);
    }

    /// Queued faults go to every `n`-th List call from now on, not to the
    /// next ones: spread over the queries in flight.
    pub fn space_faults(&self, n: usize) {
        lock(&self.azure).fault_spacing = n;
    }

    /// How many queries were held back so far.
    pub fn held_back(&self) -> usize {
        lock(&self.azure).held_back
    }

    pub fn arm_requests(&self) -> Vec<ArmRequest> {
        lock(&self.azure).requests.clone()
    }

    /// Waits until `n` more List calls were made (any subscription), for
    /// `limit` at most.
    pub async fn wait_for_polls(&self, n: usize, limit: Duration) {
        let seen = self.arm_requests().len();
        let what = format!("{n} more List call(s)");
        eventually(limit, &what, || self.arm_requests().len() >= seen + n).await;
    }

    /// How many List calls were made for `sub`.
    pub fn arm_requests_for(&self, sub: &str) -> usize {
        lock(&self.azure)
            .requests
            .iter()
            .filter(|r| r.subscription == sub)
            .count()
    }

    /// How many List calls followed a `nextLink`.
    pub fn next_page_requests(&self) -> usize {
        lock(&self.azure)
            .requests
            .iter()
            .filter(|r| r.skiptoken.is_some())
            .count()
    }

    /// The bearer tokens Entra ID issued, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.azure).issued.clone()
    }

    // -------------------------------------------------------- detection ----

    /// Sets what Azure shows of the event handlers of `sub` (`None`: no `turbot_rg`).
    pub fn set_handlers(&self, sub: &str, h: Option<detection::FakeHandlers>) {
        let mut s = lock(&self.azure);
        match h {
            Some(h) => s.handlers.insert(sub.to_string(), h),
            None => s.handlers.remove(sub),
        };
    }

    /// Detection's reads of Azure, in order: `actionGroups <sub>`,
    /// `activityLogAlerts <sub>`, `resourceGraph`.
    pub fn detection_requests(&self) -> Vec<String> {
        lock(&self.azure).detection_requests.clone()
    }

    /// Resource Graph refuses (403) every query from now on, or answers again.
    pub fn refuse_resource_graph(&self, refused: bool) {
        lock(&self.azure).graph_refused = refused;
    }

    /// Resource Graph queries so far: all of them, and the first pages (one
    /// per batch of up to 1,000 subscriptions).
    pub fn resource_graph_requests(&self) -> (usize, usize) {
        let s = lock(&self.azure);
        (s.graph_requests, s.graph_batches)
    }

    /// Sets a Guardrails policy's values on `sub`: (value, resource title).
    pub fn set_policy(&self, policy: &str, sub: &str, values: &[(&str, &str)]) {
        lock(&self.graphql).policies.insert(
            (policy.to_string(), sub.to_string()),
            values
                .iter()
                .map(|(v, t)| (v.to_string(), t.to_string()))
                .collect(),
        );
    }

    pub fn set_graphql(&self, mode: detection::GraphqlMode) {
        lock(&self.graphql).mode = mode;
    }

    /// GraphQL requests so far, and every filter they carried.
    pub fn graphql_requests(&self) -> (usize, Vec<String>) {
        let s = lock(&self.graphql);
        (s.requests, s.filters.clone())
    }

    /// The `[guardrails.api]` section for these fakes; the secret key comes
    /// from the environment variable `GR_SECRET`.
    pub fn guardrails_api_section(&self) -> String {
        format!(
            "\n[guardrails.api]\nworkspace_url = \"http://{}\"\naccess_key = \"{}\"\nsecret_key_env = \"GR_SECRET\"\n",
            self.ingest_addr,
            detection::GR_ACCESS_KEY
        )
    }

    // ------------------------------------------------------- Guardrails ----

    pub fn ingest_url(&self) -> String {
        format!(
            "http://{}/api/v5/events/raw?token={INGEST_TOKEN}",
            self.ingest_addr
        )
    }

    /// The endpoint answers 400 to the event with this eventDataId.
    pub fn reject(&self, id: &str) {
        lock(&self.ingest).reject.insert(id.to_string());
    }

    pub fn set_ingest(&self, mode: IngestMode) {
        lock(&self.ingest).mode = Some(mode);
    }

    /// Every POST takes this long to answer.
    pub fn set_ingest_delay(&self, delay: Duration) {
        lock(&self.ingest).delay = Some(delay);
    }

    /// POSTs received, answered or not.
    pub fn ingest_attempts(&self) -> usize {
        lock(&self.ingest).attempts
    }

    pub fn received(&self) -> Vec<Value> {
        lock(&self.ingest).received.clone()
    }

    /// The eventDataIds delivered (accepted), in order, repeats included.
    pub fn received_ids(&self) -> Vec<String> {
        self.received().iter().filter_map(posted_id).collect()
    }

    /// Whether every one of `ids` was delivered (at least once).
    pub fn received_all(&self, ids: &[String]) -> bool {
        let got: HashSet<String> = self.received_ids().into_iter().collect();
        ids.iter().all(|id| got.contains(id))
    }

    /// Waits until every one of `ids` was delivered, for `limit` at most.
    pub async fn wait_for_delivery(&self, ids: &[String], limit: Duration) {
        let what = format!("{} event(s) delivered", ids.len());
        eventually(limit, &what, || self.received_all(ids)).await;
    }

    /// Waits until `n` deliveries were made (repeats counted), for `limit`
    /// at most.
    pub async fn wait_for_deliveries(&self, n: usize, limit: Duration) {
        let what = format!("{n} deliveries");
        eventually(limit, &what, || self.received_ids().len() >= n).await;
    }

    /// Asserts that what was delivered is `expected`, each event exactly once.
    pub fn assert_delivered_exactly_once(&self, expected: &[String]) {
        assert_exactly_once(&self.received_ids(), expected);
    }
}
