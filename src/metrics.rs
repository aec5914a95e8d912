//! Prometheus metrics. Recorded through the `metrics` facade everywhere (a
//! no-op until [`install`] is called, which happens only when `[telemetry]
//! listen` is configured) and rendered by `metrics-exporter-prometheus` on
//! `/metrics`, with process metrics from `metrics-process`.
//!
//! Names, all prefixed `azure_activity_poller_`:
//! - `polls_total{subscription,result}`            polls by result (ok, error)
//! - `poll_duration_seconds`                       histogram, all subscriptions together
//! - `entries_fetched_total{subscription}`         entries read from Azure
//! - `entries_kept_total{subscription}`            entries with a forwarded status
//! - `entries_skipped_total{subscription,reason}`  status, duplicate, malformed
//! - `events_delivered_total{subscription}`        acknowledged by the endpoint
//! - `watermark_lag_seconds{subscription}`         now minus the watermark
//! - `outbox_depth{subscription}`, `dead_letters{subscription}` (read at scrape)
//! - `azure_requests_total{status}`                HTTP status, or "error"
//! - `throttle_waits_total`, `throttle_wait_seconds_total`
//! - `endpoint_requests_total{status}`             HTTP status, or "error"
//! - `azure_budget_waits_total`, `azure_budget_wait_seconds` reads paced by the budget
//! - `poll_start_delay_seconds{subscription}`      how late the last poll started
//! - `polls_late_total{subscription}`              polls started over an interval late
//! - `delivery_concurrency_limit`                  POSTs allowed in flight now (from the start)
//! - `arm_reads_limit`, `arm_reads_in_flight`      polls allowed in flight now, and polls in flight
//! - `subscription_paused{subscription}`           1 while Guardrails feeds it
//! - `detection_checks_total{result}`              live, clear, unknown
//! - `detection_failures_total{subscription}`      checks that could not be made
//! - `resource_up{resource}`                       1, or 0 during an outage of `state_store`,
//!   `arm`, `entra_id`, `endpoint` or `guardrails_api` (see `outage.rs`)
//! - `resource_outage_seconds{resource}`           how long the current outage has lasted
//! - `build_info{version}`                         1; there from the start, for `absent()`
//! - `subscription_leased{subscription}`           1 held by this instance, 0 configured here
//!   but held elsewhere or by none (`max by (subscription)` over instances: 0 = no holder)
//! - `subscription_interval_seconds{subscription}` its configured interval (read at scrape)
//! - `subscription_poll_age_seconds{subscription}` since its last successful poll here (or
//!   since this instance began polling it, or it resumed); 0 while paused or not polled here
//!   (read at scrape, as `/readyz` judges it)
//!
//! Counters that only move on a rare event (`throttle_waits_total`,
//! `throttle_wait_seconds_total`) and the per-subscription gauges above are
//! there from the start at 0, so that alert rules see a series rather than
//! nothing (an `absent` series and a quiet one look alike to a rule). Gauges
//! of a subscription removed by a reload keep their last value until the
//! process restarts (the `metrics` facade cannot unregister a series).
//! The `entries_*_total` counters of a subscription appear at its first
//! entry: an idle subscription has none (at 10,000 subscriptions, 50,000
//! series of 0 and their memory), and `rate()`/`increase()` read a missing
//! series as no entries.

use std::sync::Arc;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const PREFIX: &str = "azure_activity_poller_";

/// How often the recorder drains its histograms' samples (the crate's own
/// default for the exporters it runs itself).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct MetricsError(String);

/// What renders `/metrics`.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

impl Exporter {
    pub fn render(&self) -> String {
        self.process.collect();
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Installs the global recorder. Call once, before anything is recorded.
pub fn install() -> Result<Exporter, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(format!("{PREFIX}poll_duration_seconds")),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
        )
        .map_err(|e| MetricsError(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError(e.to_string()))?;
    // `install_recorder` leaves upkeep to its caller: until it runs, a
    // histogram keeps every sample (one a poll, and one each time a read
    // waits for its budget: at 10,000 subscriptions megabytes an hour), so
    // a daemon nobody scrapes would grow without end. Each scrape runs it
    // too.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let upkeep = handle.clone();
        runtime.spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
    }
    let process = metrics_process::Collector::default();
    process.describe();
    describe();
    register_at_zero();
    Ok(Exporter { handle, process })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(name("polls_total"), "Polls by subscription and result.");
    describe_histogram!(
        name("poll_duration_seconds"),
        metrics::Unit::Seconds,
        "Time one poll took (all subscriptions)."
    );
    describe_counter!(
        name("entries_fetched_total"),
        "Activity log entries read from Azure."
    );
    describe_counter!(
        name("entries_kept_total"),
        "Entries whose status is forwarded."
    );
    describe_counter!(
        name("entries_skipped_total"),
        "Entries not queued, by reason."
    );
    describe_counter!(
        name("events_delivered_total"),
        "Events the endpoint acknowledged."
    );
    describe_gauge!(
        name("watermark_lag_seconds"),
        metrics::Unit::Seconds,
        "Now minus the watermark."
    );
    describe_gauge!(name("outbox_depth"), "Events waiting for delivery.");
    describe_gauge!(name("dead_letters"), "Events in the dead-letter table.");
    describe_requests_and_state();
}

