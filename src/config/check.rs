//! What every section's validation shares: the [`Checker`] that collects
//! problems with their line and column, its checks of common values
//! (durations, counts, URLs), and [`read_pieces`], which reads the file a
//! section at a time so that one unreadable section hides no other's problems.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::Spanned;
use url::Url;

/// One problem found in the configuration file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Collects problems while validating; turns byte offsets into line and column.
pub(super) struct Checker<'a> {
    source: &'a str,
    pub(super) problems: Vec<Problem>,
    /// Sections whose own problems were reported while reading them; they are
    /// not reported again as missing.
    pub(super) unreadable: HashSet<String>,
    pub(super) warnings: Vec<String>,
    /// The keys of secrets given inline, in this file.
    pub(super) inline_secrets: Vec<String>,
}

impl<'a> Checker<'a> {
    pub(super) fn new(source: &'a str) -> Self {
        Checker {
            source,
            problems: Vec::new(),
            unreadable: HashSet::new(),
            warnings: Vec::new(),
            inline_secrets: Vec::new(),
        }
    }

    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.problems.push(Problem {
            line,
            column,
            message: message.into(),
        });
    }

    /// A required section is missing: a problem at the top of the file,
    /// unless the section is there but could not be read (its own problem
    /// was reported).
    pub(super) fn missing(&mut self, section: &str, message: &str) {
        if !self.unreadable.contains(section) {
            self.at(0..0, message);
        }
    }

    /// Line and column of a byte offset in the file.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        line_column(self.source, offset)
    }

    /// The end of the file's text: where something missing is reported.
    pub(super) fn end(&self) -> Range<usize> {
        let end = self.source.trim_end().len();
        end..end
    }

    pub(super) fn duration(&mut self, value: &Spanned<String>, key: &str) -> Option<Duration> {
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.at(
                    value.span(),
                    format!("{key}: cannot parse {:?} as a duration ({e}); examples: \"30s\", \"1m\", \"15m\"", value.get_ref()),
                );
                None
            }
        }
    }

    /// An optional duration: `default` when the key is absent.
    pub(super) fn duration_or(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        value
            .as_ref()
            .map_or(Some(default), |v| self.duration(v, key))
    }

    pub(super) fn positive(&mut self, value: &Spanned<i64>, key: &str, max: i64) -> Option<usize> {
        let v = *value.get_ref();
        if v < 1 || v > max {
            self.at(
                value.span(),
                format!("{key} must be between 1 and {max}, got {v}"),
            );
            return None;
        }
        usize::try_from(v).ok()
    }

    /// An optional count from 1 to `max`: `default` when the key is absent.
    pub(super) fn positive_or(
        &mut self,
        value: &Option<Spanned<i64>>,
        key: &str,
        max: i64,
        default: usize,
    ) -> Option<usize> {
        value
            .as_ref()
            .map_or(Some(default), |v| self.positive(v, key, max))
    }

    /// A key that takes either a word or a count from 1 to `max`
    /// (`concurrency = "auto"` or `= 64`): `Some(None)` for the word,
    /// `Some(Some(n))` for a count, `None` (and a problem) for anything else.
    /// `counts` says what the number counts, for the message.
    pub(super) fn word_or_count(
        &mut self,
        value: &Spanned<toml::Value>,
        key: &str,
        word: &str,
        counts: &str,
        max: i64,
    ) -> Option<Option<usize>> {
        match value.get_ref() {
            toml::Value::String(s) if s == word => Some(None),
            toml::Value::Integer(n) => self
                .positive(&Spanned::new(value.span(), *n), key, max)
                .map(Some),
            other => {
                self.at(
                    value.span(),
                    format!("{key} must be \"{word}\" or a number of {counts}, got {other}"),
                );
                None
            }
        }
    }

    pub(super) fn url(&mut self, value: &Spanned<String>, key: &str) -> Option<Url> {
        match Url::parse(value.get_ref()) {
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && is_loopback(&u)) => Some(u),
            Ok(_) => {
                self.at(
                    value.span(),
                    format!("{key} must be an https URL (http is allowed only for loopback test servers)"),
                );
                None
            }
            Err(e) => {
                self.at(value.span(), format!("{key} is not a valid URL: {e}"));
                None
            }
        }
    }

    /// A required, non-empty string, trimmed; `span` (its section) is where a
    /// missing one is reported.
    pub(super) fn require<'r>(
        &mut self,
        field: &'r Option<Spanned<String>>,
        span: Range<usize>,
        what: &str,
    ) -> Option<&'r str> {
        match field {
            Some(v) if !v.get_ref().trim().is_empty() => Some(v.get_ref().trim()),
            Some(v) => {
                self.at(v.span(), format!("{what} must not be empty"));
                None
            }
            None => {
                self.at(span, format!("missing {what}"));
                None
            }
        }
    }
}

