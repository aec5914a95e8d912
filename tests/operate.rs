//! Operating the daemon: metrics and health endpoints, readiness, SIGHUP
//! reload, `status` and `dead-letters` next to a running daemon (on both
//! state backends; on PostgreSQL with the lease holder and readiness by
//! share), `state copy` from SQLite to PostgreSQL, the systemd notification
//! protocol, the unit's security rating, and `--once`'s progress bars on a
//! terminal (and nowhere else).

mod support;

use std::time::Duration;

use chrono::Utc;
use support::admin::{admin_addr, get, metric, parse_metrics, wait_until_ready};
use support::*;

fn recent(sub: &str, prefix: &str, n: usize) -> Vec<FakeEntry> {
    (0..n)
        .map(|i| {
            let ts = Utc::now() - chrono::Duration::milliseconds(200 + 300 * i as i64);
            entry(sub, &format!("{prefix}-{i}"), ts, "Succeeded")
        })
        .collect()
}

// What operators use next to a running daemon works the same on either state.
crate::on_both_backends!(
    metrics_health_and_readiness,
    readyz_is_not_ready_before_the_first_poll_answers,
    status_and_dead_letters_next_to_a_running_daemon,
    sighup_applies_a_good_configuration_and_keeps_the_old_one_on_a_bad_one,
    systemd_notifications_ready_status_watchdog_reloading_stopping,
    a_credential_that_fails_at_start_means_no_ready,
    json_logs_carry_the_poll_line_fields,
    once_on_a_terminal_shows_progress_per_subscription_and_only_there,
);

