//! The Activity Logs - List call: one page at a time, with retries.
//!
//! `GET {arm}/subscriptions/{id}/providers/Microsoft.Insights/eventtypes/management/values`
//! with `api-version=2015-04-01` and a `$filter` on `eventTimestamp`. Pages are
//! linked by an opaque `nextLink`, followed unchanged, but only to the same
//! origin: the bearer token must never leave for another host.
//!
//! Faults: 429 waits `Retry-After` (or backs off when absent); 5xx, 408,
//! timeouts and dropped connections back off exponentially with jitter, a
//! bounded number of times; a 401 refreshes the token once; any other answer is
//! an error that names the subscription, the status and ARM's error code.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::ExposeSecret;
use url::Url;

use super::budget::ReadBudget;
use super::credential::{CredentialError, TokenSource};
use crate::event::{Page, PageError, Timestamp, format_ticks};
use crate::poll::Heartbeat;
use crate::retry::{Backoff, retry_after};

pub const API_VERSION: &str = "2015-04-01";

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
    Exhausted { attempts: usize, last: String },
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
}

fn arm_detail(code: &Option<String>, message: &Option<String>) -> String {
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

/// One fetched page, with what the response said about Azure's clock.
#[derive(Debug)]
pub struct Fetched {
    pub page: Page,
    /// The response's `Date` header: Azure's "now" when it answered.
    pub server_date: Option<Timestamp>,
    pub bytes: usize,
    /// Requests this page took, retries included.
    pub requests: usize,
    /// Time spent waiting on `Retry-After`.
    pub throttled: Duration,
}

#[derive(Debug)]
pub struct ActivityLogClient {
    http: reqwest::Client,
    base: Url,
    backoff: Backoff,
    request_timeout: Duration,
    /// ARM's read budget per subscription and principal, shared by every
    /// client of the process (polls, catch-up slices, detection).
    budget: Arc<ReadBudget>,
}

impl ActivityLogClient {
    pub fn new(
        http: reqwest::Client,
        base: Url,
        backoff: Backoff,
        request_timeout: Duration,
        budget: Arc<ReadBudget>,
    ) -> Self {
        ActivityLogClient {
            http,
            base,
            backoff,
            request_timeout,
            budget,
        }
    }

    /// The first page's URL for entries with `start <= eventTimestamp <= end`.
    pub fn first_page(&self, subscription_id: &str, start: Timestamp, end: Timestamp) -> Url {
        let mut url = self.base.clone();
        let path = format!(
            "{}/subscriptions/{subscription_id}/providers/Microsoft.Insights/eventtypes/management/values",
            self.base.path().trim_end_matches('/')
        );
        url.set_path(&path);
        url.query_pairs_mut()
            .clear()
            .append_pair("api-version", API_VERSION)
            .append_pair(
                "$filter",
                &format!(
                    "eventTimestamp ge '{}' and eventTimestamp le '{}'",
                    format_ticks(start),
                    format_ticks(end)
                ),
            );
        url
    }

    /// Checks a `nextLink` before following it.
    pub fn next_page(&self, link: &str) -> Result<Url, AzureError> {
        let url = Url::parse(link).map_err(AzureError::BadNextLink)?;
        if url.origin() != self.base.origin() {
            return Err(AzureError::ForeignNextLink {
                found: url.origin().ascii_serialization(),
                expected: self.base.origin().ascii_serialization(),
            });
        }
        Ok(url)
    }

    /// Fetches one page, retrying what is worth retrying.
    pub async fn fetch(
        &self,
        url: &Url,
        tokens: &Arc<TokenSource>,
        beat: &Heartbeat,
    ) -> Result<Fetched, AzureError> {
        let got = self.get(url, tokens, beat).await?;
        let page = Page::parse(&got.body)?;
        Ok(Fetched {
            page,
            server_date: got.server_date,
            bytes: got.body.len(),
            requests: got.requests,
            throttled: got.throttled,
        })
    }

    /// A URL on Azure Resource Manager: `path` below the base, with `api-version`.
    pub fn arm_url(&self, path: &str, api_version: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!(
            "{}/{}",
            self.base.path().trim_end_matches('/'),
            path.trim_start_matches('/')
        ));
        url.query_pairs_mut()
            .clear()
            .append_pair("api-version", api_version);
        url
    }

    /// One ARM GET, whatever it reads (activity log pages, action groups,
    /// alerts, subscriptions), retrying what is worth retrying. Any answer
    /// other than 2xx after the retries is an [`AzureError`].
    pub async fn get(
        &self,
        url: &Url,
        tokens: &Arc<TokenSource>,
        beat: &Heartbeat,
    ) -> Result<Got, AzureError> {
        let mut delays = self.backoff.delays();
        let mut attempts = 0usize;
        let mut refreshed = false;
        let mut throttled = Duration::ZERO;
        let budget_key =
            super::budget::subscription_of(url).map(|s| format!("{}/{s}", tokens.name()));
        loop {
            attempts += 1;
            beat.beat();
            if let Some(key) = &budget_key {
                let waited = self.budget.acquire(key).await;
                if !waited.is_zero() {
                    crate::metrics::budget_wait(waited.as_secs_f64());
                    beat.beat();
                }
            }
            let token = tokens.token().await?;
            let sent = self
                .http
                .get(url.clone())
                .bearer_auth(token.expose_secret())
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(self.request_timeout)
                .send()
                .await;
            crate::metrics::azure_request(sent.as_ref().ok().map(|r| r.status().as_u16()));
            let (wait, last) = match sent {
                Err(e) => (None, describe(&e)),
                Ok(resp) => {
                    let status = resp.status();
                    if let Some(key) = &budget_key
                        && let Some(remaining) = resp
                            .headers()
                            .get("x-ms-ratelimit-remaining-subscription-reads")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    {
                        self.budget.observe(key, remaining);
                    }
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
                        let remaining = resp
                            .headers()
                            .get("x-ms-ratelimit-remaining-subscription-reads")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        tracing::warn!(
                            retry_after_s = wait.map(|d| d.as_secs_f64()),
                            remaining_reads = remaining,
                            "Azure is throttling (HTTP 429)"
                        );
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
                return Err(AzureError::Exhausted { attempts, last });
            };
            let delay = wait.unwrap_or(backoff);
            tracing::debug!(attempt = attempts, delay_ms = delay.as_millis() as u64, error = %last, "retrying Azure request");
            tokio::time::sleep(delay).await;
        }
    }
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
