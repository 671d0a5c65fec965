//! Commit tracking: which input offsets of a partition are done, and how far it is safe to commit.
//!
//! Records are tracked in *chunks*: the consecutive records one partition thread read in one go
//! (one record each under light load). A chunk is *done* only once every output of it
//! (predictions and dead letters) has been acknowledged by the broker. Acknowledgements arrive
//! in any order (batches run in parallel, two topics), so the safe commit position is the first
//! offset of the oldest chunk still in flight — or, with nothing in flight, one past the last
//! offset seen. That is "the highest offset below which everything is done", and it can never
//! pass an undelivered record, whatever order deliveries complete in. Gaps in the offset
//! sequence (compaction, transaction markers) need no special case: only offsets actually
//! consumed are ever waited for.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// One tracked chunk: its first and last offset, how many records it holds, and whether it is
/// done.
#[derive(Debug, Clone, Copy)]
struct Entry {
    first: i64,
    last: i64,
    records: usize,
    done: bool,
}

/// The pure bookkeeping for one partition (no locking; see [`PartitionTracker`]).
#[derive(Debug, Default, Clone)]
pub struct Offsets {
    /// Chunks consumed and not yet released from the front, in offset order.
    pending: VecDeque<Entry>,
    /// One past the last offset consumed: the commit position when nothing is pending.
    next: Option<i64>,
}

impl Offsets {
    /// Bookkeeping that resumes at `position` (the offset the next record will have at least),
    /// as after an assignment or a rewind to a committed offset: with nothing consumed yet, the
    /// commit position is `position` itself.
    pub fn starting_at(position: Option<i64>) -> Self {
        Offsets {
            pending: VecDeque::new(),
            next: position,
        }
    }

    /// Records that the chunk of `records` records from `first` to `last` was consumed and its
    /// outputs are on their way. Returns false (and records nothing) if `first` is below an
    /// offset already seen: a chunk is never tracked twice, and tracking a stale one would
    /// leave a phantom entry that blocks commits forever.
    #[must_use]
    pub fn track(&mut self, first: i64, last: i64, records: usize) -> bool {
        if last < first || self.pending.back().is_some_and(|e| first <= e.last) {
            return false;
        }
        self.pending.push_back(Entry {
            first,
            last,
            records,
            done: false,
        });
        self.next = Some(last + 1);
        true
    }

    /// Forgets the most recently tracked chunk, which will not be processed after all (the
    /// partition is stopping before it could hand the chunk on). It will be consumed again.
    pub fn untrack_last(&mut self, first: i64) {
        if self.pending.back().map(|e| e.first) == Some(first) {
            self.pending.pop_back();
            self.next = Some(first);
        }
    }

    /// Marks the chunk that starts at `first` as done. Unknown chunks (already released) are
    /// ignored.
    pub fn ack(&mut self, first: i64) {
        if let Ok(i) = self.pending.binary_search_by_key(&first, |e| e.first) {
            self.pending[i].done = true;
        }
        while self.pending.front().is_some_and(|e| e.done) {
            self.pending.pop_front();
        }
    }

    /// The offset to commit (the next one to read), or `None` before anything was consumed.
    pub fn commit_position(&self) -> Option<i64> {
        match self.pending.front() {
            Some(e) => Some(e.first),
            None => self.next,
        }
    }

    /// Consumed records whose outputs are not all acknowledged yet.
    pub fn in_flight(&self) -> usize {
        self.pending
            .iter()
            .filter(|e| !e.done)
            .map(|e| e.records)
            .sum()
    }

