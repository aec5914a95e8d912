//! End to end: the real binary against fake Azure and a fake Guardrails
//! endpoint. Every test compares what was delivered with what should have
//! been, event by event.

mod support;

use std::time::Duration;

use chrono::Utc;
use support::*;

crate::on_both_backends!(
    once_delivers_a_multi_page_window_exactly_once,
    only_configured_statuses_are_sent,
    refusal_exits_78_and_polls_and_sends_nothing,
    the_real_client_secret_credential_signs_in_and_its_token_is_used,
    a_wrong_client_secret_fails_clearly_without_printing_it,
    a_restart_resumes_from_the_watermark_without_gap_or_duplicate,
    the_daemon_delivers_a_late_entry_exactly_once,
    endpoint_down_then_up_delivers_everything_once,
    once_with_the_endpoint_down_exits_75_and_the_next_run_delivers,
    throttling_honours_retry_after,
    server_errors_and_cut_connections_are_retried,
    persistent_server_errors_fail_the_subscription_with_75_and_keep_the_watermark,
    a_401_refreshes_the_token_once,
    a_malformed_page_fails_the_poll_without_moving_the_watermark,
    unidentifiable_entries_and_rejected_events_go_to_dead_letters,
    a_host_clock_ahead_of_azure_loses_nothing,
    a_next_link_to_another_host_is_refused,
    since_places_the_first_query_and_is_bounded_by_90_days,
    killed_mid_window_resumes_without_loss_or_duplicate,
    killed_while_delivering_loses_nothing_and_repeats_only_cut_posts,
    a_failing_subscription_does_not_stop_the_others,
    each_format_posts_the_webhook_shape,
    events_of_a_removed_subscription_are_still_delivered,
);

async fn once_delivers_a_multi_page_window_exactly_once(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.set_page_size(50);
    let good = h.fakes.add(spread(SUB_A, "ok", 230, 8, "Succeeded"));
    let run = h.once(&[]).await;
    run.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&good);
    // 230 entries at 50 a page: 5 pages, every nextLink followed.
    assert_eq!(
        h.fakes.next_page_requests(),
        4,
        "requests: {:?}",
        h.fakes.arm_requests()
    );
    run.assert_logged("poll complete");
}

async fn only_configured_statuses_are_sent(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let succeeded = h.fakes.add(spread(SUB_A, "s", 20, 8, "Succeeded"));
    for status in [
        "Started",
        "Accepted",
        "In Progress",
        "Failed",
        "Active",
        "Resolved",
        "Updated",
    ] {
        h.fakes
            .add(spread(SUB_A, &status.replace(' ', "_"), 5, 8, status));
    }
    h.once(&[]).await.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&succeeded);
}

async fn refusal_exits_78_and_polls_and_sends_nothing(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.subscriptions = vec![(SUB_A.to_string(), false), (SUB_B.to_string(), true)];
    h.fakes.add(spread(SUB_A, "a", 5, 8, "Succeeded"));
    for args in [vec![], vec!["--once"]] {
        // It names the subscription, and says why.
        h.cli(&args)
            .await
            .assert_exit(78)
            .assert_logged(SUB_B)
            .assert_logged("event handlers");
    }
    assert!(h.fakes.arm_requests().is_empty());
    assert!(
        h.fakes.azure.lock().unwrap().token_forms.is_empty(),
        "not even a token request"
    );
    assert_eq!(h.fakes.ingest_attempts(), 0);
}

async fn the_real_client_secret_credential_signs_in_and_its_token_is_used(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.add(spread(SUB_A, "a", 3, 5, "Succeeded"));
    let run = h.once(&[]).await;
    run.assert_exit(0);
    let az = h.fakes.azure.lock().unwrap();
    let form = az.token_forms.first().expect("a token request");
    assert_eq!(form.get("client_id").map(String::as_str), Some(CLIENT_ID));
    assert_eq!(
        form.get("grant_type").map(String::as_str),
        Some("client_credentials")
    );
    let scope = format!("http://{}/.default", h.fakes.arm_addr);
    assert_eq!(form.get("scope"), Some(&scope));
    // The credential caches its token: one sign-in for the whole run.
    assert_eq!(az.issued.len(), 1);
    assert!(
        az.requests
            .iter()
            .all(|r| r.bearer.as_deref() == Some(az.issued[0].as_str()))
    );
    drop(az);
    h.assert_no_secrets(&run.stderr);
}

