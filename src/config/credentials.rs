//! `[credentials.NAME]`: how to obtain Azure tokens, one named credential per
//! table (a client secret, a managed identity, workload identity federation,
//! the Azure CLI); subscriptions pick one by name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use super::check::Checker;
use super::secret::{SecretSource, Secrets};

/// `[credentials.NAME]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Credential {
    pub(super) kind: Spanned<String>,
    pub(super) tenant_id: Option<Spanned<String>>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) client_secret: Option<Spanned<String>>,
    pub(super) client_secret_file: Option<Spanned<PathBuf>>,
    pub(super) client_secret_env: Option<Spanned<String>>,
    pub(super) token_file: Option<Spanned<PathBuf>>,
}

/// How to obtain Azure tokens. Secrets are already loaded.
#[derive(Debug, Clone)]
pub enum CredentialConfig {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        client_secret: SecretString,
    },
    ManagedIdentity {
        /// A user-assigned identity's client id; system-assigned when absent.
        client_id: Option<String>,
    },
    WorkloadIdentity {
        tenant_id: Option<String>,
        client_id: Option<String>,
        token_file: Option<PathBuf>,
    },
    AzureCli {
        tenant_id: Option<String>,
    },
}

impl CredentialConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialConfig::ClientSecret { .. } => "client_secret",
            CredentialConfig::ManagedIdentity { .. } => "managed_identity",
            CredentialConfig::WorkloadIdentity { .. } => "workload_identity",
            CredentialConfig::AzureCli { .. } => "azure_cli",
        }
    }
}

/// Every `[credentials.NAME]` that is valid, by name (the others' problems
/// are reported).
pub(super) fn validate(
    credentials: &BTreeMap<String, Spanned<Credential>>,
    ck: &mut Checker<'_>,
    secrets: &Secrets<'_>,
) -> BTreeMap<String, CredentialConfig> {
    let mut out = BTreeMap::new();
    for (name, cred) in credentials {
        if let Some(c) = validate_one(&Keys(name), cred, ck, secrets) {
            out.insert(name.clone(), c);
        }
    }
    out
}

/// The keys of `[credentials.NAME]`, as messages name them.
struct Keys<'a>(&'a str);

impl Keys<'_> {
    fn key(&self, k: &str) -> String {
        format!("[credentials.{}] {k}", self.0)
    }

    /// A problem when `k`, which does not apply to `kind`, is set.
    fn forbid<T>(&self, ck: &mut Checker<'_>, value: &Option<Spanned<T>>, k: &str, kind: &str) {
        if let Some(v) = value {
            ck.at(
                v.span(),
                format!("{} does not apply to kind = \"{kind}\"", self.key(k)),
            );
        }
    }
}

fn validate_one(
    keys: &Keys<'_>,
    cred: &Spanned<Credential>,
    ck: &mut Checker<'_>,
    secrets: &Secrets<'_>,
) -> Option<CredentialConfig> {
    let c = cred.get_ref();
    let kind = c.kind.get_ref().as_str();
    if let "managed_identity" | "workload_identity" | "azure_cli" = kind {
        keys.forbid(ck, &c.client_secret, "client_secret", kind);
        keys.forbid(ck, &c.client_secret_file, "client_secret_file", kind);
        keys.forbid(ck, &c.client_secret_env, "client_secret_env", kind);
    }
    let opt = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().trim().to_string());
    match kind {
        "client_secret" => client_secret(keys, cred, ck, secrets),
        "managed_identity" => {
            keys.forbid(ck, &c.tenant_id, "tenant_id", kind);
            keys.forbid(ck, &c.token_file, "token_file", kind);
            Some(CredentialConfig::ManagedIdentity {
                client_id: opt(&c.client_id),
            })
        }
        "workload_identity" => {
            let token_file = c.token_file.as_ref().map(|t| secrets.resolve(t.get_ref()));
            if let (Some(t), Some(path)) = (&c.token_file, &token_file)
                && let Err(e) = std::fs::metadata(path)
            {
                ck.at(
                    t.span(),
                    format!(
                        "{}: cannot read {}: {e}",
                        keys.key("token_file"),
                        path.display()
                    ),
                );
            }
            Some(CredentialConfig::WorkloadIdentity {
                tenant_id: opt(&c.tenant_id),
                client_id: opt(&c.client_id),
                token_file,
            })
        }
        "azure_cli" => {
            keys.forbid(ck, &c.client_id, "client_id", kind);
            keys.forbid(ck, &c.token_file, "token_file", kind);
            Some(CredentialConfig::AzureCli {
                tenant_id: opt(&c.tenant_id),
            })
        }
        other => {
            ck.at(
                c.kind.span(),
                format!(
                    "{}: unknown kind {other:?}; expected client_secret, managed_identity, workload_identity or azure_cli",
                    keys.key("kind")
                ),
            );
            None
        }
    }
}

/// `kind = "client_secret"`: tenant, client and the secret, all required.
fn client_secret(
    keys: &Keys<'_>,
    cred: &Spanned<Credential>,
    ck: &mut Checker<'_>,
    secrets: &Secrets<'_>,
) -> Option<CredentialConfig> {
    let span = cred.span();
    let c = cred.get_ref();
    keys.forbid(ck, &c.token_file, "token_file", "client_secret");
    let tenant_id = ck.require(&c.tenant_id, span.clone(), &keys.key("tenant_id"));
    let client_id = ck.require(&c.client_id, span.clone(), &keys.key("client_id"));
    let secret = secrets.load(
        SecretSource::new(
            &c.client_secret,
            &c.client_secret_file,
            &c.client_secret_env,
        ),
        &keys.key("client_secret"),
        span,
        ck,
    );
    Some(CredentialConfig::ClientSecret {
        tenant_id: tenant_id?.to_string(),
        client_id: client_id?.to_string(),
        client_secret: secret?,
    })
}
