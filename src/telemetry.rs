//! Logging setup, in one place. Under systemd, when stderr is the journal
//! (`JOURNAL_STREAM` names it), events go to journald natively, each field a
//! journal field of the same name in upper case, without a prefix:
//! `subscription_name` is `SUBSCRIPTION_NAME`, so
//! `journalctl -u azure-activity-poller SUBSCRIPTION_NAME=production` works
//! (and no field may be named like one of journald's own: `priority`,
//! `message_id`, `code_file`, `syslog_identifier`, ...). Otherwise logs go to
//! stderr, human-readable or JSON lines; human-readable ones of a `--once`
//! run on a terminal go through its progress bars (`progress.rs`), so
//! that neither tears the other. `RUST_LOG` filters (default `info`). Nothing
//! here formats a secret: secrets live in types whose `Debug` redacts them.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;
use crate::progress::Screen;

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,azure_core=warn,azure_identity=warn,reqwest=warn,hyper=warn")
    })
}

/// True when stderr is the journal stream systemd connected us to.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev().to_string() == dev && m.ino().to_string() == ino,
        Err(_) => false,
    }
}

/// Sets up logging; with `progress` (a `--once` run), when logs are text on
/// a terminal, returns the [`Screen`] that progress bars are drawn on and
/// log lines go through.
pub fn init(format: LogFormat, progress: bool) -> Option<Screen> {
    let use_journal = match format {
        LogFormat::Journald => true,
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Text | LogFormat::Json => false,
    };
    if use_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(
                        layer
                            .with_syslog_identifier("azure-activity-poller".into())
                            .with_field_prefix(None),
                    )
                    .try_init();
                return None;
            }
            Err(e) => eprintln!(
                "azure-activity-poller: journald is not reachable ({e}); logging to stderr"
            ),
        }
    }
    // Bars only where a person reads text: never among JSON lines.
    let screen = (progress && format != LogFormat::Json)
        .then(Screen::stderr)
        .flatten();
    let writer = match &screen {
        Some(s) => BoxMakeWriter::new(s.clone()),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        _ => builder.try_init(),
    };
    screen
}
