//! The sink: the one place that produces to Kafka. Predictions and dead letters leave here, in
//! each input partition's order, and their acknowledgements feed commit tracking. Split by
//! concern (as Vector's Kafka sink is): [`record`] builds each output (pure, tested),
//! [`producer`] is the delivery guarantee (a shared idempotent producer, or a transactional one
//! per lane), [`delivery`] handles acknowledgements, [`shadow`] the candidate model's outputs.
//!
//! **Per-partition lanes.** Every input partition's outputs go to the same partition number of
//! the output topic (when it has enough partitions; else by key hash, and a null key then lands
//! on any partition), in input order: a lane's chunks are produced strictly in sequence,
//! whichever inference thread finished them (a finished chunk whose predecessor is still being
//! scored waits, parked, and the thread that produces the predecessor produces it too). No
//! single thread produces every record.

pub mod delivery;
pub mod producer;
pub mod record;
pub mod shadow;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, PurgeConfig};

use self::delivery::{ChunkDelivery, Deliveries, Shared};
use self::producer::{is_too_large, LaneProducer, Producer};
use self::record::{Destination, HeaderValue, Limits, Origin, Outcome, OutputRecord};
use crate::app::shutdown::Shutdown;
use crate::error::Result;
use crate::kafka::{Guarantee, OutputError};
use crate::obs::metrics::Metrics;
use crate::pipeline::{Body, Chunk, Lane, Output, Scored};

pub use self::shadow::ShadowSink;

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
    /// Size limits known at start-up (the broker may teach lower ones).
    pub limits: Limits,
}

/// One lane as the sink sees it: its producer and the order in which its chunks go out.
struct SinkLane {
    lane: Arc<Lane>,
    producer: LaneProducer,
    order: Mutex<Order>,
}

#[derive(Default)]
struct Order {
    /// The next chunk (by `seq`) to produce.
    next: u64,
    /// Scored chunks waiting for an earlier one of the same lane.
    parked: BTreeMap<u64, Scored>,
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

/// The producing side of the worker.
pub struct Sink {
    cfg: SinkConfig,
    shared: Arc<Shared>,
    /// At-least-once: the producer every lane shares (exactly-once: none; each lane has its own).
    common: Option<Arc<Producer>>,
    lanes: RwLock<HashMap<u64, Arc<SinkLane>>>,
    /// The thread that serves delivery reports when no batch does: woken when outputs are
    /// handed over after a time with none outstanding (it sleeps longer then).
    poller: OnceLock<Thread>,
}

impl Sink {
    /// Creates the sink (and, at-least-once, its one producer).
    pub fn new(cfg: SinkConfig, metrics: Arc<Metrics>, shutdown: Shutdown) -> Result<Sink> {
        let shared = Arc::new(Shared {
            metrics,
            output_topic: cfg.output_topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            dlq_cap: AtomicUsize::new(cfg.limits.dlq_value_bytes),
            output_cap: AtomicUsize::new(cfg.limits.output_record_bytes),
            shutdown,
            outstanding: AtomicU64::new(0),
            purge_requested: AtomicBool::new(false),
        });
        let common = match cfg.guarantee {
            Guarantee::AtLeastOnce => Some(Arc::new(
                cfg.client
                    .create_with_context(Deliveries::new(shared.clone(), None))?,
            )),
            Guarantee::ExactlyOnce => None,
        };
        Ok(Sink {
            cfg,
            shared,
            common,
            lanes: RwLock::new(HashMap::new()),
            poller: OnceLock::new(),
        })
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

    /// The size limits in force now (lowered by what the broker refused).
    fn limits(&self) -> Limits {
        Limits {
            output_record_bytes: self.shared.output_cap.load(Ordering::Acquire),
            dlq_value_bytes: self.shared.dlq_cap.load(Ordering::Acquire),
        }
    }

    /// Serves the delivery reports (and errors) waiting on every producer, without blocking
    /// (see [`delivery`]).
    pub fn serve_deliveries(&self) {
        if let Some(p) = &self.common {
            p.context().serve(p, SERVE_LIMIT);
            if self.shared.purge_requested.swap(false, Ordering::AcqRel) {
                self.purge_shared();
            }
            return;
        }
        let lanes: Vec<Arc<SinkLane>> = self
            .lanes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for sl in lanes {
            let p = sl.producer.producer();
            p.context().serve(p, SERVE_LIMIT);
        }
    }

    /// Serves delivery reports until `stop`: every [`DELIVERY_POLL_INTERVAL`] while outputs are
    /// outstanding, every [`DELIVERY_IDLE_INTERVAL`] otherwise (woken early when outputs are
    /// handed over again). Runs on its own thread (the worker starts it).
    pub fn serve_deliveries_until(&self, stop: &AtomicBool) {
        let _ = self.poller.set(std::thread::current());
        while !stop.load(Ordering::Acquire) {
            self.serve_deliveries();
            let idle = self.shared.outstanding.load(Ordering::Relaxed) == 0;
            std::thread::park_timeout(if idle {
                DELIVERY_IDLE_INTERVAL
            } else {
                DELIVERY_POLL_INTERVAL
            });
        }
    }

    /// Waits up to `timeout` for every queued record to be delivered (or to fail).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        if let Some(p) = &self.common {
            p.flush(timeout)?;
        }
        Ok(())
    }