async fn a_wrong_client_secret_fails_clearly_without_printing_it(backend: Backend) {
    let mut h = Harness::on(backend).await;
    std::fs::write(h.path("client-secret"), "not-the-secret-DO-NOT-LOG").unwrap();
    h.once(&[])
        .await
        .assert_exit(69)
        .assert_logged("credential \"main\"")
        .assert_not_logged("not-the-secret-DO-NOT-LOG");
    assert_eq!(h.fakes.ingest_attempts(), 0);
}

async fn a_restart_resumes_from_the_watermark_without_gap_or_duplicate(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "30s";
    let first = h.fakes.add(spread(SUB_A, "first", 40, 20, "Succeeded"));
    h.once(&[]).await.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&first);

    // New entries, and one that is late: stamped before the first run ended,
    // visible only now.
    let second = h.fakes.add(spread(SUB_A, "second", 25, 2, "Succeeded"));
    let late = h.fakes.add([arrived_late(SUB_A, "late-1", 15)]);
    let run = h.once(&[]).await;
    run.assert_exit(0);
    h.fakes
        .assert_delivered_exactly_once(&[first, second, late].concat());

    // The second run's query looked back a whole window before the first run's end.
    let bounds: Vec<(String, String)> = h
        .fakes
        .arm_requests()
        .iter()
        .filter_map(|r| r.filter.clone())
        .filter_map(|f| {
            let q: Vec<&str> = f.split('\'').collect();
            (q.len() >= 4).then(|| (q[1].to_string(), q[3].to_string()))
        })
        .collect();
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    let (first_end, second_start) = (
        parse(&bounds[bounds.len() - 2].1),
        parse(&bounds[bounds.len() - 1].0),
    );
    assert!(
        second_start <= first_end - chrono::Duration::seconds(29),
        "second run starts at {second_start}, first ended at {first_end}"
    );
    h.assert_no_secrets(&run.stderr);
}

async fn the_daemon_delivers_a_late_entry_exactly_once(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.interval = "1s";
    h.window = "20s";
    let early = h.fakes.add(spread(SUB_A, "early", 10, 5, "Succeeded"));
    let d = h.daemon(&[]);
    h.fakes
        .wait_for_delivery(&early, Duration::from_secs(30))
        .await;
    // An entry stamped 8 s ago appears now: Azure received it late.
    let late = h.fakes.add([arrived_late(SUB_A, "late", 8)]);
    h.fakes
        .wait_for_delivery(&late, Duration::from_secs(30))
        .await;
    // Let several more polls re-query the window that holds it.
    h.fakes.wait_for_polls(5, Duration::from_secs(30)).await;
    let log = d.stop_cleanly().await;
    h.fakes
        .assert_delivered_exactly_once(&[early, late].concat());
    assert!(log.contains("shutting down"), "{log}");
    h.assert_no_secrets(&log);
}

async fn endpoint_down_then_up_delivers_everything_once(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.interval = "1s";
    h.window = "20s";
    h.fakes.set_ingest(IngestMode::Down(503));
    let before = h.fakes.add(spread(SUB_A, "before", 15, 5, "Succeeded"));
    let d = h.daemon(&[]);
    // Polling goes on while the endpoint is down.
    eventually(
        Duration::from_secs(30),
        "several polls and delivery attempts",
        || h.fakes.arm_requests().len() >= 3 && h.fakes.ingest_attempts() >= 3,
    )
    .await;
    let during = h.fakes.add(spread(SUB_A, "during", 10, 1, "Succeeded"));
    // A poll after the new entries.
    h.fakes.wait_for_polls(2, Duration::from_secs(30)).await;
    assert!(h.fakes.received_ids().is_empty());
    h.fakes.set_ingest(IngestMode::Up);
    let expected = [before, during].concat();
    h.fakes
        .wait_for_delivery(&expected, Duration::from_secs(30))
        .await;
    let log = d.stop_cleanly().await;
    h.fakes.assert_delivered_exactly_once(&expected);
    h.assert_no_secrets(&log);
}

