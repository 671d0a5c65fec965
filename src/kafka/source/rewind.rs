//! When a partition's output fails, its thread *rewinds*: the failed lane is closed (nothing
//! more of it is produced), and a new lane starts at the last commit, so the partition's output
//! restarts in order instead of having one record re-sent out of order. This is the policy —
//! where to, how often, how long to wait — as a pure function, tested on its own; the partition
//! thread carries it out.
//!
//! A partition that fails again and again at the same position without progress stops the
//! worker after `max_rewinds` attempts (exit code 3): never a silent spin. Waits grow
//! 0.2, 0.4, 0.8 … 6.4 s, so that a broker that rejects everything is not hammered; with the
//! default 5 rewinds a stuck partition stops the worker in ~6 s plus the outputs' own timeouts.

use std::time::Duration;

/// How a partition rewinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewindPolicy {
    /// Rewinds in a row to the same position before giving up.
    pub max_rewinds: u32,
    /// The shortest wait before a rewind (exactly-once: two consumer heartbeats, so that a
    /// zombie learns it lost the partition before it re-initialises a producer — which would
    /// fence the rightful owner).
    pub min_backoff: Duration,
}

/// A partition's rewinds so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rewinds {
    in_a_row: u32,
    at: Option<i64>,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait `backoff`, then restart at `position`.
    Rewind {
        position: i64,
        attempt: u32,
        backoff: Duration,
    },
    /// The partition is stuck at `position`: stop the worker.
    GiveUp { position: i64, attempts: u32 },
}

impl Rewinds {
    /// The next step after a failure whose rewind goes to `position`.
    pub fn next(&mut self, policy: &RewindPolicy, position: i64) -> Next {
        if self.at == Some(position) {
            self.in_a_row += 1;
        } else {
            (self.in_a_row, self.at) = (1, Some(position));
        }
        if self.in_a_row > policy.max_rewinds {
            return Next::GiveUp {
                position,
                attempts: self.in_a_row,
            };
        }
        let backoff = Duration::from_millis(100 << self.in_a_row.min(6)).max(policy.min_backoff);
        Next::Rewind {
            position,
            attempt: self.in_a_row,
            backoff,
        }
    }

    /// The partition made progress (a commit went through): the count starts over.
    pub fn progressed(&mut self) {
        *self = Rewinds::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RewindPolicy = RewindPolicy {
        max_rewinds: 3,
        min_backoff: Duration::ZERO,
    };

    fn backoff(n: Next) -> Duration {
        match n {
            Next::Rewind { backoff, .. } => backoff,
            Next::GiveUp { .. } => panic!("gave up: {n:?}"),
        }
    }

    #[test]
    fn repeated_failures_at_one_position_back_off_then_give_up() {
        let mut r = Rewinds::default();
        let waits: Vec<Duration> = (0..3).map(|_| backoff(r.next(&POLICY, 40))).collect();
        assert_eq!(
            waits,
            [200, 400, 800].map(Duration::from_millis),
            "doubling waits"
        );
        assert_eq!(
            r.next(&POLICY, 40),
            Next::GiveUp {
                position: 40,
                attempts: 4
            }
        );
    }

    #[test]
    fn a_new_position_or_a_commit_starts_the_count_over() {
        let mut r = Rewinds::default();
        r.next(&POLICY, 40);
        r.next(&POLICY, 40);
        assert_eq!(
            r.next(&POLICY, 55),
            Next::Rewind {
                position: 55,
                attempt: 1,
                backoff: Duration::from_millis(200)
            },
            "progress between the failures: not stuck"
        );
        r.next(&POLICY, 55);
        r.progressed();
        assert!(matches!(
            r.next(&POLICY, 55),
            Next::Rewind { attempt: 1, .. }
        ));
    }

    #[test]
    fn waits_are_capped_and_never_below_the_minimum() {
        let policy = RewindPolicy {
            max_rewinds: 20,
            min_backoff: Duration::from_secs(1),
        };
        let mut r = Rewinds::default();
        let waits: Vec<Duration> = (0..9).map(|_| backoff(r.next(&policy, 7))).collect();
        assert_eq!(
            waits[0],
            Duration::from_secs(1),
            "exactly-once waits the rejoin grace"
        );
        assert_eq!(waits[8], Duration::from_millis(6_400), "capped at 6.4 s");
    }
}
