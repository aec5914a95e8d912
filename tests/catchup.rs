//! A long catch-up in parallel time slices: slices finishing out of order, a
//! SIGKILL in the middle, and ARM's read budget honoured across slices. The
//! real binary against the fake ARM; event by event, nothing lost or twice.

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
