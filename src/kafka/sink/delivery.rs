//! Delivery reports: each produced record carries its chunk's [`ChunkDelivery`] (a shared
//! counter, not an allocation per record); when the last output of a chunk is acknowledged,
//! the chunk's offsets become committable. A failed delivery fails the lane: nothing more of
//! it is produced and its partition thread rewinds to the last commit.
//!
//! Nobody waits on a producer's report queue: a thread blocked there would be woken for every
//! produce response — one per partition per batch. Reports are served by the inference threads
//! after each batch they produce (those of earlier batches have arrived by then) and by the
//! `deliveries` thread when no batch comes ([`Deliveries::serve`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

use super::producer::{is_too_large, Producer};
use super::record::{BATCH_OVERHEAD, DLQ_MIN_VALUE_BYTES};
use crate::app::shutdown::Shutdown;
use crate::kafka::is_fenced;
use crate::obs::metrics::{Metrics, Stage};
use crate::pipeline::{FailureKind, Lane, Permit};

/// A produced chunk's acknowledgement state, shared by its records' delivery reports.
pub struct ChunkDelivery {
    pub lane: Arc<Lane>,
    pub first: i64,
    pub outstanding: AtomicUsize,
    pub failed: AtomicBool,
    pub produced_at: Instant,
    /// Outputs of the chunk, and how many of them are dead letters (a prediction the client
    /// refused for its size becomes one on the way).
    pub records: usize,
    pub dead_letters: AtomicUsize,
    pub timestamps: Vec<i64>,
    /// A chunk with dead letters keeps its share of the in-flight byte budget until they are
    /// acknowledged: a dead letter copies the input's value (up to the dead-letter topic's
    /// limit, a megabyte by default) into librdkafka's queue, which the budget must still
    /// bound there.
    pub permit: Option<Permit>,
}

/// What the producers share: metrics, the size limits the broker taught, the count of
/// outstanding outputs.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub output_topic: String,
    pub dlq_topic: String,
    /// The dead-letter values' cap (lowered when the broker refuses one as too large).
    pub dlq_cap: AtomicUsize,
    /// The output records' cap (lowered when the broker refuses a prediction as too large).
    pub output_cap: AtomicUsize,
    pub shutdown: Shutdown,
    /// Outputs handed to librdkafka whose delivery reports were not served yet.
    pub outstanding: AtomicU64,
    /// At-least-once: a lane failed on delivery; the shared producer's queue must be purged
    /// (by whoever serves reports next: the callback has no hold of its producer).
    pub purge_requested: AtomicBool,
}

/// A producer's callbacks: delivery reports and client errors.
pub struct Deliveries {
    shared: Arc<Shared>,
    /// Exactly-once: the lane this producer belongs to (its fatal errors end only that lane).
    lane: Option<Arc<Lane>>,
    /// Events served (delivery reports and errors): serving stops when a poll served none.
    served: AtomicU64,
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::kafka::log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.client_errors_total.inc();
        // A transactional producer's fencing arrives as a fatal error, or as the fencing code
        // itself (librdkafka raises `_FENCED` directly when a transaction call is refused).
        let fenced = error.rdkafka_error_code().is_some_and(is_fenced);
        let fatal = fenced || matches!(error, KafkaError::Global(RDKafkaErrorCode::Fatal));
        match (&self.lane, fatal) {
            (Some(lane), true) => {
                let kind = if fenced {
                    FailureKind::Fenced
                } else {
                    FailureKind::Other
                };
                lane.fail(kind, format!("producer fatal error: {reason}"));
            }
            (None, true) => self
                .shared
                .shutdown
                .fail(format!("producer fatal error: {error}: {reason}")),
            _ => tracing::warn!("kafka producer: {error}: {reason}"),
        }
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<ChunkDelivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, d: Arc<ChunkDelivery>) {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.shared.outstanding.fetch_sub(1, Ordering::Relaxed);
        if let Err((e, msg)) = result {
            self.failed(&d, e, msg.topic(), msg.payload_len() + msg.key_len());
        }
        self.done(&d, 1);
    }
}

impl Deliveries {
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn new(shared: Arc<Shared>, lane: Option<Arc<Lane>>) -> Deliveries {
        Deliveries {
            shared,
            lane,
            served: AtomicU64::new(0),
        }
    }

    /// An output of chunk `d` (`size` bytes of key and value) was not accepted: fail its lane
    /// (which rewinds). Returns whether this failed the lane (the first failure does).
    pub fn failed(&self, d: &ChunkDelivery, e: &KafkaError, topic: &str, size: usize) -> bool {
        self.shared.metrics.delivery_errors_total.inc();
        d.failed.store(true, Ordering::Release);
        let code = e.rdkafka_error_code();
        let kind = if is_too_large(code) && topic == self.shared.dlq_topic {
            // Shrink dead letters so the rewound attempt fits.
            self.shared
                .dlq_cap
                .fetch_min(DLQ_MIN_VALUE_BYTES, Ordering::AcqRel);
            FailureKind::DeadLetterTooLarge { size }
        } else if is_too_large(code) && topic == self.shared.output_topic {
            // The output topic accepts less than the worker knew: learn it, so that the
            // rewound attempt dead-letters what does not fit (`record::build`).
            self.shared
                .output_cap
                .fetch_min(size.saturating_sub(BATCH_OVERHEAD), Ordering::AcqRel);
            FailureKind::OutputTooLarge { size }
        } else if code.is_some_and(is_fenced) {
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
        let first = d
            .lane
            .fail(kind, format!("output to {topic} not accepted: {e}"));
        // A purged record's failure is the purge's doing: no purge again for it.
        if first && self.lane.is_none() && code != Some(RDKafkaErrorCode::PurgeQueue) {
            self.shared.purge_requested.store(true, Ordering::Release);
        }
        first
    }

    /// `n` outputs of chunk `d` are settled; after the last one the chunk is acknowledged
    /// (or, if any failed, left for the rewind to re-process).
    pub fn done(&self, d: &ChunkDelivery, n: usize) {
        if d.outstanding.fetch_sub(n, Ordering::AcqRel) != n {
            return;
        }
        if d.failed.load(Ordering::Acquire) {
            return;
        }
        d.lane.tracker.ack(d.first);
        let m = &self.shared.metrics;
        let dead_letters = d.dead_letters.load(Ordering::Relaxed);
        m.predicted_total
            .inc_by(d.records.saturating_sub(dead_letters) as u64);
        m.dead_lettered_total.inc_by(dead_letters as u64);
        // Until the acknowledgement was *served*: reports wait for the next batch or the
        // deliveries thread, and librdkafka keeps no time of arrival (its
        // rd_kafka_message_latency() is measured when it is called).
        m.record(Stage::ProduceAck, d.produced_at.elapsed());
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
        m.record_end_to_end(d.timestamps.iter().copied(), now_ms);
    }

    /// Serves `producer`'s queued events (delivery reports, errors) without waiting; at most
    /// `limit`. Returns how many were served.
    pub fn serve(&self, producer: &Producer, limit: u64) -> u64 {
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
