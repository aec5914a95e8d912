//! The daemon's admin server (`[telemetry] listen`) as a test reads it: the
//! address it logged, `GET`s of `/metrics`, `/healthz` and `/readyz`, and the
//! metrics parsed.

use std::collections::HashMap;
use std::time::Duration;

use super::{Daemon, eventually, eventually_async};

/// The admin address the daemon logged ("listen=127.0.0.1:PORT"), once it
/// listens: configure `listen = "127.0.0.1:0"`.
pub async fn admin_addr(d: &Daemon) -> String {
    let mut addr = String::new();
    eventually(
        Duration::from_secs(30),
        "the admin server to listen",
        || {
            let log = d.log();
            match log
                .lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("listen=").nth(1))
            {
                Some(rest) => {
                    addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    true
                }
                None => false,
            }
        },
    )
    .await;
    addr
}

/// `GET http://{addr}{path}`: the status code and the body.
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Waits until `/readyz` answers 200, for `limit` at most.
pub async fn wait_until_ready(addr: &str, limit: Duration, what: &str) {
    eventually_async(limit, what, || async {
        get(addr, "/readyz").await.0 == 200
    })
    .await;
}

/// Prometheus text: `name{labels}` -> value.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the poller's metric `name` (its prefix left out) with
/// these labels, if it is there.
pub fn metric(m: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.iter()
        .find(|(k, _)| {
            let full = format!("azure_activity_poller_{name}");
            (k.as_str() == full || k.starts_with(&format!("{full}{{")))
                && labels
                    .iter()
                    .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
}
