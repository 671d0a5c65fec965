//! The source: one consumer, one dedicated OS thread per assigned partition.
//!
//! On every assignment, each new partition's messages are split off the consumer's main queue
//! (`split_partition_queue`) *before* librdkafka starts fetching them, and a thread is started
//! that polls that queue, decodes and tokenizes the records into [`Chunk`]s and sends them into
//! the one bounded channel feeding the batcher. A full channel, or a spent in-flight memory
//! budget, blocks the thread: that is the backpressure (and librdkafka stops fetching once its
//! own per-partition queue fills).
//!
//! A partition's life is explicit: its current [`Lane`] is *running*; a failed delivery makes it
//! *failed*, and the partition thread **rewinds** — it closes the lane (nothing more of it is
//! produced), seeks back to the last commit and starts a new lane from there, so the output of
//! a partition restarts in order instead of having one record re-sent out of order. A lane that
//! fails again and again without progress stops the worker with a fatal error: never a silent
//! spin. A record that cannot be consumed at all (librdkafka reports an error for it) is never
//! skipped: the partition stops and the worker fails loudly.
//!
//! Rebalances are a blocking rendezvous inside the consumer's rebalance callback, as in
//! Vector's Kafka source: revoked partitions' threads stop, finish what they consumed (bounded
//! by the drain timeout) and commit it, and only then does the rebalance proceed — so the next
//! owner starts exactly where this worker's outputs end. Lost partitions (another member owns
//! them already) are dropped at once, without commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::SendTimeoutError;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use crate::app::shutdown::Shutdown;
use crate::batching::ChunkSender;
use crate::model::live::Models;
use crate::obs::metrics::Metrics;
use crate::pipeline::{
    Body, Budget, Chunk, ChunkSizes, FailureKind, Lane, LaneState, Output, Record,
};
use crate::wire::{DecodeError, JsonDecoder};

/// How the source behaves.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Records whose value is larger than this are dead-lettered without being parsed.
    pub max_text_bytes: usize,
    /// A chunk closes at this many records (the batch size, so a chunk always fits a batch)…
    pub chunk_records: usize,
    /// …or at this many bytes of keys and values.
    pub chunk_bytes: usize,
    /// On revoke or shutdown: how long consumed records may take to be delivered.
    pub drain_timeout: Duration,
    /// Bound on one synchronous offset commit.
    pub commit_timeout: Duration,
    /// Exactly-once: how long one transaction stays open (it spans the batches of that time).
    pub transaction_interval: Duration,
    /// Rewinds of one partition in a row without progress before the worker gives up.
    pub max_rewinds: u32,
    /// Exactly-once: how long a failed partition waits before re-initialising its
    /// transactional producer (two consumer heartbeats). A zombie — an instance that was
    /// frozen while the group moved its partitions on — learns from its next heartbeat that it
    /// lost them; re-initialising first would fence the partition's rightful owner.
    pub rejoin_grace: Duration,
}

/// What every partition thread shares.
pub struct SourceShared {
    /// The live model: each chunk is tokenized by (and later scored with) the one live when
    /// the chunk was started.
    pub models: Arc<Models>,
    pub output: Arc<dyn Output>,
    pub metrics: Arc<Metrics>,
    pub budget: Arc<Budget>,
    pub shutdown: Shutdown,
    pub cfg: SourceConfig,
}

/// How a partition thread is asked to stop.
struct StopSignal {
    stop: AtomicBool,
    /// The partition is already someone else's: drop everything, commit nothing.
    lost: AtomicBool,
    /// Finish what was consumed by then.
    deadline: Mutex<Instant>,
}

