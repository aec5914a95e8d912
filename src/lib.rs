#![forbid(unsafe_code)]
//! azure-activity-poller: keeps Turbot Guardrails current with the Azure
//! activity log. See `ARCHITECTURE.md` for the map; the path of one event is
//! `poll` (query) -> `event` (keep) -> `store` (record) -> `forward` (deliver).

pub mod app;
pub mod arenas;
pub mod assets;
pub mod azure;
pub mod cli;
pub mod commands;
pub mod concurrency;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod detect;
pub mod emulator;
pub mod event;
pub mod format;
pub mod forward;
pub mod guardrails_api;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod import;
pub mod journal;
pub mod lease;
pub mod metrics;
pub mod notify;
pub mod outage;
pub mod poll;
pub mod progress;
pub mod read_limit;
pub mod retry;
pub mod scheduler;
pub mod status;
pub mod stop;
pub mod store;
pub mod summary;
pub mod telemetry;
pub mod timetable;
pub mod trace;

/// `text` followed by the causes of an error (its `source()` chain, from
/// `first`), `: `-joined, skipping a cause `text` already holds. Clients
/// often say little on top (tokio-postgres: "db error") and the reason
/// underneath (`FATAL: no pg_hba.conf entry ...`, a TLS failure).
pub fn with_causes(mut text: String, first: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut cause = first;
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// A `tracing` event at a level chosen at run time (`tracing::event!` takes
/// a constant one): a line that is an error on its own and at debug while an
/// outage already says it (`outage.rs`).
#[macro_export]
macro_rules! log_at {
    ($level:expr, $($rest:tt)+) => {{
        let level: ::tracing::Level = $level;
        if level == ::tracing::Level::ERROR {
            ::tracing::event!(::tracing::Level::ERROR, $($rest)+)
        } else if level == ::tracing::Level::WARN {
            ::tracing::event!(::tracing::Level::WARN, $($rest)+)
        } else if level == ::tracing::Level::INFO {
            ::tracing::event!(::tracing::Level::INFO, $($rest)+)
        } else {
            ::tracing::event!(::tracing::Level::DEBUG, $($rest)+)
        }
    }};
}
