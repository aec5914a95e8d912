//! Secrets: each one may come from a file (`X_file`), an environment
//! variable (`X_env`) or the configuration file itself (`X`), exactly one of
//! them. Relative secret file paths are looked up in `$CREDENTIALS_DIRECTORY`
//! (systemd's `LoadCredential=`) when it is set, else next to the
//! configuration file.

use std::ops::Range;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use toml::Spanned;

use super::check::Checker;
use super::env::Env;
use super::permissions::warn_if_world_readable;

/// One of `X`, `X_file`, `X_env`, as written.
pub(super) struct SecretSource<'r> {
    inline: Option<&'r Spanned<String>>,
    file: Option<&'r Spanned<PathBuf>>,
    env: Option<&'r Spanned<String>>,
}

impl<'r> SecretSource<'r> {
    pub(super) fn new(
        inline: &'r Option<Spanned<String>>,
        file: &'r Option<Spanned<PathBuf>>,
        env: &'r Option<Spanned<String>>,
    ) -> Self {
        SecretSource {
            inline: inline.as_ref(),
            file: file.as_ref(),
            env: env.as_ref(),
        }
    }

    /// Where the secret is given, the first of its forms: what a problem
    /// with its value points at (never quoting the value).
    pub(super) fn span(&self) -> Option<Range<usize>> {
        self.inline
            .map(|v| v.span())
            .or(self.file.map(|v| v.span()))
            .or(self.env.map(|v| v.span()))
    }
}

/// Where secrets are looked up: the environment for `X_env`, a directory for
/// a relative `X_file`.
pub(super) struct Secrets<'e> {
    env: &'e dyn Env,
    /// `$CREDENTIALS_DIRECTORY`, else the configuration file's directory.
    dir: PathBuf,
}

impl<'e> Secrets<'e> {
    /// `config_dir`: the directory of the configuration file.
    pub(super) fn new(config_dir: &Path, env: &'e dyn Env) -> Self {
        let dir = env
            .var("CREDENTIALS_DIRECTORY")
            .map_or_else(|| config_dir.to_path_buf(), PathBuf::from);
        Secrets { env, dir }
    }

    /// A secret file's path, as given or relative to the secrets' directory.
    pub(super) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// Resolves exactly one of the inline, file and environment forms of a
    /// secret; problems point at the form given, or at `section` when none
    /// or more than one is.
    pub(super) fn load(
        &self,
        src: SecretSource<'_>,
        key: &str,
        section: Range<usize>,
        ck: &mut Checker<'_>,
    ) -> Option<SecretString> {
        let given = [src.inline.is_some(), src.file.is_some(), src.env.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given != 1 {
            let msg = if given == 0 {
                format!("missing {key}: set one of {key}_file, {key}_env or {key}")
            } else {
                format!("set only one of {key}_file, {key}_env and {key}")
            };
            ck.at(section, msg);
            return None;
        }
        let value = if let Some(v) = src.inline {
            ck.inline_secrets.push(key.to_string());
            Ok(v.get_ref().clone())
        } else if let Some(f) = src.file {
            let path = self.resolve(f.get_ref());
            let what = format!("{key}_file holds a secret: chmod o-r it");
            warn_if_world_readable(&path, &what, &mut ck.warnings);
            std::fs::read_to_string(&path).map_err(|e| {
                (
                    f.span(),
                    format!("{key}_file: cannot read {}: {e}", path.display()),
                )
            })
        } else if let Some(v) = src.env {
            self.env.var(v.get_ref()).ok_or_else(|| {
                (
                    v.span(),
                    format!("{key}_env: environment variable {} is not set", v.get_ref()),
                )
            })
        } else {
            return None;
        };
        match value {
            Ok(v) if !v.trim().is_empty() => Some(SecretString::from(v.trim().to_string())),
            Ok(_) => {
                ck.at(src.span().unwrap_or(section), format!("{key} is empty"));
                None
            }
            Err((span, msg)) => {
                ck.at(span, msg);
                None
            }
        }
    }
}
