//! Commit tracking: which input offsets of a partition are done, and how far it is safe to commit.
//!
//! An offset is *done* only once its output (prediction or dead letter) has been acknowledged by
//! the broker. Acknowledgements arrive in any order (batches, retries, two topics), so the safe
//! commit position is the lowest offset still in flight — or, with nothing in flight, one past
//! the last offset seen. That is "the highest offset below which everything is done", and it can
//! never pass an undelivered record, whatever order deliveries complete in. Gaps in the offset
//! sequence (compaction, transaction markers) need no special case: only offsets actually
//! consumed are ever waited for.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The pure bookkeeping for one partition (no locking; see [`PartitionTracker`]).
#[derive(Debug, Default, Clone)]
pub struct Offsets {
    /// Offsets consumed and not yet released from the front, in consumption (= offset) order,
    /// each with whether its output has been acknowledged.
    pending: VecDeque<(i64, bool)>,
    /// One past the last offset consumed: the commit position when nothing is pending.
    next: Option<i64>,
}

impl Offsets {
    /// Records that `offset` was consumed and its output is on its way. Returns false (and
    /// records nothing) for an offset at or below one already seen: some brokers and client
    /// versions occasionally hand the same record over twice, and tracking it twice would
    /// leave a phantom entry that blocks commits forever.
    #[must_use]
    pub fn track(&mut self, offset: i64) -> bool {
        if self.next.is_some_and(|n| offset < n) {
            return false;
        }
        self.pending.push_back((offset, false));
        self.next = Some(offset + 1);
        true
    }

    /// Forgets the most recently tracked offset, which will not be processed after all (the
    /// worker is stopping before it could hand the record on). It will be consumed again.
    pub fn untrack_last(&mut self, offset: i64) {
        if self.pending.back().map(|p| p.0) == Some(offset) {
            self.pending.pop_back();
            self.next = Some(offset);
        }
    }

    /// Marks `offset` as delivered. Unknown offsets (already released) are ignored.
    pub fn ack(&mut self, offset: i64) {
        if let Ok(i) = self.pending.binary_search_by_key(&offset, |p| p.0) {
            self.pending[i].1 = true;
        }
        while self.pending.front().is_some_and(|p| p.1) {
            self.pending.pop_front();
        }
    }

    /// The offset to commit (the next one to read), or `None` before anything was consumed.
    pub fn commit_position(&self) -> Option<i64> {
        match self.pending.front() {
            Some((first_undone, _)) => Some(*first_undone),
            None => self.next,
        }
    }

    /// Consumed offsets whose output is not acknowledged yet.
    pub fn in_flight(&self) -> usize {
        self.pending.iter().filter(|p| !p.1).count()
    }

    pub fn is_drained(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Thread-safe [`Offsets`] for one assigned partition, shared by its source thread (track),
/// the producer's delivery callback (ack) and the committer.
#[derive(Debug)]
pub struct PartitionTracker {
    pub topic: String,
    pub partition: i32,
    offsets: Mutex<Offsets>,
    drained: Condvar,
    /// Last position committed, to skip redundant commits.
    committed: Mutex<Option<i64>>,
}

impl PartitionTracker {
    pub fn new(topic: &str, partition: i32) -> Self {
        PartitionTracker {
            topic: topic.to_owned(),
            partition,
            offsets: Mutex::new(Offsets::default()),
            drained: Condvar::new(),
            committed: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Offsets> {
        // The bookkeeping stays consistent even if a holder panicked: every method leaves it valid.
        self.offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`Offsets::track`]: false means "already seen, skip this record".
    #[must_use]
    pub fn track(&self, offset: i64) -> bool {
        self.lock().track(offset)
    }

    pub fn untrack_last(&self, offset: i64) {
        let mut o = self.lock();
        o.untrack_last(offset);
        if o.is_drained() {
            self.drained.notify_all();
        }
    }

    pub fn ack(&self, offset: i64) {
        let mut o = self.lock();
        o.ack(offset);
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

    /// Blocks until every tracked offset is acknowledged, or `deadline`. True if drained.
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

    /// The position to commit if it moved since the last successful commit.
    pub fn uncommitted_position(&self) -> Option<i64> {
        let pos = self.commit_position()?;
        let last = *self.committed.lock().unwrap_or_else(|e| e.into_inner());
        (last != Some(pos)).then_some(pos)
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
    fn never_commits_past_an_undelivered_record_whatever_the_ack_order() {
        let mut o = Offsets::default();
        for off in 10..15 {
            assert!(o.track(off));
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
        // Exhaustive over all orders of 5 acknowledgements.
        fn permutations(v: Vec<i64>) -> Vec<Vec<i64>> {
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
        for order in permutations(vec![0, 1, 2, 3, 4]) {
            let mut o = Offsets::default();
            (0..5).for_each(|off| assert!(o.track(off)));
            let mut done = [false; 5];
            for off in order {
                o.ack(off);
                done[off as usize] = true;
                let first_undone = done.iter().position(|d| !d).map_or(5, |i| i as i64);
                assert_eq!(o.commit_position(), Some(first_undone));
            }
        }
    }

    #[test]
    fn offset_gaps_do_not_block_commits() {
        let mut o = Offsets::default();
        assert!(o.track(3));
        assert!(o.track(7)); // 4..6 were compacted away
        o.ack(3);
        o.ack(7);
        assert_eq!(o.commit_position(), Some(8));
    }

    #[test]
    fn an_abandoned_record_is_not_committed() {
        let mut o = Offsets::default();
        assert!(o.track(5) && o.track(6));
        o.ack(5);
        o.untrack_last(6);
        assert_eq!(o.commit_position(), Some(6), "6 will be read again");
        assert!(o.is_drained());
    }

    #[test]
    fn a_redelivered_offset_is_refused_instead_of_blocking_commits() {
        let mut o = Offsets::default();
        assert!(o.track(4));
        assert!(!o.track(4), "same offset again");
        assert!(!o.track(3), "older offset");
        o.ack(4);
        assert_eq!(o.commit_position(), Some(5));
        assert!(o.is_drained());
    }

    #[test]
    fn duplicate_and_unknown_acks_are_harmless() {
        let mut o = Offsets::default();
        assert!(o.track(1) && o.track(2));
        o.ack(1);
        o.ack(1);
        o.ack(99);
        assert_eq!(o.commit_position(), Some(2));
        assert_eq!(o.in_flight(), 1);
    }

    #[test]
    fn tracker_reports_only_positions_not_yet_committed() {
        let t = PartitionTracker::new("t", 0);
        assert!(t.track(0));
        t.ack(0);
        assert_eq!(t.uncommitted_position(), Some(1));
        t.mark_committed(1);
        assert_eq!(t.uncommitted_position(), None);
        assert!(t.wait_drained(Instant::now()));
    }
}
