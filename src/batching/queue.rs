//! The queue the inference threads gather their batches from.
//!
//! **One gatherer at a time, and no hand-off while idle.** Idle threads pull (as the workers of
//! text-embeddings-inference's queue do), but only one of them — the *gatherer* — receives from
//! the channel at a time, so the chunks of one burst land in one batch instead of being split
//! between threads. The gatherer keeps the role while it scores its batch, unless work is
//! already queued when the batch closes: only then does it wake a waiting thread to gather the
//! next batch in parallel. At moderate rates one thread takes every batch and no other thread
//! is woken: each wake-up of a thread costs tens of microseconds of CPU on a virtual machine,
//! more than scoring a small batch.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TryRecvError};

use super::{decide, fits, BatchPolicy, Decision, Gathered};
use crate::obs::metrics::{Metrics, Stage};
use crate::pipeline::{Batch, Chunk};

/// The source channel: a bounded crossbeam channel of chunks, and a doorbell that wakes the
/// gatherer when a chunk arrives.
///
/// Why not block in crossbeam's `recv`: before it parks, a blocking receive spins and calls
/// `sched_yield` about eight times: at 1,000 tweets/s, 8-9 % of the gathering thread's samples.
/// The gatherer instead parks itself (no spinning) after saying so, and a sender unparks it
/// only then: one wake-up per burst, none while it is awake or sleeping through its gather
/// window.
pub fn channel(capacity: usize) -> (ChunkSender, Receiver<Chunk>, Arc<Doorbell>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let bell = Arc::new(Doorbell::default());
    bell.senders.store(1, Ordering::SeqCst);
    (
        ChunkSender {
            tx,
            bell: bell.clone(),
        },
        rx,
        bell,
    )
}

/// Wakes the gathering thread when it sleeps waiting for a chunk.
#[derive(Default)]
pub struct Doorbell {
    /// The gatherer is parked, or about to park.
    parked: AtomicBool,
    gatherer: Mutex<Option<Thread>>,
    /// Live [`ChunkSender`]s: none left means the channel is closed.
    senders: AtomicUsize,
}

impl Doorbell {
    /// Called after every send (and when a sender goes away): wakes the gatherer if it sleeps.
    pub fn ring(&self) {
        if self.parked.load(Ordering::SeqCst) {
            if let Some(t) = self
                .gatherer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                t.unpark();
            }
        }
    }

    /// Every sender is gone: nothing more will arrive.
    fn closed(&self) -> bool {
        self.senders.load(Ordering::SeqCst) == 0
    }

    /// Blocks the calling thread until `rx` has a chunk or is disconnected (or a second has
    /// passed, a safety net); the caller then tries to receive again.
    fn wait(&self, rx: &Receiver<Chunk>) {
        *self.gatherer.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
        // Say "parked" before the last look, so a send that the look misses sees the flag and
        // unparks (park returns at once if the unpark came first).
        self.parked.store(true, Ordering::SeqCst);
        if rx.is_empty() && self.senders.load(Ordering::SeqCst) > 0 {
            std::thread::park_timeout(Duration::from_secs(1));
        }
        self.parked.store(false, Ordering::SeqCst);
    }
}

/// The partition threads' side of the source channel (see [`channel`]).
pub struct ChunkSender {
    tx: Sender<Chunk>,
    bell: Arc<Doorbell>,
}

