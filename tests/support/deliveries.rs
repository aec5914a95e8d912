//! Comparing what was delivered with what should have been, event by event:
//! exactly once, or (after a kill) nothing lost and only a bounded number of
//! events sent again.

use std::collections::{HashMap, HashSet};

use super::FakeEntry;

pub fn ids(entries: &[FakeEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// Counts of each id; an exactly-once delivery has every count at 1.
pub fn counts(ids: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id.clone()).or_insert(0) += 1;
    }
    m
}

/// Asserts that `delivered` holds every id of `expected` exactly once and nothing else.
pub fn assert_exactly_once(delivered: &[String], expected: &[String]) {
    let c = counts(delivered);
    let dup: Vec<_> = c.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "delivered more than once: {dup:?}");
    assert_only_expected(delivered, expected);
}

/// Asserts that `delivered` holds every id of `expected` and nothing else,
/// with at most `max_repeats` deliveries beyond the first of an event (the
/// POSTs a kill can cut after the endpoint acknowledged them).
pub fn assert_at_least_once(delivered: &[String], expected: &[String], max_repeats: usize) {
    assert_only_expected(delivered, expected);
    let repeats: usize = counts(delivered).values().map(|n| n - 1).sum();
    assert!(
        repeats <= max_repeats,
        "{repeats} repeated deliveries, at most {max_repeats} expected"
    );
}

fn assert_only_expected(delivered: &[String], expected: &[String]) {
    let want: HashSet<&String> = expected.iter().collect();
    let got: HashSet<&String> = delivered.iter().collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(extra.is_empty(), "delivered but not expected: {extra:?}");
}
