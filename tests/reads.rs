//! How the daemon sizes its reads and what it logs at scale, against the
//! fakes on 127.0.0.1 (on both state backends): the limit of polls in flight
//! grows when ARM answers slowly and polls keep their schedule, backs off
//! when ARM answers 429, and `status` shows it; polls that find nothing log
//! at debug, and one summary line at INFO says what they did.
//!
//! The process's threads stay bounded when a thousand subscriptions start at
//! once on SQLite.
//!
//! Scaled down in time and CPU, not in what is measured: 120 subscriptions, a
//! 4 s interval and ARM answering 1.2 s late (a slow WAN's round trip) are 30
//! polls a second and 36 in flight on average, past the 32 a start begins
//! with, at a rate a shared test machine keeps up with.

mod support;

use std::time::Duration;

use chrono::Utc;
use support::admin::{admin_addr, get, metric, parse_metrics};
use support::*;

crate::on_both_backends!(
    the_read_limit_grows_under_latency_and_backs_off_on_429s,
    quiet_polls_log_at_debug_and_a_summary_at_info,
);

/// The threads of process `pid` now.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// A thousand subscriptions due within two seconds, each poll's store calls
/// waiting for SQLite's one connection: they queue for the runtime's
/// blocking threads (16) instead of taking a thread each (tokio's default
/// allows 512; a 10,000-subscription start reached 183 threads, each with
/// its own malloc arena).
#[tokio::test]
async fn threads_stay_bounded_when_a_thousand_subscriptions_start_at_once() {
    let mut h = Harness::on(Backend::Sqlite).await;
    let subs = subscriptions(1000);
    h.set_subscriptions(&subs.iter().map(String::as_str).collect::<Vec<_>>());
    h.interval = "2s";
    h.window = "20s";
    h.extra = "event_handlers = false\n".into();
    // Each poll finds a page to record: more store work per poll.
    for sub in subs.iter().step_by(2) {
        h.fakes.add(vec![entry(
            sub,
            &format!("t-{sub}"),
            Utc::now() - chrono::Duration::seconds(5),
            "Succeeded",
        )]);
    }
    let d = h.daemon(&[]);
    let pid = d.child.id().expect("the daemon's pid");
    let mut peak = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while h.fakes.arm_requests().len() < 2 * subs.len() {
        peak = peak.max(threads(pid));
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} polls made\n{}",
            h.fakes.arm_requests().len(),
            2 * subs.len(),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.stop_cleanly().await;
    // The workers (one a core), 16 blocking threads, the main thread and a
    // few of the libraries' own.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let bound = cores + 16 + 6;
    eprintln!("peak threads: {peak} (at most {bound})");
    assert!(
        peak <= bound,
        "{peak} threads at the start of 1,000 subscriptions, at most {bound} expected"
    );
    assert!(peak > 0, "the daemon's threads were read");
}

/// The limit a start begins from (`read_limit.rs`).
const INITIAL_LIMIT: f64 = 32.0;

/// Distinct subscription ids, valid GUIDs.
fn subscriptions(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{i:08x}-0000-4000-8000-{i:012x}"))
        .collect()
}

/// `arm_reads_limit` as `/metrics` shows it now.
async fn reads_limit(addr: &str) -> f64 {
    let (_, body) = get(addr, "/metrics").await;
    metric(&parse_metrics(&body), "arm_reads_limit", &[]).unwrap_or(0.0)
}

