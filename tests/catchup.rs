//! A long catch-up in parallel time slices: slices finishing out of order, a
//! SIGKILL in the middle, ARM's read budget honoured across slices, and a
//! burst of entries in a few minutes of the range split over the free slots
//! (with faults, and killed mid-split). The real binary against the fake
//! ARM; event by event, nothing lost or twice.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use support::*;

crate::on_both_backends!(
    slices_finishing_out_of_order_lose_and_repeat_nothing,
    killed_mid_catch_up_resumes_without_loss_or_duplicate,
    the_read_budget_paces_every_request_to_a_subscription,
    a_first_poll_and_a_poll_on_schedule_are_one_query_each,
    a_burst_is_split_over_the_free_slots_and_delivered_exactly_once,
    a_burst_split_under_azure_faults_is_delivered_exactly_once,
    killed_mid_split_requeries_from_the_watermark_and_delivers_exactly_once,
);

/// `n` entries of `sub` spread evenly over the last `span`.
fn over(sub: &str, prefix: &str, n: usize, span: chrono::Duration) -> Vec<FakeEntry> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let ts = now - span + span * (i as i32) / (n as i32);
            entry(sub, &format!("{prefix}-{i:05}"), ts, "Succeeded")
        })
        .collect()
}

/// A harness (window 60 s) catching up in `slices` parallel time slices,
/// whose ARM holds `n` entries of A over the last `span`, `page_size` to a
/// page; their ids.
async fn catching_up(
    backend: Backend,
    slices: usize,
    prefix: &str,
    n: usize,
    span: chrono::Duration,
    page_size: usize,
) -> (Harness, Vec<String>) {
    let mut h = Harness::on(backend).await;
    h.fakes.set_page_size(page_size);
    h.window = "60s";
    h.azure_lines = format!("catch_up_slices = {slices}\n");
    let ids = h.fakes.add(over(SUB_A, prefix, n, span));
    (h, ids)
}

/// The distinct query ranges (`ge`, `le`) of first pages, in request order.
fn ranges(h: &Harness) -> Vec<(String, String)> {
    h.fakes
        .arm_requests()
        .iter()
        .filter(|r| r.skiptoken.is_none())
        .filter_map(|r| {
            let f = r.filter.as_deref()?;
            let ge = f.split("ge '").nth(1)?.split('\'').next()?.to_string();
            let le = f.split("le '").nth(1)?.split('\'').next()?.to_string();
            Some((ge, le))
        })
        .collect()
}

async fn slices_finishing_out_of_order_lose_and_repeat_nothing(backend: Backend) {
    let span = chrono::Duration::hours(3);
    let (mut h, all) = catching_up(backend, 4, "c", 600, span, 20).await;
    // The first half of the range answers slowly: later slices finish first.
    h.fakes
        .hold_back_before(Utc::now() - span / 2, Duration::from_millis(300));
    h.once(&["--since", "3h10m", "--give-up-after", "5s"])
        .await
        .assert_exit(0)
        .assert_logged("catching up in parallel time slices");
    h.fakes.assert_delivered_exactly_once(&all);
    // The slices are contiguous and cover the range: each one's start is the
    // previous one's end.
    let r = ranges(&h);
    let starts: BTreeSet<&String> = r.iter().map(|(ge, _)| ge).collect();
    let ends: BTreeSet<&String> = r.iter().map(|(_, le)| le).collect();
    assert!(r.len() >= 4, "{r:?}");
    let first = starts.iter().next().copied();
    for (ge, _) in &r {
        assert!(
            Some(ge) == first || ends.contains(ge),
            "a gap before {ge}: {r:?}"
        );
    }
    // The watermark is now: a second run queries only the look-back.
    let before = h.fakes.arm_requests().len();
    h.cli(&["--once"])
        .await
        .assert_exit(0)
        .assert_not_logged("parallel time slices");
    assert!(h.fakes.arm_requests().len() - before <= 3);
    h.fakes.assert_delivered_exactly_once(&all);
}

