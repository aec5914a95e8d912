//! The fault soak: the real binary against the emulator, with several
//! subscriptions, entries up to most of the window late, random 429/5xx/cut
//! connections from Azure, endpoint outages, and the poller killed with
//! SIGKILL and restarted several times, while a fourth subscription catches
//! up four hours of backlog in parallel time slices through ARM's read
//! budget (the emulator's token bucket). At the end, what was delivered is
//! compared with what should have been, event by event. Fixed seeds; each
//! variant runs for about 40 seconds.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use azure_activity_poller::emulator::{Emulator, PollerSettings, Report, Scenario};
use chrono::Utc;
use tokio::process::Command;
use tokio::time::Instant;

use support::postgres::PgServer;
use support::{Backend, Daemon};

const SCENARIO: &str = r#"
seed = 20261121
page_size = 40

[[subscription]]
id = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
rate_per_minute = 600
succeeded = 0.7

[[subscription]]
id = "1b2c3d4e-5f6a-4b7c-9d8e-9f0a1b2c3d4e"
rate_per_minute = 360
succeeded = 0.8

[[subscription]]
id = "2c3d4e5f-6a7b-4c8d-ae9f-0a1b2c3d4e5f"
rate_per_minute = 180
succeeded = 0.9

[[subscription]]
id = "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a"
rate_per_minute = 60
succeeded = 0.8
backlog = 6000
backlog_span = "4h"
backlog_succeeded_only = true

[late]
delay_min = "0s"
delay_max = "1s"
fraction = 0.3
late_min = "2s"
late_max = "14s"

[azure]
throttle_rate = 0.05
retry_after = "1s"
error_rate = 0.05
drop_rate = 0.03
token_bucket = true

[[endpoint_outage]]
at = "6s"
duration = "5s"
mode = "unavailable"

[[endpoint_outage]]
at = "17s"
duration = "3s"
mode = "error"

[[endpoint_outage]]
at = "24s"
duration = "3s"
mode = "refuse"

[[endpoint_outage]]
at = "30s"
duration = "3s"
mode = "slow"
delay = "1500ms"
"#;

/// Generation runs this long; then the last late entries settle.
const GENERATE_FOR: Duration = Duration::from_secs(36);
/// The poller's `[guardrails] max_concurrency` in the soak: POSTs in flight
/// at a kill, at most.
const CONCURRENCY: usize = 16;
/// Where every subscription without a watermark starts: before the backlog.
const SINCE: &str = "4h10m";

fn settings() -> PollerSettings {
    PollerSettings {
        interval: "1s",
        window: "20s",
        format: "activity-log-alert",
        retry_base: "50ms",
        detection_interval: Some("2s"),
    }
}

/// Starts the poller, its log in `dir`, named for the `run`.
fn spawn(dir: &Path, config: &Path, run: usize) -> Daemon {
    let log = dir.join(format!("poller-{run}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_azure-activity-poller"))
        .arg("--config")
        .arg(config)
        .args(["--since", SINCE])
        .env("SSL_CERT_FILE", dir.join("ca.pem"))
        .env_remove("SSL_CERT_DIR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the poller");
    Daemon { child, log }
}

fn describe(r: &Report) -> String {
    let mut s = String::new();
    for sub in &r.subscriptions {
        s.push_str(&format!(
            "{}: generated {}, expected {}, delivered {}, missing {}, duplicates {}, requests {}, lag p50 {} ms max {} ms\n",
            sub.subscription,
            sub.generated,
            sub.expected,
            sub.delivered,
            sub.missing.len(),
            sub.duplicates,
            sub.requests,
            sub.lag_p50_ms,
            sub.lag_max_ms
        ));
    }
    s.push_str(&format!("unexpected deliveries: {:?}", r.unexpected));
    s
}

