//! The delivery journal and `trace`, on both backends: each fate
//! (delivered, retried then delivered, dead-lettered, skipped for its
//! status) told by `trace` as an operator asks (by event, resource prefix,
//! correlation, caller and operation, as text and JSON), a SIGKILL with a
//! POST in flight, retention pruning, and a state from before the journal.
//! No secret ever shows in `trace`'s output.

mod support;

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use support::*;

crate::on_both_backends!(
    every_fate_is_traced_with_its_story,
    a_kill_with_a_post_in_flight_leaves_a_story_of_what_is_known,
    retention_prunes_and_a_state_without_a_journal_says_so,
);

/// `trace` with `args`: exit 0, no secret in what it printed; its stdout.
async fn trace(h: &mut Harness, args: &[&str]) -> String {
    let mut all = vec!["trace"];
    all.extend_from_slice(args);
    let run = h.cli(&all).await;
    run.assert_exit(0);
    h.assert_no_secrets(&run.stdout);
    h.assert_no_secrets(&run.stderr);
    run.stdout
}

/// How many events `trace` printed (notes aside).
fn events(out: &str) -> usize {
    out.lines().filter(|l| l.contains(" subscription=")).count()
}

/// The one line `trace --event id` prints about `id`.
async fn story(h: &mut Harness, id: &str) -> String {
    let out = trace(h, &["--event", id]).await;
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(id)).collect();
    assert_eq!(lines.len(), 1, "one line about {id}:\n{out}");
    lines[0].to_string()
}

async fn every_fate_is_traced_with_its_story(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let started = entry(
        SUB_A,
        "start-1",
        Utc::now() - chrono::Duration::seconds(4),
        "Started",
    );
    h.fakes.add([
        entry_ago(SUB_A, "ok-1", 5),
        entry_ago(SUB_A, "rej-1", 4),
        started,
    ]);
    h.fakes.reject("rej-1");
    h.once(&[]).await.assert_exit(0);

    let ok = story(&mut h, "ok-1").await;
    assert!(ok.contains(" delivered ok-1 "), "{ok}");
    assert!(ok.contains("(HTTP 202, 1 attempt)"), "{ok}");
    assert!(ok.contains("status=Succeeded"), "{ok}");
    let rej = story(&mut h, "rej-1").await;
    assert!(
        rej.contains("dead-lettered") && rej.contains("HTTP 400"),
        "{rej}"
    );
    let skipped = story(&mut h, "start-1").await;
    assert!(
        skipped.contains("skipped: its status Started is not forwarded"),
        "{skipped}"
    );

    // The endpoint fails: the event waits, its failures counted.
    h.fakes.add([entry_ago(SUB_A, "retry-1", 1)]);
    h.fakes.set_ingest(IngestMode::Down(503));
    h.once(&[]).await.assert_exit(75);
    let waiting = story(&mut h, "retry-1").await;
    assert!(waiting.contains(" queued retry-1 "), "{waiting}");
    assert!(
        waiting.contains("failed attempt(s), the last: HTTP 503"),
        "{waiting}"
    );
    h.fakes.set_ingest(IngestMode::Up);
    h.once(&[]).await.assert_exit(0);
    let retried = story(&mut h, "retry-1").await;
    assert!(retried.contains(" delivered retry-1 "), "{retried}");
    assert!(
        retried.contains("the last failure before: HTTP 503"),
        "{retried}"
    );

    // A dead letter put back in the outbox is queued again, then delivered.
    h.fakes.ingest.lock().unwrap().reject.clear();
    h.cli(&["dead-letters", "retry", "--all"])
        .await
        .assert_exit(0);
    assert!(story(&mut h, "rej-1").await.contains(" queued rej-1 "));
    h.once(&[]).await.assert_exit(0);
    let requeued = story(&mut h, "rej-1").await;
    assert!(requeued.contains(" delivered rej-1 "), "{requeued}");

    // An operator's questions: a resource group (any case), one
    // operation's correlation id, who did it and what.
    let group = format!("/SUBSCRIPTIONS/{SUB_A}/resourcegroups/mssupportgroup/");
    let out = trace(&mut h, &["--resource", &group]).await;
    assert_eq!(events(&out), 4, "{out}");
    let out = trace(&mut h, &["--correlation", "corr-ok-1", "--json"]).await;
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["event_data_id"], "ok-1");
    assert_eq!(lines[0]["fate"], "delivered");
    assert_eq!(lines[0]["http_status"], 202);
    assert_eq!(lines[0]["caller"], "admin@contoso.com");
    let out = trace(
        &mut h,
        &[
            "--caller",
            "Admin@Contoso.com",
            "--operation",
            "microsoft.compute/virtualmachines/write",
            "--since",
            "1h",
        ],
    )
    .await;
    assert_eq!(events(&out), 4, "{out}");
    // Nothing in a range after them: said, not silent.
    let out = trace(&mut h, &["--caller", "nobody@contoso.com", "--since", "1h"]).await;
    assert!(out.starts_with("not seen between "), "{out}");
}

