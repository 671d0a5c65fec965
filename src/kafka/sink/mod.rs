//! The sink: the one place that produces to Kafka. Predictions and dead letters leave here, in
//! each input partition's order, and their acknowledgements feed commit tracking.
//!
//! **Per-partition lanes.** Every input partition's outputs go to the same partition number of
//! the output topic (when it has enough partitions), in input order: a lane's chunks are
//! produced strictly in sequence, whichever inference thread finished them (a finished chunk
//! whose predecessor is still being scored waits, parked, and the thread that produces the
//! predecessor produces it too). No single thread produces every record.
//!
//! **Producers.** At-least-once: one idempotent producer serves every lane — librdkafka already
//! keeps a queue, batches and an idempotence sequence per partition, so more producers would
//! only multiply connections. Exactly-once: each lane gets its own transactional producer
//! (`transactional.id` = prefix + input topic + partition), so whichever instance owns a
//! partition fences every earlier owner of *that* partition, and a failure aborts only that
//! partition's transaction.
//!
//! **Acknowledgements.** Each produced record carries its chunk's [`ChunkDelivery`] (a shared
//! counter, not an allocation per record). When the last output of a chunk is acknowledged,
//! the chunk's offsets become committable. A failed delivery fails the lane: nothing more of
//! it is produced and its partition thread rewinds to the last commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::app::shutdown::Shutdown;
use crate::error::Result;
use crate::obs::metrics::{Metrics, Stage};
use crate::pipeline::{Body, FailureKind, Lane, Output, Scored};
use crate::wire::encode_score;

/// Which delivery guarantee the worker gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Guarantee {
    /// Every input gets its output at least once (duplicates possible after a crash or a
    /// rebalance); offsets are committed once outputs are acknowledged.
    AtLeastOnce,
    /// Outputs and input offsets commit in one transaction per partition: a read_committed
    /// reader sees each input's output exactly once.
    ExactlyOnce,
}

/// Where outputs go and how they are stamped.
#[derive(Clone)]
pub struct SinkConfig {
    pub output_topic: String,
    pub dlq_topic: String,
    pub source_topic: String,
    /// True: prediction for input partition p goes to output partition p. False: by key hash.
    pub same_partition: bool,
    pub guarantee: Guarantee,
    /// The producer's librdkafka configuration (bootstrap servers, security, user properties).
    pub client: ClientConfig,
    /// Exactly-once: `transactional.id` = `<prefix>-<input topic>-<partition>`.
    pub transactional_id_prefix: String,
    /// Dead-letter values longer than this are cut to it (the dead-letter topic's size limit
    /// minus room for key and headers).
    pub dlq_max_value_bytes: usize,
    /// Bound on transactional calls (init, commit, abort).
    pub transaction_timeout: Duration,
}

/// A producer whose delivery reports the sink serves itself (see [`Sink::serve_deliveries`]),
/// rather than a `ThreadedProducer`, whose thread wakes up for each report.
type LaneProducer = BaseProducer<SinkContext>;

/// One lane as the sink sees it: its producer and the order in which its chunks go out.
struct SinkLane {
    lane: Arc<Lane>,
    producer: Arc<LaneProducer>,
    order: Mutex<Order>,
}

#[derive(Default)]
struct Order {
    /// The next chunk (by `seq`) to produce.
    next: u64,
    /// Scored chunks waiting for an earlier one of the same lane.
    parked: BTreeMap<u64, Scored>,
}

/// The producing side of the worker.
pub struct Sink {
    cfg: Arc<SinkConfig>,
    /// At-least-once: the one producer every lane shares.
    shared: Option<Arc<LaneProducer>>,
    lanes: RwLock<HashMap<u64, Arc<SinkLane>>>,
    metrics: Arc<Metrics>,
    dlq_cap: Arc<AtomicUsize>,
    shutdown: Shutdown,
    /// Outputs handed to librdkafka whose delivery reports were not served yet.
    outstanding: Arc<AtomicU64>,
    /// The thread that serves delivery reports when no batch does: woken when outputs are
    /// handed over after a time with none outstanding (it sleeps longer then).
    poller: std::sync::OnceLock<std::thread::Thread>,
}

