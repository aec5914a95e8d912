//! What each command does, and the exit code it ends with (sysexits).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::mpsc;

use crate::daemon::Signal;

use crate::app::{App, StartError, parse_since};
use crate::cli::{Cli, Command, DeadLetterAction, RunArgs, StateAction};
use crate::config::{Config, ProcessEnv};
use crate::outage::{self, Resource};
use crate::progress::Screen;
use crate::scheduler;

/// sysexits.h
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const IOERR: u8 = 74;
    pub const TEMPFAIL: u8 = 75;
    pub const CONFIG: u8 = 78;
}

fn start_exit_code(e: &StartError) -> u8 {
    match e {
        StartError::Detection(r) if r.is_config() => exit::CONFIG,
        StartError::Detection(_) => exit::UNAVAILABLE,
        StartError::Config(_)
        | StartError::HandlersActive(_)
        | StartError::SinceTooOld(_)
        | StartError::SinceInvalid(_) => exit::CONFIG,
        StartError::Store(e) if e.is_config() => exit::CONFIG,
        StartError::Store(_) => exit::IOERR,
        StartError::Credential(_) => exit::CONFIG,
        StartError::Http(_) => exit::SOFTWARE,
    }
}

fn fail(e: &StartError) -> ExitCode {
    eprintln!("azure-activity-poller: {e}");
    ExitCode::from(start_exit_code(e))
}

/// Runs `cli`'s command; `screen`: the terminal a `--once` run draws its
/// progress on (see `telemetry::init`).
pub fn run(cli: Cli, screen: Option<Screen>) -> ExitCode {
    match cli.command {
        Some(Command::CheckConfig { config, online }) => check_config(&config, online),
        Some(Command::Import {
            config,
            from_guardrails,
            from_azure: _,
            credential,
        }) => import(&config, from_guardrails, credential.as_deref()),
        Some(Command::Demo { duration }) => demo(duration),
        Some(Command::GenerateAssets { out }) => match crate::assets::generate(&out) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "azure-activity-poller: cannot write into {}: {e}",
                    out.display()
                );
                ExitCode::from(exit::IOERR)
            }
        },
        Some(Command::Status { config, json }) => status(&config, json),
        Some(Command::DeadLetters { action }) => dead_letters(action),
        Some(Command::Trace {
            config,
            event,
            resource,
            correlation,
            caller,
            operation,
            since,
            until,
            limit,
            json,
        }) => {
            let now = Utc::now();
            let instant = |s: Option<String>, what: &str| match s {
                None => Ok(None),
                Some(s) => crate::trace::parse_instant(&s, now)
                    .map(Some)
                    .ok_or_else(|| {
                        format!("{what} {s:?}: neither a duration (\"2h\") nor an RFC 3339 time")
                    }),
            };
            let range = instant(since, "--since").and_then(|s| Ok((s, instant(until, "--until")?)));
            match range {
                Ok((since, until)) => trace(
                    &config,
                    crate::store::journal::TraceQuery {
                        event,
                        resource,
                        correlation,
                        caller,
                        operation,
                        since,
                        until,
                        limit: i64::from(limit),
                    },
                    json,
                ),
                Err(e) => {
                    eprintln!("azure-activity-poller: trace: {e}");
                    ExitCode::from(exit::USAGE)
                }
            }
        }
        Some(Command::State { action }) => state(action),
        None => match &cli.run.config {
            Some(path) => run_poller(path, &cli.run, screen),
            None => {
                eprintln!("azure-activity-poller: --config FILE is required (see --help)");
                ExitCode::from(exit::USAGE)
            }
        },
    }
}

fn check_config(path: &Path, online: bool) -> ExitCode {
    for w in crate::config::service_readability(path) {
        eprintln!("warning: {w}");
    }
    match Config::load(path, &ProcessEnv) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            if online {
                return check_online(&config);
            }
            let conflicts = config.handler_conflicts();
            if conflicts.is_empty() {
                println!(
                    "{}: valid; {} subscription(s), {} credential(s)",
                    path.display(),
                    config.subscriptions.len(),
                    config.credentials.len()
                );
                return ExitCode::SUCCESS;
            }
            for sub in conflicts {
                let (line, column) = sub.event_handlers_at.unwrap_or((1, 1));
                eprintln!(
                    "{}:{line}:{column}: subscription {}: event_handlers = true: the poller refuses to run while Guardrails event handlers are active",
                    path.display(),
                    sub.label()
                );
            }
            ExitCode::from(exit::CONFIG)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(exit::CONFIG)
        }
    }
}

