//! High availability: two instances of the real binary sharing one real
//! PostgreSQL state, with short leases ("2s"). Which instance polled is told
//! by the bearer token on each ARM request: each process signs in once.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use support::*;

fn subscription(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-{i:012x}")
}

/// A PostgreSQL harness with `n` subscriptions, each with `per` entries;
/// the ids of all of them.
async fn harness(n: usize, per: usize) -> (Harness, Vec<String>) {
    let mut h = Harness::on(Backend::Postgres).await;
    h.window = "60s";
    h.subscriptions = (0..n).map(|i| (subscription(i), false)).collect();
    let mut expected = Vec::new();
    for (sub, _) in &h.subscriptions {
        expected.extend(h.fakes.add(spread(sub, &sub[..8], per, 20, "Succeeded")));
    }
    (h, expected)
}

/// [`harness`] under load (the endpoint takes 20 ms a POST), with two
/// instances running.
async fn two_under_load(n: usize, per: usize) -> (Harness, Vec<String>, Daemon, Daemon) {
    let (mut h, expected) = harness(n, per).await;
    h.fakes.set_ingest_delay(Duration::from_millis(20));
    let a = h.daemon(&[]);
    let b = h.daemon(&[]);
    (h, expected, a, b)
}

/// Unexpired leases per holder.
async fn holders(h: &Harness) -> BTreeMap<String, usize> {
    let rows = h
        .try_state_sql("SELECT holder FROM lease WHERE expires_at > now()")
        .await
        .unwrap_or_default();
    let mut m = BTreeMap::new();
    for r in rows.into_iter().flatten() {
        *m.entry(r).or_insert(0) += 1;
    }
    m
}

