//! High availability: two instances of the real binary sharing one real
//! PostgreSQL state, with short leases ("2s"). Which instance polled is told
//! by the bearer token on each ARM request: each process signs in once.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use support::*;

fn subscription(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-{i:012x}")
}

/// A PostgreSQL harness with `n` subscriptions, each with `per` entries.
async fn harness(n: usize, per: usize) -> (Harness, Vec<String>) {
    let mut h = Harness::on(Backend::Postgres).await;
    h.window = "60s";
    h.subscriptions = (0..n).map(|i| (subscription(i), false)).collect();
    let mut expected = Vec::new();
    for (sub, _) in &h.subscriptions {
        let entries = spread(sub, &sub[..8], per, 20, "Succeeded");
        expected.extend(ids(&entries));
        h.fakes.add(entries);
    }
    (h, expected)
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

async fn eventually_async<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_delivered(h: &Harness, expected: &[String]) -> bool {
    let got: HashSet<String> = h.fakes.received_ids().into_iter().collect();
    expected.iter().all(|id| got.contains(id))
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
    eventually(Duration::from_secs(60), "every entry delivered", || {
        all_delivered(&h, &expected)
    })
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
    let (ca, la) = a.stop().await;
    let (cb, lb) = b.stop().await;
    assert_eq!((ca, cb), (Some(0), Some(0)), "{la}\n{lb}");
    assert_exactly_once(&h.fakes.received_ids(), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_taken_over_within_a_lease_and_an_interval() {
    let (mut h, expected) = harness(6, 60).await;
    h.fakes.ingest.lock().unwrap().delay = Some(Duration::from_millis(20));
    let a = h.daemon(&[]);
    let b = h.daemon(&[]);
    eventually_async(Duration::from_secs(60), "both hold leases", || async {
        holders(&h).await.len() == 2
    })
    .await;
    eventually(Duration::from_secs(60), "deliveries under way", || {
        h.fakes.received_ids().len() >= 60
    })
    .await;
    let in_flight = h.fakes.ingest.lock().unwrap().in_flight;
    let log = a.kill().await;
    assert!(!log.contains("panicked"), "{log}");
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
    eventually(Duration::from_secs(60), "every entry delivered", || {
        all_delivered(&h, &expected)
    })
    .await;
    let (code, log) = b.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let c = counts(&h.fakes.received_ids());
    let duplicates: usize = c.values().map(|n| n - 1).sum();
    // Concurrency 4 per instance: at most the POSTs in flight at the kill.
    assert!(
        duplicates <= in_flight.max(4),
        "{duplicates} duplicates, {in_flight} in flight"
    );
    for id in &expected {
        assert!(c.contains_key(id), "{id} lost");
    }
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
    eventually(Duration::from_secs(60), "first entries delivered", || {
        all_delivered(&h, &expected)
    })
    .await;
    // Every query now answers late, so the stalled one is caught mid-poll.
    h.fakes.azure.lock().unwrap().slow_before = Some((
        chrono::Utc::now() + chrono::Duration::days(1),
        Duration::from_millis(1500),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal("STOP");
    let b = h.daemon(&[]);
    let mut more = Vec::new();
    for (sub, _) in &h.subscriptions {
        let entries = spread(sub, &format!("late-{}", &sub[..8]), 5, 5, "Succeeded");
        more.extend(ids(&entries));
        h.fakes.add(entries);
    }
    let all: Vec<String> = expected.iter().chain(&more).cloned().collect();
    eventually(
        Duration::from_secs(60),
        "the other delivers the rest",
        || all_delivered(&h, &all),
    )
    .await;
    a.signal("CONT");
    eventually(
        Duration::from_secs(30),
        "the stalled instance notices",
        || a.log().contains("lease on this subscription was lost"),
    )
    .await;
    // Its late writes were refused; it drops every subscription (the
    // refused ones at once, the others at its next lease round) and so
    // writes nothing more for them. Then nothing came twice.
    eventually(
        Duration::from_secs(30),
        "the stalled instance drops all four",
        || a.log().matches("no longer held by this instance").count() >= 4,
    )
    .await;
    let (ca, la) = a.stop().await;
    let (cb, lb) = b.stop().await;
    assert_eq!((ca, cb), (Some(0), Some(0)), "{la}\n{lb}");
    assert_exactly_once(&h.fakes.received_ids(), &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_nothing() {
    let (mut h, expected) = harness(4, 60).await;
    h.fakes.ingest.lock().unwrap().delay = Some(Duration::from_millis(20));
    let a = h.daemon(&[]);
    let b = h.daemon(&[]);
    eventually(Duration::from_secs(60), "deliveries under way", || {
        h.fakes.received_ids().len() >= 40
    })
    .await;
    let pg = h.pg.as_ref().expect("a PostgreSQL harness");
    tokio::task::block_in_place(|| pg.restart());
    eventually(Duration::from_secs(90), "every entry delivered", || {
        all_delivered(&h, &expected)
    })
    .await;
    let (ca, la) = a.stop().await;
    let (cb, lb) = b.stop().await;
    assert_eq!((ca, cb), (Some(0), Some(0)), "{la}\n{lb}");
    let c = counts(&h.fakes.received_ids());
    let duplicates: usize = c.values().map(|n| n - 1).sum();
    // At most the POSTs in flight when connections were cut (4 each).
    assert!(duplicates <= 8, "{duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_renewed_late_but_not_taken_over_sends_nothing_twice() {
    let (mut h, expected) = harness(2, 150).await;
    // Renewed every 10 s: the expiry below stands until then.
    h.lease = "30s";
    h.fakes.ingest.lock().unwrap().delay = Some(Duration::from_millis(100));
    let d = h.daemon(&[]);
    eventually(Duration::from_secs(60), "deliveries under way", || {
        h.fakes.received_ids().len() >= 5
    })
    .await;
    // Renewals come late (a stalled database or host): the leases expire
    // with POSTs in flight, and no other instance takes them over. They are
    // still this instance's: what the endpoint acknowledged is settled, not
    // sent again.
    h.state_sql("UPDATE lease SET expires_at = now() - interval '1 second'")
        .await;
    let pending = expected.len() - h.fakes.received_ids().len();
    assert!(pending > 50, "delivered too fast to mean anything");
    eventually(Duration::from_secs(60), "every entry delivered", || {
        all_delivered(&h, &expected)
    })
    .await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        !log.contains("lease on this subscription was lost"),
        "{log}"
    );
    assert_exactly_once(&h.fakes.received_ids(), &expected);
}
