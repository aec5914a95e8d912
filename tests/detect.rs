//! Detection of Guardrails event handlers (in Azure) and of Guardrails' own
//! poller (its policies, through the GraphQL API): the refusal at start, the
//! pause and resume while the daemon runs, the override, `on_unknown`,
//! `check-config --online` and `import`. The real binary against the fakes;
//! no secret (API secret key, webhook token, bearer token) in any output.

mod support;

use std::time::Duration;

use support::detection::{
    FakeHandlers, GR_SECRET_KEY, GraphqlMode, HANDLERS_POLICY, POLLER_POLICY, WEBHOOK_TOKEN,
};
use support::*;

crate::on_both_backends!(
    live_handlers_in_azure_are_a_refusal_naming_what_was_found,
    handlers_that_do_not_feed_the_subscription_do_not_stop_it,
    guardrails_policies_are_a_refusal_too,
    a_check_that_cannot_be_made_refuses_unless_on_unknown_says_poll,
    guardrails_api_faults_are_named_with_the_right_exit_code,
    event_handlers_false_overrides_detection_with_a_warning,
    handlers_appearing_pause_the_subscription_and_their_removal_resumes_it,
    sighup_rechecks_at_once_and_a_failed_check_keeps_the_last_state,
    a_guardrails_outage_while_running_keeps_the_last_state,
);

fn live(alerts: usize) -> FakeHandlers {
    FakeHandlers::Deployed {
        group_enabled: true,
        alerts: vec![true; alerts],
    }
}

/// Nothing secret in `output`: the API secret key, the webhook token, the
/// client secret, the ingestion token, the bearer tokens.
fn assert_no_secrets(h: &Harness, output: &str) {
    let mut secrets = vec![
        GR_SECRET_KEY.to_string(),
        WEBHOOK_TOKEN.to_string(),
        CLIENT_SECRET.to_string(),
        INGEST_TOKEN.to_string(),
    ];
    secrets.extend(h.fakes.azure.lock().unwrap().issued.clone());
    for s in secrets {
        assert!(!output.contains(&s), "a secret leaked: {s}\n{output}");
    }
}

async fn with_api(backend: Backend) -> Harness {
    let mut h = Harness::on(backend).await;
    h.extra = h.fakes.guardrails_api_section();
    h.env.push(("GR_SECRET".into(), GR_SECRET_KEY.into()));
    // Guardrails' own poller is off for every subscription unless a test says otherwise.
    for sub in [SUB_A, SUB_B] {
        h.fakes
            .set_policy(POLLER_POLICY, sub, &[("Disabled", "sub")]);
        h.fakes
            .set_policy(HANDLERS_POLICY, sub, &[("Enforce: Not configured", "sub")]);
    }
    h
}

// ------------------------------------------------------------ at start ----

async fn live_handlers_in_azure_are_a_refusal_naming_what_was_found(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.subscriptions = vec![(SUB_A.into(), false), (SUB_B.into(), false)];
    h.fakes.add(spread(SUB_A, "a", 5, 8, "Succeeded"));
    h.fakes.set_handlers(SUB_B, Some(live(3)));
    for once in [true, false] {
        let run = if once {
            h.once(&[]).await
        } else {
            let config = h.write_config().display().to_string();
            h.run(&["--config", &config]).await
        };
        assert_eq!(run.code, Some(78), "once={once}: {}", run.stderr);
        assert!(
            run.stderr.contains(&format!("sub-1e8d8218 ({SUB_B})")),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(
                "action group turbot_azure_event_handler_action_group in turbot_rg is enabled, 3 alerts route to it"
            ),
            "{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains(&format!("({SUB_A}): ")),
            "A is fine: {}",
            run.stderr
        );
        assert_no_secrets(&h, &run.stderr);
    }
    assert!(h.fakes.arm_requests().is_empty(), "nothing polled");
    assert_eq!(h.fakes.ingest.lock().unwrap().attempts, 0, "nothing sent");
}

async fn handlers_that_do_not_feed_the_subscription_do_not_stop_it(backend: Backend) {
    // Each of these is "not live": no action group, a disabled one, or an
    // enabled one that no enabled alert routes to.
    for handlers in [
        FakeHandlers::EmptyResourceGroup,
        FakeHandlers::Deployed {
            group_enabled: false,
            alerts: vec![true, true],
        },
        FakeHandlers::Deployed {
            group_enabled: true,
            alerts: vec![false],
        },
    ] {
        let mut h = Harness::on(backend).await;
        let good = spread(SUB_A, "a", 7, 8, "Succeeded");
        h.fakes.add(good.clone());
        h.fakes.set_handlers(SUB_A, Some(handlers.clone()));
        let run = h.once(&[]).await;
        assert_eq!(run.code, Some(0), "{handlers:?}: {}", run.stderr);
        assert_exactly_once(&h.fakes.received_ids(), &ids(&good));
        assert!(
            h.fakes
                .detection_requests()
                .iter()
                .any(|r| r.starts_with("actionGroups")),
            "Azure was asked"
        );
    }
}

