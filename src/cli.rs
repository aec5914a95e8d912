//! The command line (clap): the daemon, `--once`, and `check-config`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # Run as a daemon (systemd starts it this way):
  azure-activity-poller --config /etc/azure-activity-poller/poller.toml

  # Catch up every subscription from its watermark to now, deliver, exit:
  azure-activity-poller --config poller.toml --once

  # First run: start two hours back instead of one window back:
  azure-activity-poller --config poller.toml --once --since 2h

  # See it work against an embedded Azure emulator:
  azure-activity-poller demo

  # Validate a configuration file:
  azure-activity-poller check-config --config poller.toml

  # ...and ask Azure and Guardrails whether anything else feeds each subscription:
  azure-activity-poller check-config --config poller.toml --online

  # Subscriptions to paste into poller.toml, from Guardrails or from Azure:
  azure-activity-poller import --from-guardrails --config poller.toml

  # Move from SQLite to PostgreSQL (stop the daemon first; the target is empty):
  azure-activity-poller state copy --from sqlite:/var/lib/azure-activity-poller/state.db --to-env DATABASE_URL

Exit codes: 0 success; 64 usage; 69 Azure or the endpoint refused us, or an
event handler check could not be made; 74 state database I/O; 75 temporary
failure (retry later); 78 configuration problem, including a refusal because
Guardrails event handlers or its own poller feed a subscription.";

