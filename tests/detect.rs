//! Detection of Guardrails event handlers (in Azure) and of Guardrails' own
//! poller (its policies, through the GraphQL API): the refusal at start, the
//! pause and resume while the daemon runs, the override, `on_unknown`,
//! `check-config --online` and `import`; the start check of thousands of
//! subscriptions, in a few Resource Graph and GraphQL queries. The real
//! binary against the fakes; no secret (API secret key, webhook token,
//! bearer token) in any output.

mod support;

use std::time::Duration;

use support::admin::{admin_addr, get, wait_until_ready};
use support::detection::{
    FakeHandlers, GR_SECRET_KEY, GraphqlMode, HANDLERS_POLICY, POLLER_POLICY,
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
    thousands_of_subscriptions_are_checked_in_a_few_resource_graph_queries,
    guardrails_is_asked_once_per_policy_whatever_the_number_of_subscriptions,
);

fn live(alerts: usize) -> FakeHandlers {
    FakeHandlers::Deployed {
        group_enabled: true,
        alerts: vec![true; alerts],
    }
}

/// The Guardrails API secret key the poller is given (`GR_SECRET`).
fn give_api_secret(h: &mut Harness, key: &str) {
    h.env.retain(|(k, _)| k != "GR_SECRET");
    h.env.push(("GR_SECRET".into(), key.into()));
}

async fn with_api(backend: Backend) -> Harness {
    let mut h = Harness::on(backend).await;
    h.extra = h.fakes.guardrails_api_section();
    give_api_secret(&mut h, GR_SECRET_KEY);
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
    h.set_subscriptions(&[SUB_A, SUB_B]);
    h.fakes.add(spread(SUB_A, "a", 5, 8, "Succeeded"));
    h.fakes.set_handlers(SUB_B, Some(live(3)));
    for once in [true, false] {
        let run = if once {
            h.once(&[]).await
        } else {
            h.cli(&[]).await
        };
        assert_eq!(run.code, Some(78), "once={once}: {}", run.stderr);
        run.assert_logged(&format!("sub-1e8d8218 ({SUB_B})"))
            .assert_logged(
                "action group turbot_azure_event_handler_action_group in turbot_rg is enabled, 3 alerts route to it",
            )
            // A is fine.
            .assert_not_logged(&format!("({SUB_A}): "));
        h.assert_no_secrets(&run.stderr);
    }
    assert!(h.fakes.arm_requests().is_empty(), "nothing polled");
    assert_eq!(h.fakes.ingest_attempts(), 0, "nothing sent");
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
        let good = h.fakes.add(spread(SUB_A, "a", 7, 8, "Succeeded"));
        h.fakes.set_handlers(SUB_A, Some(handlers.clone()));
        let run = h.once(&[]).await;
        assert_eq!(run.code, Some(0), "{handlers:?}: {}", run.stderr);
        h.fakes.assert_delivered_exactly_once(&good);
        assert_eq!(
            h.fakes.resource_graph_requests(),
            (1, 1),
            "Azure was asked, in one query"
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
    run.assert_exit(78)
        .assert_logged("Guardrails policy Azure > Turbot > Event Poller = Enabled");
    h.assert_no_secrets(&run.stderr);

    // Event handlers enforced in one region of two (values paged).
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Disabled", "sub-a")]);
    h.fakes.set_policy(
        HANDLERS_POLICY,
        SUB_A,
        &[("Skip", "East US"), ("Enforce: Configured", "West Europe")],
    );
    h.once(&[])
        .await
        .assert_exit(78)
        .assert_logged("Event Handlers = Skip (East US), Enforce: Configured (West Europe)");
    assert!(h.fakes.arm_requests().is_empty(), "nothing polled");

    // Both off: it runs.
    h.fakes.set_policy(
        HANDLERS_POLICY,
        SUB_A,
        &[("Enforce: Not configured", "sub-a")],
    );
    let run = h.once(&[]).await;
    run.assert_exit(0);
    assert_eq!(h.fakes.received_ids().len(), 3);
    h.assert_no_secrets(&run.stderr);
}

async fn a_check_that_cannot_be_made_refuses_unless_on_unknown_says_poll(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.add(spread(SUB_A, "a", 4, 8, "Succeeded"));
    h.fakes.set_handlers(SUB_A, Some(FakeHandlers::Forbidden));
    // 403 is unavailable (69), and the log says the way out.
    h.once(&[])
        .await
        .assert_exit(69)
        .assert_logged("cannot tell")
        .assert_logged("HTTP 403")
        .assert_logged("on_unknown");
    assert!(h.fakes.arm_requests().is_empty());

    h.extra = "\n[detection]\non_unknown = \"poll\"\n".into();
    h.once(&[])
        .await
        .assert_exit(0)
        .assert_logged("polling it anyway");
    assert_eq!(h.fakes.received_ids().len(), 4);
}

async fn guardrails_api_faults_are_named_with_the_right_exit_code(backend: Backend) {
    let mut h = with_api(backend).await;
    h.fakes.add(spread(SUB_A, "a", 2, 8, "Succeeded"));
    // A wrong secret key: the configuration is wrong (78).
    give_api_secret(&mut h, "not-the-key-DO-NOT-LOG");
    h.once(&[])
        .await
        .assert_exit(78)
        .assert_logged("refused the API key")
        .assert_not_logged("not-the-key-DO-NOT-LOG");
    give_api_secret(&mut h, GR_SECRET_KEY);
    // Unavailable (503, retried) and a GraphQL error: 69.
    for mode in [GraphqlMode::Status(503), GraphqlMode::Errors] {
        h.fakes.set_graphql(mode);
        let run = h.once(&[]).await;
        assert_eq!(run.code, Some(69), "{mode:?}: {}", run.stderr);
        run.assert_logged("Guardrails");
        h.assert_no_secrets(&run.stderr);
    }
    assert_eq!(h.fakes.ingest_attempts(), 0);
}

async fn event_handlers_false_overrides_detection_with_a_warning(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.extra = "event_handlers = false\n".into(); // in [defaults]
    h.fakes.set_handlers(SUB_A, Some(live(2)));
    let good = h.fakes.add(spread(SUB_A, "a", 3, 8, "Succeeded"));
    h.once(&[])
        .await
        .assert_exit(0)
        .assert_logged("event_handlers = false")
        .assert_logged("you vouch");
    assert!(h.fakes.detection_requests().is_empty(), "not asked");
    h.fakes.assert_delivered_exactly_once(&good);
}

// ------------------------------------------------------------- at scale ----

/// Subscriptions in the tests at scale: three Resource Graph batches. The
/// fakes answer at once: scaled down in time, not in count.
const MANY: usize = 3000;

/// `n` subscription ids.
fn many(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("00000000-0000-4000-8000-{i:012x}"))
        .collect()
}

