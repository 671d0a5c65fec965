//! A partition's life as lanes: one stretch of consumption from an assignment (or a rewind) to
//! its revocation (or the next rewind), with an explicit state — running, failed, closed.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::offsets::PartitionTracker;

/// One assigned input partition, for one stretch of consumption: from an assignment (or a
/// rewind to the last commit after a failed delivery) until its revocation (or the next
/// rewind). Shared by the partition thread, every chunk in flight, the sink and the committer.
pub struct Lane {
    /// Unique per lane, so the sink never mixes up two stretches of the same partition.
    pub id: u64,
    pub topic: Arc<str>,
    pub partition: i32,
    /// Where this lane started reading (its committed offset, when known).
    pub start: Option<i64>,
    pub tracker: PartitionTracker,
    state: AtomicU8,
    failure: Mutex<Option<Failure>>,
    /// Chunks the sink has handed to the producer, in order (their `seq + 1`), so that an
    /// exactly-once lane can wait for its chunks to be produced before committing.
    emitted: Mutex<u64>,
    emitted_cv: Condvar,
}

/// Where a lane is in its life (stored in an `AtomicU8` as its discriminant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LaneState {
    /// Consuming and producing.
    Running = 0,
    /// A delivery failed: produce nothing more; the partition thread rewinds to the last commit.
    Failed = 1,
    /// Revoked, lost, rewound or shut down: its remaining work is dropped, never produced.
    Closed = 2,
}

impl LaneState {
    fn from_u8(v: u8) -> LaneState {
        match v {
            0 => LaneState::Running,
            1 => LaneState::Failed,
            _ => LaneState::Closed,
        }
    }
}

/// Why a lane failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The broker rejected a dead letter as too large: the sink shrinks dead letters, then the
    /// lane rewinds.
    DeadLetterTooLarge { size: usize },
    /// The broker rejected a prediction as too large: the sink learnt the output's limit, the
    /// lane rewinds and the record becomes a dead letter.
    OutputTooLarge { size: usize },
    /// Another instance took over the partition's transactional id: this instance is a zombie
    /// for that partition and must not write it again.
    Fenced,
    /// Anything else: the lane rewinds to its last commit and tries again (a bounded number of
    /// times without progress).
    Other,
}

static NEXT_LANE: AtomicU64 = AtomicU64::new(1);

impl Lane {
    pub fn new(topic: Arc<str>, partition: i32, start: Option<i64>) -> Lane {
        Lane {
            id: NEXT_LANE.fetch_add(1, Ordering::Relaxed),
            topic,
            partition,
            start,
            tracker: PartitionTracker::new(start),
            state: AtomicU8::new(LaneState::Running as u8),
            failure: Mutex::new(None),
            emitted: Mutex::new(0),
            emitted_cv: Condvar::new(),
        }
    }

    pub fn state(&self) -> LaneState {
        LaneState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn is_running(&self) -> bool {
        self.state() == LaneState::Running
    }

    /// Marks the lane failed (the first failure wins; a closed lane stays closed). Returns
    /// whether this call failed it.
    pub fn fail(&self, kind: FailureKind, reason: String) -> bool {
        let first = self
            .state
            .compare_exchange(
                LaneState::Running as u8,
                LaneState::Failed as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if first {
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Failure { kind, reason });
        }
        self.emitted_cv.notify_all();
        first
    }

    /// The failure that stopped this lane, if any.
    pub fn failure(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// No more output for this lane, ever; chunks still in the pipeline are dropped.
    pub fn close(&self) {
        self.state.store(LaneState::Closed as u8, Ordering::Release);
        self.emitted_cv.notify_all();
    }

    /// Called by the sink after the chunk numbered `seq` was handed to the producer.
    pub fn mark_emitted(&self, seq: u64) {
        let mut e = self.emitted.lock().unwrap_or_else(|e| e.into_inner());
        *e = (*e).max(seq + 1);
        self.emitted_cv.notify_all();
    }

    /// Waits until the first `count` chunks were handed to the producer, the lane stops
    /// running, or `deadline`. True if they were.
    pub fn wait_emitted(&self, count: u64, deadline: Instant) -> bool {
        let mut e = self.emitted.lock().unwrap_or_else(|e| e.into_inner());
        while *e < count && self.is_running() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            e = match self.emitted_cv.wait_timeout(e, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        *e >= count
    }
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]#{}", self.topic, self.partition, self.id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_lane_fails_once_and_closing_wins() {
        let lane = Lane::new("t".into(), 0, Some(5));
        assert_eq!(lane.tracker.commit_position(), Some(5));
        assert!(lane.fail(FailureKind::Other, "first".into()));
        assert!(!lane.fail(FailureKind::Fenced, "second".into()));
        assert_eq!(lane.state(), LaneState::Failed);
        assert_eq!(lane.failure().map(|f| f.reason), Some("first".into()));
        lane.close();
        assert!(!lane.fail(FailureKind::Other, "after close".into()));
        assert_eq!(lane.state(), LaneState::Closed);
    }

    #[test]
    fn waiting_for_emission_ends_when_the_lane_stops() {
        let lane = Lane::new("t".into(), 0, None);
        lane.mark_emitted(1);
        assert!(lane.wait_emitted(2, Instant::now() + Duration::from_secs(5)));
        assert!(!lane.wait_emitted(3, Instant::now()));
        lane.close();
        assert!(!lane.wait_emitted(3, Instant::now() + Duration::from_secs(60)));
    }

    #[test]
    fn lane_states_round_trip_through_their_byte() {
        for s in [LaneState::Running, LaneState::Failed, LaneState::Closed] {
            assert_eq!(LaneState::from_u8(s as u8), s);
        }
    }
}
