//! Outages survived (issue 16): a state database on a disk that fills up,
//! a PostgreSQL that goes away for many retry periods and comes back
//! read-only, and paging that never ends. The daemon never exits; it says
//! what is out on `/readyz` and in the `resource_up` gauge, and everything
//! is delivered once the resource is back.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::admin::{admin_addr, get, metric, parse_metrics, wait_until_ready};
use support::*;

const TELEMETRY: &str = "\n[telemetry]\nlisten = \"127.0.0.1:0\"\n";

/// A tmpfs of `size` mounted on `dir` for the test's life; `None` where
/// mounting is not allowed (not root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

async fn readyz_names(addr: &str, needle: &str, limit: Duration) -> String {
    eventually_async(limit, &format!("/readyz to say {needle:?}"), || async {
        let (status, body) = get(addr, "/readyz").await;
        status == 503 && body.contains(needle)
    })
    .await;
    get(addr, "/readyz").await.1
}

async fn state_store_up(addr: &str) -> Option<f64> {
    let (_, text) = get(addr, "/metrics").await;
    metric(
        &parse_metrics(&text),
        "resource_up",
        &[("resource", "state_store")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_disk_that_fills_up_is_waited_out_and_nothing_is_lost_or_sent_twice() {
    let mut h = Harness::new().await;
    let dir = h.path("small");
    let Some(_mount) = Tmpfs::mount(&dir, "16m") else {
        eprintln!("##########################################################");
        eprintln!("FULL-DISK TEST NOT RUN: cannot mount a tmpfs (needs root)");
        eprintln!("##########################################################");
        return;
    };
    h.state_dir = Some(dir.clone());
    h.extra = TELEMETRY.into();
    let first = h.fakes.add(spread(SUB_A, "a", 20, 5, "Succeeded"));
    let mut d = h.daemon(&[]);
    let addr = admin_addr(&d).await;
    h.fakes
        .wait_for_delivery(&first, Duration::from_secs(60))
        .await;
    assert_eq!(state_store_up(&addr).await, Some(1.0));

    // The endpoint goes down (events pile up in the outbox), then the disk
    // fills up, and the log goes on.
    h.fakes.set_ingest(IngestMode::Down(503));
    let queued = h.fakes.add(spread(SUB_A, "q", 30, 3, "Succeeded"));
    let endpoint = "the ingestion endpoint unavailable";
    readyz_names(&addr, endpoint, Duration::from_secs(30)).await;
    fill(&dir.join("filler"));
    let more = h.fakes.add(spread(SUB_A, "b", 400, 3, "Succeeded"));
    let store = "the state database unavailable";
    let body = readyz_names(&addr, store, Duration::from_secs(60)).await;
    assert!(body.contains("full") && body.contains(endpoint), "{body}");
    assert_eq!(state_store_up(&addr).await, Some(0.0));
    // Many retry periods: the daemon stays up through them.
    d.wait_for_log("cannot", 5).await;
    assert!(d.is_running(), "{}", d.log());
    let (healthz, _) = get(&addr, "/healthz").await;
    assert_eq!(healthz, 200, "a full disk is not a hung process");

    // Space comes back, then the endpoint.
    std::fs::remove_file(dir.join("filler")).expect("free the space");
    h.fakes.set_ingest(IngestMode::Up);
    let all: Vec<String> = first.iter().chain(&queued).chain(&more).cloned().collect();
    h.fakes
        .wait_for_delivery(&all, Duration::from_secs(120))
        .await;
    wait_until_ready(&addr, Duration::from_secs(60), "ready again").await;
    let log = d.stop_cleanly().await;
    assert!(log.contains("is available again after"), "{log}");
    // One outage line when it began (and at most one a minute after).
    let declared = log
        .lines()
        .filter(|l| l.contains("the state database is unavailable"))
        .count();
    assert_eq!(declared, 1, "{log}");
    h.fakes.assert_delivered_exactly_once(&all);
}

fn subscription(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-{i:012x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gone_for_many_retries_then_read_only_is_waited_out_by_two_instances() {
    let mut h = Harness::on(Backend::Postgres).await;
    h.window = "60s";
    h.extra = TELEMETRY.into();
    h.subscriptions = (0..4).map(|i| (subscription(i), false)).collect();
    let mut expected = Vec::new();
    for (sub, _) in &h.subscriptions.clone() {
        expected.extend(h.fakes.add(spread(sub, &sub[..8], 30, 20, "Succeeded")));
    }
    let mut a = h.daemon(&[]);
    let mut b = h.daemon(&[]);
    let (addr_a, addr_b) = (admin_addr(&a).await, admin_addr(&b).await);
    h.fakes
        .wait_for_delivery(&expected, Duration::from_secs(60))
        .await;
    // Settled too: an event the endpoint took but whose removal from the
    // outbox the outage interrupts can be sent again by the instance that
    // takes the lease over (at least once, as in `ha.rs`).
    eventually_async(Duration::from_secs(30), "an empty outbox", || async {
        h.state_sql("SELECT count(*) FROM outbox").await == vec![Some("0".to_string())]
    })
    .await;

    // Down, for far longer than a lease and many retry periods.
    let pg = h.pg.as_ref().expect("a PostgreSQL harness");
    tokio::task::block_in_place(|| pg.stop());
    for addr in [&addr_a, &addr_b] {
        readyz_names(
            addr,
            "the state database unavailable",
            Duration::from_secs(60),
        )
        .await;
    }
    let more: Vec<String> = h
        .subscriptions
        .clone()
        .iter()
        .flat_map(|(sub, _)| {
            h.fakes
                .add(spread(sub, &format!("{}m", &sub[..8]), 10, 5, "Succeeded"))
        })
        .collect();
    // Twenty lease rounds failed on each, far past the lease (2 s).
    a.wait_for_log("cannot renew leases", 20).await;
    b.wait_for_log("cannot renew leases", 20).await;
    assert!(a.is_running() && b.is_running(), "{}\n{}", a.log(), b.log());

    // Back, but read-only: still an outage, named.
    tokio::task::block_in_place(|| pg.start_again(true));
    for addr in [&addr_a, &addr_b] {
        readyz_names(addr, "read-only", Duration::from_secs(90)).await;
    }
    assert!(a.is_running() && b.is_running(), "{}\n{}", a.log(), b.log());

    // Writable again: both resume and deliver what arrived meanwhile.
    tokio::task::block_in_place(|| {
        pg.stop();
        pg.start_again(false);
    });
    let all: Vec<String> = expected.iter().chain(&more).cloned().collect();
    h.fakes
        .wait_for_delivery(&all, Duration::from_secs(120))
        .await;
    for addr in [&addr_a, &addr_b] {
        wait_until_ready(addr, Duration::from_secs(90), "ready again").await;
    }
    let (ca, la) = a.stop().await;
    let (cb, lb) = b.stop().await;
    assert_eq!((ca, cb), (Some(0), Some(0)), "{la}\n{lb}");
    assert!(la.contains("is available again after"), "{la}");
    // Nothing was in flight when the database went: exactly once.
    h.fakes.assert_delivered_exactly_once(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_that_never_ends_fails_that_poll_only() {
    let mut h = Harness::new().await;
    h.set_subscriptions(&[SUB_A, SUB_B]);
    h.fakes.set_page_size(5);
    h.fakes.add(spread(SUB_A, "a", 12, 5, "Succeeded"));
    let b = h.fakes.add(spread(SUB_B, "b", 12, 5, "Succeeded"));
    h.fakes.loop_pages(SUB_A);
    let run = h.once(&[]).await;
    run.assert_logged("paging does not end")
        .assert_logged("a nextLink led back to a page already read");
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    // The other subscription is not touched; what the looping one's first
    // page held is delivered, once.
    let got = h.fakes.received_ids();
    let of_b: Vec<String> = got
        .iter()
        .filter(|id| id.starts_with("b-"))
        .cloned()
        .collect();
    assert_exactly_once(&of_b, &b);
    let distinct: std::collections::HashSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "{got:?}");
    // Followed a handful of times, not a read budget's worth.
    assert!(
        h.fakes.arm_requests_for(SUB_A) < 20,
        "{}",
        h.fakes.arm_requests_for(SUB_A)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_at_start_is_waited_for_with_readyz_saying_so() {
    let mut h = Harness::on(Backend::Postgres).await;
    h.extra = TELEMETRY.into();
    // The first poll looks back this far: past the time start-up waits.
    h.window = "10m";
    let expected = h.fakes.add(spread(SUB_A, "a", 10, 5, "Succeeded"));
    tokio::task::block_in_place(|| h.pg.as_ref().expect("a PostgreSQL harness").stop());
    let mut d = h.daemon(&[]);
    let pg = h.pg.as_ref().expect("a PostgreSQL harness");
    let addr = admin_addr(&d).await;
    let body = readyz_names(
        &addr,
        "starting: opening the state database",
        Duration::from_secs(30),
    )
    .await;
    assert!(body.contains("the state database unavailable"), "{body}");
    d.wait_for_log("cannot open the state database; retrying", 3)
        .await;
    assert!(d.is_running(), "{}", d.log());
    tokio::task::block_in_place(|| pg.start_again(false));
    let delivered = within(Duration::from_secs(90), || h.fakes.received_all(&expected)).await;
    assert!(
        delivered,
        "not delivered after the database came back:\n{}",
        d.log()
    );
    wait_until_ready(&addr, Duration::from_secs(60), "ready once started").await;
    d.stop_cleanly().await;
    h.fakes.assert_delivered_exactly_once(&expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_locked_by_another_process_is_waited_out() {
    let mut h = Harness::new().await;
    h.extra = TELEMETRY.into();
    h.window = "10m";
    let first = h.fakes.add(spread(SUB_A, "a", 10, 5, "Succeeded"));
    let mut d = h.daemon(&[]);
    let addr = admin_addr(&d).await;
    h.fakes
        .wait_for_delivery(&first, Duration::from_secs(60))
        .await;
    // Another process (a backup tool, say) holds the write lock for longer
    // than the poller's busy timeout (10 s).
    let locker = rusqlite::Connection::open(h.sqlite_path()).expect("open the state");
    locker
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("lock the state");
    let more = h.fakes.add(spread(SUB_A, "b", 10, 3, "Succeeded"));
    let body = readyz_names(
        &addr,
        "the state database unavailable",
        Duration::from_secs(60),
    )
    .await;
    assert!(body.contains("locked"), "{body}");
    assert!(d.is_running(), "{}", d.log());
    locker.execute_batch("COMMIT").expect("unlock the state");
    drop(locker);
    let all: Vec<String> = first.iter().chain(&more).cloned().collect();
    h.fakes
        .wait_for_delivery(&all, Duration::from_secs(90))
        .await;
    wait_until_ready(&addr, Duration::from_secs(60), "ready again").await;
    d.stop_cleanly().await;
    h.fakes.assert_delivered_exactly_once(&all);
}
