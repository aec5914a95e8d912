#![forbid(unsafe_code)]
//! `activity-log-emulator`: Azure's activity log, Entra ID and a Guardrails
//! endpoint on loopback, for trying the poller without an Azure account.
//! See `src/emulator/mod.rs`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use azure_activity_poller::emulator::scenario::{Scenario, SubscriptionScenario};
use azure_activity_poller::emulator::{Emulator, PollerSettings};
use clap::Parser;

/// Serves the Activity Logs - List call, an OAuth2 token endpoint (TLS) and a
/// Guardrails-like ingestion endpoint on loopback, generating activity log
/// entries as a scenario says, and writes a poller configuration for them.
#[derive(Debug, Parser)]
#[command(
    name = "activity-log-emulator",
    version,
    after_help = "Example:
  activity-log-emulator --dir /tmp/emu --subscriptions 2 --rate 300 --late-fraction 0.2 --late-max 60s
  # then, in another shell:
  SSL_CERT_FILE=/tmp/emu/ca.pem azure-activity-poller --config /tmp/emu/poller.toml
  # what was delivered against what should have been:
  curl http://ADDRESS/_emulator/report"
)]
struct Args {
    /// A scenario file (TOML); flags below override its values.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Where to write ca.pem, client-secret, ingest-url and poller.toml.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    #[arg(long)]
    seed: Option<u64>,
    /// Subscriptions to emulate when the scenario names none.
    #[arg(long, default_value_t = 1)]
    subscriptions: usize,
    /// Operations per minute per subscription (when the scenario names none).
    #[arg(long, default_value_t = 120.0)]
    rate: f64,
    #[arg(long)]
    page_size: Option<usize>,
    /// Share of entries that arrive late.
    #[arg(long)]
    late_fraction: Option<f64>,
    /// The longest delay of a late entry.
    #[arg(long, value_parser = humantime::parse_duration)]
    late_max: Option<Duration>,
    #[arg(long)]
    throttle_rate: Option<f64>,
    #[arg(long)]
    error_rate: Option<f64>,
    #[arg(long)]
    drop_rate: Option<f64>,
    /// ARM's read limit: 250 tokens refilled at 25 per second.
    #[arg(long)]
    token_bucket: bool,
    /// Operations already in the log at start, per subscription.
    #[arg(long, default_value_t = 0)]
    backlog: usize,
    /// How far back the backlog spreads.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    backlog_span: Duration,
    /// One Succeeded entry per backlog operation (for benchmarks).
    #[arg(long)]
    backlog_succeeded_only: bool,
    /// Serve Azure Resource Manager over TLS too.
    #[arg(long)]
    arm_tls: bool,
    /// Whether Resource Graph answers; off: every query is refused (403), so
    /// that the poller's per-subscription ARM reads are used instead.
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    resource_graph: Option<String>,
    /// The ingestion endpoint's capacity: above this many requests at once it
    /// answers 429 with Retry-After: 1 (0: no limit).
    #[arg(long, value_name = "N")]
    endpoint_max_in_flight: Option<usize>,
    /// How long the ingestion endpoint takes to accept one event.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    endpoint_service_time: Option<Duration>,
    /// Poll interval and window written into poller.toml.
    #[arg(long, default_value = "10s")]
    interval: String,
    #[arg(long, default_value = "60s")]
    window: String,
}

fn scenario(args: &Args) -> Result<Scenario, String> {
    let mut s = match &args.scenario {
        Some(p) => Scenario::load(p).map_err(|e| e.to_string())?,
        None => Scenario::parse("", "flags").map_err(|e| e.to_string())?,
    };
    if s.subscriptions.is_empty() {
        for i in 0..args.subscriptions {
            s.subscriptions.push(SubscriptionScenario {
                id: format!("00000000-0000-4000-8000-{:012x}", i + 1),
                rate_per_minute: args.rate,
                succeeded: 0.8,
                backlog: args.backlog,
                backlog_span: args.backlog_span,
                backlog_succeeded_only: args.backlog_succeeded_only,
                event_handlers_from: None,
                event_handlers_until: None,
                event_handlers: Default::default(),
            });
        }
    }
    if let Some(v) = args.seed {
        s.seed = v;
    }
    if let Some(v) = args.page_size {
        s.page_size = v;
    }
    if let Some(v) = args.late_fraction {
        s.late.fraction = v;
        s.late.late_max = s.late.late_max.max(Duration::from_secs(1));
    }
    if let Some(v) = args.late_max {
        s.late.late_max = v;
    }
    if let Some(v) = args.throttle_rate {
        s.azure.throttle_rate = v;
    }
    if let Some(v) = args.error_rate {
        s.azure.error_rate = v;
    }
    if let Some(v) = args.drop_rate {
        s.azure.drop_rate = v;
    }
    s.azure.token_bucket |= args.token_bucket;
    if let Some(v) = args.endpoint_max_in_flight {
        s.endpoint.max_in_flight = v;
    }
    if let Some(v) = args.endpoint_service_time {
        s.endpoint.service_time = v;
    }
    s.arm_tls |= args.arm_tls;
    if let Some(v) = &args.resource_graph {
        s.resource_graph.enabled = v == "on";
    }
    s.validate()?;
    Ok(s)
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let scenario = match scenario(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("activity-log-emulator: {e}");
            return ExitCode::from(78);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("activity-log-emulator: {e}");
            return ExitCode::from(70);
        }
    };
    let arm_tls = scenario.arm_tls;
    rt.block_on(async move {
        if let Err(e) = std::fs::create_dir_all(&args.dir) {
            eprintln!(
                "activity-log-emulator: cannot create {}: {e}",
                args.dir.display()
            );
            return ExitCode::from(73);
        }
        let emulator = match Emulator::start(scenario, args.listen).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("activity-log-emulator: {e}");
                return ExitCode::from(69);
            }
        };
        let settings = PollerSettings {
            interval: leak(&args.interval),
            window: leak(&args.window),
            ..PollerSettings::default()
        };
        let config = match emulator.write_poller_files(&args.dir, &settings) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("activity-log-emulator: {e}");
                return ExitCode::from(73);
            }
        };
        let scheme = if arm_tls { "https" } else { "http" };
        println!("Azure Resource Manager  {scheme}://{}", emulator.arm);
        println!("Entra ID (TLS)          https://{}", emulator.login);
        println!(
            "Guardrails endpoint     http://{}/api/v5/events/raw",
            emulator.ingest
        );
        println!(
            "report                  {scheme}://{}/_emulator/report",
            emulator.arm
        );
        println!();
        println!("Run the poller against it:");
        println!(
            "  SSL_CERT_FILE={} azure-activity-poller --config {}",
            args.dir.join("ca.pem").display(),
            config.display()
        );
        let _ = tokio::signal::ctrl_c().await;
        let report = emulator.report(&["Succeeded"]);
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        ExitCode::SUCCESS
    })
}
