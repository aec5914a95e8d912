//! Azure tokens: one [`TokenSource`] per named credential, built on the
//! `azure_identity` credentials, which cache and refresh tokens themselves.
//!
//! Every credential talks to the authority host of the configured cloud through
//! the poller's own HTTP client, so trust follows the system store and
//! `SSL_CERT_FILE` exactly as for Azure Resource Manager. A token request is
//! bounded by a timeout: managed identity off Azure would otherwise retry for
//! about a minute. `refresh` rebuilds the credential, dropping its cache; the
//! client calls it once when Azure answers 401 to a token it believed valid.
//! A token response is read whole, up to [`TOKEN_LIMIT`], before the SDK
//! sees it ([`BoundedTransport`]); one past it is a failed token request
//! that names the authority and the size.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use azure_core::credentials::{Secret, TokenCredential};
use azure_core::error::ErrorKind;
use azure_core::http::headers::CONTENT_LENGTH;
use azure_core::http::{AsyncRawResponse, ClientOptions, HttpClient, Request, Transport};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::config::CredentialConfig;
use crate::http::{BodyError, Limit};

/// The most a token response may hold: a token is a few KiB.
pub const TOKEN_LIMIT: Limit = Limit::mib(1);

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credential {name:?} ({kind}): cannot be built: {message}")]
    Build {
        name: String,
        kind: &'static str,
        message: String,
    },
    #[error("credential {name:?} ({kind}): no token: {message}")]
    Token {
        name: String,
        kind: &'static str,
        message: String,
    },
    #[error("credential {name:?} ({kind}): Entra ID did not answer: {message}")]
    Unreachable {
        name: String,
        kind: &'static str,
        message: String,
    },
    #[error("credential {name:?} ({kind}): no token within {timeout:?}")]
    Timeout {
        name: String,
        kind: &'static str,
        timeout: Duration,
    },
}

impl CredentialError {
    /// Entra ID did not answer in time or at all: wait it out.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            CredentialError::Timeout { .. } | CredentialError::Unreachable { .. }
        )
    }
}

/// Builds fresh credential objects for one named credential.
struct Factory {
    config: CredentialConfig,
    authority_host: Url,
    http: reqwest::Client,
}

impl Factory {
    fn client_options(&self) -> ClientOptions {
        let mut custom = azure_core::cloud::CustomConfiguration::default();
        custom.authority_host = self
            .authority_host
            .as_str()
            .trim_end_matches('/')
            .to_string();
        ClientOptions {
            transport: Some(Transport::new(Arc::new(BoundedTransport {
                http: self.http.clone(),
            }))),
            cloud: Some(Arc::new(custom.into())),
            ..Default::default()
        }
    }

    fn build(&self) -> azure_core::Result<Arc<dyn TokenCredential>> {
        let client_options = self.client_options();
        Ok(match &self.config {
            CredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                client_secret,
            } => ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(client_secret.expose_secret().to_string()),
                Some(ClientSecretCredentialOptions { client_options }),
            )?,
            CredentialConfig::ManagedIdentity { client_id } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    client_options,
                }))?
            }
            CredentialConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                client_id: client_id.clone(),
                tenant_id: tenant_id.clone(),
                token_file_path: token_file.clone(),
            }))?,
            CredentialConfig::AzureCli { tenant_id } => {
                AzureCliCredential::new(Some(AzureCliCredentialOptions {
                    tenant_id: tenant_id.clone(),
                    ..Default::default()
                }))?
            }
        })
    }
}

