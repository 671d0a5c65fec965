//! The source: one consumer, one dedicated OS thread per assigned partition.
//!
//! On every assignment, each new partition's messages are split off the consumer's main queue
//! (`split_partition_queue`) *before* librdkafka starts fetching them, and a thread is started
//! that polls that queue, decodes and tokenizes each record and sends it into the one bounded
//! channel feeding the batcher. A full channel blocks the thread: that is the backpressure (and
//! librdkafka stops fetching once its own per-partition queue fills).
//!
//! On revocation the rebalance callback is a blocking rendezvous, as in Vector's Kafka source:
//! it stops the revoked partitions' threads, waits (bounded by the drain timeout) for their
//! in-flight records to be acknowledged, commits synchronously, and only then lets the
//! rebalance proceed — so the next owner starts exactly where this worker's outputs end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::commit::PartitionTracker;
use crate::json::{decode_value, DecodeError};
use crate::metrics::Metrics;
use crate::preprocess::Tokenizer;
use crate::sink::Sink;

/// Where an input record came from, and what its output needs: its partition's tracker (to
/// acknowledge the offset), key and timestamp (copied to the output), and the original value
/// (kept so that the record can still be dead-lettered if inference fails).
pub struct Origin {
    pub tracker: Arc<PartitionTracker>,
    pub offset: i64,
    pub key: Option<Arc<[u8]>>,
    pub value: Arc<[u8]>,
    pub timestamp: Option<i64>,
}

/// A decoded, tokenized tweet on its way to the batcher.
pub struct Item {
    pub origin: Origin,
    pub ids: Vec<i32>,
    pub consumed_at: Instant,
}

/// What every partition thread needs.
#[derive(Clone)]
pub struct SourceShared {
    pub tokenizer: Arc<Tokenizer>,
    pub sink: Sink,
    pub metrics: Arc<Metrics>,
    pub max_text_bytes: usize,
}

struct PartitionThread {
    tracker: Arc<PartitionTracker>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// The consumer's context: rebalance handling, statistics (lag), errors.
pub struct SourceContext {
    consumer: OnceLock<Weak<BaseConsumer<SourceContext>>>,
    shared: SourceShared,
    /// Taken (set to `None`) at shutdown so the channel closes once the threads are gone.
    tx: Mutex<Option<Sender<Item>>>,
    threads: Mutex<HashMap<(String, i32), PartitionThread>>,
    drain_timeout: Duration,
}

pub type SourceConsumer = BaseConsumer<SourceContext>;

impl SourceContext {
    pub fn new(shared: SourceShared, tx: Sender<Item>, drain_timeout: Duration) -> Self {
        SourceContext {
            consumer: OnceLock::new(),
            shared,
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(HashMap::new()),
            drain_timeout,
        }
    }

    /// Must be called right after creating the consumer, before subscribing: the rebalance
    /// callback needs the `Arc` to split partition queues.
    pub fn attach(&self, consumer: &Arc<SourceConsumer>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }

    fn threads(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), PartitionThread>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Trackers of every partition currently owned.
    pub fn trackers(&self) -> Vec<Arc<PartitionTracker>> {
        self.threads().values().map(|t| t.tracker.clone()).collect()
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            tracing::error!("rebalance before the consumer was attached; partitions not started");
            return;
        };
        let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return; // shutting down
        };
        let mut threads = self.threads();
        for elem in tpl.elements() {
            let (topic, partition) = (elem.topic().to_owned(), elem.partition());
            if threads.contains_key(&(topic.clone(), partition)) {
                continue;
            }
            let Some(queue) = consumer.split_partition_queue(&topic, partition) else {
                tracing::error!(topic, partition, "cannot split partition queue");
                continue;
            };
            let tracker = Arc::new(PartitionTracker::new(&topic, partition));
            let stop = Arc::new(AtomicBool::new(false));
            let (t, s, shared, tx) = (
                tracker.clone(),
                stop.clone(),
                self.shared.clone(),
                tx.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("partition-{partition}"))
                .spawn(move || {
                    // simd-json parses in place: one scratch buffer per thread, reused.
                    let mut scratch = Vec::with_capacity(1024);
                    while !s.load(Ordering::Relaxed) {
                        let stopped = match queue.poll(Duration::from_millis(100)) {
                            Some(Ok(msg)) => {
                                handle_message(&shared, &t, &tx, &msg, &s, &mut scratch).is_err()
                            }
                            Some(Err(e)) => {
                                tracing::warn!(partition = t.partition, "consume error: {e}");
                                false
                            }
                            None => false,
                        };
                        if stopped {
                            break;
                        }
                    }
                });
            match handle {
                Ok(h) => {
                    tracing::info!(topic, partition, "partition assigned");
                    threads.insert(
                        (topic, partition),
                        PartitionThread {
                            tracker,
                            stop,
                            handle: Some(h),
                        },
                    );
                }
                Err(e) => tracing::error!(partition, "cannot start partition thread: {e}"),
            }
        }
    }

    /// Stops the given partitions' threads, drains their in-flight records and commits them.
    /// With `tpl == None`, all partitions (shutdown).
    pub fn revoke(&self, consumer: &SourceConsumer, tpl: Option<&TopicPartitionList>) {
        let mut stopping: Vec<PartitionThread> = {
            let mut threads = self.threads();
            let keys: Vec<(String, i32)> = match tpl {
                Some(tpl) => tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect(),
                None => threads.keys().cloned().collect(),
            };
            keys.iter().filter_map(|k| threads.remove(k)).collect()
        };
        if stopping.is_empty() {
            return;
        }
        for t in &stopping {
            t.stop.store(true, Ordering::Relaxed);
        }
        for t in &mut stopping {
            if let Some(h) = t.handle.take() {
                let _ = h.join();
            }
        }
        let deadline = Instant::now() + self.drain_timeout;
        for t in &stopping {
            if !t.tracker.wait_drained(deadline) {
                tracing::warn!(
                    partition = t.tracker.partition,
                    in_flight = t.tracker.in_flight(),
                    "drain timeout: committing what is delivered; the rest will be reprocessed"
                );
            }
        }
        let trackers: Vec<_> = stopping.iter().map(|t| t.tracker.clone()).collect();
        commit(consumer, &trackers, CommitMode::Sync, &self.shared.metrics);
        for t in &trackers {
            tracing::info!(partition = t.partition, committed = ?t.last_committed(), "partition released");
            self.shared.metrics.remove_partition(t.partition);
        }
    }

    /// Closes this side of the batcher channel (shutdown: the partition threads are stopped).
    pub fn close_channel(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// A record that arrived on the main queue (possible only in the instant before a queue
    /// split takes effect): processed inline, in order, like its partition thread would.
    pub fn handle_main_queue_message(&self, msg: &BorrowedMessage<'_>) {
        let key = (msg.topic().to_owned(), msg.partition());
        let tracker = self.threads().get(&key).map(|t| t.tracker.clone());
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match (tracker, tx) {
            (Some(t), Some(tx)) => {
                let no_stop = AtomicBool::new(false);
                let _ = handle_message(&self.shared, &t, &tx, msg, &no_stop, &mut Vec::new());
            }
            // Not ours (or shutting down): not tracked, so never committed; it will be re-read.
            _ => tracing::warn!(
                partition = msg.partition(),
                offset = msg.offset(),
                "ignoring unowned message"
            ),
        }
    }
}

