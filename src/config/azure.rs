//! `[azure]`: the cloud and its endpoints, and how hard the poller may press
//! Azure Resource Manager (the cap of reads in flight, timeouts, retries, the read
//! budget, catch-up slices).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use super::check::Checker;
use crate::retry::Backoff;

/// The cap of `[azure] concurrency = "auto"`: 10,000 subscriptions polled
/// every minute with one-second round trips keep 167 reads in flight; twice
/// that and more leaves room for a start, when every subscription is due at
/// once, and for polls that take two reads (a first poll asks Azure's clock).
pub const DEFAULT_READ_CAP: usize = 512;

/// The largest cap `[azure] concurrency` takes: each read in flight holds a
/// connection (or stream) and a page's buffers.
const MAX_CONCURRENCY: i64 = 4096;

/// `[azure]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Azure {
    pub(super) cloud: Option<Spanned<Cloud>>,
    pub(super) resource_manager_url: Option<Spanned<String>>,
    pub(super) authority_host: Option<Spanned<String>>,
    pub(super) concurrency: Option<Spanned<toml::Value>>,
    pub(super) request_timeout: Option<Spanned<String>>,
    pub(super) max_retries: Option<Spanned<i64>>,
    pub(super) retry_base: Option<Spanned<String>>,
    pub(super) reads_burst: Option<Spanned<i64>>,
    pub(super) reads_per_second: Option<Spanned<i64>>,
    pub(super) catch_up_slices: Option<Spanned<i64>>,
}

/// The Azure cloud the subscriptions live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    Public,
    UsGovernment,
    China,
    Custom,
}

impl Cloud {
    /// Resource Manager and authority host; none for a custom cloud.
    fn defaults(self) -> Option<(&'static str, &'static str)> {
        match self {
            Cloud::Public => Some((
                "https://management.azure.com",
                "https://login.microsoftonline.com",
            )),
            Cloud::UsGovernment => Some((
                "https://management.usgovcloudapi.net",
                "https://login.microsoftonline.us",
            )),
            Cloud::China => Some((
                "https://management.chinacloudapi.cn",
                "https://login.chinacloudapi.cn",
            )),
            Cloud::Custom => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AzureConfig {
    pub cloud: Cloud,
    pub resource_manager_url: Url,
    pub authority_host: Url,
    /// The cap of polls (ARM reads) in flight; how many there are below it
    /// follows the observed round trip and demand (`read_limit.rs`).
    /// `"auto"` is [`DEFAULT_READ_CAP`].
    pub concurrency: usize,
    /// Limit for one HTTP request to Azure.
    pub request_timeout: Duration,
    /// Retries of one request after throttling, 5xx or transport faults.
    pub backoff: Backoff,
    /// ARM's read budget per subscription and principal: burst, and refill per second.
    pub reads_burst: u32,
    pub reads_per_second: f64,
    /// Time slices of a long catch-up queried in parallel, per subscription.
    pub catch_up_slices: usize,
}

impl AzureConfig {
    /// The OAuth2 scope for Azure Resource Manager in this cloud.
    pub fn scope(&self) -> String {
        format!(
            "{}/.default",
            self.resource_manager_url.as_str().trim_end_matches('/')
        )
    }
}

/// `[azure]`, resolved; every key has a default, so the section may be absent.
pub(super) fn validate(az: &Azure, ck: &mut Checker<'_>) -> Option<AzureConfig> {
    let cloud = az.cloud.as_ref().map_or(Cloud::Public, |c| *c.get_ref());
    let defaults = cloud.defaults();
    let mut endpoint = |value: &Option<Spanned<String>>, key: &str, default: Option<&str>| match (
        value, default,
    ) {
        (Some(v), _) => ck.url(v, key),
        (None, Some(d)) => Url::parse(d).ok(),
        (None, None) => {
            let span = az.cloud.as_ref().map_or(0..0, |c| c.span());
            ck.at(span, format!("cloud = \"custom\" requires [azure] {key}"));
            None
        }
    };
    let resource_manager_url = endpoint(
        &az.resource_manager_url,
        "resource_manager_url",
        defaults.map(|d| d.0),
    );
    let authority_host = endpoint(&az.authority_host, "authority_host", defaults.map(|d| d.1));
    let concurrency = match az.concurrency.as_ref() {
        None => Some(DEFAULT_READ_CAP),
        Some(c) => ck
            .word_or_count(
                c,
                "[azure] concurrency",
                "auto",
                "polls in flight",
                MAX_CONCURRENCY,
            )
            .map(|cap| cap.unwrap_or(DEFAULT_READ_CAP)),
    };
    let request_timeout = ck.duration_or(
        &az.request_timeout,
        "[azure] request_timeout",
        Duration::from_secs(60),
    );
    let reads_burst = ck.positive_or(&az.reads_burst, "[azure] reads_burst", 100_000, 250);
    let reads_per_second =
        ck.positive_or(&az.reads_per_second, "[azure] reads_per_second", 10_000, 25);
    let catch_up_slices = ck.positive_or(&az.catch_up_slices, "[azure] catch_up_slices", 64, 16);
    let max_retries = ck.positive_or(&az.max_retries, "[azure] max_retries", 100, 5);
    let retry_base = ck.duration_or(&az.retry_base, "[azure] retry_base", Duration::from_secs(1));
    Some(AzureConfig {
        cloud,
        resource_manager_url: resource_manager_url?,
        authority_host: authority_host?,
        concurrency: concurrency?,
        request_timeout: request_timeout?,
        backoff: Backoff {
            base: retry_base?,
            max: Duration::from_secs(60).max(retry_base?),
            retries: Some(max_retries?),
        },
        reads_burst: u32::try_from(reads_burst?).unwrap_or(u32::MAX),
        reads_per_second: reads_per_second? as f64,
        catch_up_slices: catch_up_slices?,
    })
}
