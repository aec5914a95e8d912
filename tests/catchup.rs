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
    let mut h = Harness::on(backend).await;
    h.window = "60s";
    let span = chrono::Duration::hours(3);
    let all = over(SUB_A, "c", 600, span);
    h.fakes.add(all.clone());
    {
        let mut a = h.fakes.azure.lock().unwrap();
        a.page_size = 20;
        // The first half of the range answers slowly: later slices finish first.
        a.slow_before = Some((Utc::now() - span / 2, Duration::from_millis(300)));
    }
    let text = h.config_text().replace(
        "max_retries = 4\n",
        "max_retries = 4\ncatch_up_slices = 4\n",
    );
    std::fs::write(h.path("poller.toml"), text).unwrap();
    let config = h.path("poller.toml").display().to_string();
    let run = h
        .run(&[
            "--config",
            &config,
            "--once",
            "--since",
            "3h10m",
            "--give-up-after",
            "5s",
        ])
        .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("catching up in parallel time slices"),
        "{}",
        run.stderr
    );
    assert_exactly_once(&h.fakes.received_ids(), &ids(&all));
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
    let run = h.run(&["--config", &config, "--once"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        !run.stderr.contains("parallel time slices"),
        "{}",
        run.stderr
    );
    assert!(h.fakes.arm_requests().len() - before <= 3);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&all));
}

async fn killed_mid_catch_up_resumes_without_loss_or_duplicate(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "60s";
    let span = chrono::Duration::hours(6);
    let all = over(SUB_A, "k", 900, span);
    h.fakes.add(all.clone());
    {
        let mut a = h.fakes.azure.lock().unwrap();
        a.page_size = 10;
        a.slow_before = Some((Utc::now() - span / 3, Duration::from_millis(200)));
    }
    let text = h.config_text().replace(
        "max_retries = 4\n",
        "max_retries = 4\ncatch_up_slices = 6\n",
    );
    std::fs::write(h.path("poller.toml"), &text).unwrap();
    let config = h.path("poller.toml").display().to_string();
    let (mut cmd, _log) = h.command(&["--config", &config, "--since", "6h10m"]);
    let mut child = cmd.spawn().expect("spawn");
    // SIGKILL with slices in flight and some events delivered.
    eventually(Duration::from_secs(60), "mid catch-up", || {
        h.fakes.arm_requests().len() >= 40 && !h.fakes.received_ids().is_empty()
    })
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let delivered_before = h.fakes.received_ids().len();
    assert!(
        delivered_before < all.len(),
        "killed too late to mean anything"
    );
    let run = h
        .run(&["--config", &config, "--once", "--give-up-after", "5s"])
        .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let got = h.fakes.received_ids();
    let c = counts(&got);
    let missing: Vec<_> = all.iter().filter(|e| !c.contains_key(&e.id)).collect();
    assert!(
        missing.is_empty(),
        "lost: {} of {}",
        missing.len(),
        all.len()
    );
    // Only POSTs acknowledged just before the kill may repeat.
    let twice = c.values().filter(|n| **n > 1).count();
    assert!(
        twice <= 8,
        "{twice} duplicates (at most the POSTs in flight)"
    );
}

async fn the_read_budget_paces_every_request_to_a_subscription(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "60s";
    let span = chrono::Duration::hours(2);
    let all = over(SUB_A, "b", 400, span);
    h.fakes.add(all.clone());
    h.fakes.azure.lock().unwrap().page_size = 10;
    // A budget of 10 reads, refilled at 20 a second, for 8 parallel slices.
    let config = write_with_azure(
        &h,
        "catch_up_slices = 8\nreads_burst = 10\nreads_per_second = 20\n",
    );
    let run = h
        .run(&[
            "--config",
            &config,
            "--once",
            "--since",
            "2h5m",
            "--give-up-after",
            "5s",
        ])
        .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&all));
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
    let mut h = Harness::on(backend).await;
    h.window = "60s";
    let recent = over(SUB_A, "r", 30, chrono::Duration::seconds(50));
    h.fakes.add(recent.clone());
    let config = write_with_azure(&h, "catch_up_slices = 8\n");
    // A first run places the watermark one window back: no slices.
    let run = h.run(&["--config", &config, "--once"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        !run.stderr.contains("parallel time slices"),
        "{}",
        run.stderr
    );
    // One query, besides the empty one that asks Azure for its clock.
    let queries: Vec<_> = ranges(&h).into_iter().filter(|(ge, le)| ge != le).collect();
    assert_eq!(queries.len(), 1, "{:?}", ranges(&h));
    assert_exactly_once(&h.fakes.received_ids(), &ids(&recent));
}
