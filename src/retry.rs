//! How long to wait before trying again: exponential backoff with jitter (from
//! `backon`), and the server's own `Retry-After` when it sends one.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Bounded exponential backoff: `base`, 2x`base`, ... capped at `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// Retries after the first attempt; `None` for unbounded.
    pub retries: Option<usize>,
}

impl Backoff {
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max)
            .with_jitter();
        match self.retries {
            Some(n) => b.with_max_times(n),
            None => b.without_max_times(),
        }
        .build()
    }
}

/// The longest `Retry-After` honoured as given; longer ones are capped, so that a
/// bogus header cannot park a subscription for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// `Retry-After` in seconds or as an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_caps_them() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("309"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(309)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_is_bounded() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(40),
            retries: Some(4),
        };
        let d: Vec<_> = b.delays().collect();
        assert_eq!(d.len(), 4);
        assert!(d.iter().all(|d| *d <= Duration::from_millis(80)));
    }
}