async fn metrics_health_and_readiness(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.set_subscriptions(&[SUB_A, SUB_B]);
    h.extra = "\n[telemetry]\nlisten = \"127.0.0.1:0\"\n".into();
    h.fakes.deny(SUB_B);
    let entries = h.fakes.add(recent(SUB_A, "m", 7));
    // Not forwarded: counted as skipped for its status.
    h.fakes.add(vec![entry(
        SUB_A,
        "m-started",
        Utc::now() - chrono::Duration::milliseconds(150),
        "Started",
    )]);
    let d = h.daemon(&[]);
    let addr = admin_addr(&d).await;
    h.fakes
        .wait_for_delivery(&entries, Duration::from_secs(30))
        .await;

    assert_eq!(get(&addr, "/healthz").await.0, 200);
    // One subscription cannot be read: not ready, and the body says which,
    // once its first poll (at its phase of the interval) has failed.
    eventually_async(Duration::from_secs(30), "B's poll failed", || async {
        get(&addr, "/readyz").await.1.contains("HTTP 403")
    })
    .await;
    let (code, body) = get(&addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("sub-1e8d8218") && body.contains("HTTP 403"),
        "{body}"
    );
    assert!(!body.contains("sub-089bd33f"), "{body}");

    let (code, text) = get(&addr, "/metrics").await;
    assert_eq!(code, 200);
    let m = parse_metrics(&text);
    let a = [("subscription", SUB_A)];
    let at_least = |name: &str, labels: &[(&str, &str)], min: f64| {
        metric(&m, name, labels).unwrap_or(0.0) >= min
    };
    let ok_a = [("subscription", SUB_A), ("result", "ok")];
    assert!(at_least("polls_total", &ok_a, 1.0), "{text}");
    let error_b = [("subscription", SUB_B), ("result", "error")];
    assert!(at_least("polls_total", &error_b, 1.0), "{text}");
    assert_eq!(
        metric(&m, "events_delivered_total", &a),
        Some(7.0),
        "{text}"
    );
    assert!(at_least("entries_fetched_total", &a, 7.0), "{text}");
    assert!(at_least("entries_kept_total", &a, 7.0), "{text}");
    assert!(
        metric(
            &m,
            "entries_skipped_total",
            &[("subscription", SUB_A), ("reason", "status")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(metric(&m, "outbox_depth", &a), Some(0.0), "{text}");
    assert_eq!(metric(&m, "dead_letters", &a), Some(0.0), "{text}");
    assert!(metric(&m, "watermark_lag_seconds", &a).is_some(), "{text}");
    for status in ["200", "403"] {
        let labels = [("status", status)];
        assert!(at_least("azure_requests_total", &labels, 1.0), "{text}");
    }
    assert_eq!(
        metric(&m, "endpoint_requests_total", &[("status", "202")]),
        Some(7.0),
        "{text}"
    );
    assert!(
        m.keys()
            .any(|k| k.starts_with("azure_activity_poller_poll_duration_seconds_bucket")),
        "{text}"
    );
    assert!(
        m.keys()
            .any(|k| k.starts_with("process_resident_memory_bytes")),
        "{text}"
    );
    h.assert_no_secrets(&text);

    // Once the principal gets its role, readiness follows.
    h.fakes.azure.lock().unwrap().deny.clear();
    wait_until_ready(&addr, Duration::from_secs(30), "ready once it may read").await;
    if backend == Backend::Postgres {
        readiness_follows_the_share_of_leases(&h, &addr).await;
    }
    d.stop_cleanly().await;
}

/// From the moment the admin server answers, `/readyz` says 503 until a
/// poll has been answered: a load balancer or an orchestrator never sees an
/// instance ready that has not read Azure yet (the leases taken and the
/// polls started but none tracked was such a moment).
async fn readyz_is_not_ready_before_the_first_poll_answers(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.set_subscriptions(&[SUB_A]);
    h.extra = "\n[telemetry]\nlisten = \"127.0.0.1:0\"\n".into();
    h.fakes.set_arm_latency(Duration::from_millis(700));
    let entries = h.fakes.add(recent(SUB_A, "r", 2));
    let d = h.daemon(&[]);
    let addr = admin_addr(&d).await;
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // What the fake had answered before /readyz was asked.
        let answered = h.fakes.azure.lock().unwrap().requests.len();
        let (code, body) = get(&addr, "/readyz").await;
        if code == 200 {
            assert!(
                answered > 0,
                "/readyz said ready before any poll was answered; before it: {seen:?}"
            );
            break;
        }
        assert_eq!(code, 503, "{body}");
        seen.push(body.lines().nth(1).unwrap_or_default().to_string());
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {seen:?}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // It was asked while starting, and said why.
    assert!(
        seen.iter()
            .any(|l| l.starts_with("starting") || l.contains("not polled")),
        "{seen:?}"
    );
    h.fakes
        .wait_for_delivery(&entries, Duration::from_secs(30))
        .await;
    d.stop_cleanly().await;
}

/// On shared state, `/readyz` is 503 while the instance holds less than its
/// share: another live instance (a row of its own) takes both leases, then
/// gives them back. `subscription_leased` follows (what the no-holder alert
/// reads).
async fn readiness_follows_the_share_of_leases(h: &Harness, addr: &str) {
    h.state_sql(
        "INSERT INTO instance (id, host, pid, started_at, expires_at)
         VALUES ('other', 'elsewhere', 1, now(), now() + interval '1 hour')",
    )
    .await;
    h.state_sql("UPDATE lease SET holder = 'other', expires_at = now() + interval '1 hour'")
        .await;
    eventually_async(
        Duration::from_secs(30),
        "not ready without its share",
        || async {
            let (code, body) = get(addr, "/readyz").await;
            code == 503 && body.contains("holds 0 of its share of 1")
        },
    )
    .await;
    eventually_async(Duration::from_secs(30), "leased elsewhere", || async {
        leased(addr).await == [Some(0.0), Some(0.0)]
    })
    .await;
    h.state_sql("DELETE FROM lease WHERE holder = 'other'")
        .await;
    wait_until_ready(
        addr,
        Duration::from_secs(30),
        "ready again once its share was free",
    )
    .await;
    h.state_sql("DELETE FROM instance WHERE id = 'other'").await;
    // Alone again: it takes both.
    eventually_async(Duration::from_secs(30), "both leased again", || async {
        leased(addr).await == [Some(1.0), Some(1.0)]
    })
    .await;
}

/// `subscription_leased` of both subscriptions, as `/metrics` says.
async fn leased(addr: &str) -> [Option<f64>; 2] {
    let m = parse_metrics(&get(addr, "/metrics").await.1);
    [SUB_A, SUB_B].map(|s| metric(&m, "subscription_leased", &[("subscription", s)]))
}

async fn sighup_applies_a_good_configuration_and_keeps_the_old_one_on_a_bad_one(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let a = h.fakes.add(recent(SUB_A, "a", 3));
    let b = h.fakes.add(recent(SUB_B, "b", 4));
    let d = h.daemon(&[]);
    h.fakes.wait_for_delivery(&a, Duration::from_secs(30)).await;
    assert_eq!(h.fakes.arm_requests_for(SUB_B), 0);

    // A subscription is added.
    h.subscriptions.push((SUB_B.to_string(), false));
    h.write_config();
    d.signal("HUP");
    // B delivered after the reload.
    h.fakes.wait_for_delivery(&b, Duration::from_secs(30)).await;

    // A broken file is rejected; the running configuration keeps polling.
    std::fs::write(h.path("poller.toml"), "[state\npath = ").unwrap();
    d.signal("HUP");
    d.wait_for_log("the new configuration is rejected", 1).await;
    // Event handlers turned on: rejected too.
    h.subscriptions[1].1 = true;
    h.write_config();
    d.signal("HUP");
    d.wait_for_log("the new configuration is rejected", 2).await;
    let seen = h.fakes.arm_requests_for(SUB_B);
    eventually(Duration::from_secs(30), "B still polled", || {
        h.fakes.arm_requests_for(SUB_B) > seen + 1
    })
    .await;

    // A subscription is removed: it is polled no more.
    h.set_subscriptions(&[SUB_B]);
    h.write_config();
    d.signal("HUP");
    d.wait_for_log("configuration reloaded", 2).await;
    let a_requests = h.fakes.arm_requests_for(SUB_A);
    let b_requests = h.fakes.arm_requests_for(SUB_B);
    eventually(Duration::from_secs(30), "B polled three more times", || {
        h.fakes.arm_requests_for(SUB_B) >= b_requests + 3
    })
    .await;
    let a_after = h.fakes.arm_requests_for(SUB_A);
    assert!(
        a_after <= a_requests + 1,
        "A still polled after removal: {a_requests} -> {a_after}"
    );

    d.stop_cleanly().await;
    h.fakes.assert_delivered_exactly_once(&[a, b].concat());
}

/// Between polls a subscription is an entry on the daemon's one timer
/// (`timetable.rs`), not a task: a stop, or a reload that restarts it, must
/// end it at once rather than at its next tick an hour away.
#[tokio::test]
async fn subscriptions_waiting_an_hour_stop_and_restart_at_once() {
    let mut h = Harness::new().await;
    h.interval = "1h";
    h.window = "2h";
    h.set_subscriptions(&[SUB_A, SUB_B]);
    h.write_config();
    let d = h.daemon(&["--shutdown-grace", "50s"]);
    d.wait_for_log("held by this instance: polling it", 2).await;
    // A's interval changes: its entry is replaced, the new one waits for the
    // old one to end.
    h.extra = format!("[[subscription]]\nid = \"{SUB_A}\"\ninterval = \"30m\"\n");
    h.set_subscriptions(&[SUB_B]);
    h.write_config();
    d.signal("HUP");
    d.wait_for_log("configuration reloaded", 1).await;
    let log = d.stop_cleanly().await;
    assert!(log.contains("1 restarted"), "{log}");
    assert!(
        !log.contains("grace period over"),
        "an idle subscription held up the stop until the grace period ended:\n{log}"
    );
}

async fn status_and_dead_letters_next_to_a_running_daemon(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.reject("rejected-1");
    let good = h.fakes.add(recent(SUB_A, "s", 4));
    h.fakes.add([entry_ago(SUB_A, "rejected-1", 1)]);
    // Before any run.
    h.cli(&["status"])
        .await
        .assert_exit(78)
        .assert_logged("has not run");

    let d = h.daemon(&[]);
    h.fakes
        .wait_for_delivery(&good, Duration::from_secs(30))
        .await;
    d.wait_for_log("rejected an event", 1).await;

    let table = h.cli(&["status"]).await;
    table.assert_exit(0);
    let out = &table.stdout;
    assert!(
        out.contains(SUB_A) && out.contains("sub-089bd33f") && out.contains("ok"),
        "{out}"
    );
    let json = h.cli(&["status", "--json"]).await;
    json.assert_exit(0);
    let out = &json.stdout;
    let rows: serde_json::Value = serde_json::from_str(out).expect("JSON");
    let row = &rows[0];
    assert_eq!(row["subscription"], SUB_A);
    assert_eq!(row["last_result"], "ok");
    assert_eq!(row["outbox"], 0);
    assert_eq!(row["dead_letters"], 1);
    assert!(row["lag_seconds"].as_i64().unwrap_or(999) < 60, "{row}");
    h.assert_no_secrets(out);
    match backend {
        // Shared state: which instance holds the subscription, and until when.
        Backend::Postgres => {
            let holder = row["lease_holder"].as_str().unwrap_or_default();
            assert!(
                !holder.is_empty() && d.log().contains(holder),
                "the holder is not the running daemon: {row}\n{}",
                d.log()
            );
            // Renewed every third of the 2 s lease: near now, whatever the load.
            let expires = row["lease_expires"].as_str().unwrap_or_default();
            let expires = chrono::DateTime::parse_from_rfc3339(expires)
                .unwrap_or_else(|e| panic!("lease_expires: {e}: {row}"));
            let now = Utc::now();
            assert!(
                expires > now - chrono::Duration::seconds(10)
                    && expires < now + chrono::Duration::seconds(10),
                "{row}"
            );
            // The table: the lease holder, and the instance with its pid.
            let table = h.cli(&["status"]).await;
            table.assert_exit(0);
            let pid = d.child.id().expect("the daemon runs").to_string();
            let out = &table.stdout;
            assert!(
                out.contains("LEASE HOLDER") && out.contains(holder) && out.contains(&pid),
                "{out}"
            );
        }
        Backend::Sqlite => {
            assert!(row["lease_holder"].is_null(), "{row}");
        }
    }

    let list = h.cli(&["dead-letters", "list", "--json"]).await;
    list.assert_exit(0);
    let dead: serde_json::Value = serde_json::from_str(&list.stdout).expect("JSON");
    assert_eq!(dead[0]["event_data_id"], "rejected-1");
    assert_eq!(dead[0]["reason"], "HTTP 400 Bad Request");
    let number = dead[0]["number"].as_i64().unwrap().to_string();

    // The endpoint accepts it now: a retry delivers it through the running daemon.
    h.fakes.ingest.lock().unwrap().reject.clear();
    h.cli(&["dead-letters", "retry", &number])
        .await
        .assert_exit(0)
        .assert_printed("1 dead letter(s) queued");
    h.fakes
        .wait_for_delivery(&["rejected-1".to_string()], Duration::from_secs(30))
        .await;
    h.cli(&["dead-letters", "list"])
        .await
        .assert_printed("no dead letters");
    d.stop_cleanly().await;

    // Drop: a second rejected event, dropped for good.
    h.fakes.reject("rejected-2");
    h.fakes.add([entry_ago(SUB_A, "rejected-2", 1)]);
    h.once(&[]).await.assert_exit(0);
    h.cli(&["dead-letters", "list"])
        .await
        .assert_printed("rejected-2");
    h.cli(&["dead-letters", "drop", "--all"])
        .await
        .assert_exit(0)
        .assert_printed("1 dead letter(s) dropped");
    h.cli(&["dead-letters", "list"])
        .await
        .assert_printed("no dead letters");
}

async fn systemd_notifications_ready_status_watchdog_reloading_stopping(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let socket_path = h.path("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    h.env = vec![
        ("NOTIFY_SOCKET".into(), socket_path.display().to_string()),
        ("WATCHDOG_USEC".into(), "600000".into()),
    ];
    h.fakes.add(recent(SUB_A, "n", 2));
    let d = h.daemon(&[]);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut receive_until = async |want: &str, got: &mut Vec<String>| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !got.iter().any(|m| m.contains(want)) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let n = tokio::time::timeout(left, socket.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {want} within 30s; got {got:?}"))
                .expect("recv");
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    receive_until("READY=1", &mut got).await;
    assert!(
        got.iter()
            .any(|m| m.contains("STATUS=checking credentials")),
        "{got:?}"
    );
    let ready = got
        .iter()
        .find(|m| m.contains("READY=1"))
        .cloned()
        .unwrap_or_default();
    assert!(
        ready.contains("STATUS=polling 1 subscription(s)"),
        "{ready}"
    );
    // Pings every third of WatchdogSec.
    got.clear();
    receive_until("WATCHDOG=1", &mut got).await;
    got.clear();
    receive_until("WATCHDOG=1", &mut got).await;
    d.signal("HUP");
    receive_until("RELOADING=1", &mut got).await;
    let reloading = got
        .iter()
        .find(|m| m.contains("RELOADING=1"))
        .cloned()
        .unwrap_or_default();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    receive_until("READY=1", &mut got).await;
    d.signal("TERM");
    receive_until("STOPPING=1", &mut got).await;
    d.stop_cleanly().await;
}

async fn a_credential_that_fails_at_start_means_no_ready(backend: Backend) {
    let mut h = Harness::on(backend).await;
    std::fs::write(h.path("client-secret"), "wrong").unwrap();
    let socket_path = h.path("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    h.env = vec![("NOTIFY_SOCKET".into(), socket_path.display().to_string())];
    let mut d = h.daemon(&[]);
    let code = d.exit_code(Duration::from_secs(60)).await;
    assert_eq!(code, Some(69), "{}", d.log());
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = socket.try_recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]);
        assert!(
            !m.contains("READY=1"),
            "READY sent before the credential check: {m}"
        );
    }
    assert!(h.fakes.arm_requests().is_empty());
}

#[test]
fn the_unit_rates_1_5_or_better_with_systemd_analyze() {
    let unit = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/azure-activity-poller.service"
    );
    let out = match std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", unit])
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("systemd-analyze is not available ({e}); rating not checked here");
            return;
        }
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let rating: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for azure-activity-poller.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rating in:\n{text}"));
    assert!(rating <= 1.5, "exposure {rating} > 1.5:\n{text}");
}

