//! One request to Azure Resource Manager, retried: the discipline every ARM
//! call shares (the activity log's pages, the handlers' reads, Resource Graph
//! queries), and the errors ARM answers with.
//!
//! 429 waits `Retry-After` (or backs off when absent); 5xx, 408, timeouts and
//! dropped connections back off exponentially with jitter, a bounded number of
//! times; a 401 refreshes the token once; any other answer is an
//! [`AzureError`] that names the status and ARM's error code and message.
//! What a request waits for before it is sent, and what an answer says about
//! the budget left (ARM's read budget per subscription, Resource Graph's
//! quota per principal), is the caller's [`Pacing`].

use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;

use super::credential::{CredentialError, TokenSource};
use crate::event::{PageError, Timestamp};
use crate::poll::Heartbeat;
use crate::retry::{Backoff, retry_after};

#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(
        "Azure refused access (HTTP {status}{}): check the credential's role on the subscription",
        arm_detail(code, message)
    )]
    Denied {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error(
        "Azure rejected the request (HTTP {status}{})",
        arm_detail(code, message)
    )]
    Rejected {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("Azure is unavailable after {attempts} attempts: {last}")]
    Exhausted {
        attempts: usize,
        last: String,
        /// The last answer was a 429: Azure was throttling, not down.
        throttled: bool,
    },
    #[error("Azure returned a malformed page: {0}")]
    MalformedPage(#[from] PageError),
    #[error("nextLink points to {found}, not to {expected}: refusing to send the token there")]
    ForeignNextLink { found: String, expected: String },
    #[error("nextLink is not a valid URL: {0}")]
    BadNextLink(url::ParseError),
}

impl AzureError {
    /// True when waiting may fix it (throttling, outages); false for problems a
    /// person must fix (permissions, bad requests).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AzureError::Exhausted { .. }
                | AzureError::MalformedPage(_)
                | AzureError::Credential(CredentialError::Timeout { .. })
        )
    }

    /// Azure was still throttling (HTTP 429) when the retries ran out.
    pub fn is_throttled(&self) -> bool {
        matches!(
            self,
            AzureError::Exhausted {
                throttled: true,
                ..
            }
        )
    }
}

/// `, Code: message` for an error's text, from what ARM's error body said.
pub(crate) fn arm_detail(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!(", {c}: {m}"),
        (Some(c), None) => format!(", {c}"),
        (None, Some(m)) => format!(": {m}"),
        (None, None) => String::new(),
    }
}

/// A successful ARM answer.
#[derive(Debug)]
pub struct Got {
    pub body: bytes::Bytes,
    /// The response's `Date` header: Azure's "now" when it answered.
    pub server_date: Option<Timestamp>,
    /// Requests it took, retries included.
    pub requests: usize,
    /// Time spent waiting on `Retry-After`.
    pub throttled: Duration,
}

/// What a kind of request waits for before it is sent, and learns from each
/// answer: the budget Azure meters it against.
pub trait Pacing: Sync {
    /// Waits until one more request may be sent.
    fn admit(&self) -> impl Future<Output = ()> + Send;
    /// Reads what an answer (any status) says about the budget left.
    fn observe(&self, headers: &HeaderMap);
}

/// How ARM requests are sent: the HTTP client, the retry schedule and the
/// bound on one request.
#[derive(Debug, Clone)]
pub struct Arm {
    http: reqwest::Client,
    backoff: Backoff,
    request_timeout: Duration,
}

impl Arm {
    pub fn new(http: reqwest::Client, backoff: Backoff, request_timeout: Duration) -> Arm {
        Arm {
            http,
            backoff,
            request_timeout,
        }
    }