/// A produced chunk's acknowledgement state, shared by its records' delivery reports.
pub struct ChunkDelivery {
    lane: Arc<Lane>,
    first: i64,
    outstanding: AtomicUsize,
    failed: AtomicBool,
    produced_at: Instant,
    predictions: u64,
    dead_letters: u64,
    timestamps: Vec<i64>,
}

/// Producer callbacks: delivery acknowledgements and client errors.
pub struct SinkContext {
    metrics: Arc<Metrics>,
    dlq_topic: String,
    dlq_cap: Arc<AtomicUsize>,
    shutdown: Shutdown,
    /// Exactly-once: the lane this producer belongs to (its fatal errors end only that lane).
    lane: Option<Arc<Lane>>,
    /// Events served (delivery reports and errors): serving stops when a poll served none.
    served: AtomicU64,
    /// Outputs handed to librdkafka whose reports were not served yet, over all producers.
    outstanding: Arc<AtomicU64>,
}

/// How often the background thread serves delivery reports when no batch does, while outputs
/// are outstanding: how late an acknowledgement may be noticed at worst (commits, drains and
/// the stall check wait for it).
pub const DELIVERY_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How often it looks when nothing is outstanding (an idle worker: 10 wake-ups a second). The
/// thread that hands the first outputs over after such a pause wakes it.
pub const DELIVERY_IDLE_INTERVAL: Duration = Duration::from_millis(100);

/// Events served per producer per call, so one call never runs long.
const SERVE_LIMIT: u64 = 1024;

/// The smallest a dead-letter value is cut to after the broker rejected one as too large.
const DLQ_MIN_VALUE_BYTES: usize = 1024;

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.metrics.client_errors_total.inc();
        // A transactional producer's fencing arrives as a fatal error, or as the fencing code
        // itself (librdkafka raises `_FENCED` directly when a transaction call is refused).
        let fenced = error.rdkafka_error_code().is_some_and(is_fenced);
        let fatal = fenced || matches!(error, KafkaError::Global(RDKafkaErrorCode::Fatal));
        match (&self.lane, fatal) {
            (Some(lane), true) => {
                let kind = if fenced || reason.to_ascii_lowercase().contains("fenced") {
                    FailureKind::Fenced
                } else {
                    FailureKind::Other
                };
                lane.fail(kind, format!("producer fatal error: {reason}"));
            }
            (None, true) => self
                .shutdown
                .fail(format!("producer fatal error: {error}: {reason}")),
            _ => tracing::warn!("kafka producer: {error}: {reason}"),
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Arc<ChunkDelivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, d: Arc<ChunkDelivery>) {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        if let Err((e, msg)) = result {
            self.failed(&d, e, msg.topic(), msg.payload_len());
        }
        self.done(&d, 1);
    }
}

