//! Micro-batching: group tweets from the source channel into batches for one inference each.
//!
//! The batcher moves whole chunks (the records a partition thread read in one go), never single
//! records. A batch closes when it holds `max_batch` records, when its padded size (`len × longest`)
//! reaches the token budget, or `max_wait` after its *first* tweet arrived — whichever comes
//! first. It also closes early when nothing more is queued and an inference thread is idle:
//! waiting could only add latency then. So batches adapt to load: while every inference thread
//! is busy, tweets accumulate and batches grow (throughput); when traffic is light, each tweet
//! is scored as soon as it arrives (latency). The decision is the pure function [`decide`].
//!
//! That early close has a price at moderate rates: a batch of one or two tweets pays a model run,
//! a hand-over to an inference thread and a produce call of its own. `min_wait` lets a batch
//! gather for that long before an idle thread takes it — fewer, larger batches, less CPU per
//! tweet, for at most `min_wait` of added latency (README, "Cost per tweet at moderate rates").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::metrics::{Metrics, Stage};
use crate::pipeline::{Batch, Chunk};

/// When to close a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// How long a batch gathers before an idle inference thread may take it (zero: at once).
    pub min_wait: Duration,
    /// Budget in padded tokens (`len × longest`), bounding one inference's tensor size.
    pub max_tokens: usize,
}

/// What the batcher should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing buffered: block until a tweet arrives.
    Idle,
    /// Keep collecting until this instant.
    WaitUntil(Instant),
    /// Close the batch and run it now.
    Flush,
}

/// What the batcher sees besides its own batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// No tweet is waiting in the source channel right now.
    pub queue_empty: bool,
    /// At least one inference thread is waiting for a batch.
    pub inference_idle: bool,
}

/// The flush decision for a batch of `len` tweets whose longest has `longest` ids, opened at
/// `opened` (arrival of its first tweet).
pub fn decide(
    policy: &BatchPolicy,
    len: usize,
    longest: usize,
    opened: Option<Instant>,
    pressure: Pressure,
    now: Instant,
) -> Decision {
    let Some(opened) = opened.filter(|_| len > 0) else {
        return Decision::Idle;
    };
    if len >= policy.max_batch || len * longest.max(1) >= policy.max_tokens {
        return Decision::Flush;
    }
    let deadline = opened + policy.max_wait;
    if now >= deadline {
        return Decision::Flush;
    }
    if pressure.queue_empty && pressure.inference_idle {
        let gathered = opened + policy.min_wait;
        return if now >= gathered {
            Decision::Flush
        } else {
            Decision::WaitUntil(gathered.min(deadline))
        };
    }
    Decision::WaitUntil(deadline)
}

/// Whether a chunk of `records` records whose longest tweet has `longest` ids can join a batch
/// that already holds `len` records with longest `batch_longest`, within the policy's size and
/// padded-token budget. Checked *before* a chunk joins (as text-embeddings-inference checks its
/// token budget before an entry joins a batch), so no batch exceeds the budget because of its
/// last arrival. An empty batch takes any chunk.
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

