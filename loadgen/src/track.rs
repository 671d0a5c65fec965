//! Latency bookkeeping, free of Kafka so it can be tested exactly: which ids were sent and
//! when they were *meant* to be sent, which came back, how late, lost and duplicated.

use std::sync::{Mutex, MutexGuard, PoisonError};

use hdrhistogram::Histogram;

/// Significant decimal digits kept by the latency histograms (0.1% value resolution).
pub const SIGFIG: u8 = 3;

/// Largest latency a histogram tracks: one hour in µs. Larger values are clamped to it;
/// no run lasts that long (every wait is bounded by --duration + --grace).
pub const MAX_TRACKED_US: u64 = 3_600_000_000;

/// A new histogram of µs from 1 µs to [`MAX_TRACKED_US`] with [`SIGFIG`] digits.
///
/// Fixed bounds rather than auto-resizing, because `saturating_record` clamps to the
/// *current* bounds instead of growing them, and `record` could fail.
pub fn new_histogram() -> Histogram<u64> {
    // Infallible for these constants (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_TRACKED_US, SIGFIG).expect("valid histogram bounds")
}

/// Record keys of one run: `<run-id>-<seq>`. The worker copies the key of every tweet to its
/// prediction, so the key alone matches a prediction to the tweet it answers.
#[derive(Clone, Debug)]
pub struct KeyCodec {
    prefix: String,
}

impl KeyCodec {
    pub fn new(run_id: &str) -> Self {
        KeyCodec {
            prefix: format!("{run_id}-"),
        }
    }

    pub fn key(&self, seq: u64) -> String {
        format!("{}{seq}", self.prefix)
    }

    /// The sequence number in `key`, or None if it is not a key of this run (another run's
    /// record, a probe, or garbage).
    pub fn seq(&self, key: Option<&[u8]>) -> Option<u64> {
        let rest = key?.strip_prefix(self.prefix.as_bytes())?;
        // Digits only: `u64::from_str` would also take a leading `+`.
        if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(rest).ok()?.parse().ok()
    }
}

/// What an arriving prediction turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// First prediction for a sent id, in time; its latency was recorded.
    Matched { latency_us: u64 },
    /// A second (or later) prediction for the same id: counted, not recorded.
    Duplicate,
    /// First prediction for a sent id, but after the deadline: the tweet counts as lost.
    Late,
    /// Not an id this run sent: counted, otherwise ignored.
    Unknown,
}

/// Per-sent-id state. `seq` is the index into [`Tracker::slots`].
#[derive(Clone, Copy, Debug)]
struct Slot {
    intended_us: u64,
    arrivals: u32,
}

/// Everything one run knows about sends and arrivals. Times are µs since the Unix epoch from
/// the run's [`crate::schedule::Clock`].
#[derive(Debug)]
pub struct Tracker {
    slots: Vec<Slot>,
    matched: u64,
    duplicates: u64,
    late: u64,
    unknown: u64,
    deadline_us: Option<u64>,
    last_arrival_us: Option<u64>,
    latency: Histogram<u64>,
    interval: Histogram<u64>,
}