    /// Produces one scored chunk's outputs, in record order. Returns without producing if the
    /// lane stopped running (its records will be re-processed from the last commit).
    fn produce_chunk(&self, sl: &SinkLane, scored: Scored) {
        let Scored { mut chunk, scores } = scored;
        let Some(first) = chunk.first_offset() else {
            return;
        };
        if !chunk.lane.is_running() {
            return;
        }
        let permit = chunk.permit.take();
        let origin = Origin {
            source_topic: &self.cfg.source_topic,
            partition: chunk.lane.partition,
            model_version: &chunk.model.version,
            same_partition: self.cfg.same_partition,
        };
        let outputs = self.outputs(&origin, &chunk, &scores);
        let dead_letters = outputs
            .iter()
            .filter(|o| o.destination == Destination::DeadLetter)
            .count();
        let delivery = Arc::new(ChunkDelivery {
            lane: chunk.lane.clone(),
            first,
            outstanding: AtomicUsize::new(outputs.len()),
            failed: AtomicBool::new(false),
            produced_at: Instant::now(),
            dead_letters: AtomicUsize::new(dead_letters),
            records: outputs.len(),
            timestamps: chunk.records.iter().filter_map(|r| r.timestamp).collect(),
            // Dead letters copy inputs into librdkafka's queue: the budget keeps counting them.
            permit: (dead_letters > 0).then_some(permit).flatten(),
        });
        let ctx = sl.producer.producer().context();
        for (i, (r, out)) in chunk.records.iter().zip(&outputs).enumerate() {
            let sent = match self.send(sl, out, &delivery) {
                Err(Refused::TooLarge(e)) => {
                    // The size estimate missed: learn the limit, dead-letter the record.
                    let size = out.wire_size();
                    self.shared
                        .output_cap
                        .fetch_min(size.saturating_sub(1), Ordering::AcqRel);
                    let why =
                        format!("the client refused the prediction's {size}-byte record: {e}");
                    let outcome = Outcome::DeadLetter {
                        code: "output_too_large",
                        error: why.into(),
                    };
                    let dead = record::build(&origin, &chunk, r, outcome, &self.limits());
                    delivery.dead_letters.fetch_add(1, Ordering::Relaxed);
                    self.send(sl, &dead, &delivery)
                }
                other => other,
            };
            if let Err(refused) = sent {
                // Not handed to librdkafka: this record and the rest of the chunk never will
                // be. Fail the lane (nothing more of it is produced or committed: an
                // exactly-once commit refuses a lane that is not running) and settle the
                // unsent outputs at once.
                let (e, topic) = refused.into_parts(&self.cfg, out.destination);
                if out.truncated {
                    self.shared.metrics.dead_letters_truncated_total.inc();
                }
                if ctx.failed(&delivery, &e, topic, 0) && self.common.is_some() {
                    self.shared.purge_requested.store(false, Ordering::Release);
                    self.purge_shared();
                }
                ctx.done(&delivery, outputs.len() - i);
                return;
            }
            if out.truncated {
                self.shared.metrics.dead_letters_truncated_total.inc();
            }
        }
    }