/// Runs the soak; `kill_every` SIGKILLs and restarts the poller on that
/// rhythm (seeded jitter). Returns the final report and the number of kills.
async fn soak(kill_every: Option<Duration>, backend: Backend) -> (Report, usize, String) {
    let scenario = Scenario::parse(SCENARIO, "soak").expect("scenario");
    let last_late = scenario.late.max_delay();
    let dir = tempfile::tempdir().expect("tempdir");
    let emulator = Emulator::start(scenario, IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .expect("emulator");
    let config = emulator
        .write_poller_files(dir.path(), &settings())
        .expect("poller files");
    let mut text = std::fs::read_to_string(&config).expect("read config");
    // On PostgreSQL a restarted poller is another instance: it takes the
    // subscriptions over once the killed one's leases expire (short here).
    let _pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let (server, url) = PgServer::with_database("poller").await;
            text = text.replace(
                "[state]\npath = \"state.db\"\n",
                &format!("[state]\nurl = \"{url}\"\n\n[ha]\nlease = \"2s\"\n"),
            );
            assert!(text.contains("lease = \"2s\""), "{text}");
            Some(server)
        }
    };
    std::fs::write(
        &config,
        text.replace(
            "[guardrails]\n",
            &format!("[guardrails]\nmax_concurrency = {CONCURRENCY}\n"),
        ),
    )
    .expect("write config");
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut runs = 0;
    let mut kills = 0;
    let mut poller = spawn(dir.path(), &config, runs);
    if let Some(every) = kill_every {
        while started.elapsed() < GENERATE_FOR {
            let jitter = Duration::from_millis(rng.u64(0..every.as_millis() as u64));
            tokio::time::sleep(
                (every / 2 + jitter).min(GENERATE_FOR.saturating_sub(started.elapsed())),
            )
            .await;
            if started.elapsed() >= GENERATE_FOR {
                break;
            }
            poller.kill().await;
            kills += 1;
            runs += 1;
            poller = spawn(dir.path(), &config, runs);
        }
    } else {
        tokio::time::sleep(GENERATE_FOR).await;
    }
    emulator.stop_generating();
    // Wait until every entry is visible and has had time to be polled and
    // delivered, or a deadline passes.
    let deadline = Instant::now() + last_late + Duration::from_secs(40);
    loop {
        let all_visible = emulator.last_visible_at().is_none_or(|t| t < Utc::now());
        if all_visible && emulator.report(&["Succeeded"]).missing() == 0 {
            break;
        }
        if let Ok(Some(status)) = poller.child.try_wait() {
            let log = poller.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "the poller exited on its own ({status}); its log ends:\n{}",
                tail.join("\n")
            );
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more polls re-query the settled window: late duplicates would show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, _) = poller.stop().await;
    assert_eq!(code, Some(0), "the poller did not exit 0 on SIGTERM");
    let mut logs = String::new();
    for run in 0..=runs {
        logs.push_str(
            &std::fs::read_to_string(dir.path().join(format!("poller-{run}.log")))
                .unwrap_or_default(),
        );
    }
    (emulator.report(&["Succeeded"]), kills, logs)
}

fn assert_sound(report: &Report, logs: &str) {
    assert!(
        report.expected() > 300,
        "too few events to mean anything:\n{}",
        describe(report)
    );
    assert_eq!(report.missing(), 0, "events lost:\n{}", describe(report));
    assert!(
        report.unexpected.is_empty(),
        "non-Succeeded or unknown events delivered:\n{}",
        describe(report)
    );
    assert!(!logs.contains("panicked"), "a panic in the poller's logs");
    assert!(
        logs.contains("catching up in parallel time slices"),
        "the backlog was not caught up in parallel"
    );
    // The faults really happened.
    assert!(logs.contains("throttling"), "no throttling was met");
    // A failed round logs its own line, or (when nothing got through and it
    // is declared an outage at once) the outage's line instead.
    assert!(
        logs.contains("delivery to the ingestion endpoint failed")
            || logs.contains("the ingestion endpoint is unavailable"),
        "no endpoint outage was met"
    );
}

crate::on_both_backends!(
    soak_without_kills_delivers_exactly_once,
    soak_with_sigkills_loses_nothing_and_duplicates_only_cut_posts,
);

async fn soak_without_kills_delivers_exactly_once(backend: Backend) {
    let (report, _, logs) = soak(None, backend).await;
    eprintln!("soak without kills:\n{}", describe(&report));
    assert_sound(&report, &logs);
    assert_eq!(
        report.duplicates(),
        0,
        "duplicates without any kill:\n{}\nlease and state lines of the log:\n{}",
        describe(&report),
        logs.lines()
            .filter(|l| l.contains("lease") || l.contains("state database"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

async fn soak_with_sigkills_loses_nothing_and_duplicates_only_cut_posts(backend: Backend) {
    let (report, kills, logs) = soak(Some(Duration::from_secs(6)), backend).await;
    eprintln!("soak with {kills} SIGKILLs:\n{}", describe(&report));
    assert!(kills >= 4, "only {kills} kills");
    assert_sound(&report, &logs);
    // A POST the endpoint acknowledged just before a kill may be sent again:
    // at most the POSTs in flight, per kill.
    assert!(
        report.duplicates() <= kills * CONCURRENCY,
        "{} duplicates after {kills} kills:\n{}",
        report.duplicates(),
        describe(&report)
    );
}
