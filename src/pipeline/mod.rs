//! The types that flow down the pipeline, and the one interface the output side offers.
//!
//! ```text
//!  source ──Chunk──► batcher ──Batch──► inference ──Scored──► Output (sink) ──► Kafka
//!  (a thread per                                                   │ delivery acks
//!   partition)     every Chunk carries its partition's Lane ◄──────┘
//! ```
//!
//! Each stage depends on these types only, never on another stage; `worker` wires them. A
//! record that cannot be scored (bad JSON, too large, …) travels down the same path as an
//! [`Body::Invalid`] record, so that only the sink ever produces and dead letters keep their
//! place in their partition's output order.

pub mod offsets;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::model::live::LiveModel;
use crate::pipeline::offsets::PartitionTracker;
use crate::wire::DecodeError;

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

/// Where a lane is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneState {
    /// Consuming and producing.
    Running,
    /// A delivery failed: produce nothing more; the partition thread rewinds to the last commit.
    Failed,
    /// Revoked, lost, rewound or shut down: its remaining work is dropped, never produced.
    Closed,
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
            state: AtomicU8::new(0),
            failure: Mutex::new(None),
            emitted: Mutex::new(0),
            emitted_cv: Condvar::new(),
        }
    }

    pub fn state(&self) -> LaneState {
        match self.state.load(Ordering::Acquire) {
            0 => LaneState::Running,
            1 => LaneState::Failed,
            _ => LaneState::Closed,
        }
    }

    pub fn is_running(&self) -> bool {
        self.state() == LaneState::Running
    }

    /// Marks the lane failed (the first failure wins; a closed lane stays closed).
    pub fn fail(&self, kind: FailureKind, reason: String) {
        if self
            .state
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Failure { kind, reason });
        }
        self.emitted_cv.notify_all();
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
        self.state.store(2, Ordering::Release);
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

/// What a consumed record turned into.
#[derive(Debug)]
pub enum Body {
    /// A tweet to score: its token ids are `Chunk::ids[ids.0..ids.1]`.
    Tweet { ids: (u32, u32) },
    /// Not a tweet: it goes to the dead-letter topic with this reason.
    Invalid(DecodeError),
}

/// One consumed record. Its key and value bytes live in its chunk's arena.
#[derive(Debug)]
pub struct Record {
    pub offset: i64,
    /// The input's timestamp (ms), copied to its output.
    pub timestamp: Option<i64>,
    pub key: Option<(u32, u32)>,
    /// `None`: a null payload.
    pub value: Option<(u32, u32)>,
    pub body: Body,
}

/// How many records, bytes and token ids a chunk holds (see [`Chunk::with_capacity`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkSizes {
    pub records: usize,
    pub bytes: usize,
    pub ids: usize,
}

impl ChunkSizes {
    /// Room for a chunk like this one and an eighth more, so that one a little larger than
    /// the last still fits without a reallocation.
    pub fn with_slack(self) -> ChunkSizes {
        let up = |n: usize| n.saturating_add(n / 8);
        ChunkSizes {
            records: up(self.records),
            bytes: up(self.bytes),
            ids: up(self.ids),
        }
    }
}

/// Consecutive records of one lane, read in one go by its partition thread: the unit that moves
/// through channels, batches and commit tracking. Keys, values and token ids of all its records
/// sit in two buffers, so a chunk costs a few allocations however many records it holds.
pub struct Chunk {
    pub lane: Arc<Lane>,
    /// The model whose tokenizer produced the ids: it, and only it, scores them.
    pub model: Arc<LiveModel>,
    /// Position among its lane's chunks (0, 1, 2, …): the sink emits a lane's chunks in this order.
    pub seq: u64,
    pub records: Vec<Record>,
    /// Keys and values.
    pub bytes: Vec<u8>,
    /// Token ids of the tweets.
    pub ids: Vec<i32>,
    /// Tweets among the records, and the longest one's length in ids.
    pub tweets: usize,
    pub longest: usize,
    pub consumed_at: Instant,
    /// Its share of the in-flight memory budget, given back when the chunk is dropped.
    pub permit: Option<Permit>,
}

impl Chunk {
    /// An empty chunk whose buffers already hold `sizes`. A partition thread passes the sizes
    /// of its previous chunk: buffers grown by doubling from empty cost a chunk of 256 tweets
    /// some 25 reallocations, each copying what was stored so far, and the larger ones make
    /// glibc consolidate its free lists.
    pub fn with_capacity(
        lane: Arc<Lane>,
        model: Arc<LiveModel>,
        seq: u64,
        sizes: ChunkSizes,
    ) -> Chunk {
        Chunk {
            lane,
            model,
            seq,
            records: Vec::with_capacity(sizes.records),
            bytes: Vec::with_capacity(sizes.bytes),
            ids: Vec::with_capacity(sizes.ids),
            tweets: 0,
            longest: 0,
            consumed_at: Instant::now(),
            permit: None,
        }
    }