impl StopSignal {
    fn is_set(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a partition thread reports when it ends.
struct Exit {
    /// Consumed records whose outputs were not delivered (and committed) in time.
    undelivered: usize,
}

/// One assigned partition: its current lane and its thread.
struct Partition {
    lane: Arc<Mutex<Arc<Lane>>>,
    signal: Arc<StopSignal>,
    exit: crossbeam_channel::Receiver<Exit>,
}

/// The consumer's context: rebalance handling, statistics (lag), errors.
pub struct Source {
    consumer: OnceLock<Weak<BaseConsumer<Source>>>,
    shared: Arc<SourceShared>,
    /// Taken (set to `None`) at shutdown so the channel closes once the threads are gone.
    tx: Mutex<Option<ChunkSender>>,
    partitions: Mutex<HashMap<(String, i32), Partition>>,
}

pub type SourceConsumer = BaseConsumer<Source>;

/// The outcome of stopping partitions.
#[derive(Debug, Default, Clone, Copy)]
pub struct Released {
    pub partitions: usize,
    /// Consumed records that were not delivered or not committed: they will be re-processed.
    pub undelivered: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Source {
    pub fn new(shared: SourceShared, tx: ChunkSender) -> Self {
        Source {
            consumer: OnceLock::new(),
            shared: Arc::new(shared),
            tx: Mutex::new(Some(tx)),
            partitions: Mutex::new(HashMap::new()),
        }
    }

    /// Must be called right after creating the consumer, before subscribing: the rebalance
    /// callback needs the `Arc` to split partition queues.
    pub fn attach(&self, consumer: &Arc<SourceConsumer>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }

    /// The current lane of every partition owned.
    pub fn lanes(&self) -> Vec<Arc<Lane>> {
        lock(&self.partitions)
            .values()
            .map(|p| lock(&p.lane).clone())
            .collect()
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        let Some(tx) = lock(&self.tx).clone() else {
            return; // shutting down
        };
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            if self.consumer.get().is_some() {
                // Attached, but the last `Arc` is gone: the consumer is being closed (its drop
                // leaves the group, and the group may hand out partitions one last time).
                // Nothing may start on them now; the next owner will take them.
                tracing::debug!("assignment while the consumer closes: ignored");
            } else {
                self.shared
                    .shutdown
                    .fail("rebalance before the consumer was attached");
            }
            return;
        };
        let mut partitions = lock(&self.partitions);
        for elem in tpl.elements() {
            let (topic, partition) = (elem.topic().to_owned(), elem.partition());
            if partitions.contains_key(&(topic.clone(), partition)) {
                continue;
            }
            let Some(queue) = consumer.split_partition_queue(&topic, partition) else {
                // A partition assigned but never read would silently stop advancing.
                self.shared.shutdown.fail(format!(
                    "cannot read partition {partition} of {topic} on its own queue"
                ));
                return;
            };
            let lane = Arc::new(Lane::new(topic.as_str().into(), partition, None));
            if let Err(e) = self.shared.output.open(&lane) {
                self.shared.shutdown.fail(format!(
                    "cannot start output for partition {partition}: {e}"
                ));
                return;
            }
            let signal = Arc::new(StopSignal {
                stop: AtomicBool::new(false),
                lost: AtomicBool::new(false),
                deadline: Mutex::new(Instant::now()),
            });
            let current = Arc::new(Mutex::new(lane));
            let (exit_tx, exit_rx) = crossbeam_channel::bounded(1);
            let thread = PartitionThread {
                consumer: consumer.clone(),
                topic: topic.clone(),
                partition,
                lane: current.clone(),
                signal: signal.clone(),
                shared: self.shared.clone(),
                tx: tx.clone(),
                scratch: Vec::with_capacity(1024),
                decoder: JsonDecoder::new(),
                seq: 0,
                next_offset: None,
                sent_next: None,
                last_commit: None,
                lane_first: None,
                rewinds: 0,
                rewound_to: None,
                last_sizes: ChunkSizes::default(),
                txn_started: Instant::now(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("partition-{partition}"))
                .spawn(move || {
                    let exit = thread.run(&queue);
                    let _ = exit_tx.send(exit);
                });
            if let Err(e) = spawned {
                self.shared.shutdown.fail(format!(
                    "cannot start the thread of partition {partition}: {e}"
                ));
                return;
            }
            tracing::info!(topic, partition, "partition assigned");
            partitions.insert(
                (topic, partition),
                Partition {
                    lane: current,
                    signal,
                    exit: exit_rx,
                },
            );
        }
    }

    /// Stops the given partitions (all with `None`): their threads finish what they consumed
    /// (bounded by the drain timeout), their positions are committed and the lanes closed. With
    /// `lost`, nothing is waited for or committed: the partitions already belong to someone else.
    pub fn revoke(
        &self,
        consumer: &SourceConsumer,
        keys: Option<Vec<(String, i32)>>,
        lost: bool,
    ) -> Released {
        let stopping: Vec<((String, i32), Partition)> = {
            let mut partitions = lock(&self.partitions);
            let keys = keys.unwrap_or_else(|| partitions.keys().cloned().collect());
            keys.into_iter()
                .filter_map(|k| partitions.remove(&k).map(|p| (k, p)))
                .collect()
        };
        let mut released = Released {
            partitions: stopping.len(),
            undelivered: 0,
        };
        if stopping.is_empty() {
            return released;
        }
        let cfg = &self.shared.cfg;
        let deadline = Instant::now()
            + if lost {
                Duration::ZERO
            } else {
                cfg.drain_timeout
            };
        for ((topic, partition), p) in &stopping {
            let lane = lock(&p.lane).clone();
            tracing::info!(
                topic,
                partition,
                in_flight = lane.tracker.in_flight(),
                lost,
                "revoking partition"
            );
            *lock(&p.signal.deadline) = deadline;
            p.signal.lost.store(lost, Ordering::Release);
            p.signal.stop.store(true, Ordering::Release);
        }
        // Each thread gives up on its drain at `deadline`; it only needs a moment more to exit.
        let join_by = deadline + Duration::from_secs(2);
        let mut lanes = Vec::new();
        for ((topic, partition), p) in &stopping {
            let lane = lock(&p.lane).clone();
            let undelivered = match p
                .exit
                .recv_timeout(join_by.saturating_duration_since(Instant::now()))
            {
                Ok(exit) => exit.undelivered,
                Err(_) => {
                    tracing::error!(
                        topic,
                        partition,
                        "partition thread did not stop in time; leaving it behind"
                    );
                    lane.tracker.in_flight().max(1)
                }
            };
            released.undelivered += undelivered;
            lanes.push((lane, undelivered == 0));
        }
        if !lost && !self.shared.output.transactional() {
            let all: Vec<_> = lanes.iter().map(|(l, _)| l.clone()).collect();
            commit_sync(consumer, &all, cfg.commit_timeout, &self.shared.metrics);
        }
        for (lane, drained) in &lanes {
            lane.close();
            self.shared.output.close(lane, cfg.commit_timeout);
            tracing::info!(
                partition = lane.partition,
                committed = ?lane.tracker.last_committed(),
                drained,
                lost,
                "partition released"
            );
            self.shared.metrics.remove_partition(lane.partition);
        }
        released
    }

    /// Closes this side of the batcher channel (shutdown: the partition threads are stopped).
    pub fn close_channel(&self) {
        lock(&self.tx).take();
    }

    fn keys(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
        tpl.elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect()
    }
}

/// Commits (asynchronously) the current safe position of every running lane, whether it moved
/// since the last commit or not. At-least-once only: exactly-once lanes commit inside their
/// transactions.
///
/// Re-sending unmoved positions is what makes a failed commit harmless: librdkafka tells nobody
/// how a manual asynchronous commit ended (it raises the commit event for its own
/// auto-commits only and merely logs `COMMITFAIL` for ours), so a commit lost to a rebalance
/// would otherwise leave an idle partition's committed offset behind for good — found in CI,
/// where the group-churn test saw the last positions' commits fail and never sent again.
/// Java's auto-commit re-sends every position each interval for the same reason. The cost is
/// one small OffsetCommit request per interval.
pub fn commit_async(consumer: &SourceConsumer, lanes: &[Arc<Lane>], metrics: &Metrics) {
    let positions: Vec<(&Arc<Lane>, i64)> = lanes
        .iter()
        .filter(|l| l.is_running())
        .filter_map(|l| l.tracker.commit_position().map(|p| (l, p)))
        .collect();
    if let Err(e) = commit(consumer, &positions, CommitMode::Async, metrics) {
        tracing::warn!("commit failed (will retry): {e}");
    }
}

/// Commits every lane's position synchronously, bounded by `timeout` (librdkafka's synchronous
/// commit has no timeout of its own, so it runs on a helper thread that may outlive the wait).
fn commit_sync(
    consumer: &SourceConsumer,
    lanes: &[Arc<Lane>],
    timeout: Duration,
    metrics: &Arc<Metrics>,
) {
    let positions: Vec<(Arc<Lane>, i64)> = lanes
        .iter()
        .filter_map(|l| l.tracker.commit_position().map(|p| (l.clone(), p)))
        .collect();
    if positions.is_empty() {
        return;
    }
    // The consumer is reached through the context's weak handle; fall back to committing inline.
    let Some(strong) = consumer.context().consumer.get().and_then(Weak::upgrade) else {
        let refs: Vec<_> = positions.iter().map(|(l, p)| (l, *p)).collect();
        if let Err(e) = commit(consumer, &refs, CommitMode::Sync, metrics) {
            tracing::warn!("commit failed: {e}");
        }
        return;
    };
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let m = metrics.clone();
    let spawned = std::thread::Builder::new()
        .name("commit".into())
        .spawn(move || {
            let refs: Vec<_> = positions.iter().map(|(l, p)| (l, *p)).collect();
            let _ = done_tx.send(commit(&strong, &refs, CommitMode::Sync, &m));
        });
    if spawned.is_err() {
        tracing::warn!("cannot start the commit thread");
        return;
    }
    match done_rx.recv_timeout(timeout) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("commit failed: {e}"),
        Err(_) => tracing::warn!("commit did not finish within {timeout:?}"),
    }
}

fn commit(
    consumer: &SourceConsumer,
    positions: &[(&Arc<Lane>, i64)],
    mode: CommitMode,
    metrics: &Metrics,
) -> KafkaResult<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (lane, pos) in positions {
        tpl.add_partition_offset(&lane.topic, lane.partition, Offset::Offset(*pos))?;
    }
    consumer.commit(&tpl, mode)?;
    // For an async commit this records what was *sent* (librdkafka does not report how it
    // ended; `commit_async` re-sends every interval); for a sync one, what the broker took.
    for (lane, pos) in positions {
        lane.tracker.mark_committed(*pos);
        metrics.set_committed(lane.partition, *pos);
    }
    Ok(())
}

type Queue = rdkafka::consumer::base_consumer::PartitionQueue<Source>;

/// One partition's thread and everything it keeps between records (its queue is passed in
/// separately: records borrow from it while the thread's state changes).
struct PartitionThread {
    consumer: Arc<SourceConsumer>,
    topic: String,
    partition: i32,
    lane: Arc<Mutex<Arc<Lane>>>,
    signal: Arc<StopSignal>,
    shared: Arc<SourceShared>,
    tx: ChunkSender,
    /// simd-json parses in place: one scratch buffer and one decoder per thread, reused.
    scratch: Vec<u8>,
    decoder: JsonDecoder,
    /// Chunks of the current lane handed on so far.
    seq: u64,
    /// One past the last offset read in the current lane.
    next_offset: Option<i64>,
    /// One past the last offset of the last chunk handed on in the current lane: what an
    /// exactly-once commit may cover (records read into a chunk that was never handed on —
    /// the worker stopped first — have no output and must be read again).
    sent_next: Option<i64>,
    /// Exactly-once: the input position committed with the last transaction.
    last_commit: Option<i64>,
    /// The first offset read in the current lane (where an exactly-once lane rewinds to when
    /// it failed before its first commit).
    lane_first: Option<i64>,
    /// Rewinds in a row to the same position (no progress in between).
    rewinds: u32,
    rewound_to: Option<i64>,
    txn_started: Instant,
    /// The sizes of the last chunk handed on: the next one is allocated to hold as much.
    last_sizes: ChunkSizes,
}

/// Why a partition thread stopped early.
enum Stop {
    /// Asked to (revoke, shutdown).
    Asked,
    /// Something that cannot be handled; the worker stops with this reason.
    Fatal(String),
}

impl PartitionThread {
    fn lane(&self) -> Arc<Lane> {
        lock(&self.lane).clone()
    }

