//! `[ha]`: leases between instances sharing a PostgreSQL state.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::check::Checker;

/// `[ha]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Ha {
    pub(super) lease: Option<Spanned<String>>,
}

/// `[ha]`: leases between instances sharing a PostgreSQL state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaConfig {
    /// How long a lease lasts unrenewed; renewed every third of it. A dead
    /// instance's subscriptions are taken over this long after its last renewal.
    pub lease: Duration,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            lease: Duration::from_secs(30),
        }
    }
}

impl HaConfig {
    /// How often leases are renewed (and free ones looked for).
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }
}

pub(super) fn validate(h: Option<&Ha>, ck: &mut Checker<'_>) -> Option<HaConfig> {
    let mut out = HaConfig::default();
    let Some(lease) = h.and_then(|h| h.lease.as_ref()) else {
        return Some(out);
    };
    let v = ck.duration(lease, "[ha] lease")?;
    if v < Duration::from_secs(1) || v > Duration::from_secs(3600) {
        ck.at(
            lease.span(),
            "[ha] lease must be between 1s and 1h (renewed every third of it)",
        );
        return None;
    }
    out.lease = v;
    Some(out)
}
