#![forbid(unsafe_code)]
//! azure-activity-poller: keeps Turbot Guardrails current with the Azure
//! activity log. See `ARCHITECTURE.md` for the map; the path of one event is
//! `poll` (query) -> `event` (keep) -> `store` (record) -> `forward` (deliver).

pub mod app;
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
pub mod import;
pub mod lease;
pub mod metrics;
pub mod notify;
pub mod poll;
pub mod retry;
pub mod scheduler;
pub mod status;
pub mod store;
pub mod telemetry;
