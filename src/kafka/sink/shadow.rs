//! The shadow model's outputs (`--shadow-model-dir`): best effort, outside commit tracking
//! and transactions — a candidate's scores must never hold up, or be committed with, the live
//! ones.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::error::Result;
use crate::obs::metrics::Metrics;
use crate::wire::encode_score;

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