/// Counts and current p99s, for the per-second status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub sent: u64,
    pub matched: u64,
    pub in_flight: u64,
    pub duplicates: u64,
    /// p99 of the latencies recorded since the previous snapshot (None if there were none).
    pub interval_p99_us: Option<u64>,
    /// p99 of all latencies so far (None if there are none).
    pub p99_us: Option<u64>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    pub fn new() -> Self {
        Tracker {
            slots: Vec::new(),
            matched: 0,
            duplicates: 0,
            late: 0,
            unknown: 0,
            deadline_us: None,
            last_arrival_us: None,
            latency: new_histogram(),
            interval: new_histogram(),
        }
    }

    /// Registers the next send and returns its sequence number. Call it *before* handing
    /// the record to Kafka, so that its prediction can never arrive unannounced.
    ///
    /// `intended_us` is when the schedule wanted the send, not when it happened: that is
    /// the coordinated-omission correction.
    pub fn record_sent(&mut self, intended_us: u64) -> u64 {
        self.slots.push(Slot {
            intended_us,
            arrivals: 0,
        });
        self.slots.len() as u64 - 1
    }

    /// Predictions arriving after `deadline_us` (last send + grace) no longer count: their
    /// tweets are lost.
    pub fn set_deadline(&mut self, deadline_us: u64) {
        self.deadline_us = Some(deadline_us);
    }

    pub fn deadline_us(&self) -> Option<u64> {
        self.deadline_us
    }

    /// Books a prediction for `seq` (None: the key was not one of ours) arriving at
    /// `arrival_us`.
    pub fn record_arrival(&mut self, seq: Option<u64>, arrival_us: u64) -> Arrival {
        let Some(slot) = seq.and_then(|s| self.slots.get_mut(usize::try_from(s).ok()?)) else {
            self.unknown += 1;
            return Arrival::Unknown;
        };
        slot.arrivals = slot.arrivals.saturating_add(1);
        if slot.arrivals > 1 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        if self.deadline_us.is_some_and(|d| arrival_us > d) {
            self.late += 1;
            return Arrival::Late;
        }
        let latency_us = arrival_us.saturating_sub(slot.intended_us);
        self.matched += 1;
        self.latency.saturating_record(latency_us);
        self.interval.saturating_record(latency_us);
        self.last_arrival_us = Some(
            self.last_arrival_us
                .map_or(arrival_us, |t| t.max(arrival_us)),
        );
        Arrival::Matched { latency_us }
    }

    pub fn sent(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Tweets whose prediction arrived in time (once per id).
    pub fn matched(&self) -> u64 {
        self.matched
    }

    /// Sent, and no prediction yet.
    pub fn in_flight(&self) -> u64 {
        self.sent() - self.matched - self.late
    }

    /// Sent, and no prediction by the deadline: meaningful once the run is over.
    pub fn lost(&self) -> u64 {
        self.sent() - self.matched
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Of the lost tweets, those whose prediction did come, but after the deadline.
    pub fn late(&self) -> u64 {
        self.late
    }

    pub fn unknown(&self) -> u64 {
        self.unknown
    }

    pub fn last_arrival_us(&self) -> Option<u64> {
        self.last_arrival_us
    }

    /// End-to-end latencies (µs) of the matched predictions.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    /// Current counts; starts a new interval for the interval p99.
    pub fn snapshot(&mut self) -> Snapshot {
        let p99 = |h: &Histogram<u64>| (!h.is_empty()).then(|| h.value_at_quantile(0.99));
        let snap = Snapshot {
            sent: self.sent(),
            matched: self.matched,
            in_flight: self.in_flight(),
            duplicates: self.duplicates,
            interval_p99_us: p99(&self.interval),
            p99_us: p99(&self.latency),
        };
        self.interval.reset();
        snap
    }
}

/// Locks the tracker even if another thread panicked while holding it: its counters stay
/// meaningful, and the run should still report.
pub fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000;
    const MS: u64 = 1_000;

    /// Within the histogram's 0.1% resolution.
    fn approx(actual: u64, expected: u64) -> bool {
        actual.abs_diff(expected) * 1_000 <= expected
    }

    #[test]
    fn latency_is_measured_from_the_intended_time_not_the_actual_send() {
        // The schedule wanted sends at 0, 1, 2 ms; the sender stalled and made all three at
        // 50 ms (the tracker is never told); the predictions arrive 1 ms later, at 51 ms.
        let mut t = Tracker::new();
        let seqs: Vec<u64> = (0..3).map(|i| t.record_sent(T0 + i * MS)).collect();
        let lat: Vec<u64> = seqs
            .iter()
            .map(|&s| match t.record_arrival(Some(s), T0 + 51 * MS) {
                Arrival::Matched { latency_us } => latency_us,
                other => panic!("expected a match, got {other:?}"),
            })
            .collect();
        assert_eq!(lat, vec![51 * MS, 50 * MS, 49 * MS]);
        let h = t.latency();
        assert_eq!(h.len(), 3);
        assert!(approx(h.min(), 49 * MS), "min {}", h.min());
        assert!(approx(h.max(), 51 * MS), "max {}", h.max());
        assert!(approx(h.value_at_quantile(0.5), 50 * MS));
        // Not the ~1 ms a closed-loop measurement from the actual send would report.
        assert!(h.min() > 40 * MS);
        assert_eq!((t.lost(), t.duplicates(), t.in_flight()), (0, 0, 0));
    }

    #[test]
    fn lost_counts_what_did_not_arrive_before_the_deadline() {
        let mut t = Tracker::new();
        for i in 0..4 {
            t.record_sent(T0 + i * MS);
        }
        assert!(matches!(
            t.record_arrival(Some(0), T0 + 5 * MS),
            Arrival::Matched { .. }
        ));
        assert!(matches!(
            t.record_arrival(Some(2), T0 + 6 * MS),
            Arrival::Matched { .. }
        ));
        assert_eq!(t.in_flight(), 2);
        // Grace ends 10 s after the last send (3 ms).
        t.set_deadline(T0 + 3 * MS + 10_000 * MS);
        assert_eq!(t.record_arrival(Some(1), T0 + 20_000 * MS), Arrival::Late);
        // seq 3 never arrives.
        assert_eq!(t.matched(), 2);
        assert_eq!(t.late(), 1);
        assert_eq!(t.lost(), 2);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.latency().len(), 2);
    }

    #[test]
    fn duplicates_are_counted_once_per_extra_arrival_and_not_recorded() {
        let mut t = Tracker::new();
        t.record_sent(T0);
        t.record_sent(T0 + MS);
        assert!(matches!(
            t.record_arrival(Some(0), T0 + 2 * MS),
            Arrival::Matched { .. }
        ));
        assert_eq!(t.record_arrival(Some(0), T0 + 3 * MS), Arrival::Duplicate);
        assert_eq!(t.record_arrival(Some(0), T0 + 4 * MS), Arrival::Duplicate);
        assert_eq!(t.duplicates(), 2);
        assert_eq!(t.matched(), 1);
        assert_eq!(t.latency().len(), 1);
        assert_eq!(t.lost(), 1);
    }

    #[test]
    fn unknown_ids_are_counted_and_ignored() {
        let mut t = Tracker::new();
        t.record_sent(T0);
        assert_eq!(t.record_arrival(None, T0 + MS), Arrival::Unknown);
        assert_eq!(t.record_arrival(Some(7), T0 + MS), Arrival::Unknown);
        assert_eq!(t.unknown(), 2);
        assert_eq!((t.matched(), t.duplicates(), t.in_flight()), (0, 0, 1));
        assert!(t.latency().is_empty());
    }

    #[test]
    fn snapshot_reports_the_interval_p99_and_resets_it() {
        let mut t = Tracker::new();
        for i in 0..100 {
            let s = t.record_sent(T0 + i);
            t.record_arrival(Some(s), T0 + i + 2 * MS);
        }
        let s = t.snapshot();
        assert_eq!((s.sent, s.matched, s.in_flight), (100, 100, 0));
        assert!(approx(s.interval_p99_us.unwrap_or(0), 2 * MS));
        let s = t.snapshot();
        assert_eq!(s.interval_p99_us, None);
        assert!(s.p99_us.is_some());
    }

    #[test]
    fn keys_round_trip_and_reject_foreign_ids() {
        let c = KeyCodec::new("abc-1");
        assert_eq!(c.key(42), "abc-1-42");
        assert_eq!(c.seq(Some(b"abc-1-42")), Some(42));
        assert_eq!(c.seq(Some(b"abc-12-42")), None);
        assert_eq!(c.seq(Some(b"abc-1-")), None);
        assert_eq!(c.seq(Some(b"abc-1-+4")), None);
        assert_eq!(c.seq(Some(b"abc-1-warmup-3")), None);
        assert_eq!(c.seq(None), None);
    }
}
