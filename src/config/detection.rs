//! `[detection]`: how often the running daemon checks again whether
//! something else feeds a subscription, and what a check that cannot tell
//! means. (Which subscriptions are checked is their `event_handlers`.)

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::check::Checker;

/// `[detection]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Detection {
    pub(super) interval: Option<Spanned<String>>,
    pub(super) on_unknown: Option<Spanned<String>>,
}

/// What to do when detection cannot tell (403, Guardrails unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnknown {
    /// At start: refuse to start. While running: keep the last known state.
    #[default]
    Refuse,
    /// Poll as if nothing else fed the subscription.
    Poll,
}

/// `[detection]`: how often live detection runs, and what an unknown means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectionConfig {
    pub interval: Duration,
    pub on_unknown: OnUnknown,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            interval: Duration::from_secs(600),
            on_unknown: OnUnknown::Refuse,
        }
    }
}

pub(super) fn validate(d: Option<&Detection>, ck: &mut Checker<'_>) -> Option<DetectionConfig> {
    let mut out = DetectionConfig::default();
    let Some(d) = d else {
        return Some(out);
    };
    let mut ok = true;
    if let Some(i) = &d.interval {
        match ck.duration(i, "[detection] interval") {
            Some(v) if v >= Duration::from_secs(1) => out.interval = v,
            Some(_) => {
                ck.at(i.span(), "[detection] interval must be at least 1s");
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(o) = &d.on_unknown {
        match o.get_ref().as_str() {
            "refuse" => out.on_unknown = OnUnknown::Refuse,
            "poll" => out.on_unknown = OnUnknown::Poll,
            other => {
                ck.at(
                    o.span(),
                    format!("[detection] on_unknown must be \"refuse\" or \"poll\", got {other:?}"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}