    /// What each record of `chunk` becomes (`scores`: one result per tweet record, in order).
    fn outputs<'c>(
        &self,
        origin: &Origin<'c>,
        chunk: &'c Chunk,
        scores: &'c [std::result::Result<f32, String>],
    ) -> Vec<OutputRecord<'c>> {
        let limits = self.limits();
        let mut scores = scores.iter();
        chunk
            .records
            .iter()
            .map(|r| {
                let score = matches!(r.body, Body::Tweet { .. })
                    .then(|| scores.next())
                    .flatten();
                record::build(origin, chunk, r, record::outcome(r, score), &limits)
            })
            .collect()
    }

    /// Hands one record to the lane's producer, waiting (boundedly, while the lane runs) while
    /// librdkafka's queue is full. Errors on delivery are librdkafka's to retry (the producer
    /// is idempotent), so a refusal here is permanent for this record: too large for the
    /// client ([`Refused::TooLarge`], for a prediction), or anything else (unknown topic, …).
    fn send(
        &self,
        sl: &SinkLane,
        out: &OutputRecord<'_>,
        delivery: &Arc<ChunkDelivery>,
    ) -> std::result::Result<(), Refused> {
        let topic = match out.destination {
            Destination::Output => self.cfg.output_topic.as_str(),
            Destination::DeadLetter => self.cfg.dlq_topic.as_str(),
        };
        let mut rec = BaseRecord {
            topic,
            partition: out.partition,
            payload: out.value.as_deref(),
            key: out.key,
            timestamp: out.timestamp,
            headers: Some(headers(out)),
            delivery_opaque: delivery.clone(),
        };
        let producer = sl.producer.producer();
        loop {
            match producer.send(rec) {
                Ok(()) => {
                    if self.shared.outstanding.fetch_add(1, Ordering::Relaxed) == 0 {
                        if let Some(t) = self.poller.get() {
                            t.unpark();
                        }
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if sl.lane.is_running() =>
                {
                    rec = back;
                    // Deliveries (or, at worst, message.timeout.ms expiries) make room: serve
                    // them while waiting. The wait is bounded by librdkafka.
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _))
                    if out.destination == Destination::Output
                        && is_too_large(e.rdkafka_error_code()) =>
                {
                    return Err(Refused::TooLarge(e))
                }
                Err((e, _)) => return Err(Refused::Other(e)),
            }
        }
    }

    /// At-least-once, after a lane failed: drop every output still queued in the shared
    /// producer. With the idempotent producer, a failed (timed-out) record bumps the producer's
    /// epoch, and records queued behind it would then be sent — landing *before* the rewind
    /// re-sends the failed one, out of order. Purged records fail their lanes too; they rewind
    /// and re-send in order. (Records already in flight behind a missing one are refused by the
    /// broker: the sequence has a gap.)
    fn purge_shared(&self) {
        if let Some(p) = &self.common {
            p.purge(PurgeConfig::default().queue());
        }
    }
}

/// Why the client refused a record.
enum Refused {
    /// A prediction too large for the producer's `message.max.bytes`.
    TooLarge(KafkaError),
    Other(KafkaError),
}

impl Refused {
    fn into_parts(self, cfg: &SinkConfig, destination: Destination) -> (KafkaError, &str) {
        let topic = match destination {
            Destination::Output => cfg.output_topic.as_str(),
            Destination::DeadLetter => cfg.dlq_topic.as_str(),
        };
        match self {
            Refused::TooLarge(e) | Refused::Other(e) => (e, topic),
        }
    }
}

/// The record's headers as librdkafka takes them.
fn headers(out: &OutputRecord<'_>) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(out.headers.len());
    for (key, value) in &out.headers {
        let mut num = itoa::Buffer::new();
        let bytes: &[u8] = match value {
            HeaderValue::Bytes(b) => b,
            HeaderValue::Text(t) => t.as_bytes(),
            HeaderValue::Number(n) => num.format(*n).as_bytes(),
        };
        h = h.insert(Header {
            key,
            value: Some(bytes),
        });
    }
    h
}

impl Output for Sink {
    fn open(
        &self,
        lane: &Arc<Lane>,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> std::result::Result<(), OutputError> {
        let producer = match &self.common {
            Some(p) => LaneProducer::Shared(p.clone()),
            None => LaneProducer::transactional(
                &self.cfg.client,
                &self.transactional_id(&lane.topic, lane.partition),
                Deliveries::new(self.shared.clone(), Some(lane.clone())),
                lane.partition,
                deadline,
                stop,
            )?,
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
        let mut order = sl.order.lock().unwrap_or_else(|e| e.into_inner());
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
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> std::result::Result<(), OutputError> {
        let Some(sl) = self.lane(lane.id) else {
            return Err(OutputError::lane_stopped(
                lane.partition,
                "commit transaction",
            ));
        };
        sl.producer.commit(lane, position, group, deadline, stop)?;
        self.shared.metrics.transactions_committed_total.inc();
        Ok(())
    }

    fn close(&self, lane: &Lane, timeout: Duration) {
        let removed = self
            .lanes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&lane.id);
        let Some(sl) = removed else { return };
        sl.order
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .parked
            .clear();
        // Exactly-once: whatever this lane's open transaction holds is discarded (if the abort
        // does not go through, the next owner's init_transactions aborts it).
        if sl.producer.abort(timeout) {
            self.shared.metrics.transactions_aborted_total.inc();
        }
    }

    fn guarantee(&self) -> Guarantee {
        self.cfg.guarantee
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