    /// Sends the request `build` makes (method, URL, body; the token and the
    /// timeout are added here) until it succeeds or is not worth retrying.
    pub async fn send<P: Pacing>(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        tokens: &TokenSource,
        beat: &Heartbeat,
        pacing: &P,
    ) -> Result<Got, AzureError> {
        let mut delays = self.backoff.delays();
        let mut attempts = 0usize;
        let mut refreshed = false;
        let mut throttled = Duration::ZERO;
        loop {
            attempts += 1;
            beat.beat();
            pacing.admit().await;
            beat.beat();
            let token = tokens.token().await?;
            let sent = build(&self.http)
                .bearer_auth(token.expose_secret())
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(self.request_timeout)
                .send()
                .await;
            crate::metrics::azure_request(sent.as_ref().ok().map(|r| r.status().as_u16()));
            let mut was_throttled = false;
            let (wait, last) = match sent {
                Err(e) => (None, describe(&e)),
                Ok(resp) => {
                    let status = resp.status();
                    pacing.observe(resp.headers());
                    if status.is_success() {
                        let server_date = resp
                            .headers()
                            .get(reqwest::header::DATE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
                            .map(|d| d.with_timezone(&chrono::Utc));
                        match resp.bytes().await {
                            Ok(body) => {
                                return Ok(Got {
                                    body,
                                    server_date,
                                    requests: attempts,
                                    throttled,
                                });
                            }
                            // A body cut off mid-way is a transport fault: retry.
                            Err(e) => (None, describe(&e)),
                        }
                    } else if status == StatusCode::UNAUTHORIZED && !refreshed {
                        refreshed = true;
                        tokens.refresh()?;
                        tracing::info!(
                            credential = tokens.name(),
                            "Azure answered 401; refreshing the token once"
                        );
                        continue;
                    } else if status == StatusCode::TOO_MANY_REQUESTS {
                        let wait = retry_after(resp.headers());
                        let header = |name: &str| {
                            resp.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        tracing::warn!(
                            retry_after_s = wait.map(|d| d.as_secs_f64()),
                            remaining_reads = header("x-ms-ratelimit-remaining-subscription-reads"),
                            user_quota_remaining = header("x-ms-user-quota-remaining"),
                            "Azure is throttling (HTTP 429)"
                        );
                        was_throttled = true;
                        if let Some(w) = wait {
                            throttled += w;
                            crate::metrics::throttle_wait(w.as_secs_f64());
                        }
                        (wait, "HTTP 429 Too Many Requests".to_string())
                    } else if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
                        (retry_after(resp.headers()), format!("HTTP {status}"))
                    } else {
                        let code = status.as_u16();
                        let (arm_code, message) = arm_error(resp).await;
                        return Err(if code == 401 || code == 403 {
                            AzureError::Denied {
                                status: code,
                                code: arm_code,
                                message,
                            }
                        } else {
                            AzureError::Rejected {
                                status: code,
                                code: arm_code,
                                message,
                            }
                        });
                    }
                }
            };
            let Some(backoff) = delays.next() else {
                return Err(AzureError::Exhausted {
                    attempts,
                    last,
                    throttled: was_throttled,
                });
            };
            let delay = wait.unwrap_or(backoff);
            tracing::debug!(attempt = attempts, delay_ms = delay.as_millis() as u64, error = %last, "retrying Azure request");
            tokio::time::sleep(delay).await;
        }
    }
}

/// A URL on Azure Resource Manager: `path` below `base`, with `api-version`.
pub fn url(base: &url::Url, path: &str, api_version: &str) -> url::Url {
    let mut url = base.clone();
    url.set_path(&format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    ));
    url.query_pairs_mut()
        .clear()
        .append_pair("api-version", api_version);
    url
}

/// A transport error without its URL (ours carry no secret, but the habit is kept).
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body cut off"
    } else {
        "request failed"
    };
    // The causes only: `e` itself prints its URL.
    crate::with_causes(kind.to_string(), std::error::Error::source(e))
}

/// ARM's `{"error": {"code", "message"}}`, when the body has one.
async fn arm_error(resp: reqwest::Response) -> (Option<String>, Option<String>) {
    let Ok(body) = resp.bytes().await else {
        return (None, None);
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return (None, None),
    };
    let e = v.get("error").unwrap_or(&v);
    let text = |k: &str| {
        e.get(k)
            .and_then(|x| x.as_str())
            .map(|s| s.chars().take(500).collect())
    };
    (text("code"), text("message"))
}
