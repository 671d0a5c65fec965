//! The sink: predictions and dead letters to Kafka, acknowledged into commit tracking.
//!
//! **One producer, per-partition lanes.** Every input partition's results go to the same
//! partition number of the output topic (when it has enough partitions), in input order. The
//! lanes share one idempotent librdkafka producer: librdkafka already keeps a queue, batches and
//! an idempotence sequence *per partition*, so a producer instance per partition would only
//! multiply connections, threads and producer ids without adding any ordering guarantee.
//!
//! Each record carries a [`Delivery`] as its opaque. The delivery callback acknowledges the input
//! offset in its partition's [`PartitionTracker`] — the only way an offset becomes committable.
//! A failed delivery is handed back to the sink thread and produced again; its offset stays
//! in flight meanwhile, so commits never pass it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{select, Receiver, Sender};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::batcher::Batch;
use crate::commit::PartitionTracker;
use crate::error::Result;
use crate::json::encode_score;
use crate::metrics::{Metrics, Stage};
use crate::source::Origin;

/// Which output a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prediction,
    DeadLetter,
}

/// An output record plus what its acknowledgement must update.
pub struct Delivery {
    pub tracker: Arc<PartitionTracker>,
    pub offset: i64,
    pub kind: Kind,
    pub partition: Option<i32>,
    pub key: Option<Arc<[u8]>>,
    pub payload: Arc<[u8]>,
    pub headers: OwnedHeaders,
    /// The input record's timestamp (ms), copied to the output as Kafka Streams does.
    pub timestamp: Option<i64>,
    pub produced_at: Instant,
    pub attempts: u32,
}

/// Producer callbacks: delivery acknowledgements.
pub struct SinkContext {
    metrics: Arc<Metrics>,
    retry: Sender<Box<Delivery>>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, d: Box<Delivery>) {
        match result {
            Ok(_) => {
                self.metrics
                    .record(Stage::ProduceAck, d.produced_at.elapsed());
                if let Some(ts) = d.timestamp {
                    let now_ms = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |t| t.as_millis() as i64);
                    let age = u64::try_from(now_ms - ts).unwrap_or(0);
                    self.metrics
                        .record(Stage::EndToEnd, Duration::from_millis(age));
                }
                let counter = match d.kind {
                    Kind::Prediction => &self.metrics.predicted,
                    Kind::DeadLetter => &self.metrics.dead_lettered,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                d.tracker.ack(d.offset);
            }
            Err((e, _)) => {
                self.metrics.delivery_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    partition = d.tracker.partition,
                    offset = d.offset,
                    attempt = d.attempts,
                    "delivery failed, will retry: {e}"
                );
                // If the sink thread is gone we are shutting down: the offset stays uncommitted
                // and the record is processed again after restart.
                let _ = self.retry.send(d);
            }
        }
    }
}

/// Where outputs go and how they are stamped.
pub struct SinkConfig {
    pub output_topic: String,
    pub dlq_topic: String,
    pub source_topic: String,
    /// True: prediction for input partition p goes to output partition p. False: by key hash.
    pub same_partition: bool,
    pub model_version: String,
}

/// Shared handle to the producer; cheap to clone into the source threads (for dead letters).
#[derive(Clone)]
pub struct Sink {
    producer: Arc<ThreadedProducer<SinkContext>>,
    cfg: Arc<SinkConfig>,
}

impl Sink {
    /// Creates the producer. Also returns the channel on which failed deliveries come back.
    pub fn new(
        client: &ClientConfig,
        cfg: SinkConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Sink, Receiver<Box<Delivery>>)> {
        let (retry_tx, retry_rx) = crossbeam_channel::unbounded();
        let producer = client.create_with_context(SinkContext {
            metrics,
            retry: retry_tx,
        })?;
        Ok((
            Sink {
                producer: Arc::new(producer),
                cfg: Arc::new(cfg),
            },
            retry_rx,
        ))
    }

