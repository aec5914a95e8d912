//! The plan of a parallel catch-up: which time slices of `[start, until]` are
//! still to query, which are being queried, which are done, and how far the
//! watermark may move.
//!
//! Slices follow the log's density, not the clock. The range starts cut into
//! equal slices; when a slice's page comes back with a `nextLink` (more
//! entries than a page holds) and a query slot is free, the rest of that
//! slice, from its start to the oldest `eventTimestamp` on the page, is split
//! into new slices queried in parallel instead of one chain of pages. Pages
//! are newest first, so what the slice's pages so far hold is
//! `[oldest, end]`: that part is done, and the new slices cover
//! `[start, oldest]`, the boundary included (entries stamped `oldest` may sit
//! on either side of the page break; the seen ids stop the ones read twice).
//!
//! The watermark rule is unchanged: it passes only the contiguous prefix of
//! done slices, in time order, so everything past it is queried again after a
//! crash.

use std::collections::BTreeMap;

use crate::event::{Timestamp, to_ticks};

/// A new slice is never shorter than this: entries share timestamps to the
/// 100 ns tick, and a split into nothing would loop.
pub const MIN_SPLIT: chrono::Duration = chrono::Duration::seconds(1);

/// One slice's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Running,
    /// Done; the watermark may move to `safe_end` (its end, or Azure's "now"
    /// when that was earlier).
    Done {
        safe_end: Timestamp,
    },
}

#[derive(Debug, Clone, Copy)]
struct Slice {
    end: Timestamp,
    state: State,
}

/// The slices of one catch-up, keyed by their start.
#[derive(Debug)]
pub struct SlicePlan {
    slices: BTreeMap<Timestamp, Slice>,
    /// Where the committed prefix ends.
    watermark: Timestamp,
    /// A slice was stopped short by Azure's clock: nothing past it counts.
    clipped: bool,
    splits: usize,
}

impl SlicePlan {
    /// `[start, until]` cut into the given contiguous `(start, end)` slices.
    pub fn new(start: Timestamp, slices: Vec<(Timestamp, Timestamp)>) -> Self {
        SlicePlan {
            slices: slices
                .into_iter()
                .map(|(s, e)| {
                    (
                        s,
                        Slice {
                            end: e,
                            state: State::Pending,
                        },
                    )
                })
                .collect(),
            watermark: start,
            clipped: false,
            splits: 0,
        }
    }

    /// The oldest pending slice, now marked running.
    pub fn take(&mut self) -> Option<(Timestamp, Timestamp)> {
        let (start, slice) = self
            .slices
            .iter_mut()
            .find(|(_, s)| s.state == State::Pending)?;
        slice.state = State::Running;
        Some((*start, slice.end))
    }

    pub fn pending(&self) -> usize {
        self.count(State::Pending)
    }

    pub fn running(&self) -> usize {
        self.count(State::Running)
    }

    fn count(&self, state: State) -> usize {
        self.slices.values().filter(|s| s.state == state).count()
    }

    /// How many times a slice was split.
    pub fn splits(&self) -> usize {
        self.splits
    }

    /// The running slice starting at `start`, whose pages so far reach back
    /// to `oldest`, gives `[start, oldest]` away in up to `pieces` new slices
    /// and is done with `[oldest, end]` (moving the watermark no further than
    /// `safe_end`). Returns false, changing nothing, when the rest is too
    /// short to split (the slice then goes on following its `nextLink`).
    pub fn split(
        &mut self,
        start: Timestamp,
        oldest: Timestamp,
        safe_end: Timestamp,
        pieces: usize,
    ) -> bool {
        let Some(slice) = self.slices.get(&start).copied() else {
            return false;
        };
        if slice.state != State::Running || oldest - start < MIN_SPLIT || oldest > slice.end {
            return false;
        }
        self.slices.remove(&start);
        self.slices.insert(
            oldest,
            Slice {
                end: slice.end,
                state: State::Done { safe_end },
            },
        );
        let pieces = pieces.max(1);
        let total = oldest - start;
        let step = (total / i32::try_from(pieces).unwrap_or(i32::MAX)).max(MIN_SPLIT);
        let mut s = start;
        while s < oldest {
            let e = if oldest - s < step * 2 {
                oldest
            } else {
                to_ticks(s + step)
            };
            self.slices.insert(
                s,
                Slice {
                    end: e,
                    state: State::Pending,
                },
            );
            s = e;
        }
        self.splits += 1;
        true
    }