/// Polls the subscriptions `subs`, all left to detection. A lease round
/// of thousands of subscriptions needs more than the harness's short
/// lease allows it (half of one), on a machine shared with other tests.
fn poll_all(h: &mut Harness, subs: &[String]) {
    h.subscriptions = subs.iter().map(|s| (s.clone(), false)).collect();
    h.lease = "30s";
}

async fn thousands_of_subscriptions_are_checked_in_a_few_resource_graph_queries(backend: Backend) {
    let mut h = Harness::on(backend).await;
    let subs = many(MANY);
    poll_all(&mut h, &subs);
    let fed = &subs[1717];
    h.fakes.set_handlers(fed, Some(live(2)));
    // Handlers that do not feed theirs, in other batches.
    h.fakes
        .set_handlers(&subs[5], Some(FakeHandlers::EmptyResourceGroup));
    h.fakes.set_handlers(
        &subs[2999],
        Some(FakeHandlers::Deployed {
            group_enabled: false,
            alerts: vec![true],
        }),
    );
    let named = format!(
        "({fed}): action group turbot_azure_event_handler_action_group in turbot_rg is enabled, 2 alerts route to it"
    );
    h.once(&[])
        .await
        .assert_exit(78)
        .assert_logged(&named)
        .assert_not_logged(&format!("({}): ", subs[5]))
        .assert_not_logged(&format!("({}): ", subs[2999]));
    let (requests, batches) = h.fakes.resource_graph_requests();
    assert_eq!(batches, MANY / 1000, "one query a thousand subscriptions");
    assert!(requests <= 2 * batches, "{requests} requests");
    assert!(
        h.fakes
            .detection_requests()
            .iter()
            .all(|r| r == "resourceGraph"),
        "no per-subscription read"
    );
    assert!(h.fakes.arm_requests().is_empty(), "nothing polled");

    // Resource Graph refused: every subscription is read with ARM instead,
    // and the fed one is still found.
    h.fakes.refuse_resource_graph(true);
    let run = h.once(&[]).await;
    run.assert_exit(78)
        .assert_logged(&named)
        .assert_logged("Resource Graph refused the query (HTTP 403");
    let groups_read = h
        .fakes
        .detection_requests()
        .iter()
        .filter(|r| r.starts_with("actionGroups"))
        .count();
    assert_eq!(groups_read, MANY, "each subscription read once");
    assert!(h.fakes.arm_requests().is_empty(), "nothing polled");
    h.assert_no_secrets(&run.stderr);

    // All clear: every subscription is polled (looking back a minute: the
    // pass over thousands may reach this one seconds after the start).
    h.fakes.refuse_resource_graph(false);
    h.fakes.set_handlers(fed, None);
    h.window = "60s";
    let good = h.fakes.add(spread(fed, "f", 3, 8, "Succeeded"));
    h.once(&[]).await.assert_exit(0);
    let polled: std::collections::HashSet<String> = h
        .fakes
        .arm_requests()
        .into_iter()
        .map(|r| r.subscription)
        .collect();
    assert_eq!(polled.len(), MANY);
    h.fakes.assert_delivered_exactly_once(&good);
}

