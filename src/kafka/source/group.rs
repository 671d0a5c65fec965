//! A watch on the consumer's group membership, from librdkafka's statistics.
//!
//! After a lost assignment (a session that timed out while the broker was frozen, say), the
//! consumer must rejoin its group before it gets partitions again. librdkafka does that on its
//! own — but in four test runs of 2026-12-04/05 (exactly-once, broker freezes; RELIABILITY.md)
//! a worker never rejoined: its partitions were revoked as lost and none came back, while the
//! process looked alive. Nothing was lost (nothing was committed past what was produced), but
//! nothing moved either. The cause, in librdkafka's debug log of the last one, was librdkafka's:
//! its consumer lost every broker (a Metadata answer listing none, from a broker its controller
//! had fenced, decommissioned the only one, and a re-bootstrap cancelled earlier had disabled
//! re-bootstrapping), its group sat in `query-coord`; the vendored librdkafka carries the fix
//! (third_party/README.md). The watch
//! stays, for whatever else may keep a consumer out of its group: a worker that owns no
//! partition and whose membership stays unsettled far longer than any legitimate rebalance can
//! take is stuck, and stuck must be loud and bounded: the watch says so (naming the consumer's
//! brokers and their states), and the worker stops with an error (exit 3) for its supervisor
//! to restart it — a new consumer joins afresh and resumes from the committed offsets. It
//! caught the wedge twice (84 and 85 s, the tests' bound being 81 s) before the fix.
//!
//! "Unsettled" is librdkafka's join state being anything but `steady`, in any group state
//! (whether the coordinator is connected or still being looked for), while the worker owns no
//! partition — a member that keeps its partitions through a long cooperative rebalance is still
//! working, and one that has none in a steady group (more workers than partitions) is settled. A
//! broker outage longer than the bound also stops the worker: loudly, which is what a worker that
//! cannot work should do. The bound is derived from the consumer's own settings
//! ([`GroupWatch::bound_for`]): the longest a rebalance may legitimately take
//! (`max.poll.interval.ms`, the rebalance timeout) plus a session timeout, plus a minute.

use std::time::{Duration, Instant};

/// What the watch concludes from one statistics report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupHealth {
    /// Settled (`steady`), or owning partitions (nothing to judge).
    Settled,
    /// Rejoining for this long, within the bound.
    Rejoining(Duration),
    /// Rejoining for longer than the bound: the membership is stuck in `join_state`.
    Stuck { join_state: String, for_: Duration },
}

/// Tracks since when the membership has been unsettled.
#[derive(Debug)]
pub struct GroupWatch {
    bound: Duration,
    unsettled_since: Option<Instant>,
    /// The last (group state, join state, partitions) reported, to log only changes.
    last: Option<(String, String, i32)>,
}

impl GroupWatch {
    pub fn new(bound: Duration) -> Self {
        GroupWatch {
            bound,
            unsettled_since: None,
            last: None,
        }
    }

    /// Whether the membership's states or its partition count differ from the last report
    /// (the worker logs each change: how a rejoin went is in the log, not only its outcome).
    pub fn changed(&mut self, state: &str, join_state: &str, assigned: i32) -> bool {
        let now = (state.to_owned(), join_state.to_owned(), assigned);
        if self.last.as_ref() == Some(&now) {
            return false;
        }
        self.last = Some(now);
        true
    }

    /// The bound for a consumer with these settings (milliseconds): a rebalance may take up
    /// to `max.poll.interval.ms` (the group waits that long for members to rejoin), a lost
    /// session is noticed within `session.timeout.ms`; a minute more for the requests around
    /// them.
    pub fn bound_for(max_poll_interval_ms: u64, session_timeout_ms: u64) -> Duration {
        Duration::from_millis(max_poll_interval_ms + session_timeout_ms) + Duration::from_secs(60)
    }

    /// One statistics report: the cgrp's `join_state` and `assignment_size`, seen at `now`.
    pub fn observe(&mut self, now: Instant, join_state: &str, assigned: i32) -> GroupHealth {
        if join_state == "steady" || assigned > 0 {
            self.unsettled_since = None;
            return GroupHealth::Settled;
        }
        let since = *self.unsettled_since.get_or_insert(now);
        let for_ = now.saturating_duration_since(since);
        if for_ > self.bound {
            GroupHealth::Stuck {
                join_state: join_state.to_owned(),
                for_,
            }
        } else {
            GroupHealth::Rejoining(for_)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_membership_unsettled_past_the_bound_is_stuck_and_names_its_join_state() {
        let t0 = Instant::now();
        let mut w = GroupWatch::new(10 * S);
        assert_eq!(w.observe(t0, "steady", 0), GroupHealth::Settled);
        assert_eq!(
            w.observe(t0 + S, "wait-join", 0),
            GroupHealth::Rejoining(Duration::ZERO)
        );
        assert_eq!(
            w.observe(t0 + 11 * S, "wait-incr-unassign-to-complete", 0),
            GroupHealth::Rejoining(10 * S),
            "at the bound: not yet"
        );
        assert_eq!(
            w.observe(t0 + 12 * S, "wait-incr-unassign-to-complete", 0),
            GroupHealth::Stuck {
                join_state: "wait-incr-unassign-to-complete".into(),
                for_: 11 * S
            }
        );
    }

    #[test]
    fn settling_in_between_starts_the_clock_again() {
        let t0 = Instant::now();
        let mut w = GroupWatch::new(10 * S);
        w.observe(t0, "wait-join", 0);
        assert_eq!(w.observe(t0 + 8 * S, "steady", 0), GroupHealth::Settled);
        assert_eq!(
            w.observe(t0 + 9 * S, "wait-join", 0),
            GroupHealth::Rejoining(Duration::ZERO)
        );
        assert_eq!(
            w.observe(t0 + 18 * S, "wait-join", 0),
            GroupHealth::Rejoining(9 * S)
        );
    }

    #[test]
    fn a_member_that_keeps_partitions_through_a_long_rebalance_is_working_not_stuck() {
        let t0 = Instant::now();
        let mut w = GroupWatch::new(10 * S);
        w.observe(t0, "wait-join", 0);
        assert_eq!(w.observe(t0 + 20 * S, "wait-join", 2), GroupHealth::Settled);
        assert_eq!(
            w.observe(t0 + 21 * S, "wait-join", 0),
            GroupHealth::Rejoining(Duration::ZERO)
        );
    }

    #[test]
    fn the_bound_outlasts_the_longest_legitimate_rebalance() {
        // librdkafka's defaults: 300 s rebalance timeout, 45 s session.
        assert_eq!(
            GroupWatch::bound_for(300_000, 45_000),
            Duration::from_secs(405)
        );
    }

    #[test]
    fn only_changes_of_the_membership_are_reported() {
        let mut w = GroupWatch::new(Duration::from_secs(60));
        assert!(w.changed("up", "steady", 3));
        assert!(!w.changed("up", "steady", 3));
        assert!(w.changed("up", "wait-join", 0));
        assert!(w.changed("query-coord", "wait-join", 0));
        assert!(!w.changed("query-coord", "wait-join", 0));
        assert!(w.changed("up", "steady", 3));
    }
}
