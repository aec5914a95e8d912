//! Bounded input: an answer too large, or without end, from Azure Resource
//! Manager, Entra ID or the ingestion endpoint is refused at its limit with
//! an error naming the size and the host (never a token), handled as any
//! other fault of that side, and the daemon's memory stays bounded. And an
//! ARM error written the way Insights writes it (top-level `Code` and
//! `Message`) reaches the log with its message.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

crate::on_both_backends!(
    an_endless_page_fails_only_its_subscriptions_polls_and_memory_stays_bounded,
    a_page_declared_past_the_limit_is_refused_unread,
    an_endless_reply_keeps_the_event_in_the_outbox_until_the_endpoint_behaves,
    an_insights_error_reaches_the_log_with_its_message,
);

/// The resident memory of process `pid`, in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

const MIB: u64 = 1 << 20;

async fn an_endless_page_fails_only_its_subscriptions_polls_and_memory_stays_bounded(
    backend: Backend,
) {
    let mut h = Harness::on(backend).await;
    h.set_subscriptions(&[SUB_A, SUB_B]);
    h.fakes.flood(SUB_A, Flood::Endless);
    let b = h.fakes.add([entry_ago(SUB_B, "b-1", 2)]);
    let d = h.daemon(&[]);
    let pid = d.child.id().expect("the daemon's pid");

    // A's answers never end; each is refused at the limit, naming the host,
    // and A is asked again every interval. Memory is sampled all along.
    let refused = format!(
        "the answer from http://{} went past its limit of 64 MiB",
        h.fakes.arm_addr
    );
    let failed_polls = || {
        let log = d.log();
        log.lines()
            .filter(|l| l.contains("poll failed") && l.contains(&refused))
            .count()
    };
    let mut peak = 0;
    eventually(
        Duration::from_secs(60),
        "three of A's polls refused",
        || {
            peak = peak.max(rss(pid));
            failed_polls() >= 3
        },
    )
    .await;
    assert!(
        h.fakes.flooded() > 3 * 64 * MIB,
        "the floods were read up to the limit"
    );
    assert!(
        peak < 300 * MIB,
        "the daemon grew to {} MiB reading endless pages",
        peak / MIB
    );

    // B is polled and delivered meanwhile, new events too.
    h.fakes.wait_for_delivery(&b, Duration::from_secs(30)).await;
    let b2 = h.fakes.add([entry_ago(SUB_B, "b-2", 1)]);
    h.fakes
        .wait_for_delivery(&b2, Duration::from_secs(30))
        .await;

    // Once A's answers end again, its next poll gets its events.
    let a = h.fakes.add([entry_ago(SUB_A, "a-1", 1)]);
    h.fakes.stop_flood(SUB_A);
    h.fakes.wait_for_delivery(&a, Duration::from_secs(30)).await;
    let log = d.stop_cleanly().await;
    h.assert_no_secrets(&log);
    h.fakes.assert_delivered_exactly_once(&[a, b, b2].concat());
}

async fn a_page_declared_past_the_limit_is_refused_unread(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.flood(SUB_A, Flood::Declared(1 << 30));
    let run = h.once(&[]).await;
    // A fault of Azure's: worth trying again later (EX_TEMPFAIL).
    run.assert_exit(75).assert_logged(&format!(
        "the answer from http://{} declares 1024 MiB (Content-Length), past its limit of 64 MiB",
        h.fakes.arm_addr
    ));
    // Not retried within the poll, and not read: what left the fake is what
    // the sockets' buffers took.
    assert_eq!(h.fakes.arm_requests_for(SUB_A), 1);
    assert!(
        h.fakes.flooded() < 32 * MIB,
        "{} MiB were sent",
        h.fakes.flooded() / MIB
    );
    h.assert_no_secrets(&run.stderr);
}

async fn an_endless_reply_keeps_the_event_in_the_outbox_until_the_endpoint_behaves(
    backend: Backend,
) {
    let mut h = Harness::on(backend).await;
    h.fakes.set_ingest(IngestMode::EndlessReply);
    let a = h.fakes.add([entry_ago(SUB_A, "a-1", 2)]);
    let d = h.daemon(&[]);
    let refused = format!(
        "will retry reason=HTTP 202 Accepted, but the answer from http://{} went past its limit of 64 KiB",
        h.fakes.ingest_addr
    );
    // Retried with backoff: refused each time, never acknowledged.
    d.wait_for_log(&refused, 2).await;
    assert!(h.fakes.ingest_attempts() >= 2);
    let count = |table: &str| format!("SELECT COUNT(*) FROM {table}");
    assert_eq!(h.state_sql(&count("outbox")).await, [Some("1".into())]);
    assert_eq!(h.state_sql(&count("dead_letter")).await, [Some("0".into())]);

    h.fakes.set_ingest(IngestMode::Up);
    h.fakes.wait_for_delivery(&a, Duration::from_secs(30)).await;
    let log = d.stop_cleanly().await;
    h.assert_no_secrets(&log);
    h.fakes.assert_delivered_exactly_once(&a);
    assert_eq!(h.state_sql(&count("outbox")).await, [Some("0".into())]);
}

async fn an_insights_error_reaches_the_log_with_its_message(backend: Backend) {
    let mut h = Harness::on(backend).await;
    // The recorded body of a real 400 (see its SOURCES.md).
    let recorded = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/arm-errors/insights-400-start-too-old.json");
    let body = std::fs::read_to_string(&recorded).expect("the recorded Insights 400");
    h.fakes.fault(Fault::Answer(400, body));
    // A request a person must fix: EX_UNAVAILABLE.
    h.once(&[]).await.assert_exit(69).assert_logged(
        "Azure rejected the request (HTTP 400, BadRequest: The start time cannot be more than 90 days in the past.)",
    );
}

/// The credential's transport is the same whatever the state: one backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_token_response_is_refused_at_its_limit() {
    let mut h = Harness::new().await;
    h.fakes.flood_tokens(true);
    let run = h.once(&[]).await;
    // Detection's first ARM read finds no token: it cannot tell, and refuses.
    run.assert_exit(69).assert_logged(&format!(
        "no token: the answer from https://{} went past its limit of 1 MiB",
        h.fakes.login_addr
    ));
    h.assert_no_secrets(&run.stderr);
}