async fn json_logs_carry_the_poll_line_fields(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.add(recent(SUB_A, "j", 3));
    let run = h.once(&["--log-format", "json"]).await;
    run.assert_exit(0);
    let polls: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "poll complete")
        .collect();
    assert_eq!(polls.len(), 1, "{}", run.stderr);
    let p = &polls[0];
    for field in [
        "subscription_id",
        "subscription_name",
        "window_start",
        "window_end",
        "pages",
        "fetched",
        "kept",
        "new",
        "delivered",
        "lag_s",
    ] {
        assert!(p.get(field).is_some(), "{field} missing: {p}");
    }
    assert_eq!(p["new"], 3);
    // The id and the name apart, so that each can be queried on its own
    // (`journalctl SUBSCRIPTION_NAME=...`).
    assert_eq!(p["subscription_id"], SUB_A, "{p}");
    assert!(
        p["subscription_name"]
            .as_str()
            .is_some_and(|n| !n.contains(SUB_A)),
        "{p}"
    );
    // Every line is JSON: nothing else is mixed in.
    for line in run.stderr.lines().filter(|l| l.starts_with('{')) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "{line}"
        );
    }
}

/// The number just before `word` on `line` ("1,234 fetched": 1234).
fn count_before(line: &str, word: &str) -> Option<u64> {
    let before = line.split(&format!(" {word}")).next()?;
    before.rsplit(' ').next()?.replace(',', "").parse().ok()
}