    /// The running slice starting at `start` is done. Returns the new
    /// watermark when the contiguous prefix of done slices grew.
    pub fn finish(&mut self, start: Timestamp, safe_end: Timestamp) -> Option<Timestamp> {
        if let Some(slice) = self.slices.get_mut(&start) {
            slice.state = State::Done { safe_end };
        }
        self.advance()
    }

    /// Moves the watermark over the contiguous prefix of done slices.
    fn advance(&mut self) -> Option<Timestamp> {
        let mut moved = None;
        while !self.clipped {
            let Some(entry) = self.slices.first_entry() else {
                break;
            };
            let State::Done { safe_end } = entry.get().state else {
                break;
            };
            let end = entry.get().end;
            entry.remove();
            // Azure's clock stopped this slice short: nothing past it counts.
            self.clipped = safe_end < end;
            self.watermark = self.watermark.max(safe_end);
            moved = Some(self.watermark);
        }
        moved
    }

    /// Where the committed prefix ends.
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_timestamp;

    fn t(s: &str) -> Timestamp {
        parse_timestamp(s).unwrap()
    }

    fn covered(plan: &SlicePlan) -> Vec<(Timestamp, Timestamp)> {
        plan.slices.iter().map(|(s, x)| (*s, x.end)).collect()
    }

    #[test]
    fn a_dense_slice_splits_its_rest_and_the_watermark_waits_for_the_prefix() {
        let start = t("2026-12-01T10:00:00Z");
        let mid = t("2026-12-01T10:30:00Z");
        let until = t("2026-12-01T11:00:00Z");
        let mut plan = SlicePlan::new(start, vec![(start, mid), (mid, until)]);
        assert_eq!(plan.take(), Some((start, mid)));
        assert_eq!(plan.take(), Some((mid, until)));
        // The later slice's first page reaches back to 10:50 only: its rest
        // [10:30, 10:50] goes to 4 new slices; [10:50, 11:00] is done.
        let oldest = t("2026-12-01T10:50:00Z");
        assert!(plan.split(mid, oldest, until, 4));
        assert_eq!(plan.pending(), 4);
        assert_eq!(plan.running(), 1);
        // Contiguous and complete.
        let c = covered(&plan);
        assert_eq!(c[0].0, start);
        assert_eq!(c[c.len() - 1].1, until);
        for w in c.windows(2) {
            assert_eq!(w[0].1, w[1].0);
        }
        // Nothing moves until the first slice is done.
        let mut taken = Vec::new();
        while let Some(s) = plan.take() {
            taken.push(s);
        }
        for (s, e) in taken.iter().rev() {
            assert_eq!(
                plan.finish(*s, *e),
                None,
                "{s}: a predecessor is still running"
            );
        }
        assert_eq!(plan.finish(start, mid), Some(until));
        assert_eq!(plan.watermark(), until);
    }

    #[test]
    fn a_rest_shorter_than_the_minimum_is_not_split() {
        let start = t("2026-12-01T10:00:00Z");
        let until = t("2026-12-01T10:10:00Z");
        let mut plan = SlicePlan::new(start, vec![(start, until)]);
        plan.take();
        assert!(!plan.split(start, t("2026-12-01T10:00:00.5Z"), until, 4));
        assert!(!plan.split(start, start, until, 4));
        assert_eq!(plan.running(), 1);
        assert_eq!(plan.splits(), 0);
    }

    #[test]
    fn a_clipped_slice_stops_the_watermark_for_good() {
        let start = t("2026-12-01T10:00:00Z");
        let a = t("2026-12-01T10:20:00Z");
        let b = t("2026-12-01T10:40:00Z");
        let mut plan = SlicePlan::new(start, vec![(start, a), (a, b)]);
        plan.take();
        plan.take();
        // Azure's clock was at 10:15 when the first slice was read.
        let azure_now = t("2026-12-01T10:15:00Z");
        assert_eq!(plan.finish(start, azure_now), Some(azure_now));
        assert_eq!(plan.finish(a, b), None);
        assert_eq!(plan.watermark(), azure_now);
    }

    #[test]
    fn splits_into_small_pieces_never_go_below_the_minimum() {
        let start = t("2026-12-01T10:00:00Z");
        let until = t("2026-12-01T10:00:05Z");
        let mut plan = SlicePlan::new(start, vec![(start, until)]);
        plan.take();
        assert!(plan.split(start, t("2026-12-01T10:00:03Z"), until, 100));
        let c = covered(&plan);
        assert!(c.iter().all(|(s, e)| *e - *s >= MIN_SPLIT), "{c:?}");
        assert_eq!(plan.pending(), 3);
    }
}