/// Tokens for one named credential and one scope.
pub struct TokenSource {
    name: String,
    scope: String,
    timeout: Duration,
    factory: Factory,
    current: RwLock<Arc<dyn TokenCredential>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("name", &self.name)
            .field("kind", &self.factory.config.kind())
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(
        name: &str,
        config: CredentialConfig,
        authority_host: Url,
        scope: String,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<TokenSource, CredentialError> {
        let factory = Factory {
            config,
            authority_host,
            http,
        };
        let credential = factory.build().map_err(|e| CredentialError::Build {
            name: name.to_string(),
            kind: factory.config.kind(),
            message: e.to_string(),
        })?;
        Ok(TokenSource {
            name: name.to_string(),
            scope,
            timeout,
            factory,
            current: RwLock::new(credential),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A bearer token for Azure Resource Manager.
    pub async fn token(&self) -> Result<SecretString, CredentialError> {
        let credential = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let scopes = [self.scope.as_str()];
        match tokio::time::timeout(self.timeout, credential.get_token(&scopes, None)).await {
            Ok(Ok(t)) => Ok(SecretString::from(t.token.secret().to_string())),
            Ok(Err(e)) if unreachable(&e) => Err(CredentialError::Unreachable {
                name: self.name.clone(),
                kind: self.factory.config.kind(),
                message: first_line(&e.to_string()),
            }),
            Ok(Err(e)) => Err(CredentialError::Token {
                name: self.name.clone(),
                kind: self.factory.config.kind(),
                // The SDK's own words hide a refused body under its
                // retry policy's: that one is what to say.
                message: refused_body(&e)
                    .map(BodyError::to_string)
                    .unwrap_or_else(|| first_line(&e.to_string())),
            }),
            Err(_) => Err(CredentialError::Timeout {
                name: self.name.clone(),
                kind: self.factory.config.kind(),
                timeout: self.timeout,
            }),
        }
    }

    /// Drops cached tokens by building the credential anew.
    pub fn refresh(&self) -> Result<(), CredentialError> {
        let fresh = self.factory.build().map_err(|e| CredentialError::Build {
            name: self.name.clone(),
            kind: self.factory.config.kind(),
            message: e.to_string(),
        })?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// Identity errors carry a troubleshooting link on later lines; keep the cause.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

/// The [`BodyError`] under `e`, when a token response was refused.
/// Entra ID (or the identity endpoint) did not answer, or answered that it
/// is failing (5xx, 429): an outage to wait out, not a credential to fix.
fn unreachable(e: &azure_core::Error) -> bool {
    std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| {
        e.downcast_ref::<NoAnswer>().is_some()
            || e.downcast_ref::<azure_core::Error>().is_some_and(|a| {
                matches!(a.kind(), ErrorKind::HttpResponse { status, .. }
                    if status.is_server_error() || u16::from(*status) == 429)
            })
    })
}

/// The identity endpoint's request failed in transport (refused, reset,
/// DNS, timed out): the marker [`unreachable`] looks for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NoAnswer(String);

fn refused_body(e: &azure_core::Error) -> Option<&BodyError> {
    std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .find_map(|e| e.downcast_ref::<BodyError>())
}

/// The credentials' HTTP transport: the poller's client, with each answer
/// read whole within [`TOKEN_LIMIT`] before the SDK parses it.
#[derive(Debug)]
struct BoundedTransport {
    http: reqwest::Client,
}

#[async_trait::async_trait]
impl HttpClient for BoundedTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let origin = crate::http::origin(request.url());
        let response = self.http.execute_request(request).await.map_err(|e| {
            azure_core::Error::with_error(
                ErrorKind::Io,
                NoAnswer(first_line(&e.to_string())),
                "no answer from the identity endpoint",
            )
        })?;
        let declared = response
            .headers()
            .get_optional_str(&CONTENT_LENGTH)
            .and_then(|v| v.parse().ok());
        let (status, headers, body) = response.deconstruct();
        let chunks = body.map(|c| c.map_err(|e| e.to_string()));
        match crate::http::collect(chunks, declared, TOKEN_LIMIT, origin).await {
            Ok(body) => Ok(AsyncRawResponse::from_bytes(status, headers, body)),
            // Cut off: a transport fault, which the SDK's policy retries.
            // Too large: it would be again; not retried.
            Err(e) => {
                let kind = if e.is_too_large() {
                    ErrorKind::Other
                } else {
                    ErrorKind::Io
                };
                Err(azure_core::Error::with_error(
                    kind,
                    e,
                    "the token response was refused",
                ))
            }
        }
    }
}