/// `check-config --online`: every subscription asked about, one table.
fn check_online(config: &Config) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let http = match crate::app::http_client() {
            Ok(h) => h,
            Err(e) => return fail(&e),
        };
        let names = config.credentials.keys().map(String::as_str);
        let tokens = match crate::app::token_sources(config, names, &http) {
            Ok(t) => t,
            Err(e) => return fail(&StartError::Credential(e)),
        };
        let budget = crate::app::read_budget(config);
        let detector = crate::detect::Detector::new(config, http, budget);
        if !detector.asks_guardrails() {
            eprintln!(
                "note: no [guardrails.api] configured: only Azure is asked (Guardrails' own poller cannot be seen)"
            );
        }
        let checked = match tokio::time::timeout(
            crate::detect::START_CHECK_LIMIT,
            crate::detect::detect_all(&detector, &config.subscriptions, &tokens),
        )
        .await
        {
            Ok(c) => c,
            Err(_) => {
                eprintln!("azure-activity-poller: the checks did not finish within 5 minutes");
                return ExitCode::from(exit::TEMPFAIL);
            }
        };
        let (table, worst) = crate::detect::render_online(&checked, config.detection.on_unknown);
        print!("{table}");
        let config_problem = checked.iter().any(|(_, d)| d.config_problem());
        ExitCode::from(match worst {
            crate::detect::Outcome::Poll => exit::OK,
            crate::detect::Outcome::Refuse => exit::CONFIG,
            crate::detect::Outcome::Unknown if config_problem => exit::CONFIG,
            crate::detect::Outcome::Unknown => exit::UNAVAILABLE,
        })
    })
}

fn import(path: &Path, from_guardrails: bool, credential: Option<&str>) -> ExitCode {
    let config = match Config::load_for_import(path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return fail(&StartError::Config(e)),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let out = rt.block_on(async {
        if from_guardrails {
            crate::import::from_guardrails(&config).await
        } else {
            crate::import::from_azure(&config, credential).await
        }
    });
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("azure-activity-poller: import: {e}");
            ExitCode::from(if e.is_config() {
                exit::CONFIG
            } else {
                exit::UNAVAILABLE
            })
        }
    }
}

fn status_exit(e: &crate::status::StatusError) -> ExitCode {
    use crate::status::StatusError;
    eprintln!("azure-activity-poller: {e}");
    ExitCode::from(match e {
        StatusError::Config(_) | StatusError::NoState(_) => exit::CONFIG,
        StatusError::Store(e) if e.is_config() => exit::CONFIG,
        StatusError::Store(_) => exit::IOERR,
    })
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("azure-activity-poller: {e}"),
    }
}

fn status(config: &Path, json: bool) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(crate::status::collect(config)) {
        Ok(status) if json => {
            print_json(&status.subscriptions);
            ExitCode::SUCCESS
        }
        Ok(status) => {
            print!("{}", crate::status::render_table(&status));
            ExitCode::SUCCESS
        }
        Err(e) => status_exit(&e),
    }
}

