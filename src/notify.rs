//! systemd's notification protocol (`Type=notify`): READY once the
//! configuration, the state database and a first token from every credential
//! are good; `STATUS=` lines saying what the daemon is doing; watchdog pings
//! from the supervisor's loop, sent only while every task shows progress;
//! RELOADING around SIGHUP; STOPPING on shutdown. Outside systemd
//! (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Asks systemd for `by` more before the start times out (a long start
/// check of many subscriptions).
pub fn extend_timeout(by: Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

pub fn reloading() {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000 + i128::from(t.tv_nsec()) / 1_000)
        .unwrap_or(0);
    send(&[
        NotifyState::Reloading,
        NotifyState::MonotonicUsec(now),
        NotifyState::Status("reloading the configuration"),
    ]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `WatchdogSec=` as systemd passed it, if enabled for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
