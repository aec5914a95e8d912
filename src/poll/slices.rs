//! The plan of a parallel catch-up: which time slices of `[start, until]` are
//! still to query, which are being queried, which are done, and how far the
//! watermark may move.
//!
//! Slices follow the log's density, not the clock. The range starts cut into
//! equal slices ([`cut`]); when a slice's page comes back with a `nextLink`
//! (more entries than a page holds) and fewer slices than the limit are
//! running or pending, the rest of that slice, from its start to the oldest
//! `eventTimestamp` on the page, is split over the free slots (into no more
//! slices than it would fill pages at the page's density,
//! [`SlicePlan::split_dense`]) instead of being read as one chain of pages.
//! Pages are newest first, so what the slice's pages so far hold is
//! `[oldest, end]`: that part is done, and the new slices cover
//! `[start, oldest]`, the boundary included (entries stamped `oldest` may sit
//! on either side of the page break; the seen ids stop the ones read twice).
//! A burst of entries in a few minutes of a long range is thus read by as
//! many chains as there are slots, each a few pages long, and the slots of
//! the empty slices that finished at once go to it.
//!
//! The watermark rule is unchanged: it passes only the contiguous prefix of
//! done slices, in time order, so everything past it is queried again after a
//! crash. A split never moves it: the rest it gives away comes before the
//! part it marks done.

use std::collections::BTreeMap;
use std::time::Duration;

use super::CATCH_UP_CHUNK;
use crate::event::{Timestamp, to_ticks};

/// The shortest slice worth its own query when a catch-up is first cut.
const MIN_SLICE: Duration = Duration::from_secs(60);

/// A split's new slice is never shorter than this: entries share timestamps
/// to the 100 ns tick, and slices of nothing would only multiply queries.
pub const MIN_SPLIT: chrono::Duration = chrono::Duration::seconds(1);

/// The `eventTimestamp`s a page reached, oldest and newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub oldest: Timestamp,
    pub newest: Timestamp,
}

impl Reach {
    /// The reach of these timestamps; `None` for none.
    pub fn of(stamps: impl IntoIterator<Item = Timestamp>) -> Option<Reach> {
        stamps.into_iter().fold(None, |reach, t| {
            Some(match reach {
                None => Reach {
                    oldest: t,
                    newest: t,
                },
                Some(r) => Reach {
                    oldest: r.oldest.min(t),
                    newest: r.newest.max(t),
                },
            })
        })
    }

    /// About how many pages as full as this one `span` holds at its density
    /// (at least one; unbounded for a page all of one timestamp).
    fn pages_in(&self, span: chrono::Duration) -> usize {
        let page = (self.newest - self.oldest)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        let span = span.num_microseconds().unwrap_or(i64::MAX);
        if page <= 0 {
            return usize::MAX;
        }
        usize::try_from(span.div_euclid(page).saturating_add(1)).unwrap_or(usize::MAX)
    }
}

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
    /// Where the first slice starts.
    start: Timestamp,
    slices: BTreeMap<Timestamp, Slice>,
    /// Where the committed prefix ends.
    watermark: Timestamp,
    /// A slice was stopped short by Azure's clock: nothing past it counts.
    clipped: bool,
    splits: usize,
}

impl SlicePlan {
    /// `[start, until]` cut as [`cut`] does, for `parallel` slots.
    pub fn cut(start: Timestamp, until: Timestamp, parallel: usize) -> Self {
        SlicePlan::new(start, cut(start, until, parallel))
    }