/// What only a progress bar's line holds: its counts' separator.
const PROGRESS_MARK: &str = " fetched · ";

async fn once_on_a_terminal_shows_progress_per_subscription_and_only_there(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.set_subscriptions(&[SUB_A, SUB_B]);
    h.fakes.set_page_size(10);
    h.azure_lines = "catch_up_slices = 4\n".into();
    let a = h.fakes.add(spread(SUB_A, "pa", 40, 2 * 3600, "Succeeded"));
    let b = h.fakes.add(spread(SUB_B, "pb", 25, 2 * 3600, "Succeeded"));
    let run = h.once_on_terminal(&["--since", "3h"]).await;
    run.assert_exit(0);
    h.fakes
        .assert_delivered_exactly_once(&[a.clone(), b.clone()].concat());
    let lines = support::terminal::rows(&run.stderr);
    // Each subscription's bar ends whole and done, with its counts: every
    // entry fetched (a split reads its boundary twice) and delivered.
    for (name, n) in [("sub-089bd33f", 40), ("sub-1e8d8218", 25)] {
        let last = lines
            .iter()
            .rev()
            .find(|l| l.starts_with(name) && l.contains(PROGRESS_MARK))
            .unwrap_or_else(|| panic!("no progress for {name}:\n{}", run.stderr));
        assert!(last.contains("100%") && last.contains("done"), "{last}");
        assert!(last.contains("3h covered"), "{last}");
        assert_eq!(count_before(last, "delivered"), Some(n), "{last}");
        assert!(count_before(last, "fetched") >= Some(n), "{last}");
    }
    // Log lines are whole lines of their own, not torn by a bar.
    assert!(
        lines.iter().any(|l| l.contains("poll complete")),
        "{}",
        run.stderr
    );
    for l in lines.iter().filter(|l| l.contains(" INFO ")) {
        assert!(!l.contains(PROGRESS_MARK) && !l.contains("%"), "{l}");
    }

    // stderr not a terminal (a file): no bars, no escape sequences.
    let more = h.fakes.add(spread(SUB_A, "pc", 5, 5, "Succeeded"));
    let run = h.once(&[]).await;
    run.assert_exit(0);
    assert!(h.fakes.received_all(&more));
    assert!(!run.stderr.contains(PROGRESS_MARK), "{}", run.stderr);
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);
    assert!(!run.stderr.contains("100%"), "{}", run.stderr);

    // JSON logs on a terminal: JSON lines only, but for the command's own
    // closing line.
    let more = h.fakes.add(spread(SUB_B, "pd", 5, 5, "Succeeded"));
    let run = h.once_on_terminal(&["--log-format", "json"]).await;
    run.assert_exit(0);
    assert!(h.fakes.received_all(&more));
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    assert!(lines.iter().any(|l| l.contains("poll complete")));
    for l in lines
        .iter()
        .filter(|l| !l.is_empty() && !l.starts_with("azure-activity-poller: "))
    {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l:?}\n{}",
            run.stderr
        );
    }
}

