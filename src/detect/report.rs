//! `check-config --online`: every subscription's findings as a table, the
//! details below it, and what the poller would do.

use super::{DetectError, Detection, GuardrailsFinding, PolicyFinding, Verdict, explain};
use std::sync::Arc;

use crate::config::{EventHandlers, OnUnknown, SubscriptionConfig};

/// What `check-config --online` concludes for one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Poll,
    Unknown,
    Refuse,
}

const HEADER: [&str; 5] = [
    "SUBSCRIPTION",
    "AZURE HANDLERS",
    "GUARDRAILS HANDLERS POLICY",
    "GUARDRAILS POLLER POLICY",
    "VERDICT",
];

/// The `check-config --online` table, the details below it, and the worst outcome.
pub fn render_online(
    checked: &[(Arc<SubscriptionConfig>, Detection)],
    on_unknown: OnUnknown,
) -> (String, Outcome) {
    let mut rows = vec![HEADER.map(String::from)];
    let mut details = String::new();
    let mut worst = Outcome::Poll;
    for (sub, d) in checked {
        let (verdict, outcome) = conclude(sub.event_handlers, &d.verdict(), on_unknown);
        worst = worst.max(outcome);
        rows.push([
            sub.label(),
            match &d.azure {
                Ok(a) => a.short(),
                Err(_) => "check failed".into(),
            },
            policy_cell(&d.guardrails, |g| &g.handlers),
            policy_cell(&d.guardrails, |g| &g.poller),
            verdict,
        ]);
        details.push_str(&detail_lines(sub, d));
    }
    let mut out = align(&rows);
    if !details.is_empty() {
        out.push('\n');
        out.push_str(&details);
    }
    (out, worst)
}

/// The VERDICT cell and what it means, from the operator's word and the
/// detection's verdict.
fn conclude(
    declared: EventHandlers,
    verdict: &Verdict,
    on_unknown: OnUnknown,
) -> (String, Outcome) {
    match (declared, verdict) {
        (EventHandlers::Active, _) => (
            "refuse (event_handlers = true)".to_string(),
            Outcome::Refuse,
        ),
        (EventHandlers::Absent, Verdict::Live(_)) => (
            "poll: OVERRIDDEN (event_handlers = false), but something feeds it".to_string(),
            Outcome::Poll,
        ),
        (EventHandlers::Absent, _) => ("poll (event_handlers = false)".to_string(), Outcome::Poll),
        (EventHandlers::Detect, Verdict::Live(_)) => {
            ("REFUSE: fed by Guardrails".to_string(), Outcome::Refuse)
        }
        (EventHandlers::Detect, Verdict::Unknown(_)) if on_unknown == OnUnknown::Poll => (
            "poll (unknown; on_unknown = \"poll\")".to_string(),
            Outcome::Poll,
        ),
        (EventHandlers::Detect, Verdict::Unknown(_)) => {
            ("REFUSE: cannot tell".to_string(), Outcome::Unknown)
        }
        (EventHandlers::Detect, Verdict::Clear(_)) => ("poll".to_string(), Outcome::Poll),
    }
}

/// One policy's cell: its value, `ON: ` first when it turns the feature on.
fn policy_cell(
    found: &Option<Result<GuardrailsFinding, DetectError>>,
    pick: fn(&GuardrailsFinding) -> &PolicyFinding,
) -> String {
    match found {
        None => "not asked".to_string(),
        Some(Ok(g)) => {
            let p = pick(g);
            let text = p.value_text();
            if p.on { format!("ON: {text}") } else { text }
        }
        Some(Err(_)) => "check failed".to_string(),
    }
}

/// The lines below the table for one subscription: what feeds it, what
/// could not be checked, and a Guardrails failure hidden behind an Azure answer.
fn detail_lines(sub: &SubscriptionConfig, d: &Detection) -> String {
    let mut lines = String::new();
    match d.verdict() {
        Verdict::Live(found) => lines.push_str(&format!("{}\n", explain(sub, &found))),
        Verdict::Unknown(errors) => lines.push_str(&format!("{}\n", explain(sub, &errors))),
        Verdict::Clear(_) => {}
    }
    if let (Ok(_), Some(Err(e))) = (&d.azure, &d.guardrails) {
        lines.push_str(&format!("{}: {e}\n", sub.label()));
    }
    lines
}

/// The rows as columns padded to their widest cell, two spaces apart.
fn align(rows: &[[String; 5]]) -> String {
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
