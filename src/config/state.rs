//! `[state]`: where the state lives, an SQLite file (`path`) for one instance
//! or a PostgreSQL database (`url`, a secret) shared by every instance; and
//! [`DatabaseUrl`], that URL checked once and never printed whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Spanned;

use super::check::Checker;
use super::secret::{SecretSource, Secrets};

/// `[state]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct State {
    pub(super) path: Option<Spanned<PathBuf>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) url_file: Option<Spanned<PathBuf>>,
    pub(super) url_env: Option<Spanned<String>>,
}

/// `[state]`: where the state lives.
#[derive(Debug, Clone)]
pub enum StateConfig {
    /// `path = ...`: an SQLite file, for one instance.
    Sqlite(PathBuf),
    /// `url = "postgres://..."` (or `url_file`, `url_env`): a PostgreSQL
    /// database shared by every instance.
    Postgres(DatabaseUrl),
}

impl StateConfig {
    /// Printable: the path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StateConfig::Sqlite(p) => p.display().to_string(),
            StateConfig::Postgres(u) => u.redacted(),
        }
    }

    /// The same place (a reload cannot move the state).
    pub fn same_as(&self, other: &StateConfig) -> bool {
        match (self, other) {
            (StateConfig::Sqlite(a), StateConfig::Sqlite(b)) => a == b,
            (StateConfig::Postgres(a), StateConfig::Postgres(b)) => a.same_as(b),
            _ => false,
        }
    }
}

/// `[state]`, resolved; a relative `path` is relative to `config_dir`, the
/// configuration file's directory.
pub(super) fn validate(
    st: Option<&Spanned<State>>,
    ck: &mut Checker<'_>,
    secrets: &Secrets<'_>,
    config_dir: &Path,
) -> Option<StateConfig> {
    let Some(st) = st else {
        ck.missing(
            "state",
            "missing [state]: path (an SQLite file) or url (a PostgreSQL database)",
        );
        return None;
    };
    let span = st.span();
    let s = st.get_ref();
    let url_given = s.url.is_some() || s.url_file.is_some() || s.url_env.is_some();
    match (&s.path, url_given) {
        (Some(p), false) => Some(StateConfig::Sqlite(config_dir.join(p.get_ref()))),
        (Some(p), true) => {
            ck.at(
                p.span(),
                "[state]: set either path (SQLite) or url (PostgreSQL), not both",
            );
            None
        }
        (None, false) => {
            ck.at(
                span,
                "[state]: set path (an SQLite file) or url (a PostgreSQL database)",
            );
            None
        }
        (None, true) => {
            let src = SecretSource::new(&s.url, &s.url_file, &s.url_env);
            // The URL may hold a password: say what is wrong, never what it is.
            let at = src.span().unwrap_or(span.clone());
            let url = secrets.load(src, "[state] url", span, ck)?;
            match DatabaseUrl::parse(url.expose_secret()) {
                Ok(u) => Some(StateConfig::Postgres(u)),
                Err(e) => {
                    ck.at(at, format!("[state] url: {e}"));
                    None
                }
            }
        }
    }
}

/// A `postgres://` URL. It may hold a password, so it is a secret: `Debug`
/// and [`DatabaseUrl::redacted`] print everything but the password.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// How to talk TLS to the database server.
pub(crate) enum DatabaseTls {
    Off,
    On {
        mode: tokio_postgres::config::SslMode,
        root_cert: Option<PathBuf>,
    },
}

impl DatabaseUrl {
    /// Checks the URL's form; the message never holds the password.
    pub fn parse(text: &str) -> Result<DatabaseUrl, String> {
        let url = DatabaseUrl(SecretString::from(text.trim().to_string()));
        url.connect_config()?;
        Ok(url)
    }

    /// The same URL (a reload cannot move the state).
    pub fn same_as(&self, other: &DatabaseUrl) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }

    /// Scheme, user, host, port and database; the password as `[redacted]`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(self.0.expose_secret()) {
            Ok(u) => {
                let password = if u.password().is_some() {
                    ":[redacted]"
                } else {
                    ""
                };
                let user = if u.username().is_empty() {
                    String::new()
                } else {
                    format!("{}{password}@", u.username())
                };
                let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
                format!(
                    "{}://{user}{}{port}{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.path()
                )
            }
            Err(_) => "postgres://[redacted]".into(),
        }
    }

    /// The client configuration and how to do TLS: `sslmode=disable` (or no
    /// `sslmode` with a loopback host or a socket directory) is plain; any
    /// other mode is TLS, verifying the server's certificate and name against
    /// the system store, or `sslrootcert=FILE`.
    pub(crate) fn connect_config(&self) -> Result<(tokio_postgres::Config, DatabaseTls), String> {
        use tokio_postgres::config::SslMode;
        let mut url = url::Url::parse(self.0.expose_secret()).map_err(|e| {
            format!("not a URL ({e}); expected postgres://user:password@host:port/database")
        })?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(format!(
                "scheme {:?}: expected postgres:// or postgresql://",
                url.scheme()
            ));
        }
        let mut sslmode = None;
        let mut root_cert = None;
        let mut socket = false;
        let rest: Vec<(String, String)> = url
            .query_pairs()
            .filter_map(|(k, v)| match &*k {
                "sslmode" => {
                    sslmode = Some(v.into_owned());
                    None
                }
                "sslrootcert" => {
                    root_cert = Some(PathBuf::from(v.into_owned()));
                    None
                }
                _ => {
                    socket |= k == "host" && v.starts_with('/');
                    Some((k.into_owned(), v.into_owned()))
                }
            })
            .collect();
        url.set_query(None);
        if !rest.is_empty() {
            url.query_pairs_mut().extend_pairs(rest);
        }
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            // postgres:// is not a special scheme: its host stays text.
            Some(url::Host::Domain(d)) => {
                d == "localhost"
                    || d.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            None => true,
        } || socket;
        let mut config: tokio_postgres::Config = url
            .as_str()
            .parse()
            .map_err(|e: tokio_postgres::Error| format!("not a PostgreSQL URL: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err("no host".into());
        }
        config.connect_timeout(Duration::from_secs(10));
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("azure-activity-poller");
        let tls = match sslmode.as_deref() {
            Some("disable") => DatabaseTls::Off,
            None if loopback && root_cert.is_none() => DatabaseTls::Off,
            Some("allow" | "prefer") => DatabaseTls::On {
                mode: SslMode::Prefer,
                root_cert,
            },
            None | Some("require" | "verify-ca" | "verify-full") => DatabaseTls::On {
                mode: SslMode::Require,
                root_cert,
            },
            Some(other) => {
                return Err(format!(
                    "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
        };
        Ok((config, tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let u =
            DatabaseUrl::parse("postgres://poller:hunter2@db.example:5433/state?sslmode=require")
                .unwrap();
        assert_eq!(
            u.redacted(),
            "postgres://poller:[redacted]@db.example:5433/state"
        );
        assert!(!format!("{u:?}").contains("hunter2"));
        let e = DatabaseUrl::parse("mysql://poller:hunter2@db/x").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let e = DatabaseUrl::parse("postgres://poller:hunter2@db/x?sslmode=bogus").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