fn trace(config: &Path, q: crate::store::journal::TraceQuery, json: bool) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let limit = q.limit;
    match rt.block_on(crate::trace::run(config, q)) {
        Ok(found) => {
            for e in &found.events {
                if json {
                    match serde_json::to_string(&crate::trace::TraceLine::of(e)) {
                        Ok(line) => println!("{line}"),
                        Err(e) => eprintln!("azure-activity-poller: {e}"),
                    }
                } else {
                    println!("{}", crate::trace::render_line(e));
                }
            }
            let mut notes = found.notes;
            if found.truncated {
                notes.push(format!(
                    "more than {limit} events match: narrow the search or raise --limit"
                ));
            }
            for n in notes {
                // The answer itself when nothing matched; for scripts
                // reading JSON, a remark on stderr.
                if json {
                    eprintln!("azure-activity-poller: {n}");
                } else {
                    println!("{n}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => status_exit(&e),
    }
}

fn dead_letters(action: DeadLetterAction) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = match &action {
        DeadLetterAction::List { config, json } => rt
            .block_on(crate::status::dead_letters(config))
            .map(|rows| {
                if *json {
                    print_json(&rows);
                } else {
                    print!("{}", crate::status::render_dead_letters(&rows));
                }
            }),
        DeadLetterAction::Retry {
            config,
            all,
            numbers,
        }
        | DeadLetterAction::Drop {
            config,
            all,
            numbers,
        } => {
            let retry = matches!(action, DeadLetterAction::Retry { .. });
            let chosen = (!*all).then_some(numbers.as_slice());
            rt.block_on(crate::status::act_on_dead_letters(config, chosen, retry))
                .map(|n| {
                    println!(
                        "{n} dead letter(s) {}",
                        if retry {
                            "queued for delivery again"
                        } else {
                            "dropped"
                        }
                    );
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => status_exit(&e),
    }
}

fn state(action: StateAction) -> ExitCode {
    use crate::store::copy::{CopyError, Target, copy, parse_source};
    let StateAction::Copy {
        from,
        to,
        to_env,
        to_file,
    } = action;
    let target = match (to, to_env, to_file) {
        (Some(url), _, _) => Target::Url(url),
        (_, Some(var), _) => Target::Env(var),
        (_, _, Some(path)) => Target::File(path),
        // clap requires one of them.
        (None, None, None) => {
            eprintln!("azure-activity-poller: state copy: --to, --to-env or --to-file is required");
            return ExitCode::from(exit::USAGE);
        }
    };
    let copied = parse_source(&from).and_then(|source| {
        let url = target.resolve()?;
        let rt = runtime().map_err(|_| {
            CopyError::Store(crate::store::StoreError::Task(
                "cannot start the async runtime".into(),
            ))
        })?;
        let copied = rt.block_on(copy(&source, &url))?;
        Ok((source, url, copied))
    });
    match copied {
        Ok((source, url, copied)) => {
            println!(
                "copied {} to {}:\n{}",
                source.display(),
                url.redacted(),
                copied.render()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("azure-activity-poller: state copy: {e}");
            ExitCode::from(match e {
                CopyError::Source(_) => exit::USAGE,
                e if e.is_config() => exit::CONFIG,
                _ => exit::IOERR,
            })
        }
    }
}

fn demo(duration: std::time::Duration) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(crate::demo::run(duration)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("azure-activity-poller: {e}");
            ExitCode::from(exit::SOFTWARE)
        }
    }
}

/// Threads for blocking work: DNS lookups, file reads, opening the state.
/// (SQLite's calls have their own thread: `store/sqlite.rs`.) Tokio's
/// default (512) let 10,000 subscriptions' store calls, when they ran here,
/// grow the process to 183 threads (and as many malloc arenas) at the
/// start; more calls than this wait in the queue instead.
const BLOCKING_THREADS: usize = 16;

/// The async runtime, or the exit code for a process that cannot have one.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .map_err(|e| {
            eprintln!("azure-activity-poller: cannot start the async runtime: {e}");
            ExitCode::from(exit::SOFTWARE)
        })
}

fn run_poller(path: &Path, args: &RunArgs, screen: Option<Screen>) -> ExitCode {
    let config = match Config::load(path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return fail(&StartError::Config(e)),
    };
    let since = match args
        .since
        .as_deref()
        .map(|s| parse_since(s, Utc::now()))
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        if !args.once {
            return daemon(config, path, since, args).await;
        }
        let app = match App::build(config).await {
            Ok(app) => Arc::new(app),
            Err(e) => return fail(&e),
        };
        log_start(path, &app, "once");
        once(app, since, args, screen).await
    })
}

fn log_start(path: &Path, app: &App, mode: &'static str) {
    tracing::info!(
        config = %path.display(),
        state = %app.store.describe(),
        instance = %app.instance.id,
        subscriptions = app.config.subscriptions.len(),
        endpoint = %app.config.guardrails.ingest_url.redacted(),
        format = ?app.config.guardrails.format,
        mode,
        "starting"
    );
}

async fn once(
    app: Arc<App>,
    since: Option<crate::event::Timestamp>,
    args: &RunArgs,
    screen: Option<Screen>,
) -> ExitCode {
    app.warm_reads();
    if let Err(e) = crate::detect::at_start(&app.checks).await {
        return fail(&e.into());
    }
    let drawing = screen.and_then(|s| app.progress.show(&s, &app.config.subscriptions));
    let (store, retention) = (app.store.clone(), app.config.journal.retention);
    let summary = scheduler::run_once(app, since, args.give_up_after).await;
    // A `--once` deployment (a timer) has no background task to prune the
    // journal: each run does a pass at its end.
    if let Err(e) = crate::journal::prune(&store, retention, None).await {
        tracing::warn!(error = %e, "cannot prune the delivery journal; the next run tries again");
    }
    // The bars' last state before the closing lines, which are not drawn
    // through them.
    if let Some(d) = drawing {
        d.finish(summary.delivery.is_ok());
    }
    let mut code = exit::OK;
    for p in &summary.polls {
        if let Err(e) = &p.outcome {
            eprintln!(
                "azure-activity-poller: subscription {} failed: {e}",
                p.subscription
            );
            let c = if e.is_transient() {
                exit::TEMPFAIL
            } else {
                exit::UNAVAILABLE
            };
            code = code.max(c);
        }
    }
    match &summary.delivery {
        Ok(n) => tracing::info!(delivered = n, "once: delivery complete"),
        Err(e) => {
            eprintln!("azure-activity-poller: delivery incomplete: {e}");
            code = code.max(exit::TEMPFAIL);
        }
    }
    if summary.succeeded() {
        eprintln!(
            "azure-activity-poller: {} subscription(s) caught up; everything delivered",
            summary.polls.len()
        );
    }
    ExitCode::from(code)
}