async fn once_with_the_endpoint_down_exits_75_and_the_next_run_delivers(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "30s";
    h.fakes.set_ingest(IngestMode::Down(500));
    let entries = h.fakes.add(spread(SUB_A, "e", 12, 5, "Succeeded"));
    h.once(&[])
        .await
        .assert_exit(75)
        .assert_logged("12 event(s) stay in the outbox");
    h.fakes.set_ingest(IngestMode::Up);
    let run = h.once(&[]).await;
    run.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&entries);
    h.assert_no_secrets(&run.stderr);
}

async fn throttling_honours_retry_after(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let entries = h.fakes.add(spread(SUB_A, "t", 5, 5, "Succeeded"));
    h.fakes.fault(Fault::Status(429, Some(1)));
    let run = h.once(&[]).await;
    run.assert_exit(0);
    let reqs = h.fakes.arm_requests();
    assert_eq!(reqs[0].status, 429);
    assert_eq!(reqs[1].status, 200);
    let waited = reqs[1].at - reqs[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After"
    );
    run.assert_logged("throttling");
    h.fakes.assert_delivered_exactly_once(&entries);
}

async fn server_errors_and_cut_connections_are_retried(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.set_page_size(4);
    let entries = h.fakes.add(spread(SUB_A, "r", 10, 5, "Succeeded"));
    for f in [
        Fault::Status(500, None),
        Fault::Status(503, None),
        Fault::Cut,
        Fault::Status(502, None),
    ] {
        h.fakes.fault(f);
    }
    h.once(&[]).await.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&entries);
}

async fn persistent_server_errors_fail_the_subscription_with_75_and_keep_the_watermark(
    backend: Backend,
) {
    let mut h = Harness::on(backend).await;
    let entries = h.fakes.add(spread(SUB_A, "p", 6, 5, "Succeeded"));
    for _ in 0..5 {
        h.fakes.fault(Fault::Status(500, None));
    }
    // It names the subscription.
    h.once(&[])
        .await
        .assert_exit(75)
        .assert_logged("sub-089bd33f")
        .assert_logged("HTTP 500");
    assert_the_next_run_delivers(&mut h, &entries).await;
}

/// After failed runs that delivered nothing, the next run delivers
/// `expected`, each exactly once: nothing was lost, it starts where the
/// failed ones did.
async fn assert_the_next_run_delivers(h: &mut Harness, expected: &[String]) {
    assert!(h.fakes.received_ids().is_empty());
    h.once(&[]).await.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(expected);
}

async fn a_401_refreshes_the_token_once(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let entries = h.fakes.add(spread(SUB_A, "u", 3, 5, "Succeeded"));
    h.fakes.fault(Fault::Status(401, None));
    h.once(&[]).await.assert_exit(0);
    assert_eq!(
        h.fakes.issued_tokens().len(),
        2,
        "a second token was requested"
    );
    h.fakes.assert_delivered_exactly_once(&entries);

    // A 403 is not retried: it needs a person.
    h.fakes.fault(Fault::Status(403, None));
    h.once(&[]).await.assert_exit(69).assert_logged("HTTP 403");
}

async fn a_malformed_page_fails_the_poll_without_moving_the_watermark(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "30s";
    let entries = h.fakes.add(spread(SUB_A, "m", 8, 5, "Succeeded"));
    for body in ["{\"value\": [", "{\"nothing\": []}", "{\"value\": [1, 2]}"] {
        h.fakes.fault(Fault::Body(body));
        h.once(&[])
            .await
            .assert_exit(75)
            .assert_logged("malformed page")
            .assert_not_logged("panicked");
    }
    assert_the_next_run_delivers(&mut h, &entries).await;
}