async fn guardrails_policies_are_a_refusal_too(backend: Backend) {
    // The poller policy Enabled (its default in Guardrails) means duplicates.
    let mut h = with_api(backend).await;
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Enabled", "sub-a")]);
    h.fakes.add(spread(SUB_A, "a", 3, 8, "Succeeded"));
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("Guardrails policy Azure > Turbot > Event Poller = Enabled"),
        "{}",
        run.stderr
    );
    assert_no_secrets(&h, &run.stderr);

    // Event handlers enforced in one region of two (values paged).
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Disabled", "sub-a")]);
    h.fakes.set_policy(
        HANDLERS_POLICY,
        SUB_A,
        &[("Skip", "East US"), ("Enforce: Configured", "West Europe")],
    );
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("Event Handlers = Skip (East US), Enforce: Configured (West Europe)"),
        "{}",
        run.stderr
    );
    assert!(h.fakes.arm_requests().is_empty(), "nothing polled");

    // Both off: it runs.
    h.fakes.set_policy(
        HANDLERS_POLICY,
        SUB_A,
        &[("Enforce: Not configured", "sub-a")],
    );
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(h.fakes.received_ids().len(), 3);
    assert_no_secrets(&h, &run.stderr);
}

async fn a_check_that_cannot_be_made_refuses_unless_on_unknown_says_poll(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.add(spread(SUB_A, "a", 4, 8, "Succeeded"));
    h.fakes.set_handlers(SUB_A, Some(FakeHandlers::Forbidden));
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(69), "403 is unavailable: {}", run.stderr);
    assert!(run.stderr.contains("cannot tell"), "{}", run.stderr);
    assert!(run.stderr.contains("HTTP 403"), "{}", run.stderr);
    assert!(
        run.stderr.contains("on_unknown"),
        "says the way out: {}",
        run.stderr
    );
    assert!(h.fakes.arm_requests().is_empty());

    h.extra = "\n[detection]\non_unknown = \"poll\"\n".into();
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("polling it anyway"), "{}", run.stderr);
    assert_eq!(h.fakes.received_ids().len(), 4);
}