async fn killed_mid_catch_up_resumes_without_loss_or_duplicate(backend: Backend) {
    let span = chrono::Duration::hours(6);
    let (mut h, all) = catching_up(backend, 6, "k", 900, span, 10).await;
    h.fakes
        .hold_back_before(Utc::now() - span / 3, Duration::from_millis(200));
    let d = h.daemon(&["--since", "6h10m"]);
    // SIGKILL with slices in flight and some events delivered.
    eventually(Duration::from_secs(60), "mid catch-up", || {
        h.fakes.arm_requests().len() >= 40 && !h.fakes.received_ids().is_empty()
    })
    .await;
    d.kill().await;
    let delivered_before = h.fakes.received_ids().len();
    assert!(
        delivered_before < all.len(),
        "killed too late to mean anything"
    );
    h.once(&["--give-up-after", "5s"]).await.assert_exit(0);
    // Nothing lost; only POSTs acknowledged just before the kill may repeat
    // (at most the POSTs in flight).
    assert_at_least_once(&h.fakes.received_ids(), &all, 8);
}

async fn the_read_budget_paces_every_request_to_a_subscription(backend: Backend) {
    let span = chrono::Duration::hours(2);
    let (mut h, all) = catching_up(backend, 8, "b", 400, span, 10).await;
    // A budget of 10 reads, refilled at 20 a second, for 8 parallel slices.
    h.azure_lines
        .push_str("reads_burst = 10\nreads_per_second = 20\n");
    h.once(&["--since", "2h5m", "--give-up-after", "5s"])
        .await
        .assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&all);
    let times: Vec<std::time::Instant> = h
        .fakes
        .arm_requests()
        .iter()
        .filter(|r| r.subscription == SUB_A)
        .map(|r| r.at)
        .collect();
    assert!(times.len() > 40, "{} requests", times.len());
    // In any one-second stretch: at most the burst plus a second's refill
    // (and one for rounding), whatever the slices in flight.
    for (i, t) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(within <= 10 + 20 + 1, "{within} requests within a second");
    }
}

async fn a_first_poll_and_a_poll_on_schedule_are_one_query_each(backend: Backend) {
    let fifty_seconds = chrono::Duration::seconds(50);
    let (mut h, recent) = catching_up(backend, 8, "r", 30, fifty_seconds, 200).await;
    // A first run places the watermark one window back: no slices.
    h.cli(&["--once"])
        .await
        .assert_exit(0)
        .assert_not_logged("parallel time slices");
    // One query, besides the empty one that asks Azure for its clock.
    let queries: Vec<_> = ranges(&h).into_iter().filter(|(ge, le)| ge != le).collect();
    assert_eq!(queries.len(), 1, "{:?}", ranges(&h));
    h.fakes.assert_delivered_exactly_once(&recent);
}

/// The log line that ends a parallel catch-up.
const SLICES_DONE: &str = "catching up: time slices done";
/// The debug line of each split.
const SPLIT: &str = "the rest of its slice split into parallel slices";

/// Pages each query followed (first page included), by the fake's snapshot
/// key of the query: a `$skiptoken` is `<key>.<offset>`.
fn chain_lengths(h: &Harness, page_size: usize) -> Vec<usize> {
    let mut longest: std::collections::HashMap<String, usize> = Default::default();
    for r in h.fakes.arm_requests() {
        if let Some((key, offset)) = r.skiptoken.as_deref().and_then(|t| t.rsplit_once('.')) {
            let pages = offset.parse::<usize>().unwrap_or(0) / page_size + 1;
            let l = longest.entry(key.to_string()).or_default();
            *l = (*l).max(pages);
        }
    }
    longest.into_values().collect()
}

/// A harness (window 60 s, 8 slices) whose ARM holds a burst: `n` entries
/// of A within the last four minutes, 25 to a page. Its ids, and when the
/// burst began.
async fn with_a_burst(
    backend: Backend,
    prefix: &str,
    n: usize,
) -> (Harness, Vec<String>, chrono::DateTime<Utc>) {
    let span = chrono::Duration::minutes(4);
    let began = Utc::now() - span;
    let (h, ids) = catching_up(backend, 8, prefix, n, span, 25).await;
    (h, ids, began)
}

