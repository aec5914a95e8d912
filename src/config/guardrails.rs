//! `[guardrails]`: where events are delivered (the ingestion URL, a secret),
//! in which shape, and how (POSTs in flight, timeout, pauses after failures).
//! Its `[guardrails.api]` is in `guardrails_api.rs`.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::Spanned;
use url::Url;

use super::check::{Checker, is_loopback};
use super::guardrails_api::{self, GuardrailsApi, GuardrailsApiConfig};
use super::secret::{SecretSource, Secrets};
use crate::retry::Backoff;

/// `[guardrails]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Guardrails {
    pub(super) ingest_url: Option<Spanned<String>>,
    pub(super) ingest_url_file: Option<Spanned<PathBuf>>,
    pub(super) ingest_url_env: Option<Spanned<String>>,
    pub(super) format: Option<Spanned<Format>>,
    pub(super) concurrency: Option<Spanned<toml::Value>>,
    pub(super) max_concurrency: Option<Spanned<i64>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) retry_base: Option<Spanned<String>>,
    pub(super) retry_max: Option<Spanned<String>>,
    pub(super) api: Option<Spanned<GuardrailsApi>>,
}

/// The payload shape posted to the ingestion endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `Microsoft.Insights/activityLogs`, as the legacy Action Group webhook sends.
    ActivityLogAlert,
    /// `azureMonitorCommonAlertSchema`.
    CommonAlertSchema,
    /// The REST `EventData` entry, unchanged.
    EventData,
}

/// The Guardrails ingestion URL. It embeds a token, so it is a secret: its
/// `Debug` and `Display` show the host only.
#[derive(Clone)]
pub struct IngestUrl(SecretString);

impl IngestUrl {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
    /// A printable form: scheme and host, never path or query.
    pub fn redacted(&self) -> String {
        match Url::parse(self.expose()) {
            Ok(u) => format!(
                "{}://{}/[redacted]",
                u.scheme(),
                u.host_str().unwrap_or("?")
            ),
            Err(_) => "[redacted]".into(),
        }
    }
}

impl std::fmt::Debug for IngestUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IngestUrl({})", self.redacted())
    }
}

/// How many POSTs may be in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryConcurrency {
    /// Learned from the endpoint's answers (`src/concurrency.rs`), up to `max`.
    Adaptive {
        max: usize,
    },
    Fixed(usize),
}

#[derive(Debug, Clone)]
pub struct GuardrailsConfig {
    pub ingest_url: IngestUrl,
    pub format: Format,
    pub concurrency: DeliveryConcurrency,
    pub timeout: Duration,
    /// Pauses between failed delivery rounds (unbounded count).
    pub backoff: Backoff,
    /// `[guardrails.api]`, when configured.
    pub api: Option<GuardrailsApiConfig>,
}

/// `[guardrails]`, resolved; it is required.
pub(super) fn validate(
    g: Option<&Spanned<Guardrails>>,
    ck: &mut Checker<'_>,
    secrets: &Secrets<'_>,
) -> Option<GuardrailsConfig> {
    let Some(g) = g else {
        ck.missing(
            "guardrails",
            "missing [guardrails] section: where events are delivered",
        );
        return None;
    };
    let span = g.span();
    let g = g.get_ref();
    let url = ingest_url(g, span, ck, secrets);
    let format = g
        .format
        .as_ref()
        .map_or(Format::ActivityLogAlert, |f| *f.get_ref());
    let concurrency = delivery_concurrency(g, ck);
    let timeout = ck.duration_or(&g.timeout, "[guardrails] timeout", Duration::from_secs(30));
    let retry_base = ck.duration_or(
        &g.retry_base,
        "[guardrails] retry_base",
        Duration::from_millis(500),
    );
    let retry_max = ck.duration_or(
        &g.retry_max,
        "[guardrails] retry_max",
        Duration::from_secs(60),
    );
    let api = match &g.api {
        Some(a) => Some(guardrails_api::validate(a, ck, secrets)?),
        None => None,
    };
    Some(GuardrailsConfig {
        api,
        ingest_url: url?,
        format,
        concurrency: concurrency?,
        timeout: timeout?,
        backoff: Backoff {
            base: retry_base?,
            max: retry_max?.max(retry_base?),
            retries: None,
        },
    })
}

/// `ingest_url` (or `_file`, `_env`): an https URL (http for loopback).
fn ingest_url(
    g: &Guardrails,
    span: Range<usize>,
    ck: &mut Checker<'_>,
    secrets: &Secrets<'_>,
) -> Option<IngestUrl> {
    let src = SecretSource::new(&g.ingest_url, &g.ingest_url_file, &g.ingest_url_env);
    // The URL is a secret: messages say what is wrong, never what it is.
    let where_ = src.span().unwrap_or(span.clone());
    let url = secrets.load(src, "[guardrails] ingest_url", span, ck)?;
    match Url::parse(url.expose_secret().trim()) {
        Ok(parsed)
            if parsed.scheme() == "https"
                || (parsed.scheme() == "http" && is_loopback(&parsed)) =>
        {
            Some(IngestUrl(SecretString::from(
                url.expose_secret().trim().to_string(),
            )))
        }
        Ok(_) => {
            ck.at(
                where_,
                "[guardrails] ingest_url must be an https URL (http only for loopback)",
            );
            None
        }
        Err(e) => {
            ck.at(
                where_,
                format!("[guardrails] ingest_url is not a valid URL: {e}"),
            );
            None
        }
    }
}

/// `[guardrails] max_concurrency` by default: POSTs in flight at most. One
/// event per POST, so over a 50 ms round trip this is at most 10,240 events a
/// second; 256 capped a 20,000-entry burst's delivery at 5,120 a second,
/// while the endpoint kept up. Each POST in flight holds a connection (about
/// 56 KiB of buffers over HTTP/1.1), so the cap bounds memory too.
pub const DEFAULT_MAX_DELIVERIES: usize = 512;

/// `concurrency`: `"adaptive"` (the default, up to `max_concurrency`) or a
/// fixed number of POSTs in flight.
fn delivery_concurrency(g: &Guardrails, ck: &mut Checker<'_>) -> Option<DeliveryConcurrency> {
    let max_concurrency = ck.positive_or(
        &g.max_concurrency,
        "[guardrails] max_concurrency",
        4096,
        DEFAULT_MAX_DELIVERIES,
    );
    let fixed = match g.concurrency.as_ref() {
        None => None,
        Some(c) => ck.word_or_count(
            c,
            "[guardrails] concurrency",
            "adaptive",
            "POSTs in flight",
            4096,
        )?,
    };
    match fixed {
        Some(n) => Some(DeliveryConcurrency::Fixed(n)),
        None => max_concurrency.map(|max| DeliveryConcurrency::Adaptive { max }),
    }
}