    /// `[start, until]` cut into the given contiguous `(start, end)` slices.
    pub fn new(start: Timestamp, slices: Vec<(Timestamp, Timestamp)>) -> Self {
        SlicePlan {
            start,
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

    /// The running slice starting at `start` read a full page (one with a
    /// `nextLink`) spanning `page`: when fewer than `limit` slices are
    /// running or pending, its rest is split over the free slots and its
    /// own (see [`SlicePlan::split`]), but into no more pieces than the rest
    /// would fill pages at the page's density: a rest of two pages' worth is
    /// two queries, not a dozen of a few entries each, every one of which
    /// would cost a read of the budget. Returns how many new slices were
    /// made; `None` when the slice is to go on following its `nextLink`.
    pub fn split_dense(
        &mut self,
        start: Timestamp,
        page: Reach,
        safe_end: Timestamp,
        limit: usize,
    ) -> Option<usize> {
        let busy = self.running() + self.pending();
        let free = limit.checked_sub(busy).filter(|f| *f > 0)?;
        let pieces = (free + 1).min(page.pages_in(page.oldest - start));
        if pieces < 2 {
            return None;
        }
        self.split(start, page.oldest, safe_end, pieces)
    }

    /// The running slice starting at `start`, whose pages so far reach back
    /// to `oldest`, gives `[start, oldest]` away in up to `pieces` new slices
    /// and is done with `[oldest, end]` (moving the watermark no further than
    /// `safe_end`). Returns how many new slices were made; `None`, changing
    /// nothing, when the rest is shorter than [`MIN_SPLIT`] or the page
    /// covered no time (`oldest` is the slice's end: a page of entries
    /// sharing one timestamp; splitting again would read it again, so the
    /// slice follows its `nextLink` instead).
    pub fn split(
        &mut self,
        start: Timestamp,
        oldest: Timestamp,
        safe_end: Timestamp,
        pieces: usize,
    ) -> Option<usize> {
        let slice = self.slices.get(&start).copied()?;
        if slice.state != State::Running || oldest - start < MIN_SPLIT || oldest >= slice.end {
            return None;
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
        let mut made = 0;
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
            made += 1;
            s = e;
        }
        self.splits += 1;
        Some(made)
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

    /// How much of the range is read: the committed prefix and every done
    /// slice past it (for the progress shown, not for the watermark).
    pub fn covered(&self) -> chrono::Duration {
        let done: chrono::Duration = self
            .slices
            .iter()
            .filter(|(_, s)| matches!(s.state, State::Done { .. }))
            .map(|(start, s)| s.end - *start)
            .sum();
        self.watermark - self.start + done
    }
}

/// `[start, until]` cut into contiguous slices: as many as `parallel` asks
/// (each at least [`MIN_SLICE`]) and none longer than [`CATCH_UP_CHUNK`].
pub fn cut(start: Timestamp, until: Timestamp, parallel: usize) -> Vec<(Timestamp, Timestamp)> {
    let total = (until - start).to_std().unwrap_or(Duration::ZERO);
    let by_parallel = total / u32::try_from(parallel.max(1)).unwrap_or(u32::MAX);
    let len = by_parallel.clamp(MIN_SLICE, CATCH_UP_CHUNK);
    let len = chrono::Duration::from_std(len).unwrap_or(chrono::Duration::MAX);
    let mut out = Vec::new();
    let mut s = start;
    while s < until {
        let e = to_ticks((s + len).min(until));
        out.push((s, e));
        s = e;
    }
    if out.is_empty() {
        out.push((start, until));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_timestamp;

    fn t(s: &str) -> Timestamp {
        parse_timestamp(s).unwrap()
    }

    /// A plan of one slice, `[start, until]`, running.
    fn one_running(start: Timestamp, until: Timestamp) -> SlicePlan {
        let mut plan = SlicePlan::new(start, vec![(start, until)]);
        plan.take();
        plan
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
        assert_eq!(plan.split(mid, oldest, until, 4), Some(4));
        assert_eq!(plan.pending(), 4);
        assert_eq!(plan.running(), 1);
        // The part done counts as read, though the watermark has not moved.
        assert_eq!(plan.covered(), chrono::Duration::minutes(10));
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
        assert_eq!(plan.covered(), chrono::Duration::minutes(30));
        assert_eq!(plan.finish(start, mid), Some(until));
        assert_eq!(plan.watermark(), until);
        assert_eq!(plan.covered(), chrono::Duration::hours(1));
    }

    #[test]
    fn a_rest_shorter_than_the_minimum_is_not_split() {
        let start = t("2026-12-01T10:00:00Z");
        let until = t("2026-12-01T10:10:00Z");
        let mut plan = one_running(start, until);
        assert_eq!(
            plan.split(start, t("2026-12-01T10:00:00.5Z"), until, 4),
            None
        );
        assert_eq!(plan.split(start, start, until, 4), None);
        // A page of entries sharing the slice's end covered no time: split
        // again, the rest would read it again.
        assert_eq!(plan.split(start, until, until, 4), None);
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
        let mut plan = one_running(start, until);
        assert_eq!(
            plan.split(start, t("2026-12-01T10:00:03Z"), until, 100),
            Some(3)
        );
        let c = covered(&plan);
        assert!(c.iter().all(|(s, e)| *e - *s >= MIN_SPLIT), "{c:?}");
        assert_eq!(plan.pending(), 3);
    }

    /// A full page reaching from `oldest` to a minute later.
    fn page(oldest: &str) -> Reach {
        let oldest = t(oldest);
        Reach {
            oldest,
            newest: oldest + chrono::Duration::minutes(1),
        }
    }

    #[test]
    fn a_full_page_splits_over_the_free_slots_only() {
        let start = t("2026-12-01T10:00:00Z");
        let until = t("2026-12-01T11:00:00Z");
        let mut plan = SlicePlan::cut(start, until, 4);
        let slices: Vec<_> = std::iter::from_fn(|| plan.take()).collect();
        assert_eq!(slices.len(), 4, "{slices:?}");
        let (last, end) = slices[3];
        let full = page("2026-12-01T10:55:00Z");
        // Every slot is taken: the full page's slice follows its nextLink.
        assert_eq!(plan.split_dense(last, full, end, 4), None);
        assert_eq!(plan.splits(), 0);
        // Two empty slices finish: two slots free, so the rest goes to
        // three new slices (the two free slots and the splitting one's).
        for (s, e) in &slices[1..3] {
            plan.finish(*s, *e);
        }
        assert_eq!(plan.split_dense(last, full, end, 4), Some(3));
        assert_eq!((plan.running(), plan.pending()), (1, 3));
        // Now the limit is reached again.
        let (s, _) = plan.take().unwrap();
        let again = page("2026-12-01T10:46:00Z");
        assert_eq!(plan.split_dense(s, again, end, 4), None);
        // A limit below what is already running never splits either.
        assert_eq!(plan.split_dense(s, again, end, 1), None);
    }

    #[test]
    fn a_rest_of_a_few_pages_is_split_into_no_more_slices_than_pages() {
        let start = t("2026-12-01T10:00:00Z");
        let until = t("2026-12-01T10:10:00Z");
        let mut plan = one_running(start, until);
        // The page spans a minute; the rest, 10:00 to 10:02:30, about two
        // and a half pages at that density: three slices, though 15 slots
        // are free.
        let full = page("2026-12-01T10:02:30Z");
        assert_eq!(plan.split_dense(start, full, until, 16), Some(3));
        // A rest under two pages' worth is not worth a split: the slice
        // follows its nextLink.
        let mut plan = one_running(start, until);
        assert_eq!(
            plan.split_dense(start, page("2026-12-01T10:00:50Z"), until, 16),
            None
        );
        // A page all of one timestamp says nothing of the density.
        let at = t("2026-12-01T10:05:00Z");
        let flat = Reach {
            oldest: at,
            newest: at,
        };
        assert_eq!(plan.split_dense(start, flat, until, 4), Some(4));
    }

    #[test]
    fn a_reach_is_the_oldest_and_newest_timestamp() {
        let (a, b, c) = (
            t("2026-12-01T10:00:00Z"),
            t("2026-12-01T10:00:01Z"),
            t("2026-12-01T10:00:02Z"),
        );
        assert_eq!(
            Reach::of([b, c, a]),
            Some(Reach {
                oldest: a,
                newest: c
            })
        );
        assert_eq!(Reach::of([]), None);
    }

    #[test]
    fn a_burst_is_split_until_every_slot_reads_part_of_it() {
        // A 10-minute burst at the end of an hour, an entry every 100 ms
        // (6,000), pages of 100 newest first; 8 slots. Slices are read page
        // by page in rounds (every running query reads one page a round),
        // the way the catch-up's queries run together.
        let start = t("2026-12-01T10:00:00Z");
        let until = t("2026-12-01T11:00:00Z");
        let burst = t("2026-12-01T10:50:00Z");
        let gap = chrono::Duration::milliseconds(100);
        let page = 100;
        // The grid index of the newest entry at or before `at`, and of the
        // oldest at or after it.
        let below = |at: Timestamp| (at - burst).num_milliseconds().div_euclid(100);
        let above = |at: Timestamp| -(burst - at).num_milliseconds().div_euclid(100);
        let mut plan = SlicePlan::cut(start, until, 8);
        // Running queries: start, end, the newest entry not yet read, pages read.
        let mut running: Vec<(Timestamp, Timestamp, Timestamp, usize)> = Vec::new();
        let (mut rounds, mut longest, mut pages) = (0, 0, 0);
        loop {
            while running.len() < 8
                && let Some((s, e)) = plan.take()
            {
                running.push((s, e, e, 0));
            }
            if running.is_empty() {
                break;
            }
            rounds += 1;
            for (s, e, next, read) in std::mem::take(&mut running) {
                let (hi, lo) = (below(next).min(below(until)), above(s).max(0));
                let on_page = (hi - lo + 1).clamp(0, page);
                pages += 1;
                longest = longest.max(read + 1);
                if hi - lo < page {
                    plan.finish(s, e);
                    continue;
                }
                let oldest = burst + gap * i32::try_from(hi - on_page + 1).unwrap();
                let reach = Reach {
                    oldest,
                    newest: burst + gap * i32::try_from(hi).unwrap(),
                };
                if plan.split_dense(s, reach, e, 8).is_none() {
                    running.push((s, e, oldest - gap, read + 1));
                }
            }
        }
        assert_eq!(plan.watermark(), until);
        assert!(plan.splits() >= 2, "{} splits", plan.splits());
        // One chain would have read 60 pages in 60 rounds; 8 slots share
        // them, plus the rounds that find the burst and the pages re-read
        // at split boundaries.
        assert!(rounds <= 15, "{rounds} rounds, {pages} pages");
        assert!(longest <= 10, "a chain of {longest} pages");
    }

    #[test]
    fn a_catch_up_is_cut_contiguously_within_the_bounds() {
        let start = t("2026-11-20T00:00:00Z");
        for (until, parallel, n) in [
            ("2026-11-20T02:00:00Z", 8, 8),  // 2 h / 8 = 15 min each
            ("2026-11-22T00:00:00Z", 8, 48), // 2 days: capped at 1 h each
            ("2026-11-20T00:03:30Z", 8, 4),  // short: at least 1 min each
            ("2026-11-20T00:00:30Z", 8, 1),
        ] {
            let until = t(until);
            let s = cut(start, until, parallel);
            assert_eq!(s.len(), n, "{until}");
            assert_eq!(s[0].0, start);
            assert_eq!(s[s.len() - 1].1, until);
            for w in s.windows(2) {
                assert_eq!(w[0].1, w[1].0, "contiguous");
            }
            assert!(
                s.iter()
                    .all(|(a, b)| b > a && (*b - *a).to_std().unwrap() <= CATCH_UP_CHUNK)
            );
        }
    }
}
