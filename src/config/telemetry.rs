//! `[telemetry]`: where `/metrics`, `/healthz` and `/readyz` are served; off
//! unless set.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::check::Checker;

/// `[telemetry]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Telemetry {
    pub(super) listen: Option<Spanned<String>>,
}

/// `[telemetry] listen`, when set and valid.
pub(super) fn validate(t: Option<&Telemetry>, ck: &mut Checker<'_>) -> Option<SocketAddr> {
    let l = t.and_then(|t| t.listen.as_ref())?;
    match l.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            ck.at(
                l.span(),
                format!(
                    "[telemetry] listen {:?} is not an address and port like \"127.0.0.1:9464\"",
                    l.get_ref()
                ),
            );
            None
        }
    }
}
