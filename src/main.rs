#![forbid(unsafe_code)]
//! `azure-activity-poller`: parse the command line, set up logging, run.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // First, before any thread: glibc's arenas (see `arenas.rs`).
    azure_activity_poller::arenas::limit();
    let cli = azure_activity_poller::cli::Cli::parse();
    let progress = cli.command.is_none() && cli.run.once;
    let screen = azure_activity_poller::telemetry::init(cli.log_format, progress);
    azure_activity_poller::commands::run(cli, screen)
}