async fn a_kill_with_a_post_in_flight_leaves_a_story_of_what_is_known(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.add([entry_ago(SUB_A, "slow-1", 2)]);
    // The endpoint holds the POST: the poller cannot settle it.
    h.fakes.set_ingest_delay(Duration::from_secs(300));
    let d = h.daemon(&[]);
    eventually(Duration::from_secs(30), "a POST in flight", || {
        h.fakes.ingest.lock().unwrap().in_flight > 0
    })
    .await;
    d.kill().await;
    let line = story(&mut h, "slow-1").await;
    assert!(line.contains(" queued slow-1 "), "{line}");
    assert!(
        line.contains(
            "no failed attempt recorded (a POST in flight when a poller stopped is sent again"
        ),
        "{line}"
    );
    // The next daemon sends it again, and the story ends.
    h.fakes.set_ingest_delay(Duration::ZERO);
    let d = h.daemon(&[]);
    // The file the daemon was started with (rewriting it now would race
    // with the daemon reading it).
    let config = h.path("poller.toml").display().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azure-activity-poller"))
            .args(["trace", "--event", "slow-1", "--config", &config])
            .output()
            .await
            .expect("run trace");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.contains(" delivered slow-1 ") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow-1 not delivered after a restart:\n{out}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.stop_cleanly().await;
}

async fn retention_prunes_and_a_state_without_a_journal_says_so(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.add([entry_ago(SUB_A, "old-1", 3)]);
    h.once(&[]).await.assert_exit(0);
    assert!(story(&mut h, "old-1").await.contains(" delivered old-1 "));
    // Ten days pass for the journal: its row is past the 7-day retention,
    // and the next run's pass prunes it.
    const TEN_DAYS_NS: i64 = 10 * 86_400 * 1_000_000_000;
    h.state_sql(&format!(
        "UPDATE journal SET fetched_at_ns = fetched_at_ns - {TEN_DAYS_NS}"
    ))
    .await;
    h.state_sql(&format!(
        "UPDATE journal_span SET started_at_ns = started_at_ns - {TEN_DAYS_NS}"
    ))
    .await;
    h.once(&[]).await.assert_exit(0);
    let rows = h.state_sql("SELECT count(*) FROM journal").await;
    assert_eq!(rows, [Some("0".to_string())]);
    let out = trace(&mut h, &["--event", "old-1"]).await;
    assert!(out.contains("before that nothing is known: that is before the retention ([journal] retention = \"7days\")"), "{out}");

    // A state written before the journal existed.
    h.state_sql("DROP TABLE journal").await;
    h.state_sql("DROP TABLE journal_span").await;
    let out = trace(&mut h, &["--since", "1h"]).await;
    assert!(out.contains("this state has no delivery journal"), "{out}");
    // The first run of this build starts it: earlier events are not known.
    h.once(&[]).await.assert_exit(0);
    let out = trace(&mut h, &["--event", "old-1"]).await;
    assert!(
        out.contains("before that nothing is known: the journal starts at "),
        "{out}"
    );
}
