//! One thread per assigned partition: it polls the partition's own queue, decodes and tokenizes
//! the records into [`Chunk`]s, hands them to the inference threads (waiting, boundedly, for
//! channel room and byte budget: that is the backpressure), commits exactly-once transactions,
//! and rewinds its lane after a failed output (`rewind`). What it keeps per lane (a `Cursor`)
//! is rebuilt on every rewind; what it keeps per partition (the rewind count, the chunk sizes,
//! the decoder) survives them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::SendTimeoutError;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::rewind::{Next, RewindPolicy, Rewinds};
use super::{lock, SourceConsumer, SourceShared};
use crate::batching::ChunkSender;
use crate::kafka::{ErrorKind, Guarantee};
use crate::pipeline::{Body, Chunk, ChunkSizes, FailureKind, Lane, LaneState, Record};
use crate::wire::{DecodeError, JsonDecoder};

pub(super) type Queue = rdkafka::consumer::base_consumer::PartitionQueue<super::Source>;

/// How a partition thread is asked to stop.
pub(super) struct StopSignal {
    pub stop: AtomicBool,
    /// The partition is already someone else's: drop everything, commit nothing.
    pub lost: AtomicBool,
    /// Finish what was consumed by then.
    pub deadline: Mutex<Instant>,
}

impl StopSignal {
    pub fn new() -> StopSignal {
        StopSignal {
            stop: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            deadline: Mutex::new(Instant::now()),
        }
    }

    pub fn is_set(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    fn deadline(&self) -> Instant {
        *lock(&self.deadline)
    }
}

/// What a partition thread reports when it ends.
pub(super) struct Exit {
    /// Consumed records whose outputs were not delivered and committed in time (they will be
    /// processed again, by the next owner or after a restart).
    pub undelivered: usize,
}

/// Why a partition thread stopped early.
enum Stop {
    /// Asked to (revoke, shutdown).
    Asked,
    /// Something that cannot be handled; the worker stops with this reason.
    Fatal(String),
}

/// Where the current lane stands: rebuilt from scratch for every lane.
struct Cursor {
    lane: Arc<Lane>,
    /// Chunks of this lane handed on so far.
    seq: u64,
    /// One past the last offset read in this lane.
    next_offset: Option<i64>,
    /// One past the last offset of the last chunk handed on: what an exactly-once commit may
    /// cover (records read into a chunk that was never handed on — the worker stopped first —
    /// have no output and must be read again).
    sent_next: Option<i64>,
    txn_started: Instant,
}

impl Cursor {
    fn new(lane: Arc<Lane>, position: Option<i64>) -> Cursor {
        Cursor {
            lane,
            seq: 0,
            next_offset: position,
            sent_next: None,
            txn_started: Instant::now(),
        }
    }
}

/// One partition's thread and everything it keeps between records (its queue is passed in
/// separately: records borrow from it while the thread's state changes).
pub(super) struct PartitionThread {
    pub consumer: Arc<SourceConsumer>,
    pub topic: String,
    pub partition: i32,
    /// The current lane, as the rest of the source sees it (revoke, lag, commits).
    pub slot: Arc<Mutex<Arc<Lane>>>,
    pub signal: Arc<StopSignal>,
    pub shared: Arc<SourceShared>,
    pub tx: ChunkSender,
    cursor: Cursor,
    /// simd-json parses in place: one scratch buffer and one decoder per thread, reused.
    scratch: Vec<u8>,
    decoder: JsonDecoder,
    rewinds: Rewinds,
    /// The first offset read since the assignment (where an exactly-once lane goes back to when
    /// the group has no commit for the partition yet).
    origin: Option<i64>,
    /// The sizes of the last chunk handed on: the next one is allocated to hold as much.
    last_sizes: ChunkSizes,
}

impl PartitionThread {
    pub fn new(
        consumer: Arc<SourceConsumer>,
        topic: String,
        partition: i32,
        slot: Arc<Mutex<Arc<Lane>>>,
        signal: Arc<StopSignal>,
        shared: Arc<SourceShared>,
        tx: ChunkSender,
    ) -> PartitionThread {
        let lane = lock(&slot).clone();
        PartitionThread {
            consumer,
            topic,
            partition,
            slot,
            signal,
            shared,
            tx,
            cursor: Cursor::new(lane, None),
            scratch: Vec::with_capacity(1024),
            decoder: JsonDecoder::new(),
            rewinds: Rewinds::default(),
            origin: None,
            last_sizes: ChunkSizes::default(),
        }
    }

