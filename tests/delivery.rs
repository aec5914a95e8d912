//! Delivery under load: the adaptive concurrency limit against an endpoint
//! that pushes back above its capacity, and fairness between a subscription
//! catching up a backlog and one receiving fresh events. Event by event:
//! nothing lost, nothing twice.

mod support;

use std::time::Duration;

use support::*;

crate::on_both_backends!(
    an_endpoint_that_pushes_back_gets_everything_exactly_once,
    a_backlog_does_not_hold_back_another_subscriptions_fresh_events,
);

/// The harness's `[guardrails]` says `concurrency = 4`; these tests use the
/// default (adaptive) with a ceiling.
fn adaptive(h: &mut Harness, max: usize) -> String {
    h.config_text()
        .replace("concurrency = 4\n", &format!("max_concurrency = {max}\n"))
}

async fn an_endpoint_that_pushes_back_gets_everything_exactly_once(backend: Backend) {
    let mut h = Harness::on(backend).await;
    {
        let mut i = h.fakes.ingest.lock().unwrap();
        i.capacity = Some(6);
        i.delay = Some(Duration::from_millis(20));
    }
    let good = spread(SUB_A, "a", 400, 8, "Succeeded");
    h.fakes.add(good.clone());
    let text = adaptive(&mut h, 64);
    std::fs::write(h.path("poller.toml"), text).unwrap();
    let config = h.path("poller.toml").display().to_string();
    let run = h
        .run(&["--config", &config, "--once", "--give-up-after", "30s"])
        .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&good));
    let i = h.fakes.ingest.lock().unwrap();
    // It went above one in flight (it adapts), and the 429s it provoked by
    // probing were retried, not lost.
    assert!(i.max_in_flight > 1, "max in flight {}", i.max_in_flight);
    assert!(i.throttled > 0, "the limit was probed");
}

async fn a_backlog_does_not_hold_back_another_subscriptions_fresh_events(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.subscriptions = vec![(SUB_A.into(), false), (SUB_B.into(), false)];
    h.window = "120s";
    // A slow endpoint, one POST at a time: the order of delivery shows.
    h.fakes.ingest.lock().unwrap().delay = Some(Duration::from_millis(15));
    let text = h
        .config_text()
        .replace("concurrency = 4\n", "concurrency = 1\n");
    std::fs::write(h.path("poller.toml"), text).unwrap();
    let backlog = spread(SUB_A, "old", 300, 100, "Succeeded");
    h.fakes.add(backlog.clone());
    let config = h.path("poller.toml").display().to_string();
    let (mut cmd, _log) = h.command(&["--config", &config]);
    let mut child = cmd.spawn().expect("spawn");
    eventually(
        Duration::from_secs(60),
        "the backlog is being delivered",
        || h.fakes.received_ids().len() >= 20,
    )
    .await;
    // Fresh events for B now, while A's backlog is far from done.
    let fresh = spread(SUB_B, "fresh", 5, 1, "Succeeded");
    h.fakes.add(fresh.clone());
    eventually(
        Duration::from_secs(60),
        "B's fresh events are delivered",
        || {
            let got = h.fakes.received_ids();
            fresh.iter().all(|e| got.contains(&e.id))
        },
    )
    .await;
    let a_done = h
        .fakes
        .received_ids()
        .iter()
        .filter(|i| i.starts_with("old-"))
        .count();
    assert!(
        a_done < backlog.len() - 100,
        "B waited behind A's backlog: {a_done} of {} old events went first",
        backlog.len()
    );
    eventually(Duration::from_secs(120), "everything delivered", || {
        h.fakes.received_ids().len() >= backlog.len() + fresh.len()
    })
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let mut expected = ids(&backlog);
    expected.extend(ids(&fresh));
    assert_exactly_once(&h.fakes.received_ids(), &expected);
}