impl SinkContext {
    /// An output of chunk `d` was not accepted: fail its lane (which rewinds).
    fn failed(&self, d: &ChunkDelivery, e: &KafkaError, topic: &str, size: usize) {
        self.metrics.delivery_errors_total.inc();
        d.failed.store(true, Ordering::Release);
        let too_large = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageSizeTooLarge)
        );
        let kind = if too_large && topic == self.dlq_topic {
            // Shrink dead letters so the rewound attempt fits.
            self.dlq_cap
                .fetch_min(DLQ_MIN_VALUE_BYTES, Ordering::AcqRel);
            FailureKind::DeadLetterTooLarge { size }
        } else if e.rdkafka_error_code().is_some_and(is_fenced) {
            FailureKind::Fenced
        } else {
            FailureKind::Other
        };
        if d.lane.is_running() {
            tracing::warn!(
                partition = d.lane.partition,
                chunk_first_offset = d.first,
                topic,
                "output not accepted: {e}"
            );
        }
        d.lane
            .fail(kind, format!("output to {topic} not accepted: {e}"));
    }

    /// `n` outputs of chunk `d` are settled; after the last one the chunk is acknowledged
    /// (or, if any failed, left for the rewind to re-process).
    fn done(&self, d: &ChunkDelivery, n: usize) {
        if d.outstanding.fetch_sub(n, Ordering::AcqRel) != n {
            return;
        }
        if d.failed.load(Ordering::Acquire) {
            return;
        }
        d.lane.tracker.ack(d.first);
        self.metrics.predicted_total.inc_by(d.predictions);
        self.metrics.dead_lettered_total.inc_by(d.dead_letters);
        // Until the acknowledgement was *served*: reports wait for the next batch or the
        // deliveries thread (see `serve_deliveries`), and librdkafka keeps no time of arrival
        // (its rd_kafka_message_latency() is measured when it is called).
        self.metrics
            .record(Stage::ProduceAck, d.produced_at.elapsed());
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
        self.metrics
            .record_end_to_end(d.timestamps.iter().copied(), now_ms);
    }

    /// Serves this producer's queued events (delivery reports, errors) without waiting; at most
    /// `limit`. Returns how many were served.
    fn serve(&self, producer: &LaneProducer, limit: u64) -> u64 {
        let start = self.served.load(Ordering::Relaxed);
        for _ in 0..limit {
            let before = self.served.load(Ordering::Relaxed);
            producer.poll(Duration::ZERO);
            if self.served.load(Ordering::Relaxed) == before {
                break;
            }
        }
        self.served.load(Ordering::Relaxed) - start
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sink {
    /// Creates the sink (and, at-least-once, its one producer).
    pub fn new(cfg: SinkConfig, metrics: Arc<Metrics>, shutdown: Shutdown) -> Result<Sink> {
        let dlq_cap = Arc::new(AtomicUsize::new(cfg.dlq_max_value_bytes));
        let mut sink = Sink {
            cfg: Arc::new(cfg),
            shared: None,
            lanes: RwLock::new(HashMap::new()),
            metrics,
            dlq_cap,
            shutdown,
            outstanding: Arc::new(AtomicU64::new(0)),
            poller: std::sync::OnceLock::new(),
        };
        if sink.cfg.guarantee == Guarantee::AtLeastOnce {
            sink.shared = Some(Arc::new(sink.producer(&sink.cfg.client, None)?));
        }
        Ok(sink)
    }

    fn producer(&self, client: &ClientConfig, lane: Option<Arc<Lane>>) -> Result<LaneProducer> {
        Ok(client.create_with_context(SinkContext {
            metrics: self.metrics.clone(),
            dlq_topic: self.cfg.dlq_topic.clone(),
            dlq_cap: self.dlq_cap.clone(),
            shutdown: self.shutdown.clone(),
            lane,
            served: AtomicU64::new(0),
            outstanding: self.outstanding.clone(),
        })?)
    }

    /// The `transactional.id` of an input partition's producer.
    pub fn transactional_id(&self, topic: &str, partition: i32) -> String {
        format!("{}-{topic}-{partition}", self.cfg.transactional_id_prefix)
    }

    fn lane(&self, id: u64) -> Option<Arc<SinkLane>> {
        self.lanes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Serves the delivery reports (and errors) waiting on every producer, without blocking.
    /// Nobody waits on a producer's report queue: a thread blocked there would be woken for
    /// every produce response — three wake-ups per batch with three output partitions, a sixth
    /// of the worker's CPU at 1,000 tweets/s. Instead the inference threads serve reports after
    /// each batch they produce (those of earlier batches have arrived by then), and a
    /// background thread every [`DELIVERY_POLL_INTERVAL`] when no batch comes.
    pub fn serve_deliveries(&self) {
        match &self.shared {
            Some(p) => {
                p.context().serve(p, SERVE_LIMIT);
            }
            None => {
                let lanes: Vec<Arc<SinkLane>> = self
                    .lanes
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect();
                for sl in lanes {
                    sl.producer.context().serve(&sl.producer, SERVE_LIMIT);
                }
            }
        }
    }

    /// Serves delivery reports until `stop`: every [`DELIVERY_POLL_INTERVAL`] while outputs are
    /// outstanding, every [`DELIVERY_IDLE_INTERVAL`] otherwise (woken early when outputs are
    /// handed over again). Runs on its own thread (`worker::run` starts it).
    pub fn serve_deliveries_until(&self, stop: &AtomicBool) {
        let _ = self.poller.set(std::thread::current());
        while !stop.load(Ordering::Acquire) {
            self.serve_deliveries();
            let idle = self.outstanding.load(Ordering::Relaxed) == 0;
            std::thread::park_timeout(if idle {
                DELIVERY_IDLE_INTERVAL
            } else {
                DELIVERY_POLL_INTERVAL
            });
        }
    }

    /// Waits up to `timeout` for every queued record to be delivered (or to fail).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        if let Some(p) = &self.shared {
            p.flush(timeout)?;
        }
        Ok(())
    }

    /// The headers every output carries: the version of the model that scored it (of the
    /// chunk's model: a reload never relabels work in flight) and where its input came from.
    fn headers(&self, version: &str, partition: i32, offset: i64) -> OwnedHeaders {
        let mut p = itoa::Buffer::new();
        let mut o = itoa::Buffer::new();
        OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: "model-version",
                value: Some(version.as_bytes()),
            })
            .insert(Header {
                key: "source-topic",
                value: Some(self.cfg.source_topic.as_bytes()),
            })
            .insert(Header {
                key: "source-partition",
                value: Some(p.format(partition).as_bytes()),
            })
            .insert(Header {
                key: "source-offset",
                value: Some(o.format(offset).as_bytes()),
            })
    }

    /// Produces one scored chunk's outputs, in record order. Returns without producing if the
    /// lane stopped running (its records will be re-processed from the last commit).
    fn produce_chunk(&self, sl: &SinkLane, scored: Scored) {
        let Scored { chunk, scores } = scored;
        let lane = &chunk.lane;
        let Some(first) = chunk.first_offset() else {
            return;
        };
        if !lane.is_running() {
            return;
        }
        // What each record becomes: a score, or a dead letter with its reason.
        let mut scores = scores.into_iter();
        let outcomes: Vec<std::result::Result<f32, (&str, String)>> = chunk
            .records
            .iter()
            .map(|r| match &r.body {
                Body::Tweet { .. } => match scores.next() {
                    Some(Ok(s)) => Ok(s),
                    Some(Err(reason)) => Err(("inference_failed", reason)),
                    None => Err(("inference_failed", "no score was produced".to_string())),
                },
                Body::Invalid(e) => Err((e.code(), e.to_string())),
            })
            .collect();
        let n = outcomes.len();
        let predictions = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
        let delivery = Arc::new(ChunkDelivery {
            lane: lane.clone(),
            first,
            outstanding: AtomicUsize::new(n),
            failed: AtomicBool::new(false),
            produced_at: Instant::now(),
            predictions,
            dead_letters: n as u64 - predictions,
            timestamps: chunk.records.iter().filter_map(|r| r.timestamp).collect(),
        });
        let ctx = sl.producer.context();
        for (i, (r, outcome)) in chunk.records.iter().zip(outcomes).enumerate() {
            let key = chunk.key(r);
            let headers = self.headers(&chunk.model.version, lane.partition, r.offset);
            let mut payload = [0u8; 128];
            let sent = match &outcome {
                Ok(score) => {
                    let len = encode_score(*score, &mut payload);
                    self.send(
                        sl,
                        &self.cfg.output_topic,
                        self.cfg.same_partition.then_some(lane.partition),
                        key,
                        Some(&payload[..len]),
                        r.timestamp,
                        headers,
                        &delivery,
                    )
                }
                Err((code, reason)) => {
                    let value = chunk.value(r);
                    let cap = self.dlq_cap.load(Ordering::Acquire);
                    let mut headers = headers
                        .insert(Header {
                            key: "dlq-reason",
                            value: Some(code.as_bytes()),
                        })
                        .insert(Header {
                            key: "dlq-error",
                            value: Some(reason.as_bytes()),
                        });
                    let value = match value {
                        Some(v) if v.len() > cap => {
                            self.metrics.dead_letters_truncated_total.inc();
                            let mut size = itoa::Buffer::new();
                            headers = headers.insert(Header {
                                key: "dlq-original-size",
                                value: Some(size.format(v.len()).as_bytes()),
                            });
                            Some(&v[..cap])
                        }
                        v => v,
                    };
                    tracing::debug!(
                        partition = lane.partition,
                        offset = r.offset,
                        code,
                        "dead letter: {reason}"
                    );
                    self.send(
                        sl,
                        &self.cfg.dlq_topic,
                        None,
                        key,
                        value,
                        r.timestamp,
                        headers,
                        &delivery,
                    )
                }
            };
            if let Err((e, topic)) = sent {
                // Not handed to librdkafka: this record and the rest of the chunk never will
                // be. Fail the lane and settle the unsent outputs at once.
                ctx.failed(&delivery, &e, topic, 0);
                ctx.done(&delivery, n - i);
                return;
            }
        }
    }

    /// Hands one record to the lane's producer, waiting (boundedly, while the lane runs and
    /// no forced stop happens) while librdkafka's queue is full. Any other error is returned:
    /// errors on delivery are librdkafka's to retry (the producer is idempotent), so an error
    /// here is permanent for this record (too large for `message.max.bytes`, unknown topic, …).
    #[allow(clippy::too_many_arguments)]
    fn send<'t>(
        &self,
        sl: &SinkLane,
        topic: &'t str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        timestamp: Option<i64>,
        headers: OwnedHeaders,
        delivery: &Arc<ChunkDelivery>,
    ) -> std::result::Result<(), (KafkaError, &'t str)> {
        let mut rec = BaseRecord {
            topic,
            partition,
            payload,
            key,
            timestamp,
            headers: Some(headers),
            delivery_opaque: delivery.clone(),
        };
        loop {
            match sl.producer.send(rec) {
                Ok(()) => {
                    if self.outstanding.fetch_add(1, Ordering::Relaxed) == 0 {
                        if let Some(t) = self.poller.get() {
                            t.unpark();
                        }
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if !sl.lane.is_running() {
                        return Err((
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                            topic,
                        ));
                    }
                    rec = back;
                    // Deliveries (or, at worst, message.timeout.ms expiries) make room: serve
                    // them while waiting. The wait is bounded by librdkafka.
                    sl.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err((e, topic)),
            }
        }
    }

    fn begin(&self, producer: &LaneProducer, lane: &Lane) -> Result<(), String> {
        producer
            .begin_transaction()
            .map_err(|e| format!("partition {}: begin transaction: {e}", lane.partition))
    }
}

impl Output for Sink {
    fn open(&self, lane: &Arc<Lane>) -> std::result::Result<(), String> {
        let producer = match &self.shared {
            Some(p) => p.clone(),
            None => {
                let mut client = self.cfg.client.clone();
                let id = self.transactional_id(&lane.topic, lane.partition);
                client.set("transactional.id", &id);
                let p = self
                    .producer(&client, Some(lane.clone()))
                    .map_err(|e| e.to_string())?;
                // Fences every earlier producer with this id (an earlier owner of the partition,
                // or this instance's own previous lane) and aborts what it left open.
                p.init_transactions(self.cfg.transaction_timeout)
                    .map_err(|e| format!("init transactions for {id}: {e}"))?;
                self.begin(&p, lane)?;
                Arc::new(p)
            }
        };
        let sl = Arc::new(SinkLane {
            lane: lane.clone(),
            producer,
            order: Mutex::new(Order::default()),
        });
        self.lanes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(lane.id, sl);
        Ok(())
    }

    fn emit(&self, scored: Scored) {
        let Some(sl) = self.lane(scored.chunk.lane.id) else {
            return; // the lane was closed: its records will be re-processed
        };
        let mut order = lock(&sl.order);
        let seq = scored.chunk.seq;
        if seq != order.next {
            if seq > order.next {
                order.parked.insert(seq, scored);
            }
            return;
        }
        let mut next = Some(scored);
        while let Some(s) = next {
            let seq = s.chunk.seq;
            self.produce_chunk(&sl, s);
            sl.lane.mark_emitted(seq);
            order.next = seq + 1;
            let n = order.next;
            next = order.parked.remove(&n);
        }
    }

    fn commit(
        &self,
        lane: &Lane,
        position: i64,
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let Some(sl) = self.lane(lane.id) else {
            return Err("lane closed".into());
        };
        if self.shared.is_some() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&lane.topic, lane.partition, Offset::Offset(position))
            .map_err(|e| e.to_string())?;
        let describe = |what: &str, e: KafkaError| {
            // After a fatal error the producer answers every call with a state error; the
            // fatal error itself says whether this instance was fenced.
            let fatal = sl.producer.client().fatal_error().map(|(code, _)| code);
            let fenced =
                e.rdkafka_error_code().is_some_and(is_fenced) || fatal.is_some_and(is_fenced);
            format!(
                "partition {}: {what}: {e}{}",
                lane.partition,
                if fenced { " (fenced)" } else { "" }
            )
        };
        sl.producer
            .send_offsets_to_transaction(&offsets, group, timeout)
            .map_err(|e| describe("send offsets to transaction", e))?;
        sl.producer
            .commit_transaction(timeout)
            .map_err(|e| describe("commit transaction", e))?;
        self.metrics.transactions_committed_total.inc();
        self.begin(&sl.producer, lane)
    }

    fn close(&self, lane: &Lane, timeout: Duration) {
        let removed = self
            .lanes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&lane.id);
        let Some(sl) = removed else { return };
        lock(&sl.order).parked.clear();
        if self.shared.is_none() {
            // Exactly-once: whatever this lane's open transaction holds is discarded.
            match sl.producer.abort_transaction(timeout) {
                Ok(()) => {
                    self.metrics.transactions_aborted_total.inc();
                }
                Err(e) => tracing::debug!(partition = lane.partition, "abort transaction: {e}"),
            }
        }
    }

    fn transactional(&self) -> bool {
        self.shared.is_none()
    }

    fn serve_deliveries(&self) {
        Sink::serve_deliveries(self);
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("guarantee", &self.cfg.guarantee)
            .finish_non_exhaustive()
    }
}