async fn unidentifiable_entries_and_rejected_events_go_to_dead_letters(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let good = h.fakes.add(spread(SUB_A, "g", 6, 5, "Succeeded"));
    let mut no_id = entry_ago(SUB_A, "x", 2);
    no_id.body.as_object_mut().unwrap().remove("eventDataId");
    no_id.body.as_object_mut().unwrap().remove("id");
    let mut bad_time = entry_ago(SUB_A, "bad-time", 2);
    bad_time.body["eventTimestamp"] = "yesterday".into();
    h.fakes.reject("rejected");
    h.fakes
        .add([no_id, bad_time, entry_ago(SUB_A, "rejected", 3)]);
    h.once(&[])
        .await
        .assert_exit(0)
        .assert_logged("entry has no eventDataId")
        .assert_logged("unparseable eventTimestamp")
        .assert_logged("rejected an event");
    h.fakes.assert_delivered_exactly_once(&good);
    // The rejected event was tried once, not forever.
    assert_eq!(h.fakes.ingest_attempts(), good.len() + 1);
    // All three are kept where people can see them.
    let dead = h.state_sql("SELECT COUNT(*) FROM dead_letter").await;
    assert_eq!(dead, [Some("3".to_string())]);
    // A second run quarantines nothing twice.
    h.once(&[]).await.assert_exit(0);
    let dead = h.state_sql("SELECT COUNT(*) FROM dead_letter").await;
    assert_eq!(dead, [Some("3".to_string())]);
}

async fn a_host_clock_ahead_of_azure_loses_nothing(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.interval = "1s";
    h.window = "5s";
    // Azure's clock is a minute behind this host's.
    h.fakes.azure.lock().unwrap().skew = chrono::Duration::seconds(-60);
    let d = h.daemon(&[]);
    let mut expected = Vec::new();
    for round in 0..4 {
        h.fakes.wait_for_polls(2, Duration::from_secs(30)).await;
        // Azure stamps new entries with its own clock.
        let e = entry(
            SUB_A,
            &format!("skew-{round}"),
            h.fakes.azure_now(),
            "Succeeded",
        );
        expected.extend(h.fakes.add([e]));
    }
    // Judged after the stop, so that a failure shows the daemon's log.
    within(Duration::from_secs(15), || {
        h.fakes.received_ids().len() >= expected.len()
    })
    .await;
    let (code, log) = d.stop().await;
    if h.fakes.received_ids().len() < expected.len() {
        let f: Vec<_> = h
            .fakes
            .arm_requests()
            .iter()
            .map(|r| (r.filter.clone(), r.status))
            .collect();
        panic!(
            "received {:?}\nfilters {f:#?}\nlog:\n{log}",
            h.fakes.received_ids()
        );
    }
    assert_eq!(code, Some(0), "log:\n{log}");
    h.fakes.assert_delivered_exactly_once(&expected);
    assert!(log.contains("clock differs from Azure's"), "{log}");
}

async fn a_next_link_to_another_host_is_refused(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.fault(Fault::Body(
        "{\"value\": [], \"nextLink\": \"http://127.0.0.2:1/subscriptions/x?$skiptoken=1\"}",
    ));
    h.once(&["--since", "5m"])
        .await
        .assert_exit(69)
        .assert_logged("refusing to send the token there");
}

async fn since_places_the_first_query_and_is_bounded_by_90_days(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let old = h.fakes.add([entry(
        SUB_A,
        "two-hours-ago",
        Utc::now() - chrono::Duration::minutes(110),
        "Succeeded",
    )]);
    h.once(&["--since", "2h"]).await.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&old);
    // Caught up in one-hour chunks.
    assert!(h.fakes.arm_requests().len() >= 2);

    let mut h = Harness::on(backend).await;
    for bad in ["91days", "2020-01-01T00:00:00Z", "yesterday-ish"] {
        let run = h.once(&["--since", bad]).await;
        assert_eq!(run.code, Some(78), "--since {bad}: stderr:\n{}", run.stderr);
        run.assert_logged("--since");
    }
    assert!(h.fakes.arm_requests().is_empty());
}

