//! The latency budget (`--latency-budget-ms`): how long the worker may hold work back to
//! coalesce it, in the user's terms, turned into the four settings that decide CPU per tweet at
//! moderate rates.
//!
//! At 1,000 tweets/s a pipeline that forwards every record at once pays a fetch request, a
//! model run, a produce request and a wake-up of each thread on the way for one or two tweets:
//! most of its CPU goes to those per-request and per-wake-up costs, not to the tweets. Holding
//! work for a few milliseconds lets each of them serve several tweets. Every stage holds by
//! *size or time*, so the budget is only spent where it buys something:
//!
//! - **fetch** (70 %): the broker answers a fetch once `fetch.min.bytes` (64 KiB, a full batch
//!   of tweets) are there, or after `fetch.wait.max.ms`. At high rates fetches fill by size at
//!   once; at moderate rates one fetch carries what arrived in the wait. An idle worker would pay
//!   one empty fetch per wait, so after a fetch that brought nothing the next one waits for the
//!   first byte instead, up to [`IDLE_FETCH_WAIT_MS`] (a librdkafka property we patch in).
//! - **batch** (5 %): with nothing queued, a batch waits this long after its first chunk —
//!   long enough to collect the chunks one fetch brought for several partitions, too short to
//!   wait for the next fetch. Under load batches fill by size (see [`crate::batching`]).
//! - **produce** (10 %): librdkafka's `linger.ms`; a batch's outputs leave in one request per
//!   partition rather than one per record. (librdkafka sends a request per partition, and a
//!   batch's outputs are handed over in one burst, so a short linger is enough.)
//!
//! The shares add up to 85 %: the worst case a record pays is below the budget, the typical one
//! about half the fetch share (it arrives somewhere inside a fetch wait). Budget 0 means latency first:
//! a fetch answered at the first byte, a batch closed at once, a produce request per burst.

use std::time::Duration;

use rdkafka::config::ClientConfig;

/// The default budget: p50 ≈ 3 + 5 ms and p99 well under 25 ms end to end at 1,000 tweets/s on
/// the README's machine, for a fraction of the CPU per tweet of budget 0 (README, "Cost per
/// tweet at steady rates").
pub const DEFAULT_LATENCY_BUDGET_MS: u64 = 10;

/// Bytes the broker waits for before it answers a fetch early: a full batch of tweets (256 ×
/// ~250 bytes with their keys and record overhead).
pub const FETCH_MIN_BYTES: usize = 64 * 1024;

/// While idle (the last fetch brought nothing), a fetch asks for the first byte and lets the
/// broker wait this long: an idle worker sends two fetches a second instead of one per fetch
/// wait, and the first tweet after a pause is answered at once. `fetch.idle.wait.max.ms` is a
/// property of the librdkafka we build (third_party/README.md), not of upstream's.
pub const IDLE_FETCH_WAIT_MS: u64 = 500;

/// A latency budget and the settings it implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyBudget {
    budget: Duration,
}

impl LatencyBudget {
    pub fn new(budget: Duration) -> LatencyBudget {
        LatencyBudget { budget }
    }

    fn share(&self, percent: u32) -> Duration {
        self.budget * percent / 100
    }

    /// The consumer's `fetch.wait.max.ms` (at least 1 ms), or `None` for librdkafka's default
    /// (latency first: the fetch is answered at its first byte).
    pub fn fetch_wait_ms(&self) -> Option<u64> {
        (!self.budget.is_zero()).then(|| (self.share(70).as_millis() as u64).max(1))
    }

    /// The consumer's `fetch.min.bytes`.
    pub fn fetch_min_bytes(&self) -> usize {
        if self.budget.is_zero() {
            1
        } else {
            FETCH_MIN_BYTES
        }
    }

    /// The producer's `linger.ms` (librdkafka takes fractions of a millisecond).
    pub fn linger_ms(&self) -> f64 {
        self.share(10).as_secs_f64() * 1e3
    }

    /// How long a batch waits for more chunks after its latest one, with nothing queued.
    pub fn gather(&self) -> Duration {
        self.share(5)
    }

    /// Sets the fetch and linger settings on the two clients (the caller applies the user's
    /// `-X` properties afterwards, so theirs win).
    pub fn apply(&self, consumer: &mut ClientConfig, producer: &mut ClientConfig) {
        if let Some(wait) = self.fetch_wait_ms() {
            consumer
                .set("fetch.wait.max.ms", wait.to_string())
                .set("fetch.min.bytes", self.fetch_min_bytes().to_string())
                .set("fetch.idle.wait.max.ms", IDLE_FETCH_WAIT_MS.to_string());
        }
        producer.set("linger.ms", format!("{}", self.linger_ms()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_is_split_between_fetch_linger_and_gather() {
        let b = LatencyBudget::new(Duration::from_millis(DEFAULT_LATENCY_BUDGET_MS));
        assert_eq!(b.fetch_wait_ms(), Some(7));
        assert_eq!(b.fetch_min_bytes(), 64 * 1024);
        assert!((b.linger_ms() - 1.0).abs() < 1e-9);
        assert_eq!(b.gather(), Duration::from_micros(500));
        let worst = Duration::from_millis(7) + Duration::from_millis(1) + b.gather();
        assert!(worst < Duration::from_millis(DEFAULT_LATENCY_BUDGET_MS));
    }

    #[test]
    fn budget_zero_is_latency_first() {
        let b = LatencyBudget::new(Duration::ZERO);
        assert_eq!(b.fetch_wait_ms(), None);
        assert_eq!(b.fetch_min_bytes(), 1);
        assert_eq!(b.linger_ms(), 0.0);
        assert_eq!(b.gather(), Duration::ZERO);
        let (mut c, mut p) = (ClientConfig::new(), ClientConfig::new());
        b.apply(&mut c, &mut p);
        assert_eq!(c.get("fetch.wait.max.ms"), None, "librdkafka's default");
        assert_eq!(p.get("linger.ms"), Some("0"));
    }

    #[test]
    fn a_small_budget_still_waits_a_whole_millisecond_for_a_fetch() {
        let b = LatencyBudget::new(Duration::from_millis(1));
        assert_eq!(b.fetch_wait_ms(), Some(1));
        assert!((b.linger_ms() - 0.1).abs() < 1e-9);
        let (mut c, mut p) = (ClientConfig::new(), ClientConfig::new());
        b.apply(&mut c, &mut p);
        assert_eq!(c.get("fetch.wait.max.ms"), Some("1"));
        assert_eq!(c.get("fetch.min.bytes"), Some("65536"));
        assert_eq!(c.get("fetch.idle.wait.max.ms"), Some("500"));
        assert_eq!(p.get("linger.ms"), Some("0.1"));
    }
}