/// The descriptions of the request, limit, outage, detection and lease metrics.
fn describe_requests_and_state() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        name("azure_requests_total"),
        "Requests to Azure by HTTP status."
    );
    describe_counter!(
        name("throttle_waits_total"),
        "Retry-After waits after HTTP 429."
    );
    describe_counter!(
        name("throttle_wait_seconds_total"),
        metrics::Unit::Seconds,
        "Time spent waiting on Retry-After."
    );
    describe_counter!(
        name("endpoint_requests_total"),
        "POSTs to the ingestion endpoint by HTTP status."
    );
    describe_counter!(
        name("azure_budget_waits_total"),
        "ARM reads that waited for the client-side read budget."
    );
    describe_histogram!(
        name("azure_budget_wait_seconds"),
        metrics::Unit::Seconds,
        "How long an ARM read waited for the read budget."
    );
    describe_gauge!(
        name("poll_start_delay_seconds"),
        metrics::Unit::Seconds,
        "How long after it was due the last poll started (waiting for the read limit, or behind its own previous poll)."
    );
    describe_counter!(
        name("polls_late_total"),
        "Polls that started more than one interval after they were due."
    );
    describe_gauge!(
        name("delivery_concurrency_limit"),
        "POSTs allowed in flight now (adaptive, or the fixed setting)."
    );
    describe_gauge!(
        name("resource_up"),
        "1 while the resource answers, 0 during an outage (state_store, arm, entra_id, endpoint, guardrails_api)."
    );
    describe_gauge!(
        name("resource_outage_seconds"),
        metrics::Unit::Seconds,
        "How long the resource's current outage has lasted; 0 when it answers."
    );
    describe_gauge!(
        name("arm_reads_limit"),
        "Polls (ARM reads) allowed in flight now: sized by demand and round trip, under [azure] concurrency."
    );
    describe_gauge!(
        name("arm_reads_in_flight"),
        "Polls (ARM reads) in flight now."
    );
    describe_gauge!(
        name("subscription_paused"),
        "1 while Guardrails event handlers or its own poller feed the subscription."
    );
    describe_counter!(
        name("detection_checks_total"),
        "Event handler checks by result (live, clear, unknown)."
    );
    describe_counter!(
        name("detection_failures_total"),
        "Event handler checks that could not be made."
    );
    describe_gauge!(name("build_info"), "1, labelled with the version.");
    describe_gauge!(
        name("subscription_leased"),
        "1 when this instance holds the subscription's lease, 0 when it is configured here but held elsewhere or by none."
    );
    describe_gauge!(
        name("subscription_interval_seconds"),
        metrics::Unit::Seconds,
        "The subscription's configured poll interval."
    );
    describe_gauge!(
        name("subscription_poll_age_seconds"),
        metrics::Unit::Seconds,
        "Since the last successful poll by this instance (or since it began polling, or resumed); 0 while paused or not polled here."
    );
}