    fn run(mut self, queue: &Queue) -> Exit {
        let stop = match self.consume(queue) {
            Ok(()) | Err(Stop::Asked) => None,
            Err(Stop::Fatal(reason)) => Some(reason),
        };
        if let Some(reason) = stop {
            self.shared.metrics.partition_failures_total.inc();
            self.shared.shutdown.fail(reason);
        }
        self.finish()
    }

    /// Polls, chunks and hands on records until asked to stop.
    fn consume(&mut self, queue: &Queue) -> Result<(), Stop> {
        let cfg = self.shared.cfg.clone();
        let transactional = self.shared.output.transactional();
        let mut chunk: Option<Chunk> = None;
        loop {
            if self.signal.is_set() {
                return Err(Stop::Asked);
            }
            let lane = self.lane();
            match lane.state() {
                LaneState::Running => {}
                LaneState::Failed => {
                    chunk = None;
                    self.rewind(&lane)?;
                    continue;
                }
                LaneState::Closed => return Err(Stop::Asked),
            }
            if transactional && self.txn_started.elapsed() >= cfg.transaction_interval {
                if let Some(c) = chunk.take() {
                    self.send(c)?;
                }
                self.commit_transaction(&lane, Instant::now() + cfg.drain_timeout);
                continue;
            }
            let c = chunk.get_or_insert_with(|| {
                let mut sizes = self.last_sizes.with_slack();
                sizes.records = sizes.records.min(cfg.chunk_records);
                Chunk::with_capacity(lane.clone(), self.shared.models.current(), self.seq, sizes)
            });
            let wait = if c.records.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            match queue.poll(wait) {
                Some(Ok(msg)) => {
                    self.add(c, &msg);
                    if c.records.len() >= cfg.chunk_records || c.bytes.len() >= cfg.chunk_bytes {
                        let full = chunk.take();
                        full.map(|c| self.send(c)).transpose()?;
                    }
                }
                Some(Err(e)) => {
                    if let Some(c) = chunk.take() {
                        self.send(c)?;
                    }
                    self.consume_error(e)?;
                }
                None => {
                    if !c.records.is_empty() {
                        let ready = chunk.take();
                        ready.map(|c| self.send(c)).transpose()?;
                    }
                }
            }
        }
    }