async fn guardrails_is_asked_once_per_policy_whatever_the_number_of_subscriptions(
    backend: Backend,
) {
    let mut h = with_api(backend).await;
    let subs = many(MANY);
    for sub in &subs {
        h.fakes
            .set_policy(POLLER_POLICY, sub, &[("Disabled", "sub")]);
        h.fakes.set_policy(
            HANDLERS_POLICY,
            sub,
            &[("Enforce: Not configured", "sub"), ("Skip", "East US")],
        );
    }
    // Enforced in one region of one subscription: placed by its path.
    let fed = &subs[2024];
    h.fakes.set_policy(
        HANDLERS_POLICY,
        fed,
        &[
            ("Enforce: Not configured", "sub"),
            ("Enforce: Configured", "West Europe"),
        ],
    );
    let named = format!(
        "({fed}): Guardrails policy Azure > Turbot > Event Handlers = Enforce: Not configured (sub), Enforce: Configured (West Europe)"
    );
    let queries = |h: &Harness| h.fakes.graphql_requests().0;

    // Every subscription, or a handful: the same queries, the workspace's
    // values in pages of 5,000 (two of Event Handlers, one of Event Poller).
    for n in [MANY, 3] {
        let mut asked = subs[..n].to_vec();
        if n < MANY {
            asked.push(fed.clone());
        }
        poll_all(&mut h, &asked);
        let before = queries(&h);
        let run = h.once(&[]).await;
        run.assert_exit(78).assert_logged(&named);
        assert_eq!(queries(&h) - before, 3, "{n} subscriptions");
        h.assert_no_secrets(&run.stderr);
    }
    let (_, filters) = h.fakes.graphql_requests();
    for f in &filters {
        assert!(
            f.contains(" level:self,descendant") && f.contains("policyTypeLevel:self"),
            "{f}"
        );
    }

    // Values that nothing places under a subscription: each one is asked
    // about on its own, and the fed one is still found.
    h.fakes.graphql.lock().unwrap().regions_without_path = true;
    let before = queries(&h);
    h.once(&[])
        .await
        .assert_exit(78)
        .assert_logged(&named)
        .assert_logged("asking about each subscription on its own");
    assert!(queries(&h) - before > 3 + 4, "the four asked on their own");
    assert!(h.fakes.arm_requests().is_empty(), "nothing polled");
}

// ------------------------------------------------------- while running ----

