//! Open-loop pacing: *when* each send is due, independent of how the system responds.
//!
//! A closed-loop generator (send, wait, send) slows down exactly when the system under test
//! stalls, so it never measures the stall ("coordinated omission"). Here send `i` is due at
//! `t0 + i/rate`; a late sender catches up by sending immediately, but the *intended* time is
//! what latency is measured from.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, read from a monotonic clock.
///
/// Intended send times and arrival times are both taken from this clock, so a wall-clock
/// step (NTP) during a run cannot produce negative or inflated latencies, yet the values are
/// still meaningful epoch timestamps for the `loadgen-intended-us` header.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
    base_us: u64,
}

impl Clock {
    pub fn new() -> Self {
        let base = Instant::now();
        let base_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Clock { base, base_us }
    }

    /// The epoch-µs timestamp of `t`.
    pub fn at(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.base) {
            Some(d) => self.base_us + d.as_micros() as u64,
            None => self
                .base_us
                .saturating_sub(self.base.duration_since(t).as_micros() as u64),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.at(Instant::now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The send schedule of one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// `rate` sends per second for `duration`: send `i` is due at `i / rate` seconds.
    Paced { rate: f64, duration: Duration },
    /// As fast as possible for `duration`; each send's intended time is when it is made.
    Max { duration: Duration },
}

impl Schedule {
    /// Number of sends in the run: those due strictly before `duration` (None for `Max`).
    pub fn total(&self) -> Option<u64> {
        match *self {
            Schedule::Paced { rate, duration } => {
                Some((duration.as_secs_f64() * rate).ceil() as u64)
            }
            Schedule::Max { .. } => None,
        }
    }

    /// When send `i` is due, relative to t0 (zero for `Max`, which has no schedule).
    pub fn offset(&self, i: u64) -> Duration {
        match *self {
            Schedule::Paced { rate, .. } => Duration::from_secs_f64(i as f64 / rate),
            Schedule::Max { .. } => Duration::ZERO,
        }
    }

    /// How many sends are due `elapsed` after t0: every `i` with `offset(i) <= elapsed`,
    /// capped by [`Schedule::total`]. A sender that has made fewer is behind and must send
    /// the difference now.
    pub fn due(&self, elapsed: Duration) -> u64 {
        match *self {
            Schedule::Paced { rate, .. } => {
                let due = (elapsed.as_secs_f64() * rate).floor() as u64 + 1;
                due.min(self.total().unwrap_or(u64::MAX))
            }
            Schedule::Max { duration } => {
                if elapsed < duration {
                    u64::MAX
                } else {
                    0
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced(rate: f64, secs: f64) -> Schedule {
        Schedule::Paced {
            rate,
            duration: Duration::from_secs_f64(secs),
        }
    }

    #[test]
    fn total_counts_sends_before_the_end() {
        assert_eq!(paced(300.0, 3.0).total(), Some(900));
        assert_eq!(paced(3.0, 1.5).total(), Some(5)); // 0, 1/3, 2/3, 1, 4/3
        assert_eq!(paced(1000.0, 0.0).total(), Some(0));
    }

    #[test]
    fn offsets_follow_the_rate() {
        let s = paced(1000.0, 1.0);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(1));
        assert_eq!(s.offset(250), Duration::from_millis(250));
    }

    #[test]
    fn due_lets_a_late_sender_catch_up_without_skipping() {
        let s = paced(1000.0, 1.0);
        assert_eq!(s.due(Duration::ZERO), 1);
        assert_eq!(s.due(Duration::from_micros(999)), 1);
        assert_eq!(s.due(Duration::from_millis(1)), 2);
        // 50 ms stall: 51 sends are due at once; each keeps its own intended offset.
        assert_eq!(s.due(Duration::from_millis(50)), 51);
        assert_eq!(s.due(Duration::from_secs(5)), 1000);
    }

    #[test]
    fn max_is_due_until_the_end() {
        let s = Schedule::Max {
            duration: Duration::from_secs(1),
        };
        assert_eq!(s.total(), None);
        assert_eq!(s.due(Duration::from_millis(10)), u64::MAX);
        assert_eq!(s.due(Duration::from_secs(1)), 0);
    }

    #[test]
    fn clock_is_epoch_micros() {
        let c = Clock::new();
        let t = Instant::now();
        let later = t + Duration::from_millis(5);
        assert_eq!(c.at(later) - c.at(t), 5_000);
        assert!(c.now_us() > 1_600_000_000_000_000);
    }
}
