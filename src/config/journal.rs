//! `[journal]`: how long the delivery journal (what `trace` reads) keeps
//! each event's story.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::check::Checker;

/// Seven days: long enough to answer "did Guardrails get it?" about last
/// week, short enough that the journal stays a fraction of the state.
pub const DEFAULT_JOURNAL_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest retention accepted: a year. Past it, an event's story is
/// better kept by the logs' archive than by the state database.
const MAX_RETENTION: Duration = Duration::from_secs(366 * 24 * 3600);

/// `[journal]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Journal {
    pub(super) retention: Option<Spanned<String>>,
}

/// `[journal]`: the delivery journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalConfig {
    /// How long an event's row is kept after it was fetched; `None` when
    /// the journal is off (`retention = "0"`).
    pub retention: Option<Duration>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            retention: Some(DEFAULT_JOURNAL_RETENTION),
        }
    }
}

pub(super) fn validate(j: Option<&Journal>, ck: &mut Checker<'_>) -> Option<JournalConfig> {
    let Some(retention) = j.and_then(|j| j.retention.as_ref()) else {
        return Some(JournalConfig::default());
    };
    let v = ck.duration(retention, "[journal] retention")?;
    if v.is_zero() {
        return Some(JournalConfig { retention: None });
    }
    if v < Duration::from_secs(60) || v > MAX_RETENTION {
        ck.at(
            retention.span(),
            "[journal] retention must be \"0\" (off) or between 1m and 366d",
        );
        return None;
    }
    Some(JournalConfig { retention: Some(v) })
}
