//! The types that flow down the pipeline, and the interfaces the output side offers.
//!
//! ```text
//!  source ──Chunk──► batching ──Batch──► inference ──Scored──► Output (sink) ──► Kafka
//!  (a thread per                                                    │ delivery acks
//!   partition)     every Chunk carries its partition's Lane ◄───────┘
//! ```
//!
//! Each stage depends on these types only, never on another stage; `app::worker` wires them. A
//! record that cannot be scored (bad JSON, too large, …) travels down the same path as an
//! [`Body::Invalid`] record, so that only the sink ever produces and dead letters keep their
//! place in their partition's output order. Here too: a partition's [`lane`]s, its
//! [`offsets`] (what may be committed), and the in-flight byte [`budget`].

pub mod budget;
pub mod lane;
pub mod offsets;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;

use crate::kafka::{Guarantee, OutputError};
use crate::model::live::LiveModel;
use crate::wire::DecodeError;

pub use budget::{Budget, Permit};
pub use lane::{Failure, FailureKind, Lane, LaneState};

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

/// The output side as the other stages see it (implemented by `kafka::sink::Sink`).
pub trait Output: Send + Sync {
    /// Starts output for a lane (exactly-once: its transactional producer is created,
    /// initialised — fencing earlier owners and resolving what they left open — and a
    /// transaction begun). Bounded by `deadline`; gives up once `stop()`.
    fn open(
        &self,
        lane: &Arc<Lane>,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), OutputError>;
    /// Produces a scored chunk's outputs once every earlier chunk of its lane was produced;
    /// chunks of lanes that are no longer running are dropped.
    fn emit(&self, scored: Scored);
    /// Exactly-once: commits the lane's transaction together with `position` (the next input
    /// offset) for `group` — refused for a lane that is not running. At-least-once: nothing to
    /// do (offsets are committed by the consumer). Retries what librdkafka says is retriable
    /// until `deadline` or `stop()`.
    fn commit(
        &self,
        lane: &Lane,
        position: i64,
        group: &ConsumerGroupMetadata,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), OutputError>;
    /// Ends output for a lane; exactly-once aborts its open transaction (bounded by `timeout`).
    fn close(&self, lane: &Lane, timeout: Duration);
    /// Serves acknowledgements that have arrived, without blocking (inference threads call it
    /// after producing a batch).
    fn serve_deliveries(&self);
    /// The delivery guarantee this output gives.
    fn guarantee(&self) -> Guarantee;
}

/// Where inference threads offer each scored batch for shadow scoring (implemented by
/// `shadow::ShadowStage`). Offering never blocks: what the shadow side cannot take is shed.
pub trait Shadow: Send + Sync {
    /// `scores`: one live result per tweet record of `chunks`, in order.
    fn offer(&self, chunks: &[Chunk], scores: &[Result<f32, String>]);
}