/// Commits the current safe position of each tracker that moved since its last commit.
pub fn commit(
    consumer: &SourceConsumer,
    trackers: &[Arc<PartitionTracker>],
    mode: CommitMode,
    metrics: &Metrics,
) {
    let mut tpl = TopicPartitionList::new();
    let mut positions = Vec::new();
    for t in trackers {
        metrics.update_partition(t.partition, |g| g.in_flight = t.in_flight() as u64);
        // A sync commit (revoke, shutdown) always sends the position: an earlier async commit of
        // it may have failed after we recorded it.
        let pos = match mode {
            CommitMode::Sync => t.commit_position(),
            CommitMode::Async => t.uncommitted_position(),
        };
        if let Some(pos) = pos {
            if tpl
                .add_partition_offset(&t.topic, t.partition, Offset::Offset(pos))
                .is_ok()
            {
                positions.push((t, pos));
            }
        }
    }
    if positions.is_empty() {
        return;
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            // Async commits are reported in `commit_callback`; recording the position here
            // only skips re-sending it. A failed async commit is retried at the next position.
            for (t, pos) in positions {
                t.mark_committed(pos);
                metrics.update_partition(t.partition, |g| g.committed = Some(pos));
            }
        }
        Err(e) => tracing::warn!("commit failed (will retry): {e}"),
    }
}

/// Decodes and tokenizes one record and hands it on; bad records become dead letters.
/// Returns `Err(())` if the worker is stopping (the record was not taken and will be re-read).
fn handle_message(
    shared: &SourceShared,
    tracker: &Arc<PartitionTracker>,
    tx: &Sender<Item>,
    msg: &BorrowedMessage<'_>,
    stop: &AtomicBool,
    scratch: &mut Vec<u8>,
) -> Result<(), ()> {
    let offset = msg.offset();
    if !tracker.track(offset) {
        tracing::debug!(
            partition = tracker.partition,
            offset,
            "skipping a record delivered twice"
        );
        shared.metrics.redelivered.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    shared.metrics.consumed.fetch_add(1, Ordering::Relaxed);
    let raw = msg.payload();
    let origin = Origin {
        tracker: tracker.clone(),
        offset,
        key: msg.key().map(Arc::from),
        value: Arc::from(raw.unwrap_or_default()),
        timestamp: msg.timestamp().to_millis(),
    };
    let decoded = match raw {
        None => Err(DecodeError::NoPayload),
        Some(p) if p.len() > shared.max_text_bytes => Err(DecodeError::TooLarge {
            size: p.len(),
            limit: shared.max_text_bytes,
        }),
        Some(p) => {
            scratch.clear();
            scratch.extend_from_slice(p);
            decode_value(scratch).map(|text| shared.tokenizer.encode(&text))
        }
    };
    let ids = match decoded {
        Ok(ids) => ids,
        Err(e) => {
            shared.sink.dead_letter(origin, e.code(), &e.to_string());
            return Ok(());
        }
    };
    let mut item = Item {
        origin,
        ids,
        consumed_at: Instant::now(),
    };
    loop {
        match tx.send_timeout(item, Duration::from_millis(100)) {
            Ok(()) => return Ok(()),
            Err(SendTimeoutError::Timeout(back)) if !stop.load(Ordering::Relaxed) => item = back,
            Err(_) => {
                tracker.untrack_last(offset);
                return Err(());
            }
        }
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        for topic in stats.topics.values() {
            for (id, p) in &topic.partitions {
                if *id >= 0 && p.consumer_lag >= 0 {
                    self.shared
                        .metrics
                        .update_partition(*id, |g| g.lag = Some(p.consumer_lag));
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!("kafka client error: {error}: {reason}");
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.assign(tpl),
            Rebalance::Revoke(tpl) => self.revoke(consumer, Some(tpl)),
            Rebalance::Error(e) => tracing::error!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!("offset commit failed: {e} ({} partitions)", offsets.count());
        }
    }
}