impl Clone for ChunkSender {
    fn clone(&self) -> Self {
        self.bell.senders.fetch_add(1, Ordering::SeqCst);
        ChunkSender {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl ChunkSender {
    /// Sends `chunk`, waiting up to `timeout` for room, and rings the doorbell. On a timeout the
    /// chunk comes back (as in crossbeam's own `send_timeout`) for the caller to retry with.
    #[allow(clippy::result_large_err)]
    pub fn send_timeout(
        &self,
        chunk: Chunk,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<Chunk>> {
        self.tx.send_timeout(chunk, timeout)?;
        self.bell.ring();
        Ok(())
    }
}

impl Drop for ChunkSender {
    /// The last sender going away disconnects the channel: the gatherer must notice.
    fn drop(&mut self) {
        self.bell.senders.fetch_sub(1, Ordering::SeqCst);
        self.bell.ring();
    }
}

/// The receiving side of the source channel, shared by the inference threads.
pub struct BatchQueue {
    rx: Receiver<Chunk>,
    bell: Arc<Doorbell>,
    policy: BatchPolicy,
    state: Mutex<Role>,
    turn: Condvar,
}

/// Who gathers, and what the gatherer carries between batches.
#[derive(Default)]
struct Role {
    /// A thread holds the gatherer role.
    taken: bool,
    /// Threads waiting for the role.
    waiting: usize,
    /// The channel is closed and drained: every thread ends.
    closed: bool,
    /// A chunk that did not fit the last batch: it opens the next one.
    carry: Option<Chunk>,
}

/// A thread's place with respect to the gatherer role (kept between calls to
/// [`BatchQueue::next`]).
#[derive(Debug, Default)]
pub struct Turn {
    holding: bool,
}

impl BatchQueue {
    pub fn new(rx: Receiver<Chunk>, bell: Arc<Doorbell>, policy: BatchPolicy) -> BatchQueue {
        BatchQueue {
            rx,
            bell,
            policy,
            state: Mutex::new(Role::default()),
            turn: Condvar::new(),
        }
    }

    /// Threads waiting for the gatherer role (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting
    }

    fn lock(&self) -> MutexGuard<'_, Role> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next batch for the calling thread to score; `None` once the channel is closed and
    /// everything in it was handed out (the thread should end). Blocks while another thread
    /// gathers, then while nothing arrives.
    pub fn next(&self, turn: &mut Turn, metrics: &Metrics) -> Option<Batch> {
        let carry = {
            let mut role = self.lock();
            if !turn.holding {
                while role.taken && !role.closed {
                    role.waiting += 1;
                    role = self.turn.wait(role).unwrap_or_else(|e| e.into_inner());
                    role.waiting -= 1;
                }
                if role.closed {
                    return None;
                }
                role.taken = true;
                turn.holding = true;
            }
            role.carry.take()
        };
        let (batch, carry) = self.gather(carry, metrics);
        let mut role = self.lock();
        role.carry = carry;
        let backlog = role.carry.is_some() || !self.rx.is_empty();
        if batch.is_none() {
            role.closed = true;
        }
        // Hand the role on only when there is already work for another thread (or when ending).
        if batch.is_none() || (backlog && role.waiting > 0) {
            role.taken = false;
            turn.holding = false;
            if batch.is_none() {
                self.turn.notify_all();
            } else {
                self.turn.notify_one();
            }
        }
        batch
    }

    /// Gathers one batch, starting with `carry` if any: blocks for the first chunk, then takes
    /// or waits per [`decide`]. Returns the batch (`None`: closed and nothing left) and a chunk
    /// that did not fit it.
    fn gather(&self, carry: Option<Chunk>, metrics: &Metrics) -> (Option<Batch>, Option<Chunk>) {
        let first = match carry {
            Some(c) => c,
            None => loop {
                match self.rx.try_recv() {
                    Ok(c) => {
                        record_channel_wait(&c, metrics);
                        break c;
                    }
                    Err(TryRecvError::Disconnected) => return (None, None),
                    Err(TryRecvError::Empty) if self.bell.closed() => return (None, None),
                    Err(TryRecvError::Empty) => self.bell.wait(&self.rx),
                }
            },
        };
        let mut g = Gathered {
            len: first.records.len(),
            longest: first.longest,
            opened: Instant::now(),
        };
        let mut chunks = vec![first];
        let mut carry = None;
        loop {
            let now = Instant::now();
            let next = match decide(&self.policy, &g, !self.rx.is_empty(), now) {
                Decision::Flush => break,
                Decision::Take => match self.rx.try_recv() {
                    Ok(c) => c,
                    // Taken meanwhile by nobody else (only the gatherer receives): decide again.
                    Err(TryRecvError::Empty) => continue,
                    Err(TryRecvError::Disconnected) => break,
                },
                // Sleep rather than wait on the channel: a chunk sent meanwhile then costs its
                // partition thread no wake-up call and this thread no wake-up; it is swept up
                // after the sleep with whatever else arrived.
                Decision::WaitUntil(t) => {
                    std::thread::sleep(t.saturating_duration_since(now));
                    continue;
                }
            };
            record_channel_wait(&next, metrics);
            // A batch is scored by one model: a chunk tokenized by another (a reload happened
            // in between) starts the next batch, as does one that does not fit.
            let same_model = std::sync::Arc::ptr_eq(&chunks[0].model, &next.model);
            if !same_model
                || !fits(
                    &self.policy,
                    g.len,
                    g.longest,
                    next.records.len(),
                    next.longest,
                )
            {
                carry = Some(next);
                break;
            }
            g.len += next.records.len();
            g.longest = g.longest.max(next.longest);
            chunks.push(next);
        }
        metrics.record(Stage::BatchWait, g.opened.elapsed());
        metrics.record_batch_size(g.len);
        let batch = Batch {
            chunks,
            records: g.len,
            longest: g.longest,
        };
        (Some(batch), carry)
    }
}

fn record_channel_wait(chunk: &Chunk, metrics: &Metrics) {
    metrics.record(
        Stage::ChannelWait,
        Instant::now().saturating_duration_since(chunk.consumed_at),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batching::tests::P;
    use crate::model::files::ModelFiles;
    use crate::model::live::LiveModel;
    use crate::pipeline::{Body, Lane, Record};

    fn model() -> Arc<LiveModel> {
        Arc::new(LiveModel::load(&ModelFiles::builtin(), true).expect("pass-through model"))
    }

    /// A chunk of `records` tweets of `longest` ids each.
    fn chunk(model: &Arc<LiveModel>, seq: u64, records: usize, longest: usize) -> Chunk {
        let lane = Arc::new(Lane::new("t".into(), 0, Some(0)));
        let mut c = Chunk::with_capacity(lane, model.clone(), seq, Default::default());
        for i in 0..records {
            let start = c.ids.len();
            c.ids.extend(std::iter::repeat_n(5, longest));
            let body = c.tweet_from(start);
            c.records.push(Record {
                offset: (seq * 100 + i as u64) as i64,
                timestamp: None,
                key: None,
                value: None,
                body,
            });
        }
        assert!(matches!(c.records[0].body, Body::Tweet { .. }));
        c
    }

    fn send(tx: &ChunkSender, c: Chunk) {
        assert!(tx.send_timeout(c, Duration::from_secs(1)).is_ok(), "room");
    }

    fn sizes(b: &Batch) -> Vec<usize> {
        b.chunks.iter().map(|c| c.records.len()).collect()
    }

    /// Waits (boundedly) until `n` threads wait for the gatherer role.
    fn until_waiting(q: &BatchQueue, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.waiting() != n {
            assert!(
                Instant::now() < deadline,
                "{} threads waiting, not {n}",
                q.waiting()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn queued_chunks_form_one_batch_and_one_that_does_not_fit_opens_the_next() {
        let (m, metrics) = (model(), Metrics::new("test"));
        let (tx, rx, bell) = channel(16);
        let q = BatchQueue::new(rx, bell, P);
        for (seq, n) in [(0, 1), (1, 2), (2, 3)] {
            send(&tx, chunk(&m, seq, n, 2));
        }
        drop(tx);
        let mut turn = Turn::default();
        let first = q.next(&mut turn, &metrics).expect("a batch");
        assert_eq!(
            sizes(&first),
            [1, 2],
            "1 + 2 fit max_batch 4; 3 more would not"
        );
        let second = q.next(&mut turn, &metrics).expect("the carried chunk");
        assert_eq!(sizes(&second), [3]);
        assert!(q.next(&mut turn, &metrics).is_none(), "closed and drained");
    }

    #[test]
    fn the_gatherer_keeps_its_role_while_idle_and_hands_it_on_only_with_a_backlog() {
        let (m, metrics) = (model(), Arc::new(Metrics::new("test")));
        let (tx, rx, bell) = channel(16);
        let q = Arc::new(BatchQueue::new(rx, bell, P));
        let mut a = Turn::default();
        // A takes the role with a first batch.
        send(&tx, chunk(&m, 0, 1, 2));
        assert_eq!(sizes(&q.next(&mut a, &metrics).expect("batch")), [1]);
        // B asks for work and waits: A holds the role.
        let b = {
            let (q, metrics) = (q.clone(), metrics.clone());
            std::thread::spawn(move || {
                let mut turn = Turn::default();
                let mut got = Vec::new();
                while let Some(batch) = q.next(&mut turn, &metrics) {
                    got.push(sizes(&batch));
                }
                got
            })
        };
        until_waiting(&q, 1);
        // No backlog when A's next batch closes: A keeps the role and B is not woken.
        send(&tx, chunk(&m, 1, 2, 2));
        assert_eq!(sizes(&q.next(&mut a, &metrics).expect("batch")), [2]);
        assert_eq!(q.waiting(), 1, "B must still be waiting");
        // A backlog when A's batch closes (4 fill it, 3 more queued): B gathers the next one.
        for seq in 2..9 {
            send(&tx, chunk(&m, seq, 1, 2));
        }
        assert_eq!(
            sizes(&q.next(&mut a, &metrics).expect("batch")),
            [1, 1, 1, 1]
        );
        // B woke and took the role (it stops waiting only to take it).
        until_waiting(&q, 0);
        drop(tx);
        assert!(
            q.next(&mut a, &metrics).is_none(),
            "B took the rest; then closed"
        );
        assert_eq!(b.join().expect("B"), vec![vec![1, 1, 1]]);
    }

    #[test]
    fn a_parked_gatherer_wakes_for_a_chunk_and_ends_when_the_senders_go() {
        let (m, metrics) = (model(), Arc::new(Metrics::new("test")));
        let (tx, rx, bell) = channel(16);
        let q = Arc::new(BatchQueue::new(rx, bell.clone(), P));
        let gatherer = {
            let (q, metrics) = (q.clone(), metrics.clone());
            std::thread::spawn(move || {
                let mut turn = Turn::default();
                let mut got = Vec::new();
                while let Some(batch) = q.next(&mut turn, &metrics) {
                    got.push(sizes(&batch));
                }
                got
            })
        };
        // It parks (says so) while nothing is there.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !bell.parked.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the gatherer never parked");
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        send(&tx, chunk(&m, 0, 2, 2));
        drop(tx);
        assert_eq!(gatherer.join().expect("gatherer"), vec![vec![2]]);
        // Woken by the send and by the sender going away, not by the 1 s safety net.
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
    }
}
