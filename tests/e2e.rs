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
    h.fakes.azure.lock().unwrap().page_size = 50;
    let good = spread(SUB_A, "ok", 230, 8, "Succeeded");
    h.fakes.add(good.clone());
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&good));
    // 230 entries at 50 a page: 5 pages, every nextLink followed.
    let next_pages = h
        .fakes
        .arm_requests()
        .iter()
        .filter(|r| r.skiptoken.is_some())
        .count();
    assert_eq!(next_pages, 4, "requests: {:?}", h.fakes.arm_requests());
    assert!(run.stderr.contains("poll complete"), "{}", run.stderr);
}

async fn only_configured_statuses_are_sent(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let mut all = Vec::new();
    let succeeded = spread(SUB_A, "s", 20, 8, "Succeeded");
    all.extend(succeeded.clone());
    for status in [
        "Started",
        "Accepted",
        "In Progress",
        "Failed",
        "Active",
        "Resolved",
        "Updated",
    ] {
        all.extend(spread(SUB_A, &status.replace(' ', "_"), 5, 8, status));
    }
    h.fakes.add(all);
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&succeeded));
}

async fn refusal_exits_78_and_polls_and_sends_nothing(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.subscriptions = vec![(SUB_A.to_string(), false), (SUB_B.to_string(), true)];
    h.fakes.add(spread(SUB_A, "a", 5, 8, "Succeeded"));
    for args in [vec![], vec!["--once"]] {
        let config = h.write_config().display().to_string();
        let mut all = vec!["--config", config.as_str()];
        all.extend(args);
        let run = h.run(&all).await;
        assert_eq!(run.code, Some(78), "stderr:\n{}", run.stderr);
        assert!(
            run.stderr.contains(SUB_B),
            "names the subscription: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("event handlers"),
            "says why: {}",
            run.stderr
        );
    }
    assert!(h.fakes.arm_requests().is_empty());
    assert!(
        h.fakes.azure.lock().unwrap().token_forms.is_empty(),
        "not even a token request"
    );
    assert_eq!(h.fakes.ingest.lock().unwrap().attempts, 0);
}

/// Every secret the run could have seen: none may appear in its output.
fn assert_no_secrets(h: &Harness, output: &str) {
    let mut secrets = vec![CLIENT_SECRET.to_string(), INGEST_TOKEN.to_string()];
    secrets.extend(h.fakes.azure.lock().unwrap().issued.clone());
    for s in secrets {
        assert!(!output.contains(&s), "a secret leaked into the output: {s}");
    }
}

async fn the_real_client_secret_credential_signs_in_and_its_token_is_used(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.add(spread(SUB_A, "a", 3, 5, "Succeeded"));
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
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
    assert_no_secrets(&h, &run.stderr);
}

async fn a_wrong_client_secret_fails_clearly_without_printing_it(backend: Backend) {
    let mut h = Harness::on(backend).await;
    std::fs::write(h.path("client-secret"), "not-the-secret-DO-NOT-LOG").unwrap();
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(69), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("credential \"main\""), "{}", run.stderr);
    assert!(
        !run.stderr.contains("not-the-secret-DO-NOT-LOG"),
        "{}",
        run.stderr
    );
    assert_eq!(h.fakes.ingest.lock().unwrap().attempts, 0);
}

async fn a_restart_resumes_from_the_watermark_without_gap_or_duplicate(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "30s";
    let first = spread(SUB_A, "first", 40, 20, "Succeeded");
    h.fakes.add(first.clone());
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&first));

    // New entries, and one that is late: stamped before the first run ended,
    // visible only now.
    let mut second = spread(SUB_A, "second", 25, 2, "Succeeded");
    let mut late = entry(
        SUB_A,
        "late-1",
        Utc::now() - chrono::Duration::seconds(15),
        "Succeeded",
    );
    late.visible_at = Utc::now();
    second.push(late);
    h.fakes.add(second.clone());
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let mut expected = ids(&first);
    expected.extend(ids(&second));
    assert_exactly_once(&h.fakes.received_ids(), &expected);

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
    assert_no_secrets(&h, &run.stderr);
}