/// Asserts that the burst since `began`, `pages` pages as one chain, was
/// read by queries whose ranges were split inside it, none of which
/// followed more than a fraction of that chain.
fn assert_split_inside(h: &Harness, began: chrono::DateTime<Utc>, pages: usize) {
    let began = ticks(began);
    let inside = ranges(h).into_iter().filter(|(ge, _)| *ge >= began).count();
    assert!(
        inside >= 4,
        "{inside} queries within the burst: {:?}",
        ranges(h)
    );
    let longest = chain_lengths(h, 25).into_iter().max().unwrap_or(1);
    assert!(
        longest <= pages / 3,
        "a query followed {longest} pages of the {pages} one chain would"
    );
}

/// The `key=value` field of the first line of `log` holding `message`.
fn field(log: &str, message: &str, key: &str) -> Option<usize> {
    let line = log.lines().find(|l| l.contains(message))?;
    let key = format!(" {key}=");
    let at = line.find(&key)? + key.len();
    line[at..].split(' ').next()?.parse().ok()
}

async fn a_burst_is_split_over_the_free_slots_and_delivered_exactly_once(backend: Backend) {
    // 120 pages as one chain.
    let (mut h, all, began) = with_a_burst(backend, "burst", 3000).await;
    let run = h.once(&["--since", "1h", "--give-up-after", "5s"]).await;
    run.assert_exit(0)
        .assert_logged("catching up in parallel time slices")
        .assert_logged(SPLIT);
    h.fakes.assert_delivered_exactly_once(&all);
    assert_split_inside(&h, began, 120);
    // Entries read again at the split boundaries count as duplicates, not
    // as new ones.
    assert_eq!(field(&run.stderr, SLICES_DONE, "new"), Some(all.len()));
    assert!(field(&run.stderr, SLICES_DONE, "splits").is_some_and(|n| n >= 1));
}

async fn a_burst_split_under_azure_faults_is_delivered_exactly_once(backend: Backend) {
    let (mut h, all, began) = with_a_burst(backend, "faulty", 3000).await;
    // Every fifth List call fails, one way or another, until 16 have.
    h.fakes.space_faults(5);
    for f in [
        Fault::Status(500, None),
        Fault::Status(429, Some(1)),
        Fault::Status(503, None),
        Fault::Cut,
    ]
    .iter()
    .cycle()
    .take(16)
    {
        h.fakes.fault(f.clone());
    }
    let run = h.once(&["--since", "1h", "--give-up-after", "5s"]).await;
    run.assert_exit(0).assert_logged(SPLIT);
    h.fakes.assert_delivered_exactly_once(&all);
    let failed = h
        .fakes
        .arm_requests()
        .iter()
        .filter(|r| r.status >= 429)
        .count();
    assert!(failed >= 12, "only {failed} faults met");
    assert_split_inside(&h, began, 120);
    assert_eq!(field(&run.stderr, SLICES_DONE, "new"), Some(all.len()));
}

async fn killed_mid_split_requeries_from_the_watermark_and_delivers_exactly_once(backend: Backend) {
    let (mut h, all, _) = with_a_burst(backend, "killed", 3000).await;
    // A slow ARM, so that the kill lands while split slices are read, and an
    // endpoint that accepts nothing yet: every event delivered is delivered
    // after the rerun, exactly once.
    h.fakes.set_arm_latency(Duration::from_millis(40));
    h.fakes.set_ingest(IngestMode::Down(503));
    let d = h.daemon(&["--since", "1h"]);
    d.wait_for_log(SPLIT, 2).await;
    d.kill().await;
    let read_before = h.fakes.arm_requests().len();
    assert!(
        read_before < 120,
        "killed after {read_before} reads: too late to mean anything"
    );
    let queued = h.state_sql("SELECT count(*) FROM outbox").await;
    assert!(
        queued[0].as_deref().is_some_and(|n| n != "0"),
        "nothing was recorded before the kill"
    );
    h.fakes.set_ingest(IngestMode::Up);
    let run = h.once(&["--give-up-after", "5s"]).await;
    run.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&all);
    // The rerun caught up again from the watermark, still before the burst:
    // what the killed run had recorded past it was read again and stopped
    // by the seen ids.
    assert!(
        field(&run.stderr, SLICES_DONE, "duplicate").is_some_and(|n| n > 0),
        "nothing was read twice:\n{}",
        run.stderr
    );
}