async fn guardrails_api_faults_are_named_with_the_right_exit_code(backend: Backend) {
    let mut h = with_api(backend).await;
    h.fakes.add(spread(SUB_A, "a", 2, 8, "Succeeded"));
    // A wrong secret key: the configuration is wrong (78).
    h.env.retain(|(k, _)| k != "GR_SECRET");
    h.env
        .push(("GR_SECRET".into(), "not-the-key-DO-NOT-LOG".into()));
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(run.stderr.contains("refused the API key"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("not-the-key-DO-NOT-LOG"),
        "{}",
        run.stderr
    );
    h.env.retain(|(k, _)| k != "GR_SECRET");
    h.env.push(("GR_SECRET".into(), GR_SECRET_KEY.into()));
    // Unavailable (503, retried) and a GraphQL error: 69.
    for mode in [GraphqlMode::Status(503), GraphqlMode::Errors] {
        h.fakes.set_graphql(mode);
        let run = h.once(&[]).await;
        assert_eq!(run.code, Some(69), "{mode:?}: {}", run.stderr);
        assert!(run.stderr.contains("Guardrails"), "{}", run.stderr);
        assert_no_secrets(&h, &run.stderr);
    }
    assert_eq!(h.fakes.ingest.lock().unwrap().attempts, 0);
}

async fn event_handlers_false_overrides_detection_with_a_warning(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.extra = "event_handlers = false\n".into(); // in [defaults]
    h.fakes.set_handlers(SUB_A, Some(live(2)));
    let good = spread(SUB_A, "a", 3, 8, "Succeeded");
    h.fakes.add(good.clone());
    let run = h.once(&[]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("event_handlers = false"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("you vouch"), "{}", run.stderr);
    assert!(h.fakes.detection_requests().is_empty(), "not asked");
    assert_exactly_once(&h.fakes.received_ids(), &ids(&good));
}

// ------------------------------------------------------- while running ----

async fn handlers_appearing_pause_the_subscription_and_their_removal_resumes_it(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.subscriptions = vec![(SUB_A.into(), false), (SUB_B.into(), false)];
    h.window = "60s";
    let port = free_port();
    h.extra =
        format!("\n[detection]\ninterval = \"1s\"\n\n[telemetry]\nlisten = \"127.0.0.1:{port}\"\n");
    let first_a = spread(SUB_A, "a1", 5, 5, "Succeeded");
    let first_b = spread(SUB_B, "b1", 5, 5, "Succeeded");
    h.fakes.add(first_a.clone());
    h.fakes.add(first_b.clone());
    let d = h.daemon(&[]);
    eventually(
        Duration::from_secs(30),
        "the first entries delivered",
        || h.fakes.received_ids().len() >= 10,
    )
    .await;

    // Handlers go live on A.
    h.fakes.set_handlers(SUB_A, Some(live(1)));
    eventually(Duration::from_secs(30), "A paused", || {
        d.log().contains("polling paused")
    })
    .await;
    let (code, body) = http_get(port, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(SUB_A) && body.contains("paused"), "{body}");
    let (_, metrics) = http_get(port, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "azure_activity_poller_subscription_paused{{subscription=\"{SUB_A}\"}} 1"
        )),
        "{metrics}"
    );
    let config = h.path("poller.toml").display().to_string();
    let status = h.run(&["status", "--config", &config]).await;
    assert!(status.stdout.contains("PAUSED"), "{}", status.stdout);
    assert!(status.stdout.contains("paused"), "{}", status.stdout);

    // While paused: A's new entries are not polled; B's are delivered.
    let polls_a = |h: &Harness| {
        h.fakes
            .arm_requests()
            .iter()
            .filter(|r| r.subscription == SUB_A)
            .count()
    };
    let a_before = polls_a(&h);
    let during_a = spread(SUB_A, "a2", 4, 2, "Succeeded");
    let during_b = spread(SUB_B, "b2", 4, 2, "Succeeded");
    h.fakes.add(during_a.clone());
    h.fakes.add(during_b.clone());
    eventually(Duration::from_secs(30), "B's new entries delivered", || {
        let got = h.fakes.received_ids();
        during_b.iter().all(|e| got.contains(&e.id))
    })
    .await;
    // Several detection rounds later, still nothing polled or sent for A.
    let checks = h.fakes.detection_requests().len();
    eventually(Duration::from_secs(30), "three more checks", || {
        h.fakes.detection_requests().len() >= checks + 6
    })
    .await;
    assert_eq!(polls_a(&h), a_before, "A was polled while paused");
    let got = h.fakes.received_ids();
    assert!(
        during_a.iter().all(|e| !got.contains(&e.id)),
        "A's entries were sent while paused"
    );

    // Handlers removed: A resumes from its watermark and catches up.
    h.fakes.set_handlers(SUB_A, None);
    eventually(
        Duration::from_secs(30),
        "A's paused-time entries delivered",
        || {
            let got = h.fakes.received_ids();
            during_a.iter().all(|e| got.contains(&e.id))
        },
    )
    .await;
    assert!(d.log().contains("polling resumes"), "{}", d.log());
    eventually(Duration::from_secs(30), "ready again", || ready(port)).await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let mut expected = ids(&first_a);
    expected.extend(ids(&first_b));
    expected.extend(ids(&during_a));
    expected.extend(ids(&during_b));
    assert_exactly_once(&h.fakes.received_ids(), &expected);
    assert_no_secrets(&h, &log);
}

async fn sighup_rechecks_at_once_and_a_failed_check_keeps_the_last_state(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.extra = "\n[detection]\ninterval = \"1h\"\n".into();
    h.fakes.add(spread(SUB_A, "a", 3, 5, "Succeeded"));
    let d = h.daemon(&[]);
    eventually(Duration::from_secs(30), "delivered", || {
        h.fakes.received_ids().len() >= 3
    })
    .await;
    // Live now, but the next periodic check is an hour away: SIGHUP checks at once.
    h.fakes.set_handlers(SUB_A, Some(live(2)));
    d.signal("HUP");
    eventually(Duration::from_secs(30), "paused after SIGHUP", || {
        d.log().contains("polling paused")
    })
    .await;
    // The check then fails (403): the subscription stays paused.
    h.fakes.set_handlers(SUB_A, Some(FakeHandlers::Forbidden));
    d.signal("HUP");
    eventually(Duration::from_secs(30), "the failed check logged", || {
        d.log().contains("keeps its last known state")
    })
    .await;
    assert!(!d.log().contains("polling resumes"), "{}", d.log());
    let polls = h.fakes.arm_requests().len();
    let late = spread(SUB_A, "late", 2, 1, "Succeeded");
    h.fakes.add(late.clone());
    // Clear again: it resumes and catches up.
    h.fakes.set_handlers(SUB_A, None);
    d.signal("HUP");
    eventually(Duration::from_secs(30), "resumed, caught up", || {
        let got = h.fakes.received_ids();
        late.iter().all(|e| got.contains(&e.id))
    })
    .await;
    assert!(h.fakes.arm_requests().len() > polls);
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(h.fakes.received_ids().len(), 5, "no duplicate");
    assert_no_secrets(&h, &log);
}