async fn the_daemon_delivers_a_late_entry_exactly_once(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.interval = "1s";
    h.window = "20s";
    let early = spread(SUB_A, "early", 10, 5, "Succeeded");
    h.fakes.add(early.clone());
    let d = h.daemon(&[]);
    eventually(
        Duration::from_secs(30),
        "the first entries are delivered",
        || h.fakes.received_ids().len() >= early.len(),
    )
    .await;
    // An entry stamped 8 s ago appears now: Azure received it late.
    let mut late = entry(
        SUB_A,
        "late",
        Utc::now() - chrono::Duration::seconds(8),
        "Succeeded",
    );
    late.visible_at = Utc::now();
    h.fakes.add([late]);
    eventually(
        Duration::from_secs(30),
        "the late entry is delivered",
        || h.fakes.received_ids().iter().any(|i| i == "late"),
    )
    .await;
    // Let several more polls re-query the window that holds it.
    let seen = h.fakes.arm_requests().len();
    eventually(Duration::from_secs(30), "five more polls", || {
        h.fakes.arm_requests().len() >= seen + 5
    })
    .await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
    let mut expected = ids(&early);
    expected.push("late".into());
    assert_exactly_once(&h.fakes.received_ids(), &expected);
    assert!(log.contains("shutting down"), "{log}");
    assert_no_secrets(&h, &log);
}

async fn endpoint_down_then_up_delivers_everything_once(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.interval = "1s";
    h.window = "20s";
    h.fakes.set_ingest(IngestMode::Down(503));
    let before = spread(SUB_A, "before", 15, 5, "Succeeded");
    h.fakes.add(before.clone());
    let d = h.daemon(&[]);
    // Polling goes on while the endpoint is down.
    eventually(
        Duration::from_secs(30),
        "several polls and delivery attempts",
        || h.fakes.arm_requests().len() >= 3 && h.fakes.ingest.lock().unwrap().attempts >= 3,
    )
    .await;
    let during = spread(SUB_A, "during", 10, 1, "Succeeded");
    h.fakes.add(during.clone());
    let seen = h.fakes.arm_requests().len();
    eventually(Duration::from_secs(30), "a poll after new entries", || {
        h.fakes.arm_requests().len() >= seen + 2
    })
    .await;
    assert!(h.fakes.received_ids().is_empty());
    h.fakes.set_ingest(IngestMode::Up);
    let mut expected = ids(&before);
    expected.extend(ids(&during));
    eventually(
        Duration::from_secs(30),
        "everything delivered after the endpoint returns",
        || h.fakes.received_ids().len() >= expected.len(),
    )
    .await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
    assert_exactly_once(&h.fakes.received_ids(), &expected);
    assert_no_secrets(&h, &log);
}

async fn once_with_the_endpoint_down_exits_75_and_the_next_run_delivers(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "30s";
    h.fakes.set_ingest(IngestMode::Down(500));
    let entries = spread(SUB_A, "e", 12, 5, "Succeeded");
    h.fakes.add(entries.clone());
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(75), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("12 event(s) stay in the outbox"),
        "{}",
        run.stderr
    );
    h.fakes.set_ingest(IngestMode::Up);
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&entries));
    assert_no_secrets(&h, &run.stderr);
}

async fn throttling_honours_retry_after(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let entries = spread(SUB_A, "t", 5, 5, "Succeeded");
    h.fakes.add(entries.clone());
    h.fakes.fault(Fault::Status(429, Some(1)));
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let reqs = h.fakes.arm_requests();
    assert_eq!(reqs[0].status, 429);
    assert_eq!(reqs[1].status, 200);
    let waited = reqs[1].at - reqs[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After"
    );
    assert!(run.stderr.contains("throttling"), "{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&entries));
}

async fn server_errors_and_cut_connections_are_retried(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.azure.lock().unwrap().page_size = 4;
    let entries = spread(SUB_A, "r", 10, 5, "Succeeded");
    h.fakes.add(entries.clone());
    for f in [
        Fault::Status(500, None),
        Fault::Status(503, None),
        Fault::Cut,
        Fault::Status(502, None),
    ] {
        h.fakes.fault(f);
    }
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&entries));
}

