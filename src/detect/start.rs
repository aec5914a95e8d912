//! The start check: every `event_handlers = "detect"` subscription is asked
//! about before anything is polled. Something live is a [`Refusal`] (exit
//! 78); a check that cannot be made is one too (69, or 78 for a bad API key)
//! unless `[detection] on_unknown = "poll"`. `event_handlers = false` is the
//! operator's override, warned about at every start.

use std::sync::Arc;
use std::time::Duration;

use super::{Checks, Detection, START_CHECK_LIMIT, Verdict, explain};
use crate::config::{EventHandlers, OnUnknown, SubscriptionConfig};

/// Why the start check refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Something else feeds these subscriptions (one line each).
    #[error("{}", fed(.0))]
    Fed(Vec<String>),
    /// These subscriptions could not be checked (one line each).
    #[error("{}", undetermined(.lines))]
    Undetermined {
        lines: Vec<String>,
        /// The configuration is what is wrong (a bad API key).
        config: bool,
    },
}

impl Refusal {
    /// True when a person must change something (the Guardrails policies,
    /// this file, the API key) rather than wait for a service: exit 78.
    pub fn is_config(&self) -> bool {
        match self {
            Refusal::Fed(_) => true,
            Refusal::Undetermined { config, .. } => *config,
        }
    }
}

fn fed(lines: &[String]) -> String {
    format!(
        "refusing to start: something else already feeds {} (pollers and event handlers must never both feed a subscription, or Guardrails receives every event twice):\n  {}\n\
         Turn the Guardrails event handlers off (policy Azure > Turbot > Event Handlers: Enforce: Not configured) \
         and Guardrails' own poller off (policy Azure > Turbot > Event Poller: Disabled), or remove the subscription from this file",
        if lines.len() == 1 {
            "this subscription"
        } else {
            "these subscriptions"
        },
        lines.join("\n  ")
    )
}

fn undetermined(lines: &[String]) -> String {
    format!(
        "refusing to start: cannot tell whether Guardrails event handlers or its own poller feed {}:\n  {}\n\
         Fix the access (the credential needs Reader on the subscription; [guardrails.api] needs a valid key), \
         or set [detection] on_unknown = \"poll\" to poll anyway",
        if lines.len() == 1 {
            "this subscription"
        } else {
            "these subscriptions"
        },
        lines.join("\n  ")
    )
}

/// The start check (see the module's comment). Each result is noted in the
/// store for `status`.
pub async fn at_start(checks: &Checks) -> Result<(), Refusal> {
    warn_overrides(&checks.subscriptions);
    let subs = checks.detected();
    if subs.is_empty() {
        return Ok(());
    }
    let status = format!(
        "checking {} subscription(s) for Guardrails event handlers",
        subs.len()
    );
    crate::notify::status(&status);
    let checked = check_within_limit(checks, &subs).await?;
    let mut found = Found::default();
    let now = chrono::Utc::now();
    for (sub, detection) in &checked {
        let verdict = detection.verdict();
        let state = found.judge(sub, detection, &verdict, checks.settings.on_unknown);
        checks
            .note(sub.id.as_str(), now, state, verdict.detail())
            .await;
    }
    found.verdict()
}

/// `event_handlers = false`: the operator vouches that nothing else feeds
/// the subscription; said at every start.
fn warn_overrides(subscriptions: &[Arc<SubscriptionConfig>]) {
    for sub in subscriptions {
        if sub.event_handlers == EventHandlers::Absent {
            tracing::warn!(
                subscription_id = %sub.id,
                subscription_name = sub.name.as_deref(),
                "event_handlers = false: not checking whether Guardrails event handlers or its own poller feed this subscription; you vouch that nothing does"
            );
        }
    }
}

/// Asks about `subs`, for at most [`START_CHECK_LIMIT`].
async fn check_within_limit(
    checks: &Checks,
    subs: &[Arc<SubscriptionConfig>],
) -> Result<Vec<(Arc<SubscriptionConfig>, Detection)>, Refusal> {
    let checking = checks.detect_all(subs);
    let keep_systemd_waiting = async {
        // Many subscriptions over a WAN may take longer than the unit's
        // TimeoutStartSec: ask for more while the checks progress.
        let mut every = tokio::time::interval(Duration::from_secs(20));
        loop {
            every.tick().await;
            crate::notify::extend_timeout(Duration::from_secs(60));
        }
    };
    tokio::time::timeout(START_CHECK_LIMIT, async {
        tokio::select! {
            c = checking => c,
            never = keep_systemd_waiting => never,
        }
    })
    .await
    .map_err(|_| Refusal::Undetermined {
        lines: vec![format!(
            "the checks took longer than {}s",
            START_CHECK_LIMIT.as_secs()
        )],
        config: false,
    })
}

/// What the start check found so far: the lines of a refusal.
#[derive(Default)]
struct Found {
    live: Vec<String>,
    unknown: Vec<String>,
    config_problem: bool,
    clear: usize,
}

impl Found {
    /// Takes in one subscription's detection and its verdict (its metrics
    /// and log line); returns the state to note.
    fn judge(
        &mut self,
        sub: &SubscriptionConfig,
        detection: &Detection,
        verdict: &Verdict,
        on_unknown: OnUnknown,
    ) -> &'static str {
        match verdict {
            Verdict::Live(found) => {
                crate::metrics::detection_check("live");
                self.live.push(explain(sub, found));
                "paused"
            }
            Verdict::Unknown(errors) => {
                crate::metrics::detection_check("unknown");
                crate::metrics::detection_failed(sub.id.as_str());
                self.config_problem |= detection.config_problem();
                if on_unknown == OnUnknown::Poll {
                    tracing::warn!(
                        subscription_id = %sub.id,
                        subscription_name = sub.name.as_deref(),
                        error = %errors.join("; "),
                        "cannot tell whether Guardrails feeds this subscription; polling it anyway ([detection] on_unknown = \"poll\")"
                    );
                } else {
                    self.unknown.push(explain(sub, errors));
                }
                "unknown"
            }
            Verdict::Clear(seen) => {
                crate::metrics::detection_check("clear");
                self.clear += 1;
                // One line each would be 10,000 lines at start: the summary
                // in `verdict` says how many.
                tracing::debug!(
                    subscription_id = %sub.id,
                    subscription_name = sub.name.as_deref(),
                    seen = %seen.join("; "),
                    "no Guardrails event handlers or poller feed this subscription"
                );
                "clear"
            }
        }
    }

    /// Live wins over unknown: either is a refusal.
    fn verdict(self) -> Result<(), Refusal> {
        if !self.live.is_empty() {
            return Err(Refusal::Fed(self.live));
        }
        if !self.unknown.is_empty() {
            return Err(Refusal::Undetermined {
                lines: self.unknown,
                config: self.config_problem,
            });
        }
        tracing::info!(
            clear = self.clear,
            "no Guardrails event handlers or poller feed the checked subscriptions"
        );
        Ok(())
    }
}