    pub fn is_drained(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Thread-safe [`Offsets`] for one assigned partition, shared by its partition thread (track),
/// the producer's delivery callback (ack) and the committer.
#[derive(Debug)]
pub struct PartitionTracker {
    offsets: Mutex<Offsets>,
    drained: Condvar,
    /// Last position committed, to skip redundant commits.
    committed: Mutex<Option<i64>>,
    /// When the last chunk was acknowledged (or the tracker created): a partition with records
    /// in flight and no acknowledgement for long is stalled.
    last_progress: Mutex<Instant>,
}

impl PartitionTracker {
    /// A tracker for a partition whose next record is at `position` or later (its committed
    /// offset; `None` if unknown) — see [`Offsets::starting_at`].
    pub fn new(position: Option<i64>) -> Self {
        PartitionTracker {
            offsets: Mutex::new(Offsets::starting_at(position)),
            drained: Condvar::new(),
            committed: Mutex::new(None),
            last_progress: Mutex::new(Instant::now()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Offsets> {
        // The bookkeeping stays consistent even if a holder panicked: every method leaves it valid.
        self.offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`Offsets::track`].
    #[must_use]
    pub fn track(&self, first: i64, last: i64, records: usize) -> bool {
        self.lock().track(first, last, records)
    }

    pub fn untrack_last(&self, first: i64) {
        let mut o = self.lock();
        o.untrack_last(first);
        if o.is_drained() {
            self.drained.notify_all();
        }
    }

    pub fn ack(&self, first: i64) {
        let mut o = self.lock();
        o.ack(first);
        *self.last_progress.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        if o.is_drained() {
            self.drained.notify_all();
        }
    }

    pub fn commit_position(&self) -> Option<i64> {
        self.lock().commit_position()
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight()
    }

    /// How long this partition has had records in flight without any acknowledgement
    /// (`None` when nothing is in flight).
    pub fn stalled_for(&self) -> Option<std::time::Duration> {
        let in_flight = !self.lock().is_drained();
        in_flight.then(|| {
            self.last_progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
        })
    }

    /// Blocks until every tracked chunk is acknowledged, or `deadline`. True if drained.
    pub fn wait_drained(&self, deadline: Instant) -> bool {
        let mut o = self.lock();
        while !o.is_drained() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            o = match self.drained.wait_timeout(o, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }

    pub fn mark_committed(&self, position: i64) {
        *self.committed.lock().unwrap_or_else(|e| e.into_inner()) = Some(position);
    }

    pub fn last_committed(&self) -> Option<i64> {
        *self.committed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_consumed_means_nothing_to_commit() {
        assert_eq!(Offsets::default().commit_position(), None);
    }

    #[test]
    fn a_fresh_start_at_a_known_position_commits_that_position() {
        assert_eq!(Offsets::starting_at(Some(42)).commit_position(), Some(42));
    }

    #[test]
    fn never_commits_past_an_undelivered_record_whatever_the_ack_order() {
        let mut o = Offsets::default();
        for off in 10..15 {
            assert!(o.track(off, off, 1));
        }
        o.ack(12);
        o.ack(14);
        assert_eq!(o.commit_position(), Some(10), "10 is not delivered yet");
        o.ack(10);
        assert_eq!(o.commit_position(), Some(11));
        o.ack(11);
        assert_eq!(o.commit_position(), Some(13), "12 done, 13 not");
        o.ack(13);
        assert_eq!(o.commit_position(), Some(15));
        assert!(o.is_drained());
    }

    #[test]
    fn every_permutation_of_acks_keeps_the_commit_below_the_first_undelivered() {
        // Exhaustive over all orders of 5 acknowledgements, of single records and of chunks.
        fn permutations(v: Vec<usize>) -> Vec<Vec<usize>> {
            if v.len() <= 1 {
                return vec![v];
            }
            let mut out = Vec::new();
            for i in 0..v.len() {
                let mut rest = v.clone();
                let x = rest.remove(i);
                for mut p in permutations(rest) {
                    p.insert(0, x);
                    out.push(p);
                }
            }
            out
        }
        // Chunk i covers offsets [firsts[i], firsts[i + 1]).
        for firsts in [[0i64, 1, 2, 3, 4, 5], [0, 3, 4, 9, 10, 17]] {
            for order in permutations(vec![0, 1, 2, 3, 4]) {
                let mut o = Offsets::default();
                for i in 0..5 {
                    let (first, end) = (firsts[i], firsts[i + 1]);
                    assert!(o.track(first, end - 1, (end - first) as usize));
                }
                let mut done = [false; 5];
                for chunk in order {
                    o.ack(firsts[chunk]);
                    done[chunk] = true;
                    let first_undone = done
                        .iter()
                        .position(|d| !d)
                        .map_or(firsts[5], |i| firsts[i]);
                    assert_eq!(o.commit_position(), Some(first_undone));
                    let in_flight: i64 = (0..5)
                        .filter(|i| !done[*i])
                        .map(|i| firsts[i + 1] - firsts[i])
                        .sum();
                    assert_eq!(o.in_flight() as i64, in_flight);
                }
            }
        }
    }

    #[test]
    fn an_abandoned_chunk_is_not_committed() {
        let mut o = Offsets::default();
        assert!(o.track(5, 5, 1) && o.track(6, 9, 4));
        o.ack(5);
        o.untrack_last(6);
        assert_eq!(o.commit_position(), Some(6), "6 will be read again");
        assert!(o.is_drained());
    }

    #[test]
    fn offset_gaps_do_not_block_commits() {
        let mut o = Offsets::default();
        assert!(o.track(3, 3, 1));
        assert!(o.track(7, 9, 2)); // 4..6 and 8 were compacted away
        o.ack(3);
        o.ack(7);
        assert_eq!(o.commit_position(), Some(10));
    }

    #[test]
    fn a_stale_or_overlapping_chunk_is_refused_instead_of_blocking_commits() {
        let mut o = Offsets::default();
        assert!(o.track(4, 6, 3));
        assert!(!o.track(4, 4, 1), "same offset again");
        assert!(!o.track(6, 8, 3), "overlaps the last chunk");
        assert!(!o.track(3, 3, 1), "older offset");
        o.ack(4);
        assert_eq!(o.commit_position(), Some(7));
        assert!(o.is_drained());
    }

    #[test]
    fn duplicate_and_unknown_acks_are_harmless() {
        let mut o = Offsets::default();
        assert!(o.track(1, 1, 1) && o.track(2, 2, 1));
        o.ack(1);
        o.ack(1);
        o.ack(99);
        assert_eq!(o.commit_position(), Some(2));
        assert_eq!(o.in_flight(), 1);
    }

    #[test]
    fn tracker_reports_its_position_and_what_was_last_committed() {
        let t = PartitionTracker::new(None);
        assert!(t.track(0, 0, 1));
        assert!(t.stalled_for().is_some());
        t.ack(0);
        assert_eq!(t.stalled_for(), None);
        assert_eq!(t.commit_position(), Some(1));
        assert_eq!(t.last_committed(), None);
        t.mark_committed(1);
        assert_eq!(t.last_committed(), Some(1));
        // Still reported after a commit: the periodic commit re-sends it (source::commit_async).
        assert_eq!(t.commit_position(), Some(1));
        assert!(t.wait_drained(Instant::now()));
    }
}
