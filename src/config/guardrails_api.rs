//! `[guardrails.api]`: the Guardrails GraphQL API, for detection and
//! `import`: the workspace URL and an API key (access and secret key, both
//! secrets).

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Spanned;
use url::Url;

use super::check::Checker;
use super::secret::{SecretSource, Secrets};

/// `[guardrails.api]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GuardrailsApi {
    pub(super) workspace_url: Option<Spanned<String>>,
    pub(super) workspace_url_file: Option<Spanned<PathBuf>>,
    pub(super) workspace_url_env: Option<Spanned<String>>,
    pub(super) access_key: Option<Spanned<String>>,
    pub(super) access_key_file: Option<Spanned<PathBuf>>,
    pub(super) access_key_env: Option<Spanned<String>>,
    pub(super) secret_key: Option<Spanned<String>>,
    pub(super) secret_key_file: Option<Spanned<PathBuf>>,
    pub(super) secret_key_env: Option<Spanned<String>>,
}

/// `[guardrails.api]`: the Guardrails GraphQL API, for detection and `import`.
#[derive(Debug, Clone)]
pub struct GuardrailsApiConfig {
    /// `https://<workspace>`: the GraphQL endpoint is `{workspace}/api/latest/graphql`.
    pub workspace_url: Url,
    pub access_key: SecretString,
    pub secret_key: SecretString,
}

impl GuardrailsApiConfig {
    pub fn graphql_url(&self) -> Url {
        let mut u = self.workspace_url.clone();
        u.set_path(&format!(
            "{}/api/latest/graphql",
            self.workspace_url.path().trim_end_matches('/')
        ));
        u.set_query(None);
        u
    }
}

pub(super) fn validate(
    api: &Spanned<GuardrailsApi>,
    ck: &mut Checker<'_>,
    secrets: &Secrets<'_>,
) -> Option<GuardrailsApiConfig> {
    let span = api.span();
    let a = api.get_ref();
    let workspace_src = SecretSource::new(
        &a.workspace_url,
        &a.workspace_url_file,
        &a.workspace_url_env,
    );
    let at = workspace_src.span().unwrap_or(span.clone());
    let workspace = secrets.load(
        workspace_src,
        "[guardrails.api] workspace_url",
        span.clone(),
        ck,
    );
    // The workspace URL may come from a file or the environment like the
    // keys, but it is no secret: inline in a world-readable file is fine.
    ck.inline_secrets
        .retain(|k| k != "[guardrails.api] workspace_url");
    let access_key = secrets.load(
        SecretSource::new(&a.access_key, &a.access_key_file, &a.access_key_env),
        "[guardrails.api] access_key",
        span.clone(),
        ck,
    );
    let secret_key = secrets.load(
        SecretSource::new(&a.secret_key, &a.secret_key_file, &a.secret_key_env),
        "[guardrails.api] secret_key",
        span,
        ck,
    );
    let workspace_url = workspace.and_then(|w| {
        let text = w.expose_secret().trim().to_string();
        ck.url(&Spanned::new(at, text), "[guardrails.api] workspace_url")
    });
    Some(GuardrailsApiConfig {
        workspace_url: workspace_url?,
        access_key: access_key?,
        secret_key: secret_key?,
    })
}
