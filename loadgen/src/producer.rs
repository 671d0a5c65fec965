//! The open-loop sender: hands tweets to librdkafka on the [`Schedule`], registering each
//! id and intended send time with the [`Tracker`] first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::error::{Error, Result};
use crate::kafka::{Connection, LogContext};
use crate::schedule::{Clock, Schedule};
use crate::track::{lock, KeyCodec, Tracker};

/// Header carrying the intended send time: decimal µs since the Unix epoch.
pub const INTENDED_HEADER: &str = "loadgen-intended-us";

/// The longest single sleep of the pacing loop, so it re-checks its deadlines often.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Sends made back to back before the loop looks at the clock and serves callbacks again.
const BURST: u64 = 1_000;

/// Counts delivery reports: a record librdkafka gave up on never reaches the worker.
struct DeliveryContext {
    log: LogContext,
    failed: AtomicU64,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.log.warn(|| format!("delivery failed: {e}"));
        }
    }
}

/// What the sender did in one run.
#[derive(Clone, Copy, Debug)]
pub struct SendStats {
    /// Records handed to librdkafka.
    pub enqueued: u64,
    /// Scheduled sends never made: the hard stop (duration + grace) came first, or the
    /// producer queue stayed full. The generator could not keep up; the run is invalid.
    pub unsent: u64,
    /// Records librdkafka refused outright (not counting a full queue, which is retried).
    pub enqueue_errors: u64,
    /// The latest any send was made after its intended time.
    pub max_lag: Duration,
    /// When the last send was made.
    pub last_send: Instant,
}

/// A producer for the input topic with the tweets pre-encoded as `{"value": "<tweet>"}`.
pub struct Sender {
    producer: BaseProducer<DeliveryContext>,
    topic: String,
    payloads: Vec<Vec<u8>>,
}

#[derive(Debug)]
enum SendError {
    /// The queue stayed full until the hard stop.
    GaveUp,
    Kafka(KafkaError),
}

impl Sender {
    /// `linger.ms=1`: batching up to 1 ms keeps the producer efficient at high rates
    /// without adding more than a millisecond to the measured latency.
    pub fn new(conn: &Connection, topic: &str, tweets: &[String]) -> Result<Self> {
        let producer = conn
            .config(&[("linger.ms", "1")])
            .create_with_context(DeliveryContext {
                log: LogContext::new("producer"),
                failed: AtomicU64::new(0),
            })?;
        let payloads = tweets
            .iter()
            .map(|t| serde_json::json!({ "value": t }).to_string().into_bytes())
            .collect();
        Ok(Sender {
            producer,
            topic: topic.to_owned(),
            payloads,
        })
    }

    /// Connects, and checks that the input topic exists, so the first scheduled sends do not
    /// pay for the connection and metadata round trips (which would show up as latency).
    pub fn connect(&self, timeout: Duration) -> Result<usize> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)?;
        crate::collector::partition_count(&md, &self.topic)
    }

    /// Delivery failures reported so far (cumulative over runs).
    pub fn delivery_failures(&self) -> u64 {
        self.producer.context().failed.load(Ordering::Relaxed)
    }

    /// Serves delivery callbacks for up to `timeout`.
    pub fn poll(&self, timeout: Duration) {
        self.producer.poll(timeout);
    }

    /// Waits up to `timeout` for everything queued to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        Ok(self.producer.flush(timeout)?)
    }

    /// Sends one warm-up probe, unregistered (see `run::wait_ready`).
    pub fn send_probe(&self, key: &str, clock: &Clock) -> Result<()> {
        let far = Instant::now() + Duration::from_secs(1);
        match self.send(key, 0, clock.now_us(), far) {
            Ok(()) => Ok(()),
            Err(SendError::GaveUp) => Err(Error::Broker("producer queue full".into())),
            Err(SendError::Kafka(e)) => Err(e.into()),
        }
    }

    /// Runs `schedule` from `t0`: registers each send with `tracker` (which assigns its
    /// id), then enqueues it. Never sends past `hard_stop`.
    pub fn run(
        &self,
        schedule: &Schedule,
        t0: Instant,
        hard_stop: Instant,
        clock: &Clock,
        codec: &KeyCodec,
        tracker: &Mutex<Tracker>,
    ) -> SendStats {
        let mut stats = SendStats {
            enqueued: 0,
            unsent: 0,
            enqueue_errors: 0,
            max_lag: Duration::ZERO,
            last_send: t0,
        };
        let mut i: u64 = 0;
        'run: loop {
            let now = Instant::now();
            if now >= hard_stop {
                break;
            }
            let due = schedule.due(now.duration_since(t0));
            if i >= due {
                let finished = match schedule {
                    Schedule::Paced { .. } => schedule.total().is_some_and(|t| i >= t),
                    Schedule::Max { .. } => due == 0,
                };
                if finished {
                    break;
                }
                let next = t0 + schedule.offset(i);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait.min(MAX_SLEEP));
                }
                continue;
            }
            for _ in 0..BURST.min(due - i) {
                let now = Instant::now();
                if now >= hard_stop {
                    break 'run;
                }
                // Paced: the schedule's time, however late we are. Max: no schedule, now.
                let intended = match schedule {
                    Schedule::Paced { .. } => t0 + schedule.offset(i),
                    Schedule::Max { .. } => now,
                };
                stats.max_lag = stats.max_lag.max(now.saturating_duration_since(intended));
                let intended_us = clock.at(intended);
                let seq = lock(tracker).record_sent(intended_us);
                let payload = (seq % self.payloads.len().max(1) as u64) as usize;
                i += 1;
                match self.send(&codec.key(seq), payload, intended_us, hard_stop) {
                    Ok(()) => stats.enqueued += 1,
                    Err(SendError::GaveUp) => {
                        stats.unsent += 1;
                        break 'run;
                    }
                    Err(SendError::Kafka(e)) => {
                        stats.enqueue_errors += 1;
                        self.producer
                            .context()
                            .log
                            .warn(|| format!("send failed: {e}"));
                    }
                }
                stats.last_send = Instant::now();
            }
            self.producer.poll(Duration::ZERO);
        }
        if let Some(total) = schedule.total() {
            stats.unsent += total.saturating_sub(i);
        }
        stats
    }

    /// Enqueues one record; a full queue is drained by serving callbacks and retried until
    /// `give_up`.
    fn send(
        &self,
        key: &str,
        payload: usize,
        intended_us: u64,
        give_up: Instant,
    ) -> Result<(), SendError> {
        let intended = intended_us.to_string();
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: INTENDED_HEADER,
            value: Some(intended.as_str()),
        });
        let body: &[u8] = self.payloads.get(payload).map_or(&[], Vec::as_slice);
        let mut record = BaseRecord::to(&self.topic)
            .key(key)
            .payload(body)
            .headers(headers);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if Instant::now() >= give_up {
                        return Err(SendError::GaveUp);
                    }
                    record = r;
                    self.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(SendError::Kafka(e)),
            }
        }
    }
}