async fn persistent_server_errors_fail_the_subscription_with_75_and_keep_the_watermark(
    backend: Backend,
) {
    let mut h = Harness::on(backend).await;
    let entries = spread(SUB_A, "p", 6, 5, "Succeeded");
    h.fakes.add(entries.clone());
    for _ in 0..5 {
        h.fakes.fault(Fault::Status(500, None));
    }
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(75), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("sub-089bd33f"),
        "names the subscription: {}",
        run.stderr
    );
    assert!(run.stderr.contains("HTTP 500"), "{}", run.stderr);
    assert!(h.fakes.received_ids().is_empty());
    // Nothing was lost: the next run starts where the failed one did.
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&entries));
}

async fn a_401_refreshes_the_token_once(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let entries = spread(SUB_A, "u", 3, 5, "Succeeded");
    h.fakes.add(entries.clone());
    h.fakes.fault(Fault::Status(401, None));
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(
        h.fakes.azure.lock().unwrap().issued.len(),
        2,
        "a second token was requested"
    );
    assert_exactly_once(&h.fakes.received_ids(), &ids(&entries));

    // A 403 is not retried: it needs a person.
    h.fakes.fault(Fault::Status(403, None));
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(69), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("HTTP 403"), "{}", run.stderr);
}

async fn a_malformed_page_fails_the_poll_without_moving_the_watermark(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "30s";
    let entries = spread(SUB_A, "m", 8, 5, "Succeeded");
    h.fakes.add(entries.clone());
    for body in ["{\"value\": [", "{\"nothing\": []}", "{\"value\": [1, 2]}"] {
        h.fakes.fault(Fault::Body(body));
        let run = h.once(&[]).await;
        assert_eq!(run.code, Some(75), "stderr:\n{}", run.stderr);
        assert!(run.stderr.contains("malformed page"), "{}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    assert!(h.fakes.received_ids().is_empty());
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&entries));
}