async fn a_guardrails_outage_while_running_keeps_the_last_state(backend: Backend) {
    let mut h = with_api(backend).await;
    h.extra.push_str("\n[detection]\ninterval = \"1h\"\n");
    let first = spread(SUB_A, "a", 3, 5, "Succeeded");
    h.fakes.add(first.clone());
    let d = h.daemon(&[]);
    eventually(Duration::from_secs(30), "delivered", || {
        h.fakes.received_ids().len() >= 3
    })
    .await;
    let set_mode = |mode| h.fakes.graphql.lock().unwrap().mode = mode;
    let failed_checks = |d: &Daemon| d.log().matches("keeps its last known state").count();

    // Clear, then Guardrails goes away: the subscription is still polled.
    set_mode(GraphqlMode::Status(503));
    d.signal("HUP");
    eventually(Duration::from_secs(30), "the failed check logged", || {
        failed_checks(&d) >= 1
    })
    .await;
    let during = spread(SUB_A, "during", 2, 1, "Succeeded");
    h.fakes.add(during.clone());
    eventually(
        Duration::from_secs(30),
        "still polled and delivered",
        || {
            let got = h.fakes.received_ids();
            during.iter().all(|e| got.contains(&e.id))
        },
    )
    .await;

    // Back, saying Guardrails' own poller is on: paused.
    set_mode(GraphqlMode::Up);
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Enabled", "sub-a")]);
    d.signal("HUP");
    eventually(Duration::from_secs(30), "paused", || {
        d.log().contains("polling paused")
    })
    .await;
    // Away again (errors this time): it stays paused, nothing more is polled.
    set_mode(GraphqlMode::Errors);
    let polls = h.fakes.arm_requests().len();
    d.signal("HUP");
    eventually(
        Duration::from_secs(30),
        "the second failed check logged",
        || failed_checks(&d) >= 2,
    )
    .await;
    let late = spread(SUB_A, "late", 2, 1, "Succeeded");
    h.fakes.add(late.clone());
    assert!(!d.log().contains("polling resumes"), "{}", d.log());
    assert_eq!(h.fakes.arm_requests().len(), polls, "polled while paused");

    // Back and clear: it resumes from its watermark and catches up.
    set_mode(GraphqlMode::Up);
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Disabled", "sub-a")]);
    d.signal("HUP");
    eventually(Duration::from_secs(30), "resumed, caught up", || {
        let got = h.fakes.received_ids();
        late.iter().all(|e| got.contains(&e.id))
    })
    .await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let mut expected = ids(&first);
    expected.extend(ids(&during));
    expected.extend(ids(&late));
    assert_exactly_once(&h.fakes.received_ids(), &expected);
    assert_no_secrets(&h, &log);
}

