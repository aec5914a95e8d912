//! What `deploy/` tells Prometheus and Grafana to watch is what a running
//! daemon exports: every `azure_activity_poller_*` name in the alert rules
//! and in the dashboard's expressions is on `/metrics` after a poll and a
//! delivery, before anything rare happened (the series rules need are
//! registered at start: a missing one and a quiet one look alike to a rule).
//! One backend: the names do not depend on it (the lease gauge on shared
//! state is checked in `tests/operate.rs`).

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use support::admin::{admin_addr, get, metric, parse_metrics};
use support::*;

const PREFIX: &str = "azure_activity_poller_";

fn deploy_file(path: &str) -> String {
    let full = format!("{}/deploy/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Every `azure_activity_poller_*` name in `text`, a histogram's series
/// (`_bucket`, `_sum`, `_count`) under its own name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The names `/metrics` exports (from its `# TYPE` lines).
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The dashboard's expressions, and that it asks for its data source.
fn dashboard_expressions() -> String {
    let text = deploy_file("grafana/azure-activity-poller.json");
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let variables = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut exprs = String::new();
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    exprs
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let rules = metric_names(&deploy_file("prometheus/azure-activity-poller.rules.yml"));
    let dashboard = metric_names(&dashboard_expressions());
    assert!(rules.len() >= 10, "{rules:?}");
    assert!(dashboard.len() >= 10, "{dashboard:?}");

    let mut h = Harness::on(Backend::Sqlite).await;
    // B cannot be read (403): the not-polled alert's expression must hold
    // for it, and not for A.
    h.set_subscriptions(&[SUB_A, SUB_B]);
    h.fakes.deny(SUB_B);
    h.extra = "\n[telemetry]\nlisten = \"127.0.0.1:0\"\n".into();
    let entries = h
        .fakes
        .add(vec![entry(SUB_A, "mon-1", Utc::now(), "Succeeded")]);
    let d = h.daemon(&[]);
    let addr = admin_addr(&d).await;
    h.fakes
        .wait_for_delivery(&entries, Duration::from_secs(30))
        .await;
    let (code, scrape) = get(&addr, "/metrics").await;
    assert_eq!(code, 200);
    // AzureActivityPollerSubscriptionNotPolled's expression, on B's series
    // (interval 1 s): its poll age passes three intervals; A's does not.
    let over_three_intervals = |m: &std::collections::HashMap<String, f64>, sub: &str| {
        let labels = [("subscription", sub)];
        match (
            metric(m, "subscription_poll_age_seconds", &labels),
            metric(m, "subscription_interval_seconds", &labels),
        ) {
            (Some(age), Some(interval)) => age > 3.0 * interval,
            _ => false,
        }
    };
    eventually_async(
        Duration::from_secs(30),
        "B's poll age over three intervals",
        || async {
            let m = parse_metrics(&get(&addr, "/metrics").await.1);
            over_three_intervals(&m, SUB_B)
        },
    )
    .await;
    let m = parse_metrics(&get(&addr, "/metrics").await.1);
    assert!(!over_three_intervals(&m, SUB_A), "A was polled");
    d.stop_cleanly().await;

    let have = exported(&scrape);
    let missing: Vec<&String> = rules
        .iter()
        .chain(&dashboard)
        .filter(|n| !have.contains(*n))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{scrape}");

    // The series registered for alerting, with the values a rule reads.
    let m = parse_metrics(&scrape);
    let a = [("subscription", SUB_A)];
    assert_eq!(metric(&m, "subscription_leased", &a), Some(1.0), "{scrape}");
    assert_eq!(metric(&m, "subscription_paused", &a), Some(0.0), "{scrape}");
    assert_eq!(
        metric(&m, "subscription_interval_seconds", &a),
        Some(1.0),
        "{scrape}"
    );
    let age = metric(&m, "subscription_poll_age_seconds", &a).expect("poll age");
    assert!((0.0..3.0).contains(&age), "polled just now: {age}");
    assert_eq!(metric(&m, "throttle_waits_total", &[]), Some(0.0));
    for r in [
        "state_store",
        "arm",
        "entra_id",
        "endpoint",
        "guardrails_api",
    ] {
        let labels = [("resource", r)];
        assert_eq!(metric(&m, "resource_up", &labels), Some(1.0), "{r}");
        assert_eq!(metric(&m, "resource_outage_seconds", &labels), Some(0.0));
    }
    assert_eq!(
        metric(&m, "build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );

    promtool_check_metrics(&scrape);
}

/// `promtool check metrics` on the scrape (Prometheus' own linter), where
/// promtool is installed (Debian: prometheus; `.ci/check-deploy` installs it).
fn promtool_check_metrics(scrape: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool is not installed: `promtool check metrics` skipped");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