    fn guarantee(&self) -> Guarantee {
        self.shared.output.guarantee()
    }

    pub fn run(mut self, queue: &Queue) -> Exit {
        let outcome = self.open_first().and_then(|()| self.consume(queue));
        if let Err(Stop::Fatal(reason)) = outcome {
            self.shared.metrics.partition_failures_total.inc();
            self.shared.shutdown.fail(reason);
        }
        self.finish()
    }

    /// Starts output for the first lane (exactly-once: the partition's transactional producer
    /// is initialised here, off the rebalance callback, so an assignment is not held up and
    /// `/healthz` never waits for it).
    fn open_first(&mut self) -> Result<(), Stop> {
        let lane = self.cursor.lane.clone();
        let deadline = Instant::now() + self.shared.cfg.open_timeout;
        let signal = self.signal.clone();
        self.shared
            .output
            .open(&lane, deadline, &|| signal.is_set())
            .map_err(|e| {
                if self.signal.is_set() {
                    Stop::Asked
                } else {
                    Stop::Fatal(format!(
                        "cannot start output for partition {}: {e}",
                        self.partition
                    ))
                }
            })
    }

    /// Polls, chunks and hands on records until asked to stop.
    fn consume(&mut self, queue: &Queue) -> Result<(), Stop> {
        let cfg = self.shared.cfg.clone();
        let transactional = self.guarantee() == Guarantee::ExactlyOnce;
        let mut chunk: Option<Chunk> = None;
        loop {
            if self.signal.is_set() {
                return Err(Stop::Asked);
            }
            match self.cursor.lane.state() {
                LaneState::Running => {}
                LaneState::Failed => {
                    chunk = None;
                    self.rewind()?;
                    continue;
                }
                LaneState::Closed => return Err(Stop::Asked),
            }
            if transactional && self.cursor.txn_started.elapsed() >= cfg.transaction_interval {
                if let Some(c) = chunk.take() {
                    self.send(c)?;
                }
                let signal = self.signal.clone();
                self.commit_transaction(Instant::now() + cfg.drain_timeout, &|| signal.is_set());
                continue;
            }
            let c = chunk.get_or_insert_with(|| self.new_chunk());
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

    fn new_chunk(&self) -> Chunk {
        let mut sizes = self.last_sizes.with_slack();
        sizes.records = sizes.records.min(self.shared.cfg.chunk_records);
        Chunk::with_capacity(
            self.cursor.lane.clone(),
            self.shared.models.current(),
            self.cursor.seq,
            sizes,
        )
    }

    /// A consume error for this partition. librdkafka either re-fetches the same offset forever
    /// or skips ahead after such errors; either way the partition would silently stop or lose
    /// records. Only an offset reset (the log no longer holds our position: the broker's
    /// retention, not ours, lost those records) is survivable.
    fn consume_error(&mut self, e: KafkaError) -> Result<(), Stop> {
        self.shared.metrics.consume_errors_total.inc();
        let code = e.rdkafka_error_code();
        if matches!(
            code,
            Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!(partition = self.partition, "consumer: {e}");
            return Ok(());
        }
        Err(Stop::Fatal(format!(
            "cannot consume partition {} of {} after offset {:?}: {e}",
            self.partition,
            self.topic,
            self.cursor.next_offset.map(|o| o - 1)
        )))
    }

    /// Decodes and tokenizes one record into the chunk; a record that is not a tweet becomes
    /// an invalid record (a dead letter further down).
    fn add(&mut self, chunk: &mut Chunk, msg: &BorrowedMessage<'_>) {
        let offset = msg.offset();
        if self.cursor.next_offset.is_some_and(|n| offset < n) {
            // Some brokers and client versions occasionally hand a record over twice.
            tracing::debug!(
                partition = self.partition,
                offset,
                "skipping a record seen twice"
            );
            self.shared.metrics.redelivered_total.inc();
            return;
        }
        self.cursor.next_offset = Some(offset + 1);
        self.origin.get_or_insert(offset);
        if chunk.records.is_empty() {
            // A chunk starts with its first record: time and model are those of that moment
            // (an empty chunk may have waited through a reload).
            chunk.consumed_at = Instant::now();
            chunk.model = self.shared.models.current();
        }
        let key = msg.key().map(|k| chunk.store(k));
        let raw = msg.payload();
        let value = raw.map(|v| chunk.store(v));
        let body = self.body(chunk, raw);
        chunk.records.push(Record {
            offset,
            timestamp: msg.timestamp().to_millis(),
            key,
            value,
            body,
        });
    }

    /// A record's payload, decoded and tokenized into `chunk` (or why it cannot be).
    fn body(&mut self, chunk: &mut Chunk, raw: Option<&[u8]>) -> Body {
        let max = self.shared.cfg.max_text_bytes;
        match raw {
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
        }
    }

    /// Tracks a chunk's offsets and hands it to the inference threads, waiting (boundedly,
    /// re-checking stop and the lane) for memory budget and channel room.
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
                    self.cursor.seq += 1;
                    self.cursor.sent_next = Some(last + 1);
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

    /// Sleeps up to `d`, waking early if asked to stop (then `Err`).
    fn pause(&self, d: Duration) -> Result<(), Stop> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.signal.is_set() {
                return Err(Stop::Asked);
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        Ok(())
    }

    /// After a failed output: closes the lane (nothing more of it is produced), and starts a
    /// new one at the last commit (see `rewind`'s module doc), so the partition's output
    /// restarts in order.
    fn rewind(&mut self) -> Result<(), Stop> {
        let failed = self.cursor.lane.clone();
        let failure = failed.failure();
        let reason = failure
            .as_ref()
            .map_or_else(|| "unknown".to_string(), |f| f.reason.clone());
        failed.close();
        self.shared
            .output
            .close(&failed, self.shared.cfg.commit_timeout);
        if failure
            .as_ref()
            .is_some_and(|f| f.kind == FailureKind::Fenced)
        {
            self.wait_out_fencing(&reason)?;
        }
        // At-least-once: back to the first chunk not acknowledged. Exactly-once: back to the
        // group's committed offset, read once the new producer's init_transactions has settled
        // what the failed one left (a commit that timed out may have gone through).
        let known = match self.guarantee() {
            Guarantee::AtLeastOnce => failed.tracker.commit_position(),
            Guarantee::ExactlyOnce => failed.tracker.last_committed(),
        }
        .or(self.origin)
        .ok_or_else(|| {
            Stop::Fatal(format!(
                "partition {}: output failed before anything was consumed: {reason}",
                self.partition
            ))
        })?;
        self.back_off(known, &reason)?;
        let lane = Arc::new(Lane::new(
            self.topic.as_str().into(),
            self.partition,
            Some(known),
        ));
        let signal = self.signal.clone();
        let deadline = Instant::now() + self.shared.cfg.open_timeout;
        if let Err(e) = self
            .shared
            .output
            .open(&lane, deadline, &|| signal.is_set())
        {
            if self.signal.is_set() {
                return Err(Stop::Asked);
            }
            // Counts as another failed attempt at the same position.
            lane.fail(FailureKind::Other, format!("cannot restart output: {e}"));
            self.publish(lane, known);
            return Ok(());
        }
        self.restart_at(lane, known)
    }

    /// Seeks the partition to where the new `lane` starts and makes it current. At-least-once
    /// that is `known`; exactly-once it is the group's committed offset, read now that the new
    /// producer's init_transactions has settled what the failed one left behind.
    fn restart_at(&mut self, lane: Arc<Lane>, known: i64) -> Result<(), Stop> {
        let position = match self.guarantee() {
            Guarantee::AtLeastOnce => known,
            Guarantee::ExactlyOnce => match self.committed_position() {
                Ok(p) => p.or(self.origin).unwrap_or(known),
                Err(e) => {
                    lane.fail(
                        FailureKind::Other,
                        format!("cannot read the committed offset: {e}"),
                    );
                    self.publish(lane, known);
                    return Ok(());
                }
            },
        };
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
        self.publish(lane, position);
        Ok(())
    }

    /// Makes `lane` (starting at `position`) the current one, for this thread and the source.
    fn publish(&mut self, lane: Arc<Lane>, position: i64) {
        *lock(&self.slot) = lane.clone();
        self.cursor = Cursor::new(lane, Some(position));
    }

    /// Applies the rewind policy for a rewind to `position`: waits, or gives up (fatal).
    fn back_off(&mut self, position: i64, reason: &str) -> Result<(), Stop> {
        let policy = RewindPolicy {
            max_rewinds: self.shared.cfg.max_rewinds,
            min_backoff: match self.guarantee() {
                Guarantee::AtLeastOnce => Duration::ZERO,
                Guarantee::ExactlyOnce => self.shared.cfg.rejoin_grace,
            },
        };
        match self.rewinds.next(&policy, position) {
            Next::GiveUp { position, attempts } => Err(Stop::Fatal(format!(
                "partition {} of {} is stuck at offset {position}: its output failed {attempts} times in a row: {reason}",
                self.partition, self.topic
            ))),
            Next::Rewind {
                position,
                attempt,
                backoff,
            } => {
                self.shared.metrics.rewinds_total.inc();
                tracing::warn!(
                    partition = self.partition,
                    position,
                    attempt,
                    "output failed ({reason}); rewinding to the last commit"
                );
                self.pause(backoff)
            }
        }
    }

    /// Another producer took this partition's transactional id. If this instance is the
    /// zombie (it was frozen while the group moved the partition on), its consumer learns that
    /// from the group within a few heartbeats and the partition is revoked as lost meanwhile:
    /// wait for that, and never write it again. If the partition is still assigned here after
    /// that, the group says this instance owns it and the fencer was the zombie (a frozen
    /// instance that woke with a transaction open: its producer bumps its epoch and fences the
    /// owner). Then take the id back by rewinding as after any failure; the rewind count bounds
    /// a fencing ping-pong.
    fn wait_out_fencing(&self, reason: &str) -> Result<(), Stop> {
        tracing::warn!(
            partition = self.partition,
            "fenced by another instance: {reason}"
        );
        self.pause(self.shared.cfg.rejoin_grace * 2)?;
        tracing::warn!(
            partition = self.partition,
            "still assigned here after being fenced: the fencer was a zombie; taking the partition's transactional id back"
        );
        Ok(())
    }

    /// The group's committed offset for this partition (`None`: nothing committed yet),
    /// asked in slices so a stop is noticed.
    fn committed_position(&self) -> Result<Option<i64>, String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        let deadline = Instant::now() + self.shared.cfg.open_timeout;
        loop {
            match self
                .consumer
                .committed_offsets(tpl.clone(), Duration::from_secs(1))
            {
                Ok(c) => {
                    let offset = c
                        .find_partition(&self.topic, self.partition)
                        .map(|e| e.offset());
                    return Ok(match offset {
                        Some(Offset::Offset(o)) => Some(o),
                        _ => None,
                    });
                }
                Err(e) if Instant::now() >= deadline || self.signal.is_set() => {
                    return Err(e.to_string())
                }
                Err(_) => {}
            }
        }
    }

    /// Exactly-once: once every chunk handed on was produced, commits the lane's transaction
    /// with the next input offset. A failure fails the lane (it rewinds). `stop()`: give up
    /// retrying a commit that timed out.
    fn commit_transaction(&mut self, deadline: Instant, stop: &dyn Fn() -> bool) -> bool {
        self.cursor.txn_started = Instant::now();
        let lane = self.cursor.lane.clone();
        let Some(position) = self.cursor.sent_next else {
            return true; // nothing handed on yet
        };
        if lane.tracker.last_committed() == Some(position) {
            return true;
        }
        if !lane.wait_emitted(self.cursor.seq, deadline) {
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
        match self
            .shared
            .output
            .commit(&lane, position, &group, deadline, stop)
        {
            Ok(()) => {
                self.rewinds.progressed();
                lane.tracker.mark_committed(position);
                self.shared.metrics.set_committed(self.partition, position);
                true
            }
            Err(e) => {
                let kind = match e.kind {
                    ErrorKind::Fenced => FailureKind::Fenced,
                    _ => FailureKind::Other,
                };
                lane.fail(kind, format!("transaction commit failed: {e}"));
                false
            }
        }
    }

    /// The end of the thread: finish (bounded) what was consumed, unless the partition is lost.
    fn finish(mut self) -> Exit {
        let lane = self.cursor.lane.clone();
        let deadline = self.signal.deadline();
        if self.signal.is_lost() || !lane.is_running() {
            return Exit {
                undelivered: lane.tracker.in_flight(),
            };
        }
        match self.guarantee() {
            Guarantee::ExactlyOnce => {
                let signal = self.signal.clone();
                if self.commit_transaction(deadline, &|| signal.is_lost()) {
                    Exit { undelivered: 0 }
                } else {
                    tracing::error!(
                        partition = self.partition,
                        "the last transaction did not commit: its records will be processed again (or settled by the next owner's init_transactions)"
                    );
                    Exit {
                        undelivered: lane.tracker.in_flight().max(1),
                    }
                }
            }
            Guarantee::AtLeastOnce => {
                if lane.tracker.wait_drained(deadline) {
                    return Exit { undelivered: 0 };
                }
                let n = lane.tracker.in_flight();
                tracing::warn!(
                    partition = self.partition,
                    in_flight = n,
                    "drain timeout: committing what is delivered; the rest will be re-processed"
                );
                Exit { undelivered: n }
            }
        }
    }
}