    /// A consume error for this partition. librdkafka either re-fetches the same offset forever
    /// or skips ahead after such errors; either way the partition would silently stop or lose
    /// records. Only an offset reset (the log no longer holds our position: the broker's
    /// retention, not ours, lost those records) is survivable.
    fn consume_error(&mut self, e: KafkaError) -> Result<(), Stop> {
        let code = e.rdkafka_error_code();
        if matches!(
            code,
            Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!(partition = self.partition, "consumer: {e}");
            self.shared.metrics.consume_errors_total.inc();
            return Ok(());
        }
        self.shared.metrics.consume_errors_total.inc();
        Err(Stop::Fatal(format!(
            "cannot consume partition {} of {} after offset {:?}: {e}",
            self.partition,
            self.topic,
            self.next_offset.map(|o| o - 1)
        )))
    }

    /// Decodes and tokenizes one record into the chunk; a record that is not a tweet becomes
    /// an invalid record (a dead letter further down).
    fn add(&mut self, chunk: &mut Chunk, msg: &BorrowedMessage<'_>) {
        let offset = msg.offset();
        if self.next_offset.is_some_and(|n| offset < n) {
            // Some brokers and client versions occasionally hand a record over twice.
            tracing::debug!(
                partition = self.partition,
                offset,
                "skipping a record seen twice"
            );
            self.shared.metrics.redelivered_total.inc();
            return;
        }
        self.next_offset = Some(offset + 1);
        self.lane_first.get_or_insert(offset);
        if chunk.records.is_empty() {
            // A chunk starts with its first record: time and model are those of that moment
            // (an empty chunk may have waited through a reload).
            chunk.consumed_at = Instant::now();
            chunk.model = self.shared.models.current();
        }
        let key = msg.key().map(|k| chunk.store(k));
        let raw = msg.payload();
        let value = raw.map(|v| chunk.store(v));
        let max = self.shared.cfg.max_text_bytes;
        let body = match raw {
            None => Body::Invalid(DecodeError::NoPayload),
            Some(p) if p.len() > max => Body::Invalid(DecodeError::TooLarge {
                size: p.len(),
                limit: max,
            }),
            Some(p) => {
                let start = chunk.ids.len();
                match self.decoder.decode(p, &mut self.scratch) {
                    Ok(text) => {
                        chunk
                            .model
                            .classifier
                            .tokenizer()
                            .encode_append(text, &mut chunk.ids);
                        chunk.tweet_from(start)
                    }
                    Err(e) => Body::Invalid(e),
                }
            }
        };
        chunk.records.push(Record {
            offset,
            timestamp: msg.timestamp().to_millis(),
            key,
            value,
            body,
        });
    }