async fn unidentifiable_entries_and_rejected_events_go_to_dead_letters(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let good = spread(SUB_A, "g", 6, 5, "Succeeded");
    let mut no_id = entry(
        SUB_A,
        "x",
        Utc::now() - chrono::Duration::seconds(2),
        "Succeeded",
    );
    no_id.body.as_object_mut().unwrap().remove("eventDataId");
    no_id.body.as_object_mut().unwrap().remove("id");
    let mut bad_time = entry(
        SUB_A,
        "bad-time",
        Utc::now() - chrono::Duration::seconds(2),
        "Succeeded",
    );
    bad_time.body["eventTimestamp"] = "yesterday".into();
    let rejected = entry(
        SUB_A,
        "rejected",
        Utc::now() - chrono::Duration::seconds(3),
        "Succeeded",
    );
    h.fakes.reject("rejected");
    h.fakes.add(good.clone());
    h.fakes.add([no_id, bad_time, rejected]);
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &ids(&good));
    assert!(
        run.stderr.contains("entry has no eventDataId"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("unparseable eventTimestamp"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("rejected an event"), "{}", run.stderr);
    // The rejected event was tried once, not forever.
    let attempts = h.fakes.ingest.lock().unwrap().attempts;
    assert_eq!(attempts, good.len() + 1);
    // All three are kept where people can see them.
    let dead = h.state_sql("SELECT COUNT(*) FROM dead_letter").await;
    assert_eq!(dead, [Some("3".to_string())]);
    // A second run quarantines nothing twice.
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
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
        let seen = h.fakes.arm_requests().len();
        eventually(Duration::from_secs(30), "two more polls", || {
            h.fakes.arm_requests().len() >= seen + 2
        })
        .await;
        // Azure stamps new entries with its own clock.
        let e = entry(
            SUB_A,
            &format!("skew-{round}"),
            h.fakes.azure_now(),
            "Succeeded",
        );
        expected.push(e.id.clone());
        h.fakes.add([e]);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while h.fakes.received_ids().len() < expected.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    assert_exactly_once(&h.fakes.received_ids(), &expected);
    assert!(log.contains("clock differs from Azure's"), "{log}");
}

async fn a_next_link_to_another_host_is_refused(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.fault(Fault::Body(
        "{\"value\": [], \"nextLink\": \"http://127.0.0.2:1/subscriptions/x?$skiptoken=1\"}",
    ));
    let run = h.once(&["--since", "5m"]).await;
    assert_eq!(run.code, Some(69), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("refusing to send the token there"),
        "{}",
        run.stderr
    );
}

async fn since_places_the_first_query_and_is_bounded_by_90_days(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let old = entry(
        SUB_A,
        "two-hours-ago",
        Utc::now() - chrono::Duration::minutes(110),
        "Succeeded",
    );
    h.fakes.add([old]);
    let run = h.once(&["--since", "2h"]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_exactly_once(&h.fakes.received_ids(), &["two-hours-ago".to_string()]);
    // Caught up in one-hour chunks.
    assert!(h.fakes.arm_requests().len() >= 2);

    let mut h = Harness::on(backend).await;
    for bad in ["91days", "2020-01-01T00:00:00Z", "yesterday-ish"] {
        let run = h.once(&["--since", bad]).await;
        assert_eq!(run.code, Some(78), "--since {bad}: stderr:\n{}", run.stderr);
        assert!(run.stderr.contains("--since"), "{}", run.stderr);
    }
    assert!(h.fakes.arm_requests().is_empty());
}

async fn killed_mid_window_resumes_without_loss_or_duplicate(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "60s";
    h.fakes.azure.lock().unwrap().page_size = 5;
    h.fakes.set_ingest(IngestMode::Down(503));
    let entries = spread(SUB_A, "k", 300, 30, "Succeeded");
    h.fakes.add(entries.clone());
    let d = h.daemon(&[]);
    // SIGKILL while the 60-page window is being drained.
    eventually(Duration::from_secs(30), "polling is mid-window", || {
        h.fakes
            .arm_requests()
            .iter()
            .filter(|r| r.skiptoken.is_some())
            .count()
            >= 15
    })
    .await;
    let log = d.kill().await;
    assert!(!log.contains("panicked"), "{log}");
    // A POST the killed daemon had written may still be read by the endpoint:
    // it must not count as delivered when the endpoint comes back.
    h.rotate_ingest_token();
    h.fakes.set_ingest(IngestMode::Up);
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    // Nothing had been delivered before the kill, so nothing may come twice.
    assert_exactly_once(&h.fakes.received_ids(), &ids(&entries));
}

async fn killed_while_delivering_loses_nothing_and_repeats_only_cut_posts(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.window = "60s";
    h.fakes.ingest.lock().unwrap().delay = Some(Duration::from_millis(15));
    let entries = spread(SUB_A, "d", 240, 30, "Succeeded");
    h.fakes.add(entries.clone());
    let kills = 3;
    for k in 1..=kills {
        let d = h.daemon(&[]);
        let target = k * 50;
        eventually(Duration::from_secs(60), "some deliveries", || {
            h.fakes.received_ids().len() >= target
        })
        .await;
        let log = d.kill().await;
        assert!(!log.contains("panicked"), "{log}");
    }
    let d = h.daemon(&[]);
    eventually(Duration::from_secs(60), "every entry delivered", || {
        let got: std::collections::HashSet<String> = h.fakes.received_ids().into_iter().collect();
        entries.iter().all(|e| got.contains(&e.id))
    })
    .await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let delivered = h.fakes.received_ids();
    let c = counts(&delivered);
    let expected: std::collections::HashSet<&String> = entries.iter().map(|e| &e.id).collect();
    assert!(
        c.keys().all(|id| expected.contains(id)),
        "unexpected ids delivered"
    );
    // Only a POST acknowledged just before a kill can be sent again: at most
    // `concurrency` (4) per kill.
    let duplicates: usize = c.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= kills * 4,
        "{duplicates} duplicates after {kills} kills"
    );
}

async fn a_failing_subscription_does_not_stop_the_others(backend: Backend) {
    let mut h = Harness::on(backend).await;
    const SUB_C: &str = "31522864-0578-4ea0-9fdc-e66cc564d18c";
    h.subscriptions = vec![
        (SUB_A.to_string(), false),
        (SUB_B.to_string(), false),
        (SUB_C.to_string(), false),
    ];
    h.fakes.azure.lock().unwrap().deny.insert(SUB_B.to_string());
    let a = spread(SUB_A, "a", 20, 5, "Succeeded");
    let b = spread(SUB_B, "b", 20, 5, "Succeeded");
    let c = spread(SUB_C, "c", 20, 5, "Succeeded");
    h.fakes.add(a.clone());
    h.fakes.add(b);
    h.fakes.add(c.clone());
    let run = h.once(&["--since", "1m"]).await;
    assert_eq!(run.code, Some(69), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("subscription sub-1e8d8218 ({SUB_B}) failed")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("AuthorizationFailed"), "{}", run.stderr);
    let mut expected = ids(&a);
    expected.extend(ids(&c));
    assert_exactly_once(&h.fakes.received_ids(), &expected);

    // The daemon goes on polling the healthy ones and retries the failing one.
    let d = h.daemon(&[]);
    let more = spread(SUB_C, "c-more", 5, 1, "Succeeded");
    h.fakes.add(more.clone());
    expected.extend(ids(&more));
    eventually(
        Duration::from_secs(30),
        "new entries of a healthy subscription",
        || h.fakes.received_ids().len() >= expected.len(),
    )
    .await;
    let denied_before = h
        .fakes
        .arm_requests()
        .iter()
        .filter(|r| r.subscription == SUB_B)
        .count();
    eventually(
        Duration::from_secs(30),
        "the failing one is retried",
        || {
            h.fakes
                .arm_requests()
                .iter()
                .filter(|r| r.subscription == SUB_B)
                .count()
                > denied_before
        },
    )
    .await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert_exactly_once(&h.fakes.received_ids(), &expected);
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
        let e = entry(
            SUB_A,
            "f-1",
            Utc::now() - chrono::Duration::seconds(2),
            "Succeeded",
        );
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
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(78), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("is not an SQLite database"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("state.db"),
        "names the file: {}",
        run.stderr
    );
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
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(78), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("schema version 99"), "{}", run.stderr);
    assert!(run.stderr.contains("newer"), "{}", run.stderr);
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
    h.fakes.ingest.lock().unwrap().delay = Some(Duration::from_millis(10));
    let entries = spread(SUB_A, "w", 200, 30, "Succeeded");
    h.fakes.add(entries.clone());
    let d = h.daemon(&[]);
    eventually(Duration::from_secs(60), "deliveries under way", || {
        h.fakes.received_ids().len() >= 60
    })
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
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let delivered = h.fakes.received_ids();
    let c = counts(&delivered);
    for e in &entries {
        assert!(c.contains_key(&e.id), "{} lost", e.id);
    }
    // The torn transaction can only have been an acknowledgement (or a page
    // whose watermark did not move): at worst, a few events are sent again.
    let duplicates: usize = c.values().map(|n| n - 1).sum();
    assert!(duplicates <= 8, "{duplicates} duplicates");
}

