//! One request to Azure Resource Manager, retried: the discipline every ARM
//! call shares (the activity log's pages, the handlers' reads, Resource Graph
//! queries), and the errors ARM answers with.
//!
//! 429 waits `Retry-After` (or backs off when absent); 5xx, 408, timeouts and
//! dropped connections back off exponentially with jitter, a bounded number of
//! times; a 401 refreshes the token once; any other answer is an
//! [`AzureError`] that names the status and ARM's error code and message,
//! in either shape Azure writes them. A body is read up to [`BODY_LIMIT`]:
//! one past it fails the request at once (the next poll asks again), one cut
//! off mid-way is retried.
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
use crate::heartbeat::Heartbeat;
pub use crate::http::describe;
use crate::http::{BodyError, Limit};
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
    #[error("Azure's answer was refused: {0}")]
    Oversized(BodyError),
    #[error("nextLink points to {found}, not to {expected}: refusing to send the token there")]
    ForeignNextLink { found: String, expected: String },
    #[error("nextLink is not a valid URL: {0}")]
    BadNextLink(url::ParseError),
    #[error(
        "Azure's paging does not end: {why} (after {pages} pages); this poll stops, the next one starts again from the watermark"
    )]
    EndlessPaging { pages: usize, why: &'static str },
}

impl AzureError {
    /// True when waiting may fix it (throttling, outages); false for problems a
    /// person must fix (permissions, bad requests).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AzureError::Exhausted { .. }
                | AzureError::MalformedPage(_)
                | AzureError::Oversized(_)
                | AzureError::Credential(
                    CredentialError::Timeout { .. } | CredentialError::Unreachable { .. }
                )
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

/// The most an ARM answer's body may hold: a page is a few MiB at most in
/// practice.
pub const BODY_LIMIT: Limit = Limit::mib(64);

/// The most of an error body that is read for its code and message.
const ERROR_BODY_LIMIT: Limit = Limit::mib(1);

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
                        let server_date = server_date(resp.headers());
                        match crate::http::read(resp, BODY_LIMIT).await {
                            Ok(body) => {
                                return Ok(Got {
                                    body,
                                    server_date,
                                    requests: attempts,
                                    throttled,
                                });
                            }
                            // Asked again, it would most likely be as large:
                            // this request fails, the next poll asks anew.
                            Err(e) if e.is_too_large() => return Err(AzureError::Oversized(e)),
                            // A body cut off mid-way is a transport fault: retry.
                            Err(e) => (None, e.to_string()),
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
                        let wait = throttled_for(resp.headers());
                        was_throttled = true;
                        if let Some(w) = wait {
                            throttled += w;
                            crate::metrics::throttle_wait(w.as_secs_f64());
                        }
                        (wait, "HTTP 429 Too Many Requests".to_string())
                    } else if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
                        (retry_after(resp.headers()), format!("HTTP {status}"))
                    } else {
                        return Err(refusal(resp).await);
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

/// The code and message of an ARM error body, when it has them: ARM's
/// `{"error": {"code", "message"}}`, or the top-level `Code` and `Message`
/// some providers answer with (Insights, for a start time too far back).
async fn arm_error(resp: reqwest::Response) -> (Option<String>, Option<String>) {
    match crate::http::read(resp, ERROR_BODY_LIMIT).await {
        Ok(body) => error_detail(&body),
        Err(_) => (None, None),
    }
}

/// [`arm_error`] on a body read; keys in any case.
fn error_detail(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(serde_json::Value::Object(top)) = serde_json::from_slice(body) else {
        return (None, None);
    };
    let error = match field(&top, "error") {
        Some(serde_json::Value::Object(inner)) => inner,
        _ => &top,
    };
    let text = |key: &str| {
        field(error, key)
            .and_then(|v| v.as_str())
            .map(|s| s.chars().take(500).collect())
    };
    (text("code"), text("message"))
}

/// The value of `key` in `object`, whatever the key's case.
fn field<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Option<&'a serde_json::Value> {
    object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Azure's clock, from an answer's `Date` header.
fn server_date(headers: &reqwest::header::HeaderMap) -> Option<chrono::DateTime<chrono::Utc>> {
    headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
        .map(|d| d.with_timezone(&chrono::Utc))
}

/// A 429's `Retry-After`, logged with what is left of ARM's budgets.
fn throttled_for(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let wait = retry_after(headers);
    let header = |name: &str| {
        headers
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
    wait
}

/// An answer that retrying will not change: refused (401, 403) or rejected.
async fn refusal(resp: reqwest::Response) -> AzureError {
    let code = resp.status().as_u16();
    let (arm_code, message) = arm_error(resp).await;
    if code == 401 || code == 403 {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(body: &str) -> (Option<String>, Option<String>) {
        error_detail(body.as_bytes())
    }

    fn both(code: &str, message: &str) -> (Option<String>, Option<String>) {
        (Some(code.to_string()), Some(message.to_string()))
    }

    #[test]
    fn both_shapes_azure_writes_give_code_and_message() {
        assert_eq!(
            detail(r#"{"error": {"code": "AuthorizationFailed", "message": "no role"}}"#),
            both("AuthorizationFailed", "no role")
        );
        // Insights' answer to a start time over 90 days back (the recorded
        // 400 in ../shared/fixtures/arm-errors).
        assert_eq!(
            detail(
                r#"{"Code":"BadRequest","Message":"The start time cannot be more than 90 days in the past."}"#
            ),
            both(
                "BadRequest",
                "The start time cannot be more than 90 days in the past."
            )
        );
        assert_eq!(
            detail(r#"{"code": "BadRequest", "message": "bad"}"#),
            both("BadRequest", "bad")
        );
        assert_eq!(
            detail(r#"{"Error": {"Code": "X", "Message": "y"}}"#),
            both("X", "y")
        );
    }

    #[test]
    fn what_is_not_an_arm_error_gives_nothing() {
        assert_eq!(detail("<html>Bad Gateway</html>"), (None, None));
        assert_eq!(detail(r#"["error"]"#), (None, None));
        // OAuth's `error` is a string, not ARM's object.
        assert_eq!(detail(r#"{"error": "invalid_client"}"#), (None, None));
        assert_eq!(detail(r#"{"message": "only"}"#).1.as_deref(), Some("only"));
    }

    #[test]
    fn the_display_carries_code_and_message() {
        let (code, message) = detail(
            r#"{"Code":"BadRequest","Message":"The start time cannot be more than 90 days in the past."}"#,
        );
        let e = AzureError::Rejected {
            status: 400,
            code,
            message,
        };
        assert_eq!(
            e.to_string(),
            "Azure rejected the request (HTTP 400, BadRequest: The start time cannot be more than 90 days in the past.)"
        );
    }
}