async fn handlers_appearing_pause_the_subscription_and_their_removal_resumes_it(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.set_subscriptions(&[SUB_A, SUB_B]);
    h.window = "60s";
    h.extra = "\n[detection]\ninterval = \"1s\"\n\n[telemetry]\nlisten = \"127.0.0.1:0\"\n".into();
    let first_a = h.fakes.add(spread(SUB_A, "a1", 5, 5, "Succeeded"));
    let first_b = h.fakes.add(spread(SUB_B, "b1", 5, 5, "Succeeded"));
    let d = h.daemon(&[]);
    let addr = admin_addr(&d).await;
    h.fakes
        .wait_for_delivery(
            &[first_a.clone(), first_b.clone()].concat(),
            Duration::from_secs(30),
        )
        .await;

    // Handlers go live on A.
    h.fakes.set_handlers(SUB_A, Some(live(1)));
    d.wait_for_log("polling paused", 1).await;
    let (code, body) = get(&addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(SUB_A) && body.contains("paused"), "{body}");
    let (_, metrics) = get(&addr, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "azure_activity_poller_subscription_paused{{subscription=\"{SUB_A}\"}} 1"
        )),
        "{metrics}"
    );
    h.cli(&["status"])
        .await
        .assert_printed("PAUSED")
        .assert_printed("paused");

    // While paused: A's new entries are not polled; B's are delivered.
    let a_before = h.fakes.arm_requests_for(SUB_A);
    let during_a = h.fakes.add(spread(SUB_A, "a2", 4, 2, "Succeeded"));
    let during_b = h.fakes.add(spread(SUB_B, "b2", 4, 2, "Succeeded"));
    h.fakes
        .wait_for_delivery(&during_b, Duration::from_secs(30))
        .await;
    // Several detection rounds later (one Resource Graph query each), still
    // nothing polled or sent for A.
    let checks = h.fakes.resource_graph_requests().0;
    eventually(Duration::from_secs(30), "three more checks", || {
        h.fakes.resource_graph_requests().0 >= checks + 3
    })
    .await;
    assert_eq!(
        h.fakes.arm_requests_for(SUB_A),
        a_before,
        "A was polled while paused"
    );
    let got = h.fakes.received_ids();
    assert!(
        during_a.iter().all(|id| !got.contains(id)),
        "A's entries were sent while paused"
    );

    // Handlers removed: A resumes from its watermark and catches up.
    h.fakes.set_handlers(SUB_A, None);
    h.fakes
        .wait_for_delivery(&during_a, Duration::from_secs(30))
        .await;
    assert!(d.log().contains("polling resumes"), "{}", d.log());
    wait_until_ready(&addr, Duration::from_secs(30), "ready again").await;
    let log = d.stop_cleanly().await;
    h.fakes
        .assert_delivered_exactly_once(&[first_a, first_b, during_a, during_b].concat());
    h.assert_no_secrets(&log);
}

async fn sighup_rechecks_at_once_and_a_failed_check_keeps_the_last_state(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.extra = "\n[detection]\ninterval = \"1h\"\n".into();
    let first = h.fakes.add(spread(SUB_A, "a", 3, 5, "Succeeded"));
    let d = h.daemon(&[]);
    h.fakes
        .wait_for_delivery(&first, Duration::from_secs(30))
        .await;
    // Live now, but the next periodic check is an hour away: SIGHUP checks at once.
    h.fakes.set_handlers(SUB_A, Some(live(2)));
    d.signal("HUP");
    d.wait_for_log("polling paused", 1).await;
    // The check then fails (403): the subscription stays paused.
    h.fakes.set_handlers(SUB_A, Some(FakeHandlers::Forbidden));
    d.signal("HUP");
    d.wait_for_log("keeps its last known state", 1).await;
    assert!(!d.log().contains("polling resumes"), "{}", d.log());
    let polls = h.fakes.arm_requests().len();
    let late = h.fakes.add(spread(SUB_A, "late", 2, 1, "Succeeded"));
    // Clear again: it resumes and catches up.
    h.fakes.set_handlers(SUB_A, None);
    d.signal("HUP");
    h.fakes
        .wait_for_delivery(&late, Duration::from_secs(30))
        .await;
    assert!(h.fakes.arm_requests().len() > polls);
    let log = d.stop_cleanly().await;
    assert_eq!(h.fakes.received_ids().len(), 5, "no duplicate");
    h.assert_no_secrets(&log);
}

