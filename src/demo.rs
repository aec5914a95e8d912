//! `azure-activity-poller demo`: the emulator in-process, the real daemon
//! against it as a child process, a fixed run with late entries, throttling,
//! Azure faults and an endpoint outage, then a summary a person can read:
//! per subscription, entries generated, expected, delivered, missing,
//! duplicates and lag.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use crate::emulator::{Emulator, EmulatorError, PollerSettings, Report, Scenario};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Emulator(#[from] EmulatorError),
    #[error("demo: {0}")]
    Io(String),
}

/// The embedded scenario: three subscriptions, a quarter of entries late by up
/// to 12 s, 5% throttled, 3% server errors, 2% cut connections, ARM's token
/// bucket, the endpoint down from 6 s to 14 s, and Guardrails event handlers
/// switched on in the third subscription from 10 s to 18 s (the poller pauses
/// it, then resumes from its watermark).
pub const SCENARIO: &str = r#"
seed = 7
page_size = 50

[[subscription]]
id = "3f2a1c4e-0b5d-4e6f-8a7b-9c0d1e2f3a4b"
rate_per_minute = 240
succeeded = 0.75

[[subscription]]
id = "7b8c9d0e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"
rate_per_minute = 120
succeeded = 0.8

[[subscription]]
id = "c1d2e3f4-a5b6-4c7d-9e8f-0a1b2c3d4e5f"
rate_per_minute = 60
succeeded = 0.9
event_handlers_from = "10s"
event_handlers_until = "18s"

[late]
delay_min = "0s"
delay_max = "1500ms"
fraction = 0.25
late_min = "3s"
late_max = "12s"

[azure]
throttle_rate = 0.05
retry_after = "1s"
error_rate = 0.03
drop_rate = 0.02
token_bucket = true

[[endpoint_outage]]
at = "6s"
duration = "8s"
mode = "unavailable"
"#;

pub async fn run(duration: Duration) -> Result<bool, DemoError> {
    let scenario = Scenario::parse(SCENARIO, "embedded demo scenario")
        .map_err(|e| DemoError::Io(e.to_string()))?;
    let max_late = scenario.late.max_delay();
    let dir =
        tempfile::tempdir().map_err(|e| DemoError::Io(format!("temporary directory: {e}")))?;
    let emulator = Emulator::start(scenario, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
    let settings = PollerSettings {
        interval: "1s",
        window: "20s",
        format: "activity-log-alert",
        retry_base: "100ms",
        detection_interval: Some("2s"),
    };
    let config = emulator.write_poller_files(dir.path(), &settings)?;
    let log_path = dir.path().join("poller.log");
    let log = std::fs::File::create(&log_path).map_err(|e| DemoError::Io(e.to_string()))?;
    let exe = std::env::current_exe().map_err(|e| DemoError::Io(e.to_string()))?;

    println!(
        "Emulated Azure at http://{}, Entra ID at https://{}, Guardrails at http://{}",
        emulator.arm, emulator.login, emulator.ingest
    );
    println!(
        "Running the poller for {}s: late entries (up to {}s), throttling, 5xx, cut connections, the endpoint down from 6s to 14s,\nand Guardrails event handlers live in c1d2e3f4-... from 10s to 18s (checked every 2s).",
        duration.as_secs(),
        max_late.as_secs()
    );
    println!();
    let mut child = tokio::process::Command::new(exe)
        .arg("--config")
        .arg(&config)
        .env("SSL_CERT_FILE", dir.path().join("ca.pem"))
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DemoError::Io(format!("cannot start the poller: {e}")))?;

    let started = Instant::now();
    let mut next_print = started;
    while started.elapsed() < duration {
        if Instant::now() >= next_print {
            progress(&emulator.report(&["Succeeded"]), started.elapsed());
            next_print += Duration::from_secs(4);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(DemoError::Io(format!(
                "the poller exited early ({status}); its log: {}",
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    emulator.stop_generating();
    println!("Stopped generating; waiting for the last late entries to appear and be delivered...");
    let last = emulator.last_visible_at().unwrap_or_else(Utc::now);
    let settle = Instant::now()
        + ((last - Utc::now()).to_std().unwrap_or_default())
        + Duration::from_secs(30);
    loop {
        let r = emulator.report(&["Succeeded"]);
        let all_visible = Utc::now() > last;
        if (all_visible && r.missing() == 0) || Instant::now() >= settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Polls that re-query the window after the last delivery would show any duplicate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;
    let report = emulator.report(&["Succeeded"]);
    summary(&report);
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let count = |needle: &str| log_text.matches(needle).count();
    println!();
    println!(
        "The poller's log: {} polls, {} throttling waits, {} failed deliveries retried.",
        count("poll complete"),
        count("throttling"),
        count("delivery to the ingestion endpoint failed"),
    );
    println!(
        "Event handlers: {} check(s) found them live and kept c1d2e3f4-... paused; it resumed {} time(s), from its watermark.",
        count("polling paused"),
        count("polling resumes"),
    );
    let stopped_cleanly = matches!(status, Ok(Ok(s)) if s.success());
    println!(
        "SIGTERM: the poller {}.",
        if stopped_cleanly {
            "finished its work and exited 0"
        } else {
            "did not exit cleanly"
        }
    );
    let ok = report.missing() == 0
        && report.duplicates() == 0
        && report.unexpected.is_empty()
        && stopped_cleanly;
    println!();
    println!(
        "{}",
        if ok {
            "Every Succeeded entry was delivered exactly once."
        } else {
            "Something was lost or duplicated: see above."
        }
    );
    Ok(ok)
}

fn progress(r: &Report, elapsed: Duration) {
    println!(
        "  {:>3}s  expected so far {:>5}  delivered {:>5}",
        elapsed.as_secs(),
        r.expected(),
        r.delivered()
    );
}

fn summary(r: &Report) {
    println!();
    println!(
        "{:<38} {:>9} {:>9} {:>9} {:>7} {:>10} {:>9} {:>9}",
        "subscription",
        "generated",
        "expected",
        "delivered",
        "missing",
        "duplicates",
        "lag p50",
        "lag max"
    );
    for s in &r.subscriptions {
        println!(
            "{:<38} {:>9} {:>9} {:>9} {:>7} {:>10} {:>8.1}s {:>8.1}s",
            s.subscription,
            s.generated,
            s.expected,
            s.delivered,
            s.missing.len(),
            s.duplicates,
            s.lag_p50_ms as f64 / 1000.0,
            s.lag_max_ms as f64 / 1000.0
        );
    }
    println!(
        "(generated: every entry, all statuses; expected: the Succeeded ones; lag: from the moment an entry became visible in Azure to its delivery)"
    );
}