#[test]
fn man_pages_and_completions_are_generated_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_azure-activity-poller"))
        .arg("generate-assets")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap_or_default();
    let man = read("man/azure-activity-poller.1");
    assert!(man.contains(".TH azure-activity-poller 1"), "{man}");
    assert!(
        man.contains("once") && man.contains("since"),
        "options missing from the man page"
    );
    for page in ["status", "dead-letters", "check-config", "demo"] {
        assert!(
            read(&format!("man/azure-activity-poller-{page}.1")).contains(".TH"),
            "{page}"
        );
    }
    for (file, needle) in [
        ("completions/azure-activity-poller.bash", "check-config"),
        ("completions/_azure-activity-poller", "dead-letters"),
        ("completions/azure-activity-poller.fish", "status"),
    ] {
        assert!(read(file).contains(needle), "{file} lacks {needle}");
    }
    // Every asset the Debian package lists exists after generation.
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    for line in manifest.lines().filter(|l| l.contains("\"target/assets/")) {
        let src = line
            .split('"')
            .nth(1)
            .unwrap()
            .trim_start_matches("target/assets/");
        if let Some(dir_part) = src.strip_suffix("*.1") {
            assert!(
                std::fs::read_dir(dir.path().join(dir_part))
                    .unwrap()
                    .count()
                    >= 5,
                "{src}"
            );
        } else {
            assert!(
                dir.path().join(src).exists(),
                "the package lists {src}, which is not generated"
            );
        }
    }
}