/// Stops both instances; each exits 0.
async fn stop_both(a: Daemon, b: Daemon) {
    let (ca, la) = a.stop().await;
    let (cb, lb) = b.stop().await;
    assert_eq!((ca, cb), (Some(0), Some(0)), "{la}\n{lb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_twenty_subscriptions_each_polled_by_one() {
    let (mut h, expected) = harness(20, 3).await;
    let a = h.daemon(&[]);
    let b = h.daemon(&[]);
    eventually_async(
        Duration::from_secs(60),
        "shares within one of even",
        || async {
            let m = holders(&h).await;
            m.len() == 2
                && m.values().sum::<usize>() == 20
                && m.values().all(|n| (9..=11).contains(n))
        },
    )
    .await;
    h.fakes
        .wait_for_delivery(&expected, Duration::from_secs(60))
        .await;
    // From here on, every subscription is polled by exactly one instance.
    let from = h.fakes.arm_requests().len();
    let settled = holders(&h).await;
    // Watch until every subscription has been polled at least twice more.
    let polled_since = || {
        let mut by_sub: BTreeMap<String, (usize, HashSet<String>)> = BTreeMap::new();
        for r in &h.fakes.arm_requests()[from..] {
            let e = by_sub.entry(r.subscription.clone()).or_default();
            e.0 += 1;
            e.1.insert(r.bearer.clone().unwrap_or_default());
        }
        by_sub
    };
    eventually(
        Duration::from_secs(60),
        "every subscription polled twice more",
        || {
            let by_sub = polled_since();
            by_sub.len() == 20 && by_sub.values().all(|(n, _)| *n >= 2)
        },
    )
    .await;
    assert_eq!(holders(&h).await, settled, "leases moved while balanced");
    let by_sub: BTreeMap<String, HashSet<String>> = polled_since()
        .into_iter()
        .map(|(sub, (_, bearers))| (sub, bearers))
        .collect();
    for (sub, bearers) in &by_sub {
        assert_eq!(bearers.len(), 1, "{sub} polled by {bearers:?}");
    }
    stop_both(a, b).await;
    h.fakes.assert_delivered_exactly_once(&expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_taken_over_within_a_lease_and_an_interval() {
    let (h, expected, a, b) = two_under_load(6, 60).await;
    eventually_async(Duration::from_secs(60), "both hold leases", || async {
        holders(&h).await.len() == 2
    })
    .await;
    h.fakes
        .wait_for_deliveries(60, Duration::from_secs(60))
        .await;
    let in_flight = h.fakes.ingest.lock().unwrap().in_flight;
    a.kill().await;
    let killed = Instant::now();
    // Lease (2s) + one interval (1s), and slack for this test's own polling.
    eventually_async(
        Duration::from_secs(8),
        "the other holds everything",
        || async {
            let m = holders(&h).await;
            m.len() == 1 && m.values().sum::<usize>() == 6
        },
    )
    .await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(6), "took over after {took:?}");
    h.fakes
        .wait_for_delivery(&expected, Duration::from_secs(60))
        .await;
    b.stop_cleanly().await;
    // Concurrency 4 per instance: at most the POSTs in flight at the kill.
    assert_at_least_once(&h.fakes.received_ids(), &expected, in_flight.max(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_instance_is_fenced_off_and_delivers_nothing_twice() {
    let (mut h, expected) = harness(4, 5).await;
    let a = h.daemon(&[]);
    eventually_async(
        Duration::from_secs(60),
        "the first holds everything",
        || async { holders(&h).await.values().sum::<usize>() == 4 },
    )
    .await;
    h.fakes
        .wait_for_delivery(&expected, Duration::from_secs(60))
        .await;
    // Every acknowledgement recorded too: a POST acknowledged but not yet
    // deleted from the outbox when the instance stops would be sent again
    // by the other, the one duplicate the design allows.
    eventually_async(Duration::from_secs(60), "the outbox drained", || async {
        h.state_sql("SELECT COUNT(*) FROM outbox").await == [Some("0".to_string())]
    })
    .await;
    // Every query now answers late; the instance is stopped once one is
    // held back, so that it is caught mid-poll.
    h.fakes.hold_back_before(
        Utc::now() + chrono::Duration::days(1),
        Duration::from_millis(1500),
    );
    eventually(Duration::from_secs(10), "a query held back", || {
        h.fakes.held_back() > 0
    })
    .await;
    a.signal("STOP");
    let b = h.daemon(&[]);
    let mut more = Vec::new();
    for (sub, _) in &h.subscriptions {
        let late = spread(sub, &format!("late-{}", &sub[..8]), 5, 5, "Succeeded");
        more.extend(h.fakes.add(late));
    }
    let all = [expected, more].concat();
    // The other delivers the rest.
    h.fakes
        .wait_for_delivery(&all, Duration::from_secs(60))
        .await;
    a.signal("CONT");
    a.wait_for_log("lease on this subscription was lost", 1)
        .await;
    // Its late writes were refused; it drops every subscription (the
    // refused ones at once, the others at its next lease round) and so
    // writes nothing more for them. Then nothing came twice.
    a.wait_for_log("no longer held by this instance", 4).await;
    stop_both(a, b).await;
    h.fakes.assert_delivered_exactly_once(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_nothing() {
    let (h, expected, a, b) = two_under_load(4, 60).await;
    h.fakes
        .wait_for_deliveries(40, Duration::from_secs(60))
        .await;
    let pg = h.pg.as_ref().expect("a PostgreSQL harness");
    tokio::task::block_in_place(|| pg.restart());
    h.fakes
        .wait_for_delivery(&expected, Duration::from_secs(90))
        .await;
    stop_both(a, b).await;
    // At most the POSTs in flight when connections were cut (4 each).
    assert_at_least_once(&h.fakes.received_ids(), &expected, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_renewed_late_but_not_taken_over_sends_nothing_twice() {
    let (mut h, expected) = harness(2, 150).await;
    // Renewed every 10 s: the expiry below stands until then.
    h.lease = "30s";
    h.fakes.set_ingest_delay(Duration::from_millis(100));
    let d = h.daemon(&[]);
    h.fakes
        .wait_for_deliveries(5, Duration::from_secs(60))
        .await;
    // Renewals come late (a stalled database or host): the leases expire
    // with POSTs in flight, and no other instance takes them over. They are
    // still this instance's: what the endpoint acknowledged is settled, not
    // sent again.
    h.state_sql("UPDATE lease SET expires_at = now() - interval '1 second'")
        .await;
    let pending = expected.len() - h.fakes.received_ids().len();
    assert!(pending > 50, "delivered too fast to mean anything");
    h.fakes
        .wait_for_delivery(&expected, Duration::from_secs(60))
        .await;
    let log = d.stop_cleanly().await;
    assert!(
        !log.contains("lease on this subscription was lost"),
        "{log}"
    );
    h.fakes.assert_delivered_exactly_once(&expected);
}

/// A measurement, not a timed assertion (`cargo test --release --test ha --
/// --ignored --nocapture lease_rounds_at`): two instances sharing 10,000
/// subscriptions at the default lease (30 s, renewed every 10 s, a round
/// given up after 15 s), each round's time printed. What it asserts is the
/// outcome: a fair share each, none held twice, none left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (prints each lease round's time); run it on its own"]
async fn lease_rounds_at_10000_subscriptions_share_fairly() {
    use azure_activity_poller::config::{DatabaseUrl, HaConfig, StateConfig};
    use azure_activity_poller::store::{Instance, Share, Store};

    let (_server, url) = postgres::PgServer::with_database("leases").await;
    let state = StateConfig::Postgres(DatabaseUrl::parse(&url).expect("database URL"));
    let wanted: Vec<std::sync::Arc<str>> = (0..10_000).map(|i| subscription(i).into()).collect();
    let ha = HaConfig::default();
    let a = Store::open(&state, &Instance::new()).await.expect("open a");
    let b = Store::open(&state, &Instance::new()).await.expect("open b");
    let round = |store: &Store, name: &'static str| {
        let (store, wanted) = (store.clone(), wanted.clone());
        async move {
            let started = Instant::now();
            let report = azure_activity_poller::lease::round(&store, &wanted, ha, Share::Fair)
                .await
                .expect("lease round");
            println!(
                "lease round: instance {name}, {} held, {} live, {} ms",
                report.held.len(),
                report.live,
                started.elapsed().as_millis()
            );
            report.held
        }
    };
    // a alone takes them all; b joins; a sets half aside, then gives it
    // back; b takes it; then both renew, as every 10 s from then on.
    round(&a, "a").await;
    round(&b, "b").await;
    round(&a, "a").await;
    round(&a, "a").await;
    round(&b, "b").await;
    let (mut held_a, mut held_b) = (Default::default(), Default::default());
    for _ in 0..3 {
        held_a = round(&a, "a").await;
        held_b = round(&b, "b").await;
    }
    assert_eq!((held_a.len(), held_b.len()), (5_000, 5_000));
    assert!(held_a.is_disjoint(&held_b));
    let all: HashSet<&std::sync::Arc<str>> = held_a.iter().chain(&held_b).collect();
    assert_eq!(all.len(), wanted.len());
}