/// The shadow model's outputs: best effort, outside commit tracking and transactions (a
/// candidate's scores must never hold up, or be committed with, the live ones).
pub struct ShadowSink {
    producer: ThreadedProducer<ShadowContext>,
    topic: String,
    same_partition: bool,
}

/// Counts shadow outputs the broker did not take.
pub struct ShadowContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for ShadowContext {}

impl ProducerContext for ShadowContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.metrics.shadow_errors_total.inc();
        }
    }
}

impl ShadowSink {
    /// `client`: the producer configuration (without a transactional id).
    pub fn new(
        client: &ClientConfig,
        topic: String,
        same_partition: bool,
        metrics: Arc<Metrics>,
    ) -> Result<ShadowSink> {
        let mut client = client.clone();
        client.remove("transactional.id");
        Ok(ShadowSink {
            producer: client.create_with_context(ShadowContext { metrics })?,
            topic,
            same_partition,
        })
    }

    /// Waits up to `timeout` for queued shadow outputs.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

impl crate::inference::shadow::ShadowOutput for ShadowSink {
    fn send(
        &self,
        input_partition: i32,
        key: Option<&[u8]>,
        score: f32,
        timestamp: Option<i64>,
        candidate: &str,
        live: &str,
        source: (&str, i32, i64),
    ) {
        let mut payload = [0u8; 128];
        let len = encode_score(score, &mut payload);
        let (mut p, mut o) = (itoa::Buffer::new(), itoa::Buffer::new());
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: "model-version",
                value: Some(candidate.as_bytes()),
            })
            .insert(Header {
                key: "live-model-version",
                value: Some(live.as_bytes()),
            })
            .insert(Header {
                key: "source-topic",
                value: Some(source.0.as_bytes()),
            })
            .insert(Header {
                key: "source-partition",
                value: Some(p.format(source.1).as_bytes()),
            })
            .insert(Header {
                key: "source-offset",
                value: Some(o.format(source.2).as_bytes()),
            });
        let rec = BaseRecord {
            topic: self.topic.as_str(),
            partition: self.same_partition.then_some(input_partition),
            payload: Some(&payload[..len]),
            key,
            timestamp,
            headers: Some(headers),
            delivery_opaque: (),
        };
        // Best effort: a full queue sheds the shadow output rather than wait.
        if self.producer.send(rec).is_err() {
            self.producer.context().metrics.shadow_errors_total.inc();
        }
    }
}

/// Errors that mean another producer with the same `transactional.id` took over.
fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}

/// Kafka's own default `message.max.bytes` for producers and topics.
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// The largest dead-letter value that fits a record of at most `max_message_bytes`, leaving
/// room for the key, the headers and the record batch's own overhead.
pub fn dlq_value_limit(max_message_bytes: usize) -> usize {
    // Headers: 7 names and values (the error text is capped by its sources at ~200 bytes),
    // the record batch header (61 bytes) and record framing; a key is a tweet id.
    const ROOM: usize = 4096;
    max_message_bytes
        .saturating_sub(ROOM)
        .max(DLQ_MIN_VALUE_BYTES)
}