async fn the_read_limit_grows_under_latency_and_backs_off_on_429s(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let subs = subscriptions(120);
    h.set_subscriptions(&subs.iter().map(String::as_str).collect::<Vec<_>>());
    h.interval = "4s";
    h.window = "40s";
    // In [defaults]: nothing to check at start, so the polls begin at once.
    h.extra = "event_handlers = false\n\n[telemetry]\nlisten = \"127.0.0.1:0\"\n".into();
    // Every query answers 1.2 s late.
    h.fakes.hold_back_before(
        Utc::now() + chrono::Duration::days(1),
        Duration::from_millis(1200),
    );
    let d = h.daemon(&[]);
    let addr = admin_addr(&d).await;

    // The demand (the first polls spread over the first interval, then the
    // schedule: 30 a second at 1.2 s) takes the limit past what it began
    // with.
    eventually_async(
        Duration::from_secs(30),
        "arm_reads_limit above its initial 32",
        || async { reads_limit(&addr).await > INITIAL_LIMIT },
    )
    .await;
    // Two intervals of every subscription: none starts a poll late.
    h.fakes
        .wait_for_polls(2 * subs.len(), Duration::from_secs(60))
        .await;
    // Polls may run long on a loaded machine (their own poll overran the
    // interval); none may start late for want of a permit.
    let log = d.log();
    let held_by_the_limit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("more than one interval late"))
        .filter(|l| !l.contains("the previous poll of this subscription ran past its interval"))
        .collect();
    assert!(
        held_by_the_limit.is_empty(),
        "polls started late waiting for the read limit:\n{}",
        held_by_the_limit.join("\n")
    );
    let steady = reads_limit(&addr).await;
    assert!(
        steady > INITIAL_LIMIT,
        "the demand (30 polls a second at 1.2 s) holds the limit above 32: {steady}"
    );
    let status = h.cli(&["status"]).await;
    status
        .assert_exit(0)
        .assert_printed("READS (POLLS IN FLIGHT)")
        .assert_printed(" 512 ");

    // ARM throttles for a while: the polls that met it report it, and the
    // limit backs off and holds.
    for _ in 0..subs.len() {
        h.fakes.fault(Fault::Status(429, Some(1)));
    }
    eventually_async(
        Duration::from_secs(30),
        "arm_reads_limit below where it was before the 429s",
        || async { reads_limit(&addr).await < steady },
    )
    .await;
    // `status` shows the daemon's figure and why it is what it is.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let run = h.cli(&["status"]).await;
        if run.code == Some(0) && run.stdout.contains("throttled") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status did not say the reads are throttled:\n{}",
            run.stdout
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = d.stop_cleanly().await;
    assert!(log.contains("Azure is throttling (HTTP 429)"), "{log}");
}

async fn quiet_polls_log_at_debug_and_a_summary_at_info(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.set_subscriptions(&[SUB_A, SUB_B]);
    h.env.push(("RUST_LOG".into(), "info".into()));
    let d = h.daemon(&[]);
    // Idle: a few polls of each subscription find nothing.
    h.fakes.wait_for_polls(6, Duration::from_secs(30)).await;
    // Then one finds an event, and the next delivers it.
    let ids = h.fakes.add([entry_ago(SUB_A, "busy-1", 2)]);
    h.fakes
        .wait_for_delivery(&ids, Duration::from_secs(30))
        .await;
    h.fakes.wait_for_polls(4, Duration::from_secs(30)).await;
    let polls = h.fakes.arm_requests().len();
    let log = d.stop_cleanly().await;

    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("poll complete"))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| !l.contains(" new=0") || !l.contains(" delivered=0")),
        "a quiet poll logged at INFO:\n{log}"
    );
    assert!(
        lines.iter().any(|l| l.contains(" new=1")),
        "the poll that found the event logged at INFO:\n{log}"
    );
    assert!(
        lines.len() < polls,
        "{} poll lines for {polls} polls:\n{log}",
        lines.len()
    );
    // The stop writes the summary of its period (shorter than a minute
    // unless the run was slow).
    let summary: Vec<&str> = log.lines().filter(|l| l.contains("poll summary")).collect();
    assert!(
        summary.iter().any(|l| l.contains(" new=1")),
        "no summary counts the event:\n{log}"
    );

    // `--once` is read by a person: every subscription's line, quiet or not.
    let run = h.once(&[]).await;
    run.assert_exit(0);
    assert_eq!(
        run.stderr.matches("poll complete").count(),
        2,
        "{}",
        run.stderr
    );
}