async fn daemon(
    config: Config,
    path: &Path,
    since: Option<crate::event::Timestamp>,
    args: &RunArgs,
) -> ExitCode {
    // Metrics and health first, so that what start-up waits for (the state
    // database, Entra ID, a slow credential check) is visible.
    let health = Arc::new(crate::health::Health::default());
    health.starting(Some("opening the state database"));
    let slot = crate::health::StoreSlot::default();
    if let Some(addr) = config.telemetry_listen {
        let exporter = match crate::metrics::install() {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!(error = %e, "metrics are off");
                None
            }
        };
        match crate::health::bind(addr, health.clone(), exporter, slot.clone()).await {
            Ok((local, serve)) => {
                tracing::info!(listen = %local, "serving /metrics, /healthz and /readyz");
                tokio::spawn(serve);
            }
            Err(e) => {
                eprintln!("azure-activity-poller: [telemetry] listen {addr}: {e}");
                return ExitCode::from(exit::CONFIG);
            }
        }
    }
    health.outages.publish();
    let app = match build_waiting(config, &health).await {
        Ok(app) => Arc::new(app),
        Err(e) => return fail(&e),
    };
    let _ = slot.set(app.store.clone());
    log_start(path, &app, "daemon");
    health.starting(Some("checking credentials"));
    crate::notify::status("checking credentials");
    if let Err(e) = credentials_waiting(&app).await {
        eprintln!("azure-activity-poller: {e}");
        return ExitCode::from(exit::UNAVAILABLE);
    }
    health.starting(Some("checking for Guardrails event handlers"));
    if let Err(e) = crate::detect::at_start(&app.checks).await {
        return fail(&e.into());
    }
    // Cleared by the daemon once its polls are started and tracked: until
    // then there is nothing to judge, and an empty list must not read ready.
    health.starting(Some("starting the polls"));
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(forward_signals(tx));
    match crate::daemon::run(app, since, rx, args.shutdown_grace).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("azure-activity-poller: {e}");
            ExitCode::from(if e.is_config() {
                exit::CONFIG
            } else {
                exit::IOERR
            })
        }
    }
}

/// Builds the daemon's state, waiting out a state database that does not
/// answer (or fails) at start, tries at most a minute apart; a state this
/// build cannot use (not a database, a newer schema) still ends it.
async fn build_waiting(
    config: Config,
    health: &Arc<crate::health::Health>,
) -> Result<App, StartError> {
    let mut delays = outage::backoff().delays();
    loop {
        match App::build_with(config.clone(), health.clone()).await {
            Ok(app) => {
                health.outages.recovered(Resource::StateStore);
                return Ok(app);
            }
            Err(StartError::Store(e)) if !e.is_config() => {
                let declared = health.outages.failed(Resource::StateStore, &e);
                crate::notify::status(&format!("waiting for the state database: {e}"));
                let wait = outage::next_delay(&mut delays);
                crate::log_at!(outage::quiet_if(declared), error = %e, retry_in_ms = wait.as_millis() as u64,
                    "cannot open the state database; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Checks every credential for a token, waiting out an Entra ID that does
/// not answer; a credential Entra ID refuses ends the daemon (69).
async fn credentials_waiting(app: &App) -> Result<(), crate::azure::CredentialError> {
    let mut delays = outage::backoff().delays();
    loop {
        match app.check_credentials().await {
            Ok(()) => {
                app.health.outages.recovered(Resource::EntraId);
                return Ok(());
            }
            Err(e) if e.is_outage() => {
                let declared = app.health.outages.failed_for_all(Resource::EntraId, &e);
                crate::notify::status(&format!("waiting for Entra ID: {e}"));
                let wait = outage::next_delay(&mut delays);
                crate::log_at!(outage::quiet_if(declared), error = %e, retry_in_ms = wait.as_millis() as u64,
                    "cannot get a token; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// SIGTERM and SIGINT stop the daemon; SIGHUP reloads its configuration.
async fn forward_signals(tx: mpsc::Sender<Signal>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(Signal::Stop).await;
        return;
    };
    loop {
        let s = tokio::select! {
            _ = term.recv() => Signal::Stop,
            _ = int.recv() => Signal::Stop,
            _ = hup.recv() => Signal::Reload,
        };
        tracing::info!(signal = ?s, "signal received");
        if tx.send(s).await.is_err() || s == Signal::Stop {
            return;
        }
    }
}