/// The daemon's environment as `/proc` shows it: what glibc read at its start.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_started_without_malloc_arena_max_runs_with_two_arenas_unless_told() {
    // Started as from a shell, without the unit's settings: the same process
    // (the pid its parent knows) runs with two arenas and a fixed mmap
    // threshold, and polls as usual.
    let mut h = Harness::new().await;
    let d = h.daemon(&[]);
    let pid = d.child.id().expect("the daemon's pid");
    eventually(
        Duration::from_secs(30),
        "MALLOC_ARENA_MAX=2 and MALLOC_MMAP_THRESHOLD_=131072 in its environment",
        || {
            let env = environ(pid);
            env.iter().any(|v| v == "MALLOC_ARENA_MAX=2")
                && env.iter().any(|v| v == "MALLOC_MMAP_THRESHOLD_=131072")
        },
    )
    .await;
    d.wait_for_log("poll complete", 1).await;
    let env = environ(pid);
    assert!(
        env.iter().any(|v| v.starts_with("SSL_CERT_FILE=")),
        "the rest of the environment was kept: {env:?}"
    );
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");

    // An operator's own value is left as it is.
    h.env.push(("MALLOC_ARENA_MAX".into(), "4".into()));
    let d = h.daemon(&[]);
    let pid = d.child.id().expect("the daemon's pid");
    d.wait_for_log("poll complete", 1).await;
    let env = environ(pid);
    assert!(env.iter().any(|v| v == "MALLOC_ARENA_MAX=4"), "{env:?}");
    assert!(!env.iter().any(|v| v == "MALLOC_ARENA_MAX=2"), "{env:?}");
    // The setting it left out is still added.
    assert!(
        env.iter().any(|v| v == "MALLOC_MMAP_THRESHOLD_=131072"),
        "{env:?}"
    );
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_delivers_everything_exactly_once() {
    // README's first command, shortened: the embedded emulator, late entries,
    // throttling, faults, an endpoint outage and event handlers, then the summary.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_azure-activity-poller"))
        .args(["demo", "--duration", "20s"])
        .env_remove("SSL_CERT_FILE")
        .output()
        .await
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Every Succeeded entry was delivered exactly once."),
        "{stdout}"
    );
    assert!(
        stdout.contains("SIGTERM: the poller finished its work and exited 0."),
        "{stdout}"
    );
    // Event handlers went live in one subscription from 10 s to 18 s: it was
    // paused, then resumed, and still nothing was lost or sent twice.
    assert!(stdout.contains("resumed 1 time(s)"), "{stdout}");
    assert!(!stdout.contains("Event handlers: 0 check(s)"), "{stdout}");
    // Three subscriptions in the summary, each with something delivered.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" 0 ") && l.len() > 60 && l.contains('-'))
        .collect();
    assert!(rows.len() >= 3, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_copy_from_sqlite_to_postgres_continues_without_gap_or_repeat() {
    let mut h = Harness::new().await;
    h.window = "60s";
    // On SQLite: some delivered, one rejected into the dead letters...
    h.fakes.reject("rejected-1");
    let delivered = h.fakes.add(recent(SUB_A, "first", 5));
    h.fakes.add([entry_ago(SUB_A, "rejected-1", 1)]);
    h.once(&[]).await.assert_exit(0);
    // ...and some left in the outbox with the endpoint down.
    h.fakes.set_ingest(IngestMode::Down(500));
    let queued = h.fakes.add(recent(SUB_A, "queued", 6));
    h.once(&[])
        .await
        .assert_exit(75)
        .assert_logged("6 event(s) stay in the outbox");
    let list = h.cli(&["dead-letters", "list", "--json"]).await;
    let dead: serde_json::Value = serde_json::from_str(&list.stdout).expect("JSON");
    let number = dead[0]["number"].clone();

    // The copy, the target URL (with its password) from a file.
    let (server, url) = support::postgres::PgServer::with_database("poller").await;
    std::fs::write(h.path("database-url"), format!("{url}\n")).unwrap();
    let from = format!("sqlite:{}", h.path("state.db").display());
    let to_file = h.path("database-url").display().to_string();
    let copy = h
        .run(&["state", "copy", "--from", &from, "--to-file", &to_file])
        .await;
    copy.assert_exit(0);
    for line in ["cursors  1", "outbox events  6", "dead letters  1"] {
        let line = line.replace("  ", " ");
        assert!(
            copy.stdout
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == line),
            "{line} missing:\n{}",
            copy.stdout
        );
    }

    // The same configuration, `[state] url`: the outbox goes out in order,
    // new entries follow, and nothing already delivered or seen goes twice.
    let outbox_order = "SELECT event_data_id FROM outbox ORDER BY seq";
    let in_sqlite = h.state_sql(outbox_order).await;
    h.use_postgres(server, url.clone());
    assert_eq!(h.state_sql(outbox_order).await, in_sqlite);
    h.fakes.set_ingest(IngestMode::Up);
    let later = h.fakes.add(recent(SUB_A, "later", 4));
    h.once(&[]).await.assert_exit(0);
    h.fakes
        .assert_delivered_exactly_once(&[delivered, queued, later].concat());
    let list = h.cli(&["dead-letters", "list", "--json"]).await;
    list.assert_exit(0);
    let out = &list.stdout;
    let dead: serde_json::Value = serde_json::from_str(out).expect("JSON");
    assert_eq!(dead[0]["event_data_id"], "rejected-1", "{out}");
    assert_eq!(dead[0]["number"], number, "{out}");

    // A second copy into the now non-empty target is refused, and says why
    // without the password (`Harness::run` checks that on every output).
    h.run(&["state", "copy", "--from", &from, "--to", &url])
        .await
        .assert_exit(78)
        .assert_logged("not empty")
        .assert_logged("postgres://");
    let outbox = h.state_sql("SELECT COUNT(*) FROM outbox").await;
    assert_eq!(outbox, [Some("0".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_copy_that_fails_midway_leaves_the_target_empty() {
    let mut h = Harness::new().await;
    h.fakes.add(recent(SUB_A, "c", 3));
    h.once(&[]).await.assert_exit(0);
    // A dead letter (read after cursors, seen ids and outbox) that cannot be
    // read: the copy fails after the first tables went in.
    h.state_sql(
        "INSERT INTO dead_letter (subscription_id, event_data_id, entry, reason, failed_at_ns)
         VALUES ('s', 'e', '{}', 'r', 'not a time')",
    )
    .await;
    let (server, url) = support::postgres::PgServer::with_database("poller").await;
    h.env = vec![("TARGET_URL".into(), url.clone())];
    let from = format!("sqlite:{}", h.path("state.db").display());
    h.run(&["state", "copy", "--from", &from, "--to-env", "TARGET_URL"])
        .await
        .assert_exit(74)
        .assert_logged("reading the source");
    h.use_postgres(server, url);
    for table in ["cursor", "seen", "outbox", "dead_letter"] {
        let n = h.state_sql(&format!("SELECT COUNT(*) FROM {table}")).await;
        assert_eq!(n, [Some("0".to_string())], "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server_against_sslrootcert() {
    let mut h = Harness::new().await;
    let (server, ca_pem) = tokio::task::spawn_blocking(support::postgres::PgServer::start_tls)
        .await
        .expect("start PostgreSQL with TLS");
    let url = server.database("poller").await;
    std::fs::write(h.path("db-ca.pem"), &ca_pem).unwrap();
    let other_ca = azure_activity_poller::emulator::tls::generate().expect("another CA");
    std::fs::write(h.path("other-ca.pem"), &other_ca.ca_pem).unwrap();
    let with = |query: &str| format!("{url}?{query}");
    let entries = h.fakes.add(recent(SUB_A, "tls", 5));

    // The server takes TCP over TLS only: without it, refused.
    h.use_postgres(server, with("sslmode=disable"));
    let run = h.once(&[]).await;
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    run.assert_logged("no encryption");
    // A certificate the given CA did not sign: refused, said plainly.
    let other = h.path("other-ca.pem").display().to_string();
    h.db_url = Some(with(&format!("sslmode=verify-full&sslrootcert={other}")));
    let run = h.once(&[]).await;
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    run.assert_logged("certificate");
    assert!(h.fakes.received_ids().is_empty());
    // The right CA: connected over TLS, everything delivered.
    let ca = h.path("db-ca.pem").display().to_string();
    h.db_url = Some(with(&format!("sslmode=verify-full&sslrootcert={ca}")));
    h.once(&[]).await.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&entries);
    // The system store does not hold the test CA: verify-full without
    // sslrootcert refuses the server too.
    h.db_url = Some(with("sslmode=verify-full"));
    let run = h.once(&[]).await;
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    run.assert_logged("certificate");
    for out in [&run.stderr, &run.stdout] {
        assert!(!out.contains(support::postgres::DB_PASSWORD), "{out}");
    }
}