/// Runs until the source channel is closed and drained; then flushes what is left and returns,
/// which closes `out` and lets the inference threads finish. `idle_threads` counts inference
/// threads waiting for a batch. The batcher moves whole chunks, never single records, so it
/// stays cheap however many records flow through it.
pub fn run(
    rx: Receiver<Chunk>,
    out: Sender<Batch>,
    policy: BatchPolicy,
    idle_threads: &AtomicUsize,
    metrics: &Metrics,
) {
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut len = 0usize;
    let mut longest = 0usize;
    let mut opened: Option<Instant> = None;
    // A chunk that did not fit the open batch: it opens the next one.
    let mut carry: Option<Chunk> = None;
    let mut closed = false;
    loop {
        let now = Instant::now();
        let pressure = Pressure {
            queue_empty: rx.is_empty() && carry.is_none(),
            // A closed batch already waiting in `out` will take the next idle thread.
            inference_idle: out.is_empty() && idle_threads.load(Ordering::Acquire) > 0,
        };
        let decision = if (closed || carry.is_some()) && !chunks.is_empty() {
            Decision::Flush
        } else {
            decide(&policy, len, longest, opened, pressure, now)
        };
        let received = match decision {
            Decision::Flush => {
                if let Some(o) = opened {
                    metrics.record(Stage::BatchWait, now.saturating_duration_since(o));
                }
                metrics.record_batch_size(len);
                let batch = Batch {
                    chunks: std::mem::take(&mut chunks),
                    records: len,
                    longest,
                };
                (len, longest, opened) = (0, 0, None);
                // Bounded: blocks while every inference thread is busy and one batch is queued
                // (prefetch-one), which backs up into the source channel and the partitions.
                if out.send(batch).is_err() {
                    return;
                }
                if let Some(c) = carry.take() {
                    (len, longest, opened) = (c.records.len(), c.longest, Some(now));
                    chunks.push(c);
                }
                continue;
            }
            _ if closed => return,
            Decision::Idle => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Decision::WaitUntil(deadline) => rx.recv_deadline(deadline),
        };
        match received {
            Ok(chunk) => {
                let now = Instant::now();
                metrics.record(
                    Stage::ChannelWait,
                    now.saturating_duration_since(chunk.consumed_at),
                );
                let records = chunk.records.len();
                // A batch is scored by one model: a chunk tokenized by another (a reload
                // happened in between) starts the next batch.
                let same_model = chunks
                    .first()
                    .is_none_or(|c| Arc::ptr_eq(&c.model, &chunk.model));
                if !same_model || !fits(&policy, len, longest, records, chunk.longest) {
                    carry = Some(chunk);
                    continue;
                }
                opened.get_or_insert(now);
                len += records;
                longest = longest.max(chunk.longest);
                chunks.push(chunk);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closed = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: BatchPolicy = BatchPolicy {
        max_batch: 4,
        max_wait: Duration::from_millis(5),
        min_wait: Duration::ZERO,
        max_tokens: 100,
    };
    /// Busy: more tweets queued, or no inference thread free.
    const BUSY: Pressure = Pressure {
        queue_empty: false,
        inference_idle: false,
    };
    /// Light traffic: nothing queued and an inference thread waiting.
    const IDLE: Pressure = Pressure {
        queue_empty: true,
        inference_idle: true,
    };

    #[test]
    fn an_empty_batch_waits_for_the_first_tweet() {
        let now = Instant::now();
        assert_eq!(decide(&P, 0, 0, None, BUSY, now), Decision::Idle);
        assert_eq!(decide(&P, 0, 0, Some(now), BUSY, now), Decision::Idle);
    }

    #[test]
    fn a_partial_batch_waits_until_max_wait_after_its_first_tweet() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_millis(2);
        assert_eq!(
            decide(&P, 1, 9, Some(t0), BUSY, at),
            Decision::WaitUntil(t0 + P.max_wait)
        );
        assert_eq!(
            decide(&P, 1, 9, Some(t0), BUSY, t0 + P.max_wait),
            Decision::Flush
        );
    }

    #[test]
    fn a_full_batch_flushes_at_once() {
        let t0 = Instant::now();
        assert_eq!(decide(&P, 4, 1, Some(t0), BUSY, t0), Decision::Flush);
    }

    #[test]
    fn the_padded_token_budget_closes_a_batch_of_long_tweets_early() {
        let t0 = Instant::now();
        assert_eq!(decide(&P, 2, 50, Some(t0), BUSY, t0), Decision::Flush);
        assert_eq!(
            decide(&P, 2, 49, Some(t0), BUSY, t0),
            Decision::WaitUntil(t0 + P.max_wait)
        );
    }

    #[test]
    fn light_traffic_flushes_at_once_when_nothing_is_queued_and_a_thread_is_idle() {
        let t0 = Instant::now();
        assert_eq!(decide(&P, 1, 9, Some(t0), IDLE, t0), Decision::Flush);
    }

    #[test]
    fn under_load_a_batch_keeps_growing_while_tweets_queue_or_threads_are_busy() {
        let t0 = Instant::now();
        let queued = Pressure {
            queue_empty: false,
            inference_idle: true,
        };
        let busy = Pressure {
            queue_empty: true,
            inference_idle: false,
        };
        for p in [queued, busy] {
            assert_eq!(
                decide(&P, 1, 9, Some(t0), p, t0),
                Decision::WaitUntil(t0 + P.max_wait)
            );
        }
    }

    #[test]
    fn with_a_min_wait_an_idle_thread_gets_the_batch_only_once_it_has_gathered() {
        let p = BatchPolicy {
            min_wait: Duration::from_millis(2),
            ..P
        };
        let t0 = Instant::now();
        let gathered = t0 + p.min_wait;
        assert_eq!(
            decide(&p, 1, 9, Some(t0), IDLE, t0),
            Decision::WaitUntil(gathered)
        );
        assert_eq!(decide(&p, 1, 9, Some(t0), IDLE, gathered), Decision::Flush);
        // Size and budget still close it at once; while busy, max_wait still applies.
        assert_eq!(decide(&p, 4, 1, Some(t0), IDLE, t0), Decision::Flush);
        assert_eq!(
            decide(&p, 1, 9, Some(t0), BUSY, gathered),
            Decision::WaitUntil(t0 + p.max_wait)
        );
        // A min_wait past max_wait is max_wait.
        let long = BatchPolicy {
            min_wait: Duration::from_millis(50),
            ..P
        };
        assert_eq!(
            decide(&long, 1, 9, Some(t0), IDLE, t0),
            Decision::WaitUntil(t0 + long.max_wait)
        );
        assert_eq!(
            decide(&long, 1, 9, Some(t0), IDLE, t0 + long.max_wait),
            Decision::Flush
        );
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
