//! Micro-batching: the inference threads pull chunks from the source channel and gather them
//! into batches themselves — there is no batcher thread to hand batches over.
//!
//! Batches move whole chunks (the records a partition thread read in one go), never single
//! records. Queued chunks join at once; a batch closes when it holds `max_batch` records,
//! before its padded size (`len × longest`) would pass the token budget, or `max_wait` after
//! its first chunk — and, when nothing more is queued, `gather` after its first chunk (a share
//! of the latency budget, [`crate::batching::latency`]: the chunks one fetch brought for several
//! partitions arrive within a fraction of a millisecond of each other; waiting longer would
//! only wait for the next fetch). So batches adapt to load: at moderate rates a batch collects
//! what arrived together; when tweets queue faster than they are scored, batches fill by size.
//! The decision is the pure function [`decide`]; admission the pure [`fits`], checked before a
//! chunk joins (as text-embeddings-inference checks its token budget before an entry joins a
//! batch). The inference threads gather from the [`queue`]; the [`latency`] budget sets
//! `gather`.

pub mod latency;
pub mod queue;

pub use queue::{channel, BatchQueue, ChunkSender, Doorbell, Turn};

use std::time::{Duration, Instant};

/// When to close a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch: usize,
    /// A batch closes at the latest this long after its first chunk.
    pub max_wait: Duration,
    /// With nothing queued, a batch waits this long after its first chunk for the rest of its
    /// burst (zero: it closes at once).
    pub gather: Duration,
    /// Budget in padded tokens (`len × longest`), bounding one inference's tensor size.
    pub max_tokens: usize,
}

impl BatchPolicy {
    /// The policy for batches of up to `max_batch` records and `max_tokens` padded tokens,
    /// closed `max_wait` after their first chunk at the latest, gathering for the share of
    /// `latency_budget` that is the batch's (never past `max_wait`).
    pub fn new(
        max_batch: usize,
        max_wait: Duration,
        latency_budget: Duration,
        max_tokens: usize,
    ) -> BatchPolicy {
        BatchPolicy {
            max_batch,
            max_wait,
            gather: latency::LatencyBudget::new(latency_budget)
                .gather()
                .min(max_wait),
            max_tokens,
        }
    }
}

/// What the gatherer should do next, with the chunks it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// More is queued: take the next chunk.
    Take,
    /// Nothing is queued: wait for a chunk until this instant.
    WaitUntil(Instant),
    /// Close the batch and score it now.
    Flush,
}

/// A batch being gathered, as [`decide`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gathered {
    /// Records so far, and the longest tweet's length in ids.
    pub len: usize,
    pub longest: usize,
    /// When its first chunk arrived.
    pub opened: Instant,
}

/// The decision for a batch `g` (non-empty), given whether more chunks are queued. Queued
/// chunks are taken at once; with nothing queued, the batch waits until `gather` after its first
/// chunk for the rest of the burst, then closes.
pub fn decide(policy: &BatchPolicy, g: &Gathered, queued: bool, now: Instant) -> Decision {
    if g.len >= policy.max_batch || g.len * g.longest.max(1) >= policy.max_tokens {
        return Decision::Flush;
    }
    let deadline = g.opened + policy.max_wait;
    if now >= deadline {
        return Decision::Flush;
    }
    if queued {
        return Decision::Take;
    }
    let gathered = (g.opened + policy.gather).min(deadline);
    if now >= gathered {
        Decision::Flush
    } else {
        Decision::WaitUntil(gathered)
    }
}

/// Whether a chunk of `records` records whose longest tweet has `longest` ids can join a batch
/// that already holds `len` records with longest `batch_longest`, within the policy's size and
/// padded-token budget. An empty batch takes any chunk.
pub fn fits(
    policy: &BatchPolicy,
    len: usize,
    batch_longest: usize,
    records: usize,
    longest: usize,
) -> bool {
    let n = len + records;
    len == 0
        || (n <= policy.max_batch && n * batch_longest.max(longest).max(1) <= policy.max_tokens)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const P: BatchPolicy = BatchPolicy {
        max_batch: 4,
        max_wait: Duration::from_millis(5),
        gather: Duration::from_millis(1),
        max_tokens: 100,
    };

    fn batch(len: usize, longest: usize, opened: Instant) -> Gathered {
        Gathered {
            len,
            longest,
            opened,
        }
    }

    #[test]
    fn a_full_batch_flushes_at_once_queued_or_not() {
        let t0 = Instant::now();
        for queued in [true, false] {
            assert_eq!(decide(&P, &batch(4, 1, t0), queued, t0), Decision::Flush);
        }
    }

    #[test]
    fn the_padded_token_budget_closes_a_batch_of_long_tweets_early() {
        let t0 = Instant::now();
        assert_eq!(decide(&P, &batch(2, 50, t0), true, t0), Decision::Flush);
        assert_eq!(decide(&P, &batch(2, 49, t0), true, t0), Decision::Take);
    }

    #[test]
    fn queued_chunks_are_taken_until_max_wait() {
        let t0 = Instant::now();
        let g = batch(1, 9, t0);
        assert_eq!(
            decide(&P, &g, true, t0 + Duration::from_millis(4)),
            Decision::Take
        );
        assert_eq!(decide(&P, &g, true, t0 + P.max_wait), Decision::Flush);
    }

    #[test]
    fn with_nothing_queued_a_batch_gathers_until_gather_after_its_first_chunk() {
        let t0 = Instant::now();
        let g = batch(2, 9, t0);
        let gathered = t0 + P.gather;
        assert_eq!(decide(&P, &g, false, t0), Decision::WaitUntil(gathered));
        assert_eq!(
            decide(&P, &g, false, t0 + Duration::from_micros(300)),
            Decision::WaitUntil(gathered)
        );
        assert_eq!(decide(&P, &g, false, gathered), Decision::Flush);
        // A gather window past max_wait is max_wait.
        let long = BatchPolicy {
            gather: Duration::from_millis(50),
            ..P
        };
        assert_eq!(
            decide(&long, &g, false, t0),
            Decision::WaitUntil(t0 + P.max_wait)
        );
    }

    #[test]
    fn without_a_gather_window_an_idle_batch_closes_at_once() {
        let p = BatchPolicy {
            gather: Duration::ZERO,
            ..P
        };
        let t0 = Instant::now();
        assert_eq!(decide(&p, &batch(1, 9, t0), false, t0), Decision::Flush);
        assert_eq!(decide(&p, &batch(1, 9, t0), true, t0), Decision::Take);
    }

    #[test]
    fn a_chunk_joins_only_if_the_batch_stays_within_size_and_token_budget() {
        assert!(fits(&P, 0, 0, 9, 200), "an empty batch takes anything");
        assert!(fits(&P, 2, 10, 2, 10));
        assert!(!fits(&P, 3, 10, 2, 10), "5 records > max_batch 4");
        assert!(!fits(&P, 1, 10, 1, 60), "2 × 60 padded tokens > 100");
        assert!(fits(&P, 1, 10, 1, 50));
    }
}