/// Whether a URL names this host: plain http is allowed only there (test servers).
pub(super) fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// A file's raw form that can be read a piece at a time: every piece is a
/// file of one section (or one credential, one subscription), merged in.
pub(super) trait Pieces: DeserializeOwned + Default {
    fn merge(&mut self, part: Self);
}

/// Reads the file section by section (each `[[subscription]]` on its own), so
/// that a problem in one does not hide the problems of the others.
pub(super) fn read_pieces<F: Pieces>(ck: &mut Checker<'_>) -> Option<F> {
    use toml::de::{DeArray, DeTable, DeValue};
    let root = match DeTable::parse(ck.source) {
        Ok(r) => r,
        Err(e) => {
            ck.at(e.span().unwrap_or(0..0), e.message().trim().to_string());
            return None;
        }
    };
    let span = root.span();
    let mut file = F::default();
    for (key, value) in root.into_inner() {
        // Moved out piece by piece, never copied: at 10,000 subscriptions
        // the parsed file is 10 MB, and a copy of it was as much again.
        let at = value.span();
        let pieces: Box<dyn Iterator<Item = (Spanned<DeValue<'_>>, Option<String>)>> =
            match value.into_inner() {
                // Each credential on its own, like each subscription.
                DeValue::Table(creds) if key.get_ref() == "credentials" => {
                    Box::new(creds.into_iter().map(move |(name, cred)| {
                        let what = format!("credentials.{}", name.get_ref());
                        let mut one = DeTable::new();
                        one.insert(name, cred);
                        (Spanned::new(at.clone(), DeValue::Table(one)), Some(what))
                    }))
                }
                DeValue::Array(items) if key.get_ref() == "subscription" => {
                    Box::new(items.into_iter().map(move |item| {
                        let mut one = DeArray::new();
                        one.push(item);
                        (Spanned::new(at.clone(), DeValue::Array(one)), None)
                    }))
                }
                other => Box::new(std::iter::once((Spanned::new(at, other), None))),
            };
        for (piece, what) in pieces {
            let mut table = DeTable::new();
            table.insert(key.clone(), piece);
            let de = toml::de::Deserializer::from(Spanned::new(span.clone(), table));
            match F::deserialize(de) {
                Ok(part) => file.merge(part),
                Err(e) => {
                    let at = e.span().unwrap_or(0..0);
                    let message = redact_secret_value(ck.source, &at, e.message().trim());
                    ck.at(at, message);
                    ck.unreadable
                        .insert(what.unwrap_or_else(|| key.get_ref().to_string()));
                }
            }
        }
    }
    Some(file)
}

/// Serde quotes the offending value in type errors; for a secret key that
/// value is the secret, so say only what is wrong.
fn redact_secret_value(source: &str, at: &Range<usize>, message: &str) -> String {
    let line_start = source
        .get(..at.start)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = source
        .get(line_start..)
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    if [
        "client_secret",
        "ingest_url",
        "access_key",
        "secret_key",
        "workspace_url",
        "url",
    ]
    .contains(&key)
    {
        format!("{key} must be a string")
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let s = "a = 1\nbb = 2\n";
        assert_eq!(line_column(s, 0), (1, 1));
        assert_eq!(line_column(s, 6), (2, 1));
        assert_eq!(line_column(s, 9), (2, 4));
    }
}
