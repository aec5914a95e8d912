//! Delivery under load: the adaptive concurrency limit against an endpoint
//! that pushes back above its capacity, and fairness between a subscription
//! catching up a backlog and one receiving fresh events, and HTTP/2 to an
//! endpoint that offers it through ALPN. Event by event: nothing lost,
//! nothing twice.

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

/// The protocol to the endpoint does not depend on the state: one backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_offering_http2_over_tls_gets_it() {
    use std::sync::{Arc, Mutex};
    let mut h = Harness::new().await;
    // A Guardrails endpoint over TLS whose ALPN offers h2 first, as gateways do.
    let tls = azure_activity_poller::emulator::tls::generate().expect("TLS");
    let mut config = (*tls.config).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let seen: Arc<Mutex<Vec<(axum::http::Version, String)>>> = Arc::default();
    let record = seen.clone();
    let router = axum::Router::new().route(
        "/api/v5/events/raw",
        axum::routing::post(move |req: axum::extract::Request| {
            let record = record.clone();
            async move {
                let version = req.version();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap_or_default();
                let id = serde_json::from_slice(&body)
                    .ok()
                    .and_then(|v| posted_id(&v))
                    .unwrap_or_default();
                record.lock().unwrap().push((version, id));
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(azure_activity_poller::emulator::tls::serve(
        listener,
        router,
        Arc::new(config),
    ));
    // The poller trusts this endpoint's CA beside the fakes'.
    let mut bundle = std::fs::read_to_string(h.path("ca.pem")).unwrap();
    bundle.push_str(&tls.ca_pem);
    std::fs::write(h.path("ca.pem"), bundle).unwrap();
    std::fs::write(
        h.path("ingest-url"),
        format!("https://{addr}/api/v5/events/raw?token={INGEST_TOKEN}"),
    )
    .unwrap();
    let good = spread(SUB_A, "h2", 60, 8, "Succeeded");
    h.fakes.add(good.clone());
    let run = h.once(&[]).await;
    server.abort();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let seen = seen.lock().unwrap().clone();
    let delivered: Vec<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_exactly_once(&delivered, &ids(&good));
    let not_h2: Vec<_> = seen
        .iter()
        .filter(|(v, _)| *v != axum::http::Version::HTTP_2)
        .collect();
    assert!(not_h2.is_empty(), "not over HTTP/2: {not_h2:?}");
}