/// Polls the Azure activity log and forwards `Succeeded` entries to Turbot
/// Guardrails, exactly once, resuming from a watermark kept in SQLite.
#[derive(Debug, Parser)]
#[command(name = "azure-activity-poller", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,

    /// Where and how to log: `auto` is journald when stderr is the journal
    /// (under systemd), else `text`; `json` writes JSON lines to stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (poller.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Poll every subscription once, from its watermark up to now, deliver
    /// everything, and exit (0 only if every subscription succeeded).
    #[arg(long)]
    pub once: bool,

    /// Where a subscription without a watermark starts: a duration back from now
    /// ("2h", "3days") or an RFC 3339 time. Default: one window back. At most 90 days.
    #[arg(long, value_name = "DURATION|RFC3339")]
    pub since: Option<String>,

    /// With --once: stop retrying delivery after the endpoint made no progress
    /// for this long; undelivered events stay queued for the next run.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub give_up_after: Duration,

    /// On SIGTERM/SIGINT: how long work in flight may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the man pages and shell completions (bash, zsh, fish) into DIR,
    /// for packaging.
    #[command(hide = true)]
    GenerateAssets {
        /// The output directory (created if needed).
        out: PathBuf,
    },
    /// Show, per subscription, the watermark, lag, last poll and its result,
    /// outbox depth and dead letters. Safe next to a running daemon.
    #[command(
        after_help = "Examples:\n  azure-activity-poller status --config /etc/azure-activity-poller/poller.toml\n  azure-activity-poller status --config poller.toml --json | jq '.[] | select(.lag_seconds > 900)'"
    )]
    Status {
        /// The configuration file (for the state path and subscription names).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Did Guardrails get it? Find events in the delivery journal and print
    /// each one's story: fetched when, then delivered (when, HTTP status,
    /// attempts), dead-lettered (why), skipped (its status is not forwarded)
    /// or still queued. One line each, or --json (one object a line). Says
    /// so when the journal does not hold the time asked about. Safe next to
    /// a running daemon.
    #[command(
        after_help = "Examples:\n  azure-activity-poller trace --config poller.toml --event 3b3b6e5c-0000-4a7f-9d3e-1d2c3b4a5f60\n  azure-activity-poller trace --config poller.toml --resource /subscriptions/SUB/resourceGroups/rg1/providers/Microsoft.Storage/storageAccounts/x --since 2h\n  azure-activity-poller trace --config poller.toml --correlation 6c1d... --json | jq .story",
        group(clap::ArgGroup::new("what").required(true).multiple(true)
            .args(["event", "resource", "correlation", "caller", "operation", "since", "until"]))
    )]
    Trace {
        /// The configuration file (for the state).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// An eventDataId.
        #[arg(long, value_name = "EVENT_DATA_ID")]
        event: Option<String>,
        /// A resource id, or the start of one (any case): a resource group
        /// finds every resource in it.
        #[arg(long, value_name = "RESOURCE_ID")]
        resource: Option<String>,
        /// A correlation id: every entry of one operation (Started, Succeeded, ...).
        #[arg(long, value_name = "ID")]
        correlation: Option<String>,
        /// Who made the change (any case).
        #[arg(long, value_name = "CALLER")]
        caller: Option<String>,
        /// An operation name, as `Microsoft.Storage/storageAccounts/write` (any case).
        #[arg(long, value_name = "NAME")]
        operation: Option<String>,
        /// Events from this eventTimestamp: a duration back from now ("2h",
        /// "3days") or an RFC 3339 time.
        #[arg(long, value_name = "DURATION|RFC3339")]
        since: Option<String>,
        /// Events up to this eventTimestamp, as --since.
        #[arg(long, value_name = "DURATION|RFC3339")]
        until: Option<String>,
        /// At most this many events (oldest first).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
        /// One JSON object a line instead of text; notes go to stderr.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and act on events the endpoint rejected, or entries the poller
    /// could not identify.
    #[command(
        after_help = "Examples:\n  azure-activity-poller dead-letters list --config poller.toml\n  azure-activity-poller dead-letters retry --config poller.toml 12 13\n  azure-activity-poller dead-letters drop --config poller.toml --all"
    )]
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Move the state between backends.
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Run the poller against an embedded Azure emulator (no Azure account
    /// needed) with late entries, throttling, faults and an endpoint outage,
    /// then print what was generated and delivered, per subscription.
    #[command(
        after_help = "Example:\n  cargo run --release -- demo\n  azure-activity-poller demo --duration 20s\n\nExit codes: 0 everything delivered exactly once; 1 otherwise."
    )]
    Demo {
        /// How long the emulator generates entries.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Validate a configuration file, and that its secrets are readable; print
    /// every problem with its line and column, and warn when the service's
    /// dynamic user could not read the file.
    #[command(
        after_help = "Example:\n  azure-activity-poller check-config --config /etc/azure-activity-poller/poller.toml\n\nExit codes: 0 valid; 78 invalid (every problem is printed)."
    )]
    CheckConfig {
        /// The configuration file to check.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Also ask Azure (and Guardrails, with [guardrails.api]) whether event
        /// handlers or Guardrails' own poller feed each subscription, and print
        /// a table: subscription, Azure handlers, the two Guardrails policies,
        /// verdict. Exit 78 if a subscription would be refused, 69 if a check
        /// could not be made.
        #[arg(long)]
        online: bool,
    },
    /// Print `[[subscription]]` sections to paste into poller.toml: the Azure
    /// subscriptions a Guardrails workspace knows (with its Event Poller
    /// interval and window), or the ones the credential can read in Azure.
    /// Subscriptions that cannot be polled are printed commented out, with why.
    #[command(
        after_help = "Examples:\n  azure-activity-poller import --from-guardrails --config poller.toml >> poller.toml\n  azure-activity-poller import --from-azure --config poller.toml --credential main"
    )]
    Import {
        /// A configuration file with the credentials (and [guardrails.api]); it
        /// may list no subscription yet.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// List the workspace's Azure subscriptions through [guardrails.api].
        #[arg(
            long,
            conflicts_with = "from_azure",
            required_unless_present = "from_azure"
        )]
        from_guardrails: bool,
        /// List the subscriptions the credential can read in Azure.
        #[arg(long)]
        from_azure: bool,
        /// With --from-azure: the credential to use (default: the only one).
        #[arg(long, value_name = "NAME")]
        credential: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// Copy an SQLite state file (cursors, seen ids, outbox in its order,
    /// dead letters, detection notes) into an empty PostgreSQL database, to
    /// run two or more instances on it. The source is only read; stop the
    /// daemon first so that nothing moves after the copy. The target's schema
    /// is created as the daemon creates it; a target holding any state is
    /// refused (exit 78), and a failed copy leaves it empty.
    #[command(
        after_help = "Examples:\n  systemctl stop azure-activity-poller\n  azure-activity-poller state copy --from sqlite:/var/lib/azure-activity-poller/state.db --to-file /etc/azure-activity-poller/database-url\n  DATABASE_URL=postgres://poller:...@db.example.com/poller azure-activity-poller state copy --from sqlite:state.db --to-env DATABASE_URL\n\nThen set [state] url (or url_file, url_env) in poller.toml and start the instances.\n\nExit codes: 0 copied; 64 usage; 74 a database could not be read or written; 78 the target is not empty, or the source is not a poller state file."
    )]
    #[command(group(clap::ArgGroup::new("target").required(true).args(["to", "to_env", "to_file"])))]
    Copy {
        /// The source: `sqlite:PATH`, the `[state] path` of the SQLite setup.
        #[arg(long, value_name = "sqlite:PATH")]
        from: String,
        /// The target `postgres://` URL (visible to `ps`; prefer --to-env or --to-file
        /// when it holds a password).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// An environment variable holding the target URL.
        #[arg(long, value_name = "VAR")]
        to_env: Option<String>,
        /// A file holding the target URL.
        #[arg(long, value_name = "FILE")]
        to_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// List dead letters: number, subscription, eventDataId, when, why.
    #[command(
        after_help = "Example:\n  azure-activity-poller dead-letters list --config poller.toml --json"
    )]
    List {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the outbox; a running daemon delivers them
    /// within seconds, or the next `--once` run does.
    #[command(
        after_help = "Example:\n  azure-activity-poller dead-letters retry --config poller.toml 12 13"
    )]
    Retry {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Every dead letter.
        #[arg(long, conflicts_with = "numbers")]
        all: bool,
        /// Dead-letter numbers, as `list` shows them.
        #[arg(required_unless_present = "all")]
        numbers: Vec<i64>,
    },
    /// Delete dead letters for good.
    #[command(
        after_help = "Example:\n  azure-activity-poller dead-letters drop --config poller.toml --all"
    )]
    Drop {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[arg(long, conflicts_with = "numbers")]
        all: bool,
        #[arg(required_unless_present = "all")]
        numbers: Vec<i64>,
    },
}
