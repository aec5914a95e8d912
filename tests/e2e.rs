//! End to end: the real binary against fake Azure and a fake Guardrails
//! endpoint. Every test compares what was delivered with what should have
//! been, event by event.

mod support;

use chrono::Utc;
use support::*;

fn ids(entries: &[FakeEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// `n` entries of `sub`, spread over the last `span` seconds, every `status`.
fn spread(sub: &str, prefix: &str, n: usize, span_s: i64, status: &str) -> Vec<FakeEntry> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let ts = now
                - chrono::Duration::milliseconds(span_s * 1000 * (i as i64 + 1) / (n as i64 + 1));
            entry(sub, &format!("{prefix}-{i:05}"), ts, status)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_delivers_a_multi_page_window_exactly_once() {
    let mut h = Harness::new().await;
    h.fakes.azure.lock().unwrap().page_size = 50;
    let good = spread(SUB_A, "ok", 230, 8, "Succeeded");
    h.fakes.add(good.clone());
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&good));
    // 230 entries at 50 a page: 5 pages, every nextLink followed.
    let pages = h
        .fakes
        .arm_requests()
        .iter()
        .filter(|r| r.status == 200)
        .count();
    assert_eq!(pages, 5, "requests: {:?}", h.fakes.arm_requests());
    assert!(run.stderr.contains("poll complete"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_statuses_are_sent() {
    let mut h = Harness::new().await;
    let mut all = Vec::new();
    let succeeded = spread(SUB_A, "s", 20, 8, "Succeeded");
    all.extend(succeeded.clone());
    for status in [
        "Started",
        "Accepted",
        "In Progress",
        "Failed",
        "Active",
        "Resolved",
        "Updated",
    ] {
        all.extend(spread(SUB_A, &status.replace(' ', "_"), 5, 8, status));
    }
    h.fakes.add(all);
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&succeeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_exits_78_and_polls_and_sends_nothing() {
    let mut h = Harness::new().await;
    h.subscriptions = vec![(SUB_A.to_string(), false), (SUB_B.to_string(), true)];
    h.fakes.add(spread(SUB_A, "a", 5, 8, "Succeeded"));
    for args in [vec![], vec!["--once"]] {
        let config = h.write_config().display().to_string();
        let mut all = vec!["--config", config.as_str()];
        all.extend(args);
        let run = h.run(&all).await;
        assert_eq!(run.code, Some(78), "stderr:\n{}", run.stderr);
        assert!(
            run.stderr.contains(SUB_B),
            "names the subscription: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("event handlers"),
            "says why: {}",
            run.stderr
        );
    }
    assert!(h.fakes.arm_requests().is_empty());
    assert!(
        h.fakes.azure.lock().unwrap().token_forms.is_empty(),
        "not even a token request"
    );
    assert_eq!(h.fakes.ingest.lock().unwrap().attempts, 0);
}