async fn a_guardrails_outage_while_running_keeps_the_last_state(backend: Backend) {
    let mut h = with_api(backend).await;
    h.extra.push_str("\n[detection]\ninterval = \"1h\"\n");
    let first = h.fakes.add(spread(SUB_A, "a", 3, 5, "Succeeded"));
    let d = h.daemon(&[]);
    h.fakes
        .wait_for_delivery(&first, Duration::from_secs(30))
        .await;

    // Clear, then Guardrails goes away: the subscription is still polled.
    h.fakes.set_graphql(GraphqlMode::Status(503));
    d.signal("HUP");
    d.wait_for_log("keeps its last known state", 1).await;
    let during = h.fakes.add(spread(SUB_A, "during", 2, 1, "Succeeded"));
    h.fakes
        .wait_for_delivery(&during, Duration::from_secs(30))
        .await;

    // Back, saying Guardrails' own poller is on: paused.
    h.fakes.set_graphql(GraphqlMode::Up);
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Enabled", "sub-a")]);
    d.signal("HUP");
    d.wait_for_log("polling paused", 1).await;
    // Away again (errors this time): it stays paused, nothing more is polled.
    h.fakes.set_graphql(GraphqlMode::Errors);
    let polls = h.fakes.arm_requests().len();
    d.signal("HUP");
    d.wait_for_log("keeps its last known state", 2).await;
    let late = h.fakes.add(spread(SUB_A, "late", 2, 1, "Succeeded"));
    assert!(!d.log().contains("polling resumes"), "{}", d.log());
    assert_eq!(h.fakes.arm_requests().len(), polls, "polled while paused");

    // Back and clear: it resumes from its watermark and catches up.
    h.fakes.set_graphql(GraphqlMode::Up);
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Disabled", "sub-a")]);
    d.signal("HUP");
    h.fakes
        .wait_for_delivery(&late, Duration::from_secs(30))
        .await;
    let log = d.stop_cleanly().await;
    h.fakes
        .assert_delivered_exactly_once(&[first, during, late].concat());
    h.assert_no_secrets(&log);
}

// ------------------------------------------------------------ commands ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_prints_the_table_and_the_verdict() {
    // Reads no state: one backend is enough.
    let mut h = with_api(Backend::Sqlite).await;
    h.set_subscriptions(&[SUB_A, SUB_B]);
    let online = ["check-config", "--online"];
    let run = h.cli(&online).await;
    run.assert_exit(0);
    for col in [
        "SUBSCRIPTION",
        "AZURE HANDLERS",
        "GUARDRAILS HANDLERS POLICY",
        "GUARDRAILS POLLER POLICY",
        "VERDICT",
    ] {
        run.assert_printed(col);
    }
    run.assert_printed("none (no turbot_rg)");

    h.fakes.set_handlers(SUB_B, Some(live(3)));
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Enabled", "sub-a")]);
    let run = h.cli(&online).await;
    run.assert_exit(78);
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
    h.assert_no_secrets(&(run.stdout.clone() + &run.stderr));

    h.fakes.set_handlers(SUB_B, Some(FakeHandlers::Forbidden));
    h.fakes
        .set_policy(POLLER_POLICY, SUB_A, &[("Disabled", "sub-a")]);
    h.cli(&online)
        .await
        .assert_exit(69)
        .assert_printed("REFUSE: cannot tell");
}

/// Asserts that `sections` pasted under `base` make a valid configuration
/// with one subscription.
async fn assert_valid_pasted(h: &mut Harness, base: &str, sections: &str) {
    let full = h.path("full.toml");
    std::fs::write(&full, format!("{base}\n{sections}")).unwrap();
    let full = full.display().to_string();
    let check = h.run(&["check-config", "--config", &full]).await;
    assert_eq!(check.code, Some(0), "{}\n{sections}", check.stderr);
    check.assert_printed("1 subscription(s)");
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
    run.assert_exit(0)
        .assert_printed("interval = \"5m\"")
        .assert_printed("window = \"15m\"")
        .assert_printed("# cannot be polled: Guardrails event handlers are on")
        .assert_printed("Event Poller to Disabled");
    h.assert_no_secrets(&(run.stdout.clone() + &run.stderr));
    // Pasted into the file, it is a valid configuration with A only.
    assert_valid_pasted(&mut h, &base, &run.stdout).await;

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
    run.assert_exit(0)
        .assert_printed("# cannot be polled: Azure reports it Disabled");
    assert_valid_pasted(&mut h, &base, &run.stdout).await;

    // Without [guardrails.api], --from-guardrails says what is missing.
    let plain = base.replace(&h.fakes.guardrails_api_section(), "");
    std::fs::write(h.path("plain.toml"), plain).unwrap();
    let plain_path = h.path("plain.toml").display().to_string();
    h.run(&["import", "--from-guardrails", "--config", &plain_path])
        .await
        .assert_exit(78)
        .assert_logged("[guardrails.api]");
}
