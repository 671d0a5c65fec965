//! The prediction reader: every partition of the output topic from the offsets it had before
//! sending started, so each prediction of the run is seen and nothing older is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::metadata::Metadata;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::kafka::{Connection, LogContext};
use crate::schedule::Clock;
use crate::track::{lock, Arrival, KeyCodec, Tracker};

/// How long one poll may block: bounds how late the collector notices it should stop.
const POLL: Duration = Duration::from_millis(100);

/// The worker's output record: `{"value": [score]}`.
#[derive(serde::Deserialize)]
struct Prediction {
    #[allow(dead_code)] // only its presence and type are checked
    value: Vec<f64>,
}

/// What the collector saw besides matched predictions (those are in the tracker).
#[derive(Clone, Copy, Debug, Default)]
pub struct CollectStats {
    /// Predictions of this run (first arrivals) whose payload was not `{"value":[numbers]}`.
    pub malformed: u64,
    /// Records delivered again by the client (same partition and offset as one already
    /// seen): a transport artifact, not a duplicate prediction, so they are skipped.
    pub redelivered: u64,
    /// Errors returned by the consumer (each is also printed, up to a limit).
    pub errors: u64,
}

/// What became of one polled record.
enum Received {
    Booked,
    Malformed,
    Redelivered,
}

/// A consumer assigned to all partitions of the output topic at their current end offsets.
pub struct Collector {
    consumer: BaseConsumer<LogContext>,
}

/// The number of partitions of `topic` in `md`, or why there are none.
pub fn partition_count(md: &Metadata, topic: &str) -> Result<usize> {
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| Error::Broker(format!("no metadata for topic {topic}")))?;
    if let Some(err) = t.error() {
        return Err(Error::Broker(format!(
            "topic {topic}: {:?} (does it exist?)",
            rdkafka::types::RDKafkaErrorCode::from(err)
        )));
    }
    if t.partitions().is_empty() {
        return Err(Error::Broker(format!("topic {topic} has no partitions")));
    }
    Ok(t.partitions().len())
}

impl Collector {
    /// Reads the end offsets of every partition of `topic` and assigns them.
    ///
    /// Explicit assignment instead of subscribing: no group join or rebalance to wait for,
    /// and no race between "assigned" and "first send". The group id is required by
    /// librdkafka but nothing is ever committed.
    ///
    /// librdkafka's default fetch.wait.max.ms is kept: Apache Kafka answers a waiting fetch
    /// as soon as a record arrives, so the wait does not delay what loadgen measures.
    pub fn new(conn: &Connection, topic: &str, group_id: &str, timeout: Duration) -> Result<Self> {
        let consumer: BaseConsumer<LogContext> = conn
            .config(&[
                ("group.id", group_id),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
            ])
            .create_with_context(LogContext::new("collector"))?;
        let md = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions = partition_count(&md, topic)?;
        let mut tpl = TopicPartitionList::with_capacity(partitions);
        for p in md
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions())
        {
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
        }
        consumer.assign(&tpl)?;
        Ok(Collector { consumer })
    }

    /// Waits up to `timeout` for one record; `f` gets its arrival time and the record.
    pub fn poll<R>(
        &self,
        timeout: Duration,
        f: impl FnOnce(Instant, &BorrowedMessage<'_>) -> R,
    ) -> Result<Option<R>, KafkaError> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Ok(msg)) => Ok(Some(f(Instant::now(), &msg))),
            Some(Err(e)) => Err(e),
        }
    }

    /// Prints a consumer problem (rate-limited).
    pub fn warn(&self, msg: impl FnOnce() -> String) {
        self.consumer.context().warn(msg);
    }

    /// Books every prediction into `tracker` until `stop` is set.
    pub fn collect(
        &self,
        clock: &Clock,
        codec: &KeyCodec,
        tracker: &Mutex<Tracker>,
        stop: &AtomicBool,
    ) -> CollectStats {
        let mut stats = CollectStats::default();
        // Next expected offset per partition. Seen on some brokers: librdkafka occasionally hands
        // out the same record (same partition and offset) twice right after the assignment;
        // counting those as duplicates would blame the worker for a transport artifact.
        let mut next_offset: HashMap<i32, i64> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let polled = self.poll(POLL, |at, msg| {
                let (partition, offset) = (msg.partition(), msg.offset());
                match next_offset.get(&partition) {
                    Some(&next) if offset < next => return Received::Redelivered,
                    _ => next_offset.insert(partition, offset + 1),
                };
                let seq = codec.seq(msg.key());
                let arrival = lock(tracker).record_arrival(seq, clock.at(at));
                if arrival == Arrival::Duplicate {
                    // Where the copy is tells the worker's redelivery (new offset) apart
                    // from a re-read of the same record (same offset).
                    self.warn(|| {
                        let key = String::from_utf8_lossy(msg.key().unwrap_or_default());
                        format!("duplicate prediction for {key} (partition {partition}, offset {offset})")
                    });
                }
                let ours = matches!(arrival, Arrival::Matched { .. } | Arrival::Late);
                let valid = msg
                    .payload()
                    .is_some_and(|p| serde_json::from_slice::<Prediction>(p).is_ok());
                if ours && !valid {
                    Received::Malformed
                } else {
                    Received::Booked
                }
            });
            match polled {
                Ok(Some(Received::Malformed)) => stats.malformed += 1,
                Ok(Some(Received::Redelivered)) => stats.redelivered += 1,
                Ok(Some(Received::Booked) | None) => {}
                Err(e) => {
                    stats.errors += 1;
                    self.consumer.context().warn(|| format!("consume: {e}"));
                }
            }
        }
        stats
    }
}