    fn source_headers(&self, partition: i32, offset: i64) -> OwnedHeaders {
        let (p, o) = (partition.to_string(), offset.to_string());
        OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: "model-version",
                value: Some(self.cfg.model_version.as_bytes()),
            })
            .insert(Header {
                key: "source-topic",
                value: Some(self.cfg.source_topic.as_bytes()),
            })
            .insert(Header {
                key: "source-partition",
                value: Some(p.as_bytes()),
            })
            .insert(Header {
                key: "source-offset",
                value: Some(o.as_bytes()),
            })
    }

    /// Produces the prediction for the record from `origin`.
    pub fn predict(&self, origin: Origin, score: f32) {
        let mut payload = Vec::with_capacity(24);
        encode_score(score, &mut payload);
        let headers = self.source_headers(origin.tracker.partition, origin.offset);
        let partition = self.cfg.same_partition.then_some(origin.tracker.partition);
        self.produce_output(origin, Kind::Prediction, partition, payload.into(), headers);
    }

    /// Produces a dead letter: the original key and value, with headers naming the reason and
    /// the source topic / partition / offset.
    pub fn dead_letter(&self, origin: Origin, code: &str, reason: &str) {
        let (partition, offset) = (origin.tracker.partition, origin.offset);
        tracing::debug!(partition, offset, code, "dead letter: {reason}");
        let headers = self
            .source_headers(partition, offset)
            .insert(Header {
                key: "dlq-reason",
                value: Some(code.as_bytes()),
            })
            .insert(Header {
                key: "dlq-error",
                value: Some(reason.as_bytes()),
            });
        let value = origin.value.clone();
        self.produce_output(origin, Kind::DeadLetter, None, value, headers);
    }

    /// The output for the record from `origin`: its key and timestamp, acknowledged into its
    /// partition's tracker.
    fn produce_output(
        &self,
        origin: Origin,
        kind: Kind,
        partition: Option<i32>,
        payload: Arc<[u8]>,
        headers: OwnedHeaders,
    ) {
        self.produce(Box::new(Delivery {
            tracker: origin.tracker,
            offset: origin.offset,
            kind,
            partition,
            key: origin.key,
            payload,
            headers,
            timestamp: origin.timestamp,
            produced_at: Instant::now(),
            attempts: 0,
        }));
    }

    /// Hands a record to librdkafka, waiting while its queue is full (backpressure).
    pub fn produce(&self, mut d: Box<Delivery>) {
        d.attempts += 1;
        let topic = match d.kind {
            Kind::Prediction => self.cfg.output_topic.as_str(),
            Kind::DeadLetter => self.cfg.dlq_topic.as_str(),
        };
        let mut backoff = Duration::from_millis(1);
        loop {
            let key = d.key.clone();
            let payload = d.payload.clone();
            let rec = BaseRecord {
                topic,
                partition: d.partition,
                payload: Some(&payload[..]),
                key: key.as_deref(),
                timestamp: d.timestamp,
                headers: Some(d.headers.clone()),
                delivery_opaque: d,
            };
            match self.producer.send(rec) {
                Ok(()) => return,
                Err((e, rec)) => {
                    d = rec.delivery_opaque;
                    if !matches!(
                        e,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    ) {
                        self.producer
                            .context()
                            .metrics
                            .delivery_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(topic, offset = d.offset, "cannot produce, retrying: {e}");
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    // The producer's own thread drains the queue; wait for room.
                    std::thread::sleep(backoff);
                }
            }
        }
    }

    /// Waits up to `timeout` for every queued record to be delivered (or to fail).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        Ok(self.producer.flush(timeout)?)
    }
}

/// A batch after inference: one result per item, in order.
pub struct Scored {
    pub batch: Batch,
    pub results: Vec<std::result::Result<f32, String>>,
}

/// The sink thread: restores batch order after parallel inference and produces each result.
/// Returns when the inference side is finished and every batch has been produced.
pub fn run(done: Receiver<Scored>, retries: Receiver<Box<Delivery>>, sink: Sink) {
    let mut waiting: BTreeMap<u64, Scored> = BTreeMap::new();
    let mut next = 0u64;
    let mut done_open = true;
    while done_open || !waiting.is_empty() {
        select! {
            recv(done) -> msg => match msg {
                Ok(s) => { waiting.insert(s.batch.seq, s); }
                Err(_) => {
                    done_open = false;
                    // Sequence numbers are contiguous, so anything left can go out in order.
                    if let Some(first) = waiting.keys().next() { next = next.max(*first); }
                }
            },
            recv(retries) -> d => if let Ok(d) = d { sink.produce(d) },
        }
        while let Some(scored) = waiting.remove(&next) {
            next += 1;
            for (item, result) in scored.batch.items.into_iter().zip(scored.results) {
                match result {
                    Ok(score) => sink.predict(item.origin, score),
                    Err(reason) => sink.dead_letter(item.origin, "inference_failed", &reason),
                }
            }
        }
    }
    // Late delivery failures during shutdown: retry those that are already here.
    while let Ok(d) = retries.try_recv() {
        sink.produce(d);
    }
}