    /// Tracks a chunk's offsets and hands it to the batcher, waiting (boundedly, re-checking
    /// stop and the lane) for memory budget and channel room.
    fn send(&mut self, mut chunk: Chunk) -> Result<(), Stop> {
        let (Some(first), Some(last)) = (chunk.first_offset(), chunk.last_offset()) else {
            return Ok(());
        };
        let n = chunk.records.len();
        self.last_sizes = chunk.sizes();
        let lane = chunk.lane.clone();
        if !lane.tracker.track(first, last, n) {
            tracing::warn!(
                partition = self.partition,
                first,
                "chunk already tracked; skipped"
            );
            return Ok(());
        }
        let halt = || self.signal.is_set() || !lane.is_running();
        let Some(permit) = self.shared.budget.acquire(chunk.size_bytes(), halt) else {
            // Not handed on: it will be read again (after the rewind or by the next owner).
            lane.tracker.untrack_last(first);
            return Ok(());
        };
        chunk.permit = Some(permit);
        loop {
            match self.tx.send_timeout(chunk, Duration::from_millis(100)) {
                Ok(()) => {
                    self.seq += 1;
                    self.sent_next = Some(last + 1);
                    self.shared.metrics.consumed_total.inc_by(n as u64);
                    return Ok(());
                }
                Err(SendTimeoutError::Timeout(back)) if !halt() => chunk = back,
                Err(SendTimeoutError::Timeout(_)) => {
                    lane.tracker.untrack_last(first);
                    return Ok(());
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    lane.tracker.untrack_last(first);
                    return Err(Stop::Asked);
                }
            }
        }
    }

