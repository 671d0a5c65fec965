//! Time to drain: how long the worker needs to clear its consumer lag at its recent throughput
//! (`kafka_infer_time_to_drain_seconds`). Lag alone does not say whether the worker is in
//! trouble — 50,000 records are nothing at 5,000/s and an hour at 14/s — and throughput alone
//! does not say whether it keeps up; their ratio does, in the one unit an operator (or an
//! autoscaler such as KEDA's Prometheus scaler) can set a budget in: seconds.
//!
//! Throughput is records *acknowledged* (predictions and dead letters): the lag is measured
//! against the committed position, and only acknowledged records move it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Over how long the throughput is averaged: long enough to smooth batches and commit
/// intervals, short enough to see a slowdown within a minute or two.
pub const WINDOW: Duration = Duration::from_secs(60);

/// No estimate before this much history (a worker that just started has no throughput yet, which
/// is not the same as a worker that stopped making progress).
pub const MIN_SPAN: Duration = Duration::from_secs(10);

/// Recent throughput from samples of a monotonic count (records acknowledged so far).
#[derive(Debug, Default)]
pub struct Throughput {
    /// (when, count) at most one per second, oldest first, spanning at most [`WINDOW`].
    samples: VecDeque<(Instant, u64)>,
}

impl Throughput {
    /// Records `count` at `at`; samples closer than a second to the previous one are skipped.
    pub fn observe(&mut self, at: Instant, count: u64) {
        if let Some((last, _)) = self.samples.back() {
            if at.saturating_duration_since(*last) < Duration::from_secs(1) {
                return;
            }
        }
        self.samples.push_back((at, count));
        // Keep one sample at or beyond the window's start, so the rate covers the whole window.
        while self.samples.len() > 2 && at.saturating_duration_since(self.samples[1].0) >= WINDOW {
            self.samples.pop_front();
        }
    }

    /// Records per second over the samples, once they span [`MIN_SPAN`].
    pub fn rate(&self) -> Option<f64> {
        let (t0, c0) = self.samples.front()?;
        let (t1, c1) = self.samples.back()?;
        let span = t1.saturating_duration_since(*t0);
        (span >= MIN_SPAN).then(|| c1.saturating_sub(*c0) as f64 / span.as_secs_f64())
    }
}

/// Seconds to clear `lag` records at `rate` per second: 0 without lag, +∞ with lag but no
/// throughput (nothing drains), `None` while the rate is not known yet.
pub fn time_to_drain(lag: i64, rate: Option<f64>) -> Option<f64> {
    if lag <= 0 {
        return Some(0.0);
    }
    let rate = rate?;
    Some(if rate > 0.0 {
        lag as f64 / rate
    } else {
        f64::INFINITY
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn throughput_is_averaged_over_the_last_minute_once_ten_seconds_are_known() {
        let t0 = Instant::now();
        let mut t = Throughput::default();
        for s in 0..10 {
            t.observe(after(t0, s), s * 100);
        }
        assert_eq!(t.rate(), None, "9 s of history");
        t.observe(after(t0, 10), 1000);
        assert_eq!(t.rate(), Some(100.0));
        // 100/s for the first minute, then nothing for a minute: the rate follows within it.
        for s in 11..=60 {
            t.observe(after(t0, s), s * 100);
        }
        assert_eq!(t.rate(), Some(100.0));
        for s in 61..=120 {
            t.observe(after(t0, s), 6000);
        }
        assert_eq!(t.rate(), Some(0.0));
        assert!(t.samples.len() <= 62, "{} samples kept", t.samples.len());
    }

    #[test]
    fn samples_closer_than_a_second_are_skipped() {
        let t0 = Instant::now();
        let mut t = Throughput::default();
        t.observe(t0, 0);
        t.observe(t0 + Duration::from_millis(200), 50);
        assert_eq!(t.samples.len(), 1);
    }

    #[test]
    fn time_to_drain_is_lag_over_throughput_zero_without_lag_and_infinite_without_progress() {
        assert_eq!(time_to_drain(6000, Some(100.0)), Some(60.0));
        assert_eq!(time_to_drain(0, None), Some(0.0), "nothing to drain");
        assert_eq!(time_to_drain(10, Some(0.0)), Some(f64::INFINITY));
        assert_eq!(time_to_drain(10, None), None, "throughput not known yet");
    }
}