async fn killed_mid_window_resumes_without_loss_or_duplicate(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "60s";
    h.fakes.set_page_size(5);
    h.fakes.set_ingest(IngestMode::Down(503));
    let entries = h.fakes.add(spread(SUB_A, "k", 300, 30, "Succeeded"));
    let d = h.daemon(&[]);
    // SIGKILL while the 60-page window is being drained.
    eventually(Duration::from_secs(30), "polling is mid-window", || {
        h.fakes.next_page_requests() >= 15
    })
    .await;
    d.kill().await;
    // A POST the killed daemon had written may still be read by the endpoint:
    // it must not count as delivered when the endpoint comes back.
    h.rotate_ingest_token();
    h.fakes.set_ingest(IngestMode::Up);
    h.once(&[]).await.assert_exit(0);
    // Nothing had been delivered before the kill, so nothing may come twice.
    h.fakes.assert_delivered_exactly_once(&entries);
}

async fn killed_while_delivering_loses_nothing_and_repeats_only_cut_posts(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "60s";
    h.fakes.set_ingest_delay(Duration::from_millis(15));
    let entries = h.fakes.add(spread(SUB_A, "d", 240, 30, "Succeeded"));
    let kills = 3;
    for k in 1..=kills {
        let d = h.daemon(&[]);
        h.fakes
            .wait_for_deliveries(k * 50, Duration::from_secs(60))
            .await;
        d.kill().await;
    }
    let d = h.daemon(&[]);
    h.fakes
        .wait_for_delivery(&entries, Duration::from_secs(60))
        .await;
    d.stop_cleanly().await;
    // Only a POST acknowledged just before a kill can be sent again: at most
    // `concurrency` (4) per kill.
    assert_at_least_once(&h.fakes.received_ids(), &entries, kills * 4);
}

async fn a_failing_subscription_does_not_stop_the_others(backend: Backend) {
    let mut h = Harness::on(backend).await;
    const SUB_C: &str = "31522864-0578-4ea0-9fdc-e66cc564d18c";
    h.set_subscriptions(&[SUB_A, SUB_B, SUB_C]);
    h.fakes.deny(SUB_B);
    let a = h.fakes.add(spread(SUB_A, "a", 20, 5, "Succeeded"));
    h.fakes.add(spread(SUB_B, "b", 20, 5, "Succeeded"));
    let c = h.fakes.add(spread(SUB_C, "c", 20, 5, "Succeeded"));
    h.once(&["--since", "1m"])
        .await
        .assert_exit(69)
        .assert_logged(&format!("subscription sub-1e8d8218 ({SUB_B}) failed"))
        .assert_logged("AuthorizationFailed");
    let mut expected = [a, c].concat();
    h.fakes.assert_delivered_exactly_once(&expected);

    // The daemon goes on polling the healthy ones and retries the failing one.
    let d = h.daemon(&[]);
    expected.extend(h.fakes.add(spread(SUB_C, "c-more", 5, 1, "Succeeded")));
    // New entries of a healthy subscription.
    h.fakes
        .wait_for_delivery(&expected, Duration::from_secs(30))
        .await;
    let denied_before = h.fakes.arm_requests_for(SUB_B);
    eventually(
        Duration::from_secs(30),
        "the failing one is retried",
        || h.fakes.arm_requests_for(SUB_B) > denied_before,
    )
    .await;
    d.stop_cleanly().await;
    h.fakes.assert_delivered_exactly_once(&expected);
}