    /// After a failed delivery: closes the lane (nothing more of it is produced), seeks back to
    /// the last commit and starts a new lane there, so the partition's output restarts in order.
    fn rewind(&mut self, failed: &Arc<Lane>) -> Result<(), Stop> {
        let failure = failed.failure();
        let reason = failure
            .as_ref()
            .map_or_else(|| "unknown".to_string(), |f| f.reason.clone());
        failed.close();
        self.shared
            .output
            .close(failed, self.shared.cfg.commit_timeout);
        if failure
            .as_ref()
            .is_some_and(|f| f.kind == FailureKind::Fenced)
        {
            // Another producer took this partition's transactional id. If this instance is the
            // zombie (it was frozen while the group moved the partition on), its consumer learns
            // that from the group within a few heartbeats and the partition is revoked as lost
            // meanwhile: wait for that, and never write it again. If the partition is still
            // assigned here after that, the group says this instance owns it and the fencer was
            // the zombie (a frozen instance that woke with a transaction open: its producer
            // bumps its epoch and fences the owner). Then take the id back by rewinding as after
            // any failure; the rewind count bounds a fencing ping-pong.
            tracing::warn!(
                partition = self.partition,
                "fenced by another instance: {reason}"
            );
            let until = Instant::now() + self.shared.cfg.rejoin_grace * 2;
            while Instant::now() < until {
                if self.signal.is_set() {
                    return Err(Stop::Asked);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            tracing::warn!(
                partition = self.partition,
                "still assigned here after being fenced: the fencer was a zombie; taking the partition's transactional id back"
            );
        }
        // At-least-once: the first chunk not acknowledged. Exactly-once: the last transaction's
        // commit (acknowledged outputs of an aborted transaction are discarded too).
        let position = if self.shared.output.transactional() {
            self.last_commit.or(self.lane_first)
        } else {
            failed.tracker.commit_position()
        };
        let Some(position) = position else {
            return Err(Stop::Fatal(format!(
                "partition {}: output failed before anything was consumed: {reason}",
                self.partition
            )));
        };
        if self.rewound_to == Some(position) {
            self.rewinds += 1;
        } else {
            (self.rewinds, self.rewound_to) = (1, Some(position));
        }
        self.shared.metrics.rewinds_total.inc();
        let max = self.shared.cfg.max_rewinds;
        if self.rewinds > max {
            return Err(Stop::Fatal(format!(
                "partition {} of {} is stuck at offset {position}: its output failed {} times in a row: {reason}",
                self.partition, self.topic, self.rewinds
            )));
        }
        tracing::warn!(
            partition = self.partition,
            position,
            attempt = self.rewinds,
            "output failed ({reason}); rewinding to the last commit"
        );
        // Back off (0.2, 0.4, 0.8 … 6.4 s) so that a broker that rejects everything is not
        // hammered; with the default 5 rewinds a stuck partition stops the worker in ~6 s plus
        // the deliveries' own timeouts.
        let mut backoff = Duration::from_millis(100 << self.rewinds.min(6));
        if self.shared.output.transactional() {
            backoff = backoff.max(self.shared.cfg.rejoin_grace);
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if self.signal.is_set() {
                return Err(Stop::Asked);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.consumer
            .seek(
                &self.topic,
                self.partition,
                Offset::Offset(position),
                Duration::from_secs(10),
            )
            .map_err(|e| {
                Stop::Fatal(format!(
                    "partition {}: cannot seek back to {position}: {e}",
                    self.partition
                ))
            })?;
        let lane = Arc::new(Lane::new(
            self.topic.as_str().into(),
            self.partition,
            Some(position),
        ));
        self.shared.output.open(&lane).map_err(|e| {
            Stop::Fatal(format!(
                "partition {}: cannot restart output: {e}",
                self.partition
            ))
        })?;
        *lock(&self.lane) = lane;
        (self.seq, self.next_offset, self.lane_first) = (0, Some(position), None);
        self.sent_next = None;
        self.txn_started = Instant::now();
        Ok(())
    }

    /// Exactly-once: once every chunk handed on was produced, commits the lane's transaction
    /// with the next input offset. A failure fails the lane (it rewinds to the last commit).
    fn commit_transaction(&mut self, lane: &Arc<Lane>, deadline: Instant) -> bool {
        self.txn_started = Instant::now();
        let Some(position) = self.sent_next else {
            return true; // nothing handed on yet
        };
        if self.last_commit == Some(position) {
            return true;
        }
        if !lane.wait_emitted(self.seq, deadline) {
            if lane.is_running() {
                lane.fail(
                    FailureKind::Other,
                    "outputs not produced before the transaction deadline".into(),
                );
            }
            return false;
        }
        let Some(group) = self.consumer.group_metadata() else {
            lane.fail(FailureKind::Other, "no consumer group metadata".into());
            return false;
        };
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        match self.shared.output.commit(lane, position, &group, timeout) {
            Ok(()) => {
                self.last_commit = Some(position);
                self.rewinds = 0;
                lane.tracker.mark_committed(position);
                self.shared.metrics.set_committed(self.partition, position);
                true
            }
            Err(e) => {
                let kind = if e.to_ascii_lowercase().contains("fenced") {
                    FailureKind::Fenced
                } else {
                    FailureKind::Other
                };
                lane.fail(kind, format!("transaction commit failed: {e}"));
                false
            }
        }
    }

    /// The end of the thread: finish (bounded) what was consumed, unless the partition is lost.
    fn finish(mut self) -> Exit {
        let lane = self.lane();
        let lost = self.signal.lost.load(Ordering::Acquire);
        let deadline = self.signal.deadline();
        if lost || !lane.is_running() {
            return Exit {
                undelivered: lane.tracker.in_flight(),
            };
        }
        if self.shared.output.transactional() {
            if self.commit_transaction(&lane, deadline) {
                return Exit { undelivered: 0 };
            }
            return Exit {
                undelivered: lane.tracker.in_flight().max(1),
            };
        }
        if !lane.tracker.wait_drained(deadline) {
            let n = lane.tracker.in_flight();
            tracing::warn!(
                partition = self.partition,
                in_flight = n,
                "drain timeout: committing what is delivered; the rest will be re-processed"
            );
            return Exit { undelivered: n };
        }
        Exit { undelivered: 0 }
    }
}

impl ClientContext for Source {
    /// As rdkafka's default context logs, and counts failed offset commits: for the worker's
    /// manual asynchronous commits this log line is the only sign librdkafka gives of a failure
    /// (see [`commit_async`], which re-sends every position each interval).
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "COMMITFAIL" {
            self.shared.metrics.commit_errors_total.inc();
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
        }
    }

    fn stats(&self, stats: Statistics) {
        for topic in stats.topics.values() {
            for (id, p) in &topic.partitions {
                if *id >= 0 && p.consumer_lag >= 0 {
                    self.shared.metrics.set_lag(*id, p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.metrics.client_errors_total.inc();
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::Fatal)) {
            self.shared
                .shutdown
                .fail(format!("consumer fatal error: {error}: {reason}"));
        } else {
            tracing::warn!("kafka consumer: {error}: {reason}");
        }
    }
}

impl ConsumerContext for Source {
    /// Handles assignments ourselves (rather than in `pre_rebalance`) to see the partition
    /// list of an errored rebalance and the result of (un)assigning.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                let keys = if cooperative {
                    Some(Self::keys(tpl))
                } else {
                    None
                };
                let released = self.revoke(consumer, keys, lost);
                self.shared
                    .metrics
                    .undelivered_at_revoke_total
                    .inc_by(released.undelivered as u64);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!("rebalance error: {code}; dropping the partitions concerned");
                self.shared.metrics.client_errors_total.inc();
                let keys = if cooperative {
                    Some(Self::keys(tpl))
                } else {
                    None
                };
                self.revoke(consumer, keys, true);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
        };
        if let Err(e) = result {
            self.shared
                .shutdown
                .fail(format!("cannot apply a rebalance: {e}"));
        }
    }

    /// Only reached for commits librdkafka reports (not the worker's manual asynchronous ones:
    /// see [`commit_async`]); counted and logged.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let failed = offsets
            .elements()
            .iter()
            .filter(|e| result.is_err() || e.error().is_err())
            .count();
        if failed == 0 {
            return;
        }
        self.shared.metrics.commit_errors_total.inc();
        match &result {
            Err(e) => tracing::warn!("offset commit failed (will retry): {e}"),
            Ok(()) => tracing::warn!("offset commit failed for {failed} partitions (will retry)"),
        }
    }
}