// ------------------------------------------------------------ commands ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_prints_the_table_and_the_verdict() {
    // Reads no state: one backend is enough.
    let mut h = with_api(Backend::Sqlite).await;
    h.subscriptions = vec![(SUB_A.into(), false), (SUB_B.into(), false)];
    let config = h.write_config().display().to_string();
    let run = h
        .run(&["check-config", "--config", &config, "--online"])
        .await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for col in [
        "SUBSCRIPTION",
        "AZURE HANDLERS",
        "GUARDRAILS HANDLERS POLICY",
        "GUARDRAILS POLLER POLICY",
        "VERDICT",
    ] {
        assert!(run.stdout.contains(col), "{}", run.stdout);
    }
    assert!(run.stdout.contains("none (no turbot_rg)"), "{}", run.stdout);

    h.fakes.set_handlers(SUB_B, Some(live(3)));
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Enabled", "sub-a")]);
    let run = h
        .run(&["check-config", "--config", &config, "--online"])
        .await;
    assert_eq!(run.code, Some(78), "{}\n{}", run.stdout, run.stderr);
    let line_b = run
        .stdout
        .lines()
        .find(|l| l.contains(SUB_B) && l.contains("LIVE"))
        .unwrap_or_default();
    assert!(
        line_b.contains("LIVE (3 alerts)") && line_b.contains("REFUSE"),
        "{}",
        run.stdout
    );
    let line_a = run
        .stdout
        .lines()
        .find(|l| l.contains(SUB_A) && l.contains("ON: Enabled"))
        .unwrap_or_default();
    assert!(line_a.contains("REFUSE"), "{}", run.stdout);
    assert_no_secrets(&h, &(run.stdout.clone() + &run.stderr));

    h.fakes.set_handlers(SUB_B, Some(FakeHandlers::Forbidden));
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Disabled", "sub-a")]);
    let run = h
        .run(&["check-config", "--config", &config, "--online"])
        .await;
    assert_eq!(run.code, Some(69), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("REFUSE: cannot tell"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_prints_sections_that_make_a_valid_config() {
    // Reads no state: one backend is enough.
    let mut h = with_api(Backend::Sqlite).await;
    h.fakes.graphql.lock().unwrap().subscriptions = vec![
        (SUB_A.to_string(), "Production \"EU\"".to_string()),
        (SUB_B.to_string(), "Sandbox".to_string()),
    ];
    h.fakes.set_policy(
        "tmod:@turbot/azure#/policy/types/eventPollerInterval",
        SUB_A,
        &[("Every 5 minutes", "Production")],
    );
    h.fakes.set_policy(
        "tmod:@turbot/azure#/policy/types/eventPollerWindow",
        SUB_A,
        &[("15 minutes", "Production")],
    );
    h.fakes.set_policy(
        HANDLERS_POLICY,
        SUB_B,
        &[("Enforce: Configured", "Sandbox")],
    );
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Enabled", "Production")]);
    // A file with credentials and [guardrails.api], and no subscription yet.
    h.subscriptions.clear();
    let base = h.config_text();
    std::fs::write(h.path("base.toml"), &base).unwrap();
    let base_path = h.path("base.toml").display().to_string();
    let run = h
        .run(&["import", "--from-guardrails", "--config", &base_path])
        .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("interval = \"5m\""), "{}", run.stdout);
    assert!(run.stdout.contains("window = \"15m\""), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("# cannot be polled: Guardrails event handlers are on"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Event Poller to Disabled"),
        "{}",
        run.stdout
    );
    assert_no_secrets(&h, &(run.stdout.clone() + &run.stderr));
    // Pasted into the file, it is a valid configuration with A only.
    let full = h.path("full.toml");
    std::fs::write(&full, format!("{base}\n{}", run.stdout)).unwrap();
    let full_s = full.display().to_string();
    let check = h.run(&["check-config", "--config", &full_s]).await;
    assert_eq!(check.code, Some(0), "{}\n{}", check.stderr, run.stdout);
    assert!(
        check.stdout.contains("1 subscription(s)"),
        "{}",
        check.stdout
    );

    // From Azure: the subscriptions the credential can read, each checked
    // (Guardrails' poller is off for A by now).
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Disabled", "Production")]);
    h.fakes.azure.lock().unwrap().listed = vec![
        (
            SUB_A.to_string(),
            "Production".to_string(),
            "Enabled".to_string(),
        ),
        (SUB_B.to_string(), "Old".to_string(), "Disabled".to_string()),
    ];
    let run = h
        .run(&["import", "--from-azure", "--config", &base_path])
        .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout
            .contains("# cannot be polled: Azure reports it Disabled"),
        "{}",
        run.stdout
    );
    std::fs::write(&full, format!("{base}\n{}", run.stdout)).unwrap();
    let check = h.run(&["check-config", "--config", &full_s]).await;
    assert_eq!(check.code, Some(0), "{}\n{}", check.stderr, run.stdout);
    assert!(
        check.stdout.contains("1 subscription(s)"),
        "{}",
        check.stdout
    );

    // Without [guardrails.api], --from-guardrails says what is missing.
    let plain = base.replace(&h.fakes.guardrails_api_section(), "");
    std::fs::write(h.path("plain.toml"), plain).unwrap();
    let plain_path = h.path("plain.toml").display().to_string();
    let run = h
        .run(&["import", "--from-guardrails", "--config", &plain_path])
        .await;
    assert_eq!(run.code, Some(78), "{}", run.stderr);
    assert!(run.stderr.contains("[guardrails.api]"), "{}", run.stderr);
}

// ------------------------------------------------------------- helpers ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut last = String::new();
    for _ in 0..100 {
        match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
            Ok(r) => {
                let code = r.status().as_u16();
                return (code, r.text().await.unwrap_or_default());
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("GET {path}: {last}");
}

fn ready(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .ok()
        .and_then(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
                .ok()?;
            let mut buf = String::new();
            s.read_to_string(&mut buf).ok()?;
            Some(buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200"))
        })
        .unwrap_or(false)
}
