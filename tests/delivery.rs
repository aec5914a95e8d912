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

async fn an_endpoint_that_pushes_back_gets_everything_exactly_once(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.fakes.ingest.lock().unwrap().capacity = Some(6);
    h.fakes.set_ingest_delay(Duration::from_millis(20));
    let good = h.fakes.add(spread(SUB_A, "a", 400, 8, "Succeeded"));
    // The default (adaptive) limit, with a ceiling.
    h.concurrency = "max_concurrency = 64".into();
    h.once(&["--give-up-after", "30s"]).await.assert_exit(0);
    h.fakes.assert_delivered_exactly_once(&good);
    let i = h.fakes.ingest.lock().unwrap();
    // It went above one in flight (it adapts), and the 429s it provoked by
    // probing were retried, not lost.
    assert!(i.max_in_flight > 1, "max in flight {}", i.max_in_flight);
    assert!(i.throttled > 0, "the limit was probed");
}

async fn a_backlog_does_not_hold_back_another_subscriptions_fresh_events(backend: Backend) {
    let mut h = Harness::on(backend).await;
    h.set_subscriptions(&[SUB_A, SUB_B]);
    h.window = "120s";
    // A slow endpoint, one POST at a time: the order of delivery shows.
    h.fakes.set_ingest_delay(Duration::from_millis(15));
    h.concurrency = "concurrency = 1".into();
    let backlog = h.fakes.add(spread(SUB_A, "old", 300, 100, "Succeeded"));
    let d = h.daemon(&[]);
    // The backlog is being delivered.
    h.fakes
        .wait_for_deliveries(20, Duration::from_secs(60))
        .await;
    // Fresh events for B now, while A's backlog is far from done.
    let fresh = h.fakes.add(spread(SUB_B, "fresh", 5, 1, "Succeeded"));
    h.fakes
        .wait_for_delivery(&fresh, Duration::from_secs(60))
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
    let expected = [backlog, fresh].concat();
    h.fakes
        .wait_for_delivery(&expected, Duration::from_secs(120))
        .await;
    d.kill().await;
    h.fakes.assert_delivered_exactly_once(&expected);
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
    let good = h.fakes.add(spread(SUB_A, "h2", 60, 8, "Succeeded"));
    let run = h.once(&[]).await;
    server.abort();
    run.assert_exit(0);
    let seen = seen.lock().unwrap().clone();
    let delivered: Vec<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_exactly_once(&delivered, &good);
    let not_h2: Vec<_> = seen
        .iter()
        .filter(|(v, _)| *v != axum::http::Version::HTTP_2)
        .collect();
    assert!(not_h2.is_empty(), "not over HTTP/2: {not_h2:?}");
}