    /// Copies `data` into the arena and returns its range.
    pub fn store(&mut self, data: &[u8]) -> (u32, u32) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        (to_u32(start), to_u32(self.bytes.len()))
    }

    pub fn slice(&self, range: (u32, u32)) -> &[u8] {
        &self.bytes[range.0 as usize..range.1 as usize]
    }

    pub fn key(&self, r: &Record) -> Option<&[u8]> {
        r.key.map(|k| self.slice(k))
    }

    pub fn value(&self, r: &Record) -> Option<&[u8]> {
        r.value.map(|v| self.slice(v))
    }

    /// Token ids of a tweet record (empty for an invalid one).
    pub fn tweet_ids(&self, r: &Record) -> &[i32] {
        match r.body {
            Body::Tweet { ids } => &self.ids[ids.0 as usize..ids.1 as usize],
            Body::Invalid(_) => &[],
        }
    }

    /// Marks the ids appended since `start` as the tweet of a new record.
    pub fn tweet_from(&mut self, start: usize) -> Body {
        let n = self.ids.len() - start;
        self.tweets += 1;
        self.longest = self.longest.max(n);
        Body::Tweet {
            ids: (to_u32(start), to_u32(self.ids.len())),
        }
    }

    /// Memory this chunk holds (what the in-flight budget counts).
    pub fn size_bytes(&self) -> usize {
        self.bytes.capacity()
            + self.ids.capacity() * std::mem::size_of::<i32>()
            + self.records.capacity() * std::mem::size_of::<Record>()
            + std::mem::size_of::<Chunk>()
    }

    /// What this chunk's buffers hold now.
    pub fn sizes(&self) -> ChunkSizes {
        ChunkSizes {
            records: self.records.len(),
            bytes: self.bytes.len(),
            ids: self.ids.len(),
        }
    }

    pub fn first_offset(&self) -> Option<i64> {
        self.records.first().map(|r| r.offset)
    }

    pub fn last_offset(&self) -> Option<i64> {
        self.records.last().map(|r| r.offset)
    }
}

/// Arena offsets are u32: a chunk never holds 4 GiB (records are capped far below that).
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Chunks closed together for one inference run (all tokenized by the same model).
pub struct Batch {
    pub chunks: Vec<Chunk>,
    /// Records in all chunks (tweets and invalid ones) and the longest tweet, in ids.
    pub records: usize,
    pub longest: usize,
}

impl Batch {
    /// Every tweet's ids, in order, for one padded inference.
    pub fn tweet_ids(&self) -> Vec<&[i32]> {
        let mut out = Vec::with_capacity(self.records);
        for c in &self.chunks {
            for r in &c.records {
                if matches!(r.body, Body::Tweet { .. }) {
                    out.push(c.tweet_ids(r));
                }
            }
        }
        out
    }
}

/// A chunk after inference: one result per tweet record, in order (`Err` holds why inference
/// failed for that tweet).
pub struct Scored {
    pub chunk: Chunk,
    pub scores: Vec<Result<f32, String>>,
}

/// The output side as the other stages see it (implemented by `sink::Sink`).
pub trait Output: Send + Sync {
    /// Starts output for a lane (exactly-once: its transactional producer is created,
    /// initialised — fencing earlier owners — and a transaction begun).
    fn open(&self, lane: &Arc<Lane>) -> Result<(), String>;
    /// Produces a scored chunk's outputs once every earlier chunk of its lane was produced;
    /// chunks of lanes that are no longer running are dropped.
    fn emit(&self, scored: Scored);
    /// Exactly-once: commits the lane's transaction together with `position` (the next input
    /// offset) for `group`. At-least-once: nothing to do (offsets are committed by the consumer).
    fn commit(
        &self,
        lane: &Lane,
        position: i64,
        group: &rdkafka::consumer::ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), String>;
    /// Ends output for a lane; exactly-once aborts its open transaction (bounded by `timeout`).
    fn close(&self, lane: &Lane, timeout: Duration);
    /// Serves acknowledgements that have arrived, without blocking (inference threads call it
    /// after producing a batch).
    fn serve_deliveries(&self);
    /// True if this output commits input offsets itself (exactly-once).
    fn transactional(&self) -> bool;
}

/// Where inference threads offer each scored batch for shadow scoring (implemented by
/// `shadow::ShadowStage`). Offering never blocks: what the shadow side cannot take is shed.
pub trait Shadow: Send + Sync {
    /// `scores`: one live result per tweet record of `chunks`, in order.
    fn offer(&self, chunks: &[Chunk], scores: &[Result<f32, String>]);
}

/// A bound on the bytes held by chunks in flight (consumed, not yet produced). Partition
/// threads take a permit before handing a chunk on and wait while the budget is spent: memory
/// stays bounded by bytes, not only by record counts, whatever the size of the records.
pub struct Budget {
    limit: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// A share of the [`Budget`], returned when dropped.
pub struct Permit {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit: limit.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// Takes `bytes` of the budget, waiting while it is spent; gives up (None) once `stop()`
    /// is true. A request larger than the whole budget is granted when nothing else is held.
    pub fn acquire(self: &Arc<Self>, bytes: usize, stop: impl Fn() -> bool) -> Option<Permit> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *used == 0 || *used + bytes <= self.limit {
                *used += bytes;
                return Some(Permit {
                    budget: self.clone(),
                    bytes,
                });
            }
            if stop() {
                return None;
            }
            used = match self.freed.wait_timeout(used, Duration::from_millis(50)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    pub fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(self.bytes);
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_blocks_until_bytes_are_returned_and_gives_up_on_stop() {
        let b = Budget::new(100);
        let p1 = b.acquire(60, || false).expect("fits");
        assert!(b.acquire(60, || true).is_none(), "over budget, stopping");
        drop(p1);
        let big = b
            .acquire(500, || false)
            .expect("alone, even a large chunk passes");
        assert_eq!(b.used(), 500);
        drop(big);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_lane_fails_once_and_closing_wins() {
        let lane = Lane::new("t".into(), 0, Some(5));
        assert_eq!(lane.tracker.commit_position(), Some(5));
        lane.fail(FailureKind::Other, "first".into());
        lane.fail(FailureKind::Fenced, "second".into());
        assert_eq!(lane.state(), LaneState::Failed);
        assert_eq!(lane.failure().map(|f| f.reason), Some("first".into()));
        lane.close();
        lane.fail(FailureKind::Other, "after close".into());
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
}