async fn each_format_posts_the_webhook_shape(backend: Backend) {
    for (format, schema) in [
        (
            "activity-log-alert",
            Some("Microsoft.Insights/activityLogs"),
        ),
        ("common-alert-schema", Some("azureMonitorCommonAlertSchema")),
        ("event-data", None),
    ] {
        let mut h = Harness::on(backend).await;
        h.format = format;
        let e = entry_ago(SUB_A, "f-1", 2);
        h.fakes.add([e.clone()]);
        let run = h.once(&[]).await;
        assert_eq!(run.code, Some(0), "{format}: stderr:\n{}", run.stderr);
        let docs = h.fakes.received();
        assert_eq!(docs.len(), 1, "{format}");
        let doc = &docs[0];
        match schema {
            Some(id) => {
                assert_eq!(doc["schemaId"], id, "{format}");
                let ctx = doc
                    .pointer("/data/context/activityLog")
                    .or_else(|| doc.pointer("/data/alertContext"))
                    .expect("an activity log context");
                assert_eq!(ctx["status"], "Succeeded");
                assert_eq!(ctx["eventSource"], "Administrative");
                assert!(ctx["claims"].is_string() && ctx["httpRequest"].is_string());
                // Every field of the source entry is carried.
                for key in e.body.as_object().unwrap().keys() {
                    assert!(ctx.get(key).is_some(), "{format}: {key} missing");
                }
            }
            None => assert_eq!(doc, &e.body, "event-data is the entry unchanged"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_that_is_not_a_database_is_refused_untouched() {
    let mut h = Harness::new().await;
    let junk = b"this is not an SQLite database, and it must not be overwritten\n".repeat(64);
    std::fs::write(h.path("state.db"), &junk).unwrap();
    h.fakes.add(spread(SUB_A, "n", 3, 5, "Succeeded"));
    // It names the file.
    h.once(&[])
        .await
        .assert_exit(78)
        .assert_logged("is not an SQLite database")
        .assert_logged("state.db");
    assert_eq!(
        std::fs::read(h.path("state.db")).unwrap(),
        junk,
        "the file was changed"
    );
    assert!(h.fakes.arm_requests().is_empty() && h.fakes.received_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_from_a_newer_version_is_refused() {
    let mut h = Harness::new().await;
    {
        let db = rusqlite::Connection::open(h.path("state.db")).unwrap();
        db.pragma_update(None, "user_version", 99).unwrap();
    }
    h.once(&[])
        .await
        .assert_exit(78)
        .assert_logged("schema version 99")
        .assert_logged("newer");
    let db = rusqlite::Connection::open(h.path("state.db")).unwrap();
    let v: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99, "the version was reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_torn_by_a_kill_recovers() {
    let mut h = Harness::new().await;
    h.window = "60s";
    h.fakes.set_ingest_delay(Duration::from_millis(10));
    let entries = h.fakes.add(spread(SUB_A, "w", 200, 30, "Succeeded"));
    let d = h.daemon(&[]);
    h.fakes
        .wait_for_deliveries(60, Duration::from_secs(60))
        .await;
    d.kill().await;
    // The kill left a write-ahead log; tear its last frame, as a kill in the
    // middle of writing a commit would.
    let wal = h.path("state.db-wal");
    let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(len > 100, "no write-ahead log to tear ({len} bytes)");
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(len - 37).unwrap();
    drop(f);
    h.once(&[]).await.assert_exit(0);
    // The torn transaction can only have been an acknowledgement (or a page
    // whose watermark did not move): at worst, a few events are sent again.
    assert_at_least_once(&h.fakes.received_ids(), &entries, 8);
}

/// The PostgreSQL counterpart of a newer SQLite file: a schema version above
/// this build's is refused (78) and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_schema_from_a_newer_version_is_refused() {
    let mut h = Harness::on(Backend::Postgres).await;
    h.once(&[]).await.assert_exit(0);
    h.state_sql("UPDATE schema_version SET version = 99").await;
    h.once(&[])
        .await
        .assert_exit(78)
        .assert_logged("schema version 99")
        .assert_not_logged(postgres::DB_PASSWORD);
    let v = h.state_sql("SELECT version FROM schema_version").await;
    assert_eq!(v, [Some("99".to_string())], "the version was reset");
}

async fn events_of_a_removed_subscription_are_still_delivered(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.set_subscriptions(&[SUB_A, SUB_B]);
    let a = h.fakes.add(spread(SUB_A, "a", 6, 8, "Succeeded"));
    let b = h.fakes.add(spread(SUB_B, "b", 7, 8, "Succeeded"));
    h.fakes.set_ingest(IngestMode::Down(503));
    h.once(&[]).await.assert_exit(75);
    // B is taken out of the configuration while its events wait: they were
    // polled while nothing else fed it, and are still owed to Guardrails.
    h.set_subscriptions(&[SUB_A]);
    h.fakes.set_ingest(IngestMode::Up);
    let before = h.fakes.arm_requests_for(SUB_B);
    h.once(&[]).await.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&[a, b].concat());
    assert_eq!(
        h.fakes.arm_requests_for(SUB_B),
        before,
        "a removed subscription is not polled"
    );
}