/// The PostgreSQL counterpart of a newer SQLite file: a schema version above
/// this build's is refused (78) and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_schema_from_a_newer_version_is_refused() {
    let mut h = Harness::on(Backend::Postgres).await;
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    h.state_sql("UPDATE schema_version SET version = 99").await;
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(78), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("schema version 99"), "{}", run.stderr);
    assert!(
        !run.stderr.contains(postgres::DB_PASSWORD),
        "{}",
        run.stderr
    );
    let v = h.state_sql("SELECT version FROM schema_version").await;
    assert_eq!(v, [Some("99".to_string())], "the version was reset");
}

async fn events_of_a_removed_subscription_are_still_delivered(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.subscriptions = vec![(SUB_A.to_string(), false), (SUB_B.to_string(), false)];
    let a = spread(SUB_A, "a", 6, 8, "Succeeded");
    let b = spread(SUB_B, "b", 7, 8, "Succeeded");
    h.fakes.add(a.clone());
    h.fakes.add(b.clone());
    h.fakes.set_ingest(IngestMode::Down(503));
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(75), "stderr:\n{}", run.stderr);
    // B is taken out of the configuration while its events wait: they were
    // polled while nothing else fed it, and are still owed to Guardrails.
    h.subscriptions = vec![(SUB_A.to_string(), false)];
    h.fakes.set_ingest(IngestMode::Up);
    let polled_b = |h: &Harness| {
        h.fakes
            .arm_requests()
            .iter()
            .filter(|r| r.subscription == SUB_B)
            .count()
    };
    let before = polled_b(&h);
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let mut expected = ids(&a);
    expected.extend(ids(&b));
    assert_exactly_once(&h.fakes.received_ids(), &expected);
    assert_eq!(polled_b(&h), before, "a removed subscription is not polled");
}