/// The series rules need from the start (see the module's doc).
fn register_at_zero() {
    gauge!(name("build_info"), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    counter!(name("throttle_waits_total")).absolute(0);
    counter!(name("throttle_wait_seconds_total")).absolute(0);
}

fn name(short: &str) -> String {
    format!("{PREFIX}{short}")
}

/// What a finished poll counted, for the counters (`poll::PollReport::counts`).
#[derive(Debug, Default, Clone, Copy)]
pub struct PollCounts {
    pub fetched: usize,
    pub kept: usize,
    pub skipped_status: usize,
    pub duplicate: usize,
    pub quarantined: usize,
}

pub fn poll_finished(
    subscription: &str,
    report: Option<&PollCounts>,
    seconds: f64,
    lag: Option<f64>,
) {
    let sub = subscription.to_string();
    let result = if report.is_some() { "ok" } else { "error" };
    counter!(name("polls_total"), "subscription" => sub.clone(), "result" => result).increment(1);
    // One histogram for all subscriptions: per subscription it was 14 series
    // each (11 buckets, sum, count), 140,000 at an estate of 10,000, and a
    // sample buffer each between scrapes. How long one subscription's polls
    // take is in `status` and its poll lines.
    histogram!(name("poll_duration_seconds")).record(seconds);
    if let Some(r) = report {
        // A counter appears at its first entry, not at an idle poll's zero:
        // at 10,000 idle subscriptions these five were 50,000 series of 0.
        let add = |metric: &str, n: usize| {
            if n > 0 {
                counter!(name(metric), "subscription" => sub.clone()).increment(n as u64);
            }
        };
        add("entries_fetched_total", r.fetched);
        add("entries_kept_total", r.kept);
        for (reason, n) in [
            ("status", r.skipped_status),
            ("duplicate", r.duplicate),
            ("malformed", r.quarantined),
        ] {
            if n > 0 {
                counter!(name("entries_skipped_total"), "subscription" => sub.clone(), "reason" => reason)
                    .increment(n as u64);
            }
        }
    }
    if let Some(lag) = lag {
        gauge!(name("watermark_lag_seconds"), "subscription" => sub).set(lag);
    }
}

pub fn azure_request(status: Option<u16>) {
    counter!(name("azure_requests_total"), "status" => status_label(status)).increment(1);
}

pub fn throttle_wait(seconds: f64) {
    counter!(name("throttle_waits_total")).increment(1);
    counter!(name("throttle_wait_seconds_total")).increment(seconds.ceil() as u64);
}

pub fn endpoint_request(status: Option<u16>) {
    counter!(name("endpoint_requests_total"), "status" => status_label(status)).increment(1);
}

pub fn delivered(subscription: &str) {
    counter!(name("events_delivered_total"), "subscription" => subscription.to_string())
        .increment(1);
}

pub fn queue_depths(outbox: &[(String, i64)], dead: &[(String, i64)]) {
    for (sub, n) in outbox {
        gauge!(name("outbox_depth"), "subscription" => sub.clone()).set(*n as f64);
    }
    for (sub, n) in dead {
        gauge!(name("dead_letters"), "subscription" => sub.clone()).set(*n as f64);
    }
}

pub fn budget_wait(seconds: f64) {
    counter!(name("azure_budget_waits_total")).increment(1);
    histogram!(name("azure_budget_wait_seconds")).record(seconds);
}

pub fn poll_start_delay(subscription: &str, seconds: f64) {
    gauge!(name("poll_start_delay_seconds"), "subscription" => subscription.to_string())
        .set(seconds);
}

pub fn poll_late(subscription: &str) {
    counter!(name("polls_late_total"), "subscription" => subscription.to_string()).increment(1);
}

pub fn concurrency_limit(limit: usize) {
    gauge!(name("delivery_concurrency_limit")).set(limit as f64);
}

pub fn arm_read_limit(limit: usize, in_flight: usize) {
    gauge!(name("arm_reads_limit")).set(limit as f64);
    gauge!(name("arm_reads_in_flight")).set(in_flight as f64);
}

pub fn paused(subscription: &str, paused: bool) {
    gauge!(name("subscription_paused"), "subscription" => subscription.to_string())
        .set(if paused { 1.0 } else { 0.0 });
}

/// A resource's availability (see `outage.rs`).
pub fn resource(resource: &'static str, up: bool, lasted: std::time::Duration) {
    gauge!(name("resource_up"), "resource" => resource).set(if up { 1.0 } else { 0.0 });
    gauge!(name("resource_outage_seconds"), "resource" => resource).set(lasted.as_secs_f64());
}

pub fn detection_check(result: &'static str) {
    counter!(name("detection_checks_total"), "result" => result).increment(1);
}

pub fn detection_failed(subscription: &str) {
    counter!(name("detection_failures_total"), "subscription" => subscription.to_string())
        .increment(1);
}

/// Which configured subscriptions this instance holds (after each lease
/// round that changed them, and after a reload).
pub fn leases<'a>(configured: impl IntoIterator<Item = (&'a str, bool)>) {
    for (sub, held) in configured {
        gauge!(name("subscription_leased"), "subscription" => sub.to_string()).set(if held {
            1.0
        } else {
            0.0
        });
    }
}

/// One polled subscription as `/readyz` sees it, at a scrape.
#[derive(Debug, Clone)]
pub struct PollAge {
    /// Shared with the configuration, and so with the labels (10,000 of each).
    pub subscription: Arc<str>,
    pub interval: f64,
    /// Seconds since the last successful poll; 0 while paused.
    pub age: f64,
    /// Paused for any reason (fed by Guardrails, or its check pending).
    pub paused: bool,
}

pub fn poll_ages(ages: &[PollAge]) {
    for a in ages {
        let sub = a.subscription.clone();
        gauge!(name("subscription_interval_seconds"), "subscription" => sub.clone())
            .set(a.interval);
        gauge!(name("subscription_poll_age_seconds"), "subscription" => sub.clone()).set(a.age);
        // Registers the 0 of a subscription polled as usual; a pause sets
        // its 1 where it is decided (why it is paused matters there).
        if !a.paused {
            paused(&sub, false);
        }
    }
}

/// A subscription no longer polled here (its lease went): no age to judge.
pub fn not_polled_here(subscription: &str) {
    gauge!(name("subscription_poll_age_seconds"), "subscription" => subscription.to_string())
        .set(0.0);
}

fn status_label(status: Option<u16>) -> String {
    status.map_or_else(|| "error".to_string(), |s| s.to_string())
}
