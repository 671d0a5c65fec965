//! What one consumed record turns into on the way out — a pure function, no Kafka, no I/O:
//! a prediction for the output topic, or a dead letter for the dead-letter topic, with the
//! headers every output carries and the size limits applied.
//!
//! **Every output carries** the input's key and timestamp and headers `model-version` (of the
//! model that scored it), `source-topic`, `source-partition`, `source-offset`. A dead letter also
//! carries `dlq-reason` and `dlq-error`.
//!
//! **Size limits.** Bad input must never stop the worker, whatever field of it is too large:
//! - a prediction whose record (key, score, headers) would exceed what the output accepts (the
//!   producer's `message.max.bytes`, the output topic's `max.message.bytes`) becomes a dead
//!   letter with reason `output_too_large` — a key larger than the limit. (An output that
//!   takes no prediction even without its key is misconfigured, not fed bad input: such a
//!   prediction is sent as is, and its refusal stops the worker loudly.)
//! - a dead letter's value is cut to what the dead-letter topic accepts (header
//!   `dlq-original-size`), and so is its key (header `dlq-original-key-size`).

use std::borrow::Cow;

use crate::pipeline::{Body, Chunk, Record};

/// Bytes librdkafka adds to a record beyond key, value and headers (its
/// `RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`), and a record batch's header, which a topic's
/// `max.message.bytes` counts too.
pub const RECORD_OVERHEAD: usize = 36;
pub const BATCH_OVERHEAD: usize = 61;
/// Per header, beyond its name and value: two length varints.
const HEADER_OVERHEAD: usize = 10;
/// The smallest a dead letter's value is cut to (after the broker rejected one as too large,
/// see the sink's delivery handling).
pub const DLQ_MIN_VALUE_BYTES: usize = 1024;
/// The longest key a dead letter keeps: keys are ids; one longer than this is cut.
pub const DLQ_MAX_KEY_BYTES: usize = 1024;
/// Room kept in a dead letter for its key, headers and the batch framing.
const DLQ_ROOM: usize = 4096;

/// Kafka's own default `message.max.bytes` for producers and topics.
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Output,
    DeadLetter,
}

/// What scoring made of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<'a> {
    Score(f32),
    /// Not scorable: reason code (the `dlq-reason` header) and message (`dlq-error`).
    DeadLetter {
        code: &'static str,
        error: Cow<'a, str>,
    },
}

/// A header value: bytes, text, or a number written in decimal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    Bytes(&'a [u8]),
    Text(Cow<'a, str>),
    Number(i64),
}

impl HeaderValue<'_> {
    fn len(&self) -> usize {
        match self {
            HeaderValue::Bytes(b) => b.len(),
            HeaderValue::Text(t) => t.len(),
            HeaderValue::Number(n) => itoa::Buffer::new().format(*n).len(),
        }
    }
}

/// The size limits in force (learnt ones included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest output record (key, value, headers and record overhead) the output accepts.
    pub output_record_bytes: usize,
    /// The longest dead-letter value (the rest is cut).
    pub dlq_value_bytes: usize,
}

impl Limits {
    /// The limits for a producer that accepts records of `producer_max` bytes, an output topic
    /// that accepts batches of `output_max` and a dead-letter topic of `dlq_max`.
    pub fn new(producer_max: usize, output_max: usize, dlq_max: usize) -> Limits {
        Limits {
            output_record_bytes: producer_max.min(output_max.saturating_sub(BATCH_OVERHEAD)),
            dlq_value_bytes: dlq_value_limit(producer_max.min(dlq_max)),
        }
    }
}

/// The largest dead-letter value that fits a record of at most `max_message_bytes`, leaving
/// room for the key, the headers and the record batch's own overhead.
pub fn dlq_value_limit(max_message_bytes: usize) -> usize {
    max_message_bytes
        .saturating_sub(DLQ_ROOM)
        .max(DLQ_MIN_VALUE_BYTES)
}

/// Where the outputs of one input partition come from and go to.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub source_topic: &'a str,
    pub partition: i32,
    /// The version of the model that scored the chunk.
    pub model_version: &'a str,
    /// The output has at least as many partitions as the input: keep the partition number
    /// (else the producer's partitioner hashes the key; a null key then lands anywhere).
    pub same_partition: bool,
}

/// One record, ready to hand to a producer.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord<'a> {
    pub destination: Destination,
    /// `None`: by key hash.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub value: Option<Cow<'a, [u8]>>,
    pub timestamp: Option<i64>,
    pub headers: Vec<(&'static str, HeaderValue<'a>)>,
    /// Its value or key was cut to fit the dead-letter topic.
    pub truncated: bool,
}

impl OutputRecord<'_> {
    /// What librdkafka counts against `message.max.bytes` (an upper bound).
    pub fn wire_size(&self) -> usize {
        RECORD_OVERHEAD
            + self.key.map_or(0, <[u8]>::len)
            + self.value.as_ref().map_or(0, |v| v.len())
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD)
                .sum::<usize>()
    }
}

/// The output for `record` of `chunk`, scored as `outcome`.
pub fn build<'a>(
    origin: &Origin<'a>,
    chunk: &'a Chunk,
    record: &Record,
    outcome: Outcome<'a>,
    limits: &Limits,
) -> OutputRecord<'a> {
    let key = chunk.key(record);
    let headers = vec![
        (
            "model-version",
            HeaderValue::Bytes(origin.model_version.as_bytes()),
        ),
        (
            "source-topic",
            HeaderValue::Bytes(origin.source_topic.as_bytes()),
        ),
        (
            "source-partition",
            HeaderValue::Number(i64::from(origin.partition)),
        ),
        ("source-offset", HeaderValue::Number(record.offset)),
    ];
    let (code, error, headers) = match outcome {
        Outcome::Score(score) => {
            let mut buf = [0u8; 128];
            let len = crate::wire::encode_score(score, &mut buf);
            let prediction = OutputRecord {
                destination: Destination::Output,
                partition: origin.same_partition.then_some(origin.partition),
                key,
                value: Some(Cow::Owned(buf[..len].to_vec())),
                timestamp: record.timestamp,
                headers,
                truncated: false,
            };
            let size = prediction.wire_size();
            let key_len = key.map_or(0, <[u8]>::len);
            // Bad input is a key that makes the record too large. If even the keyless
            // prediction does not fit, the output takes no prediction at all: that is the
            // topic's configuration, not this input. Send it as is: the refusal fails the
            // lane and, repeated, stops the worker loudly instead of dead-lettering everything.
            if size <= limits.output_record_bytes || size - key_len > limits.output_record_bytes {
                return prediction;
            }
            let error = format!(
                "the prediction's record would be {size} bytes (key {key_len} bytes), more than the output accepts ({} bytes)",
                limits.output_record_bytes
            );
            ("output_too_large", Cow::Owned(error), prediction.headers)
        }
        Outcome::DeadLetter { code, error } => (code, error, headers),
    };
    dead_letter(record, chunk, key, headers, code, error, limits)
}

/// A dead letter of `record`: its key and value (cut to fit), the provenance `headers`, the
/// reason.
fn dead_letter<'a>(
    record: &Record,
    chunk: &'a Chunk,
    key: Option<&'a [u8]>,
    mut headers: Vec<(&'static str, HeaderValue<'a>)>,
    code: &'static str,
    error: Cow<'a, str>,
    limits: &Limits,
) -> OutputRecord<'a> {
    let mut truncated = false;
    let value = chunk.value(record).map(|v| {
        if v.len() > limits.dlq_value_bytes {
            truncated = true;
            headers.push(("dlq-original-size", HeaderValue::Number(v.len() as i64)));
            &v[..limits.dlq_value_bytes]
        } else {
            v
        }
    });
    let key = key.map(|k| {
        if k.len() > DLQ_MAX_KEY_BYTES {
            truncated = true;
            headers.push(("dlq-original-key-size", HeaderValue::Number(k.len() as i64)));
            &k[..DLQ_MAX_KEY_BYTES]
        } else {
            k
        }
    });
    headers.insert(4, ("dlq-reason", HeaderValue::Bytes(code.as_bytes())));
    headers.insert(5, ("dlq-error", HeaderValue::Text(error)));
    OutputRecord {
        destination: Destination::DeadLetter,
        partition: None,
        key,
        value: value.map(Cow::Borrowed),
        timestamp: record.timestamp,
        headers,
        truncated,
    }
}

/// What `record` turned into: its score (`score`: the next result of its chunk's inference,
/// for a tweet record), or why it is a dead letter.
pub fn outcome<'a>(record: &'a Record, score: Option<&'a Result<f32, String>>) -> Outcome<'a> {
    match &record.body {
        Body::Tweet { .. } => match score {
            Some(Ok(s)) => Outcome::Score(*s),
            Some(Err(reason)) => Outcome::DeadLetter {
                code: "inference_failed",
                error: Cow::Borrowed(reason),
            },
            None => Outcome::DeadLetter {
                code: "inference_failed",
                error: Cow::Borrowed("no score was produced"),
            },
        },
        Body::Invalid(e) => Outcome::DeadLetter {
            code: e.code(),
            error: Cow::Owned(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::files::ModelFiles;
    use crate::model::live::LiveModel;
    use crate::pipeline::{ChunkSizes, Lane};
    use crate::wire::DecodeError;

    const ORIGIN: Origin<'static> = Origin {
        source_topic: "in",
        partition: 2,
        model_version: "0123456789ab",
        same_partition: true,
    };

    fn limits() -> Limits {
        Limits::new(1_000_000, 1_000_000, 1_000_000)
    }

    /// A chunk with one record: `key`, `value`, a tweet (or invalid with `invalid`).
    fn chunk(key: &[u8], value: &[u8], invalid: Option<DecodeError>) -> Chunk {
        let model = Arc::new(LiveModel::load(&ModelFiles::builtin(), true).expect("model"));
        let lane = Arc::new(Lane::new("in".into(), 2, Some(40)));
        let mut c = Chunk::with_capacity(lane, model, 0, ChunkSizes::default());
        let key = Some(c.store(key));
        let value = Some(c.store(value));
        let body = match invalid {
            Some(e) => Body::Invalid(e),
            None => {
                c.ids.extend([5, 6]);
                c.tweet_from(0)
            }
        };
        c.records.push(Record {
            offset: 41,
            timestamp: Some(1_700_000_000_000),
            key,
            value,
            body,
        });
        c
    }

    fn header<'r>(r: &'r OutputRecord<'_>, name: &str) -> Option<&'r HeaderValue<'r>> {
        r.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    #[test]
    fn a_prediction_keeps_key_timestamp_partition_and_carries_the_provenance_headers() {
        let c = chunk(b"id-1", br#"{"value":"fire"}"#, None);
        let r = build(&ORIGIN, &c, &c.records[0], Outcome::Score(0.25), &limits());
        assert_eq!(r.destination, Destination::Output);
        assert_eq!(r.partition, Some(2));
        assert_eq!(r.key, Some(&b"id-1"[..]));
        assert_eq!(r.value.as_deref(), Some(&br#"{"value":[0.25]}"#[..]));
        assert_eq!(r.timestamp, Some(1_700_000_000_000));
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "model-version",
                "source-topic",
                "source-partition",
                "source-offset"
            ]
        );
        assert_eq!(header(&r, "source-offset"), Some(&HeaderValue::Number(41)));
        assert!(!r.truncated);
        // Fewer output partitions than input ones: by key hash.
        let hashed = Origin {
            same_partition: false,
            ..ORIGIN
        };
        assert_eq!(
            build(&hashed, &c, &c.records[0], Outcome::Score(0.25), &limits()).partition,
            None
        );
    }

    #[test]
    fn a_dead_letter_keeps_the_original_value_and_says_why() {
        let c = chunk(b"id-2", b"not json", Some(DecodeError::NotAnObject));
        let outcome = outcome(&c.records[0], None);
        let r = build(&ORIGIN, &c, &c.records[0], outcome, &limits());
        assert_eq!(r.destination, Destination::DeadLetter);
        assert_eq!(r.partition, None);
        assert_eq!(r.value.as_deref(), Some(&b"not json"[..]));
        assert_eq!(
            header(&r, "dlq-reason"),
            Some(&HeaderValue::Bytes(b"not_an_object"))
        );
        assert!(matches!(header(&r, "dlq-error"), Some(HeaderValue::Text(t)) if !t.is_empty()));
        assert_eq!(
            header(&r, "source-partition"),
            Some(&HeaderValue::Number(2))
        );
    }

    #[test]
    fn a_failed_inference_is_a_dead_letter_with_its_reason() {
        let c = chunk(b"k", br#"{"value":"x"}"#, None);
        let failed = Err("tract: boom".to_owned());
        let r = build(
            &ORIGIN,
            &c,
            &c.records[0],
            outcome(&c.records[0], Some(&failed)),
            &limits(),
        );
        assert_eq!(r.destination, Destination::DeadLetter);
        assert_eq!(
            header(&r, "dlq-reason"),
            Some(&HeaderValue::Bytes(b"inference_failed"))
        );
        assert_eq!(
            header(&r, "dlq-error"),
            Some(&HeaderValue::Text("tract: boom".into()))
        );
    }

    #[test]
    fn a_dead_letter_too_large_for_its_topic_is_cut_and_says_how_large_it_was() {
        let value = vec![b'x'; 10_000];
        let c = chunk(b"id", &value, Some(DecodeError::NotAnObject));
        let small = Limits::new(6_000, 1_000_000, 1_000_000);
        assert_eq!(small.dlq_value_bytes, DLQ_MIN_VALUE_BYTES.max(6_000 - 4096));
        let r = build(
            &ORIGIN,
            &c,
            &c.records[0],
            outcome(&c.records[0], None),
            &small,
        );
        assert!(r.truncated);
        assert_eq!(
            r.value.as_ref().map(|v| v.len()),
            Some(small.dlq_value_bytes)
        );
        assert_eq!(
            header(&r, "dlq-original-size"),
            Some(&HeaderValue::Number(10_000))
        );
        assert!(r.wire_size() <= 6_000, "{}", r.wire_size());
    }

    #[test]
    fn an_output_that_takes_no_prediction_even_without_its_key_is_not_blamed_on_the_input() {
        // A 10-byte limit: not even `{"value":[0.9]}` with its headers fits. Dead-lettering
        // would hide a misconfigured topic behind a flood of dead letters; the prediction is
        // built as is, so the broker's refusal fails the lane and stops the worker loudly.
        let c = chunk(b"k1", br#"{"value":"a fire"}"#, None);
        let l = Limits::new(10, 1_000_000, 1_000_000);
        let r = build(&ORIGIN, &c, &c.records[0], Outcome::Score(0.9), &l);
        assert_eq!(r.destination, Destination::Output);
        assert!(r.wire_size() > 10);
    }

    #[test]
    fn a_key_larger_than_the_output_accepts_turns_the_prediction_into_a_dead_letter() {
        // The producer accepts 4,096-byte records; the key alone is 6,000 bytes.
        let key = vec![b'k'; 6_000];
        let c = chunk(&key, br#"{"value":"a fire"}"#, None);
        let l = Limits::new(4_096, 1_000_000, 1_000_000);
        let r = build(&ORIGIN, &c, &c.records[0], Outcome::Score(0.9), &l);
        assert_eq!(r.destination, Destination::DeadLetter);
        assert_eq!(
            header(&r, "dlq-reason"),
            Some(&HeaderValue::Bytes(b"output_too_large"))
        );
        assert_eq!(r.key.map(<[u8]>::len), Some(DLQ_MAX_KEY_BYTES));
        assert_eq!(
            header(&r, "dlq-original-key-size"),
            Some(&HeaderValue::Number(6_000))
        );
        assert_eq!(
            r.value.as_deref(),
            Some(&br#"{"value":"a fire"}"#[..]),
            "the input, as every dead letter"
        );
        assert!(
            r.wire_size() <= 4_096,
            "the dead letter fits: {}",
            r.wire_size()
        );
        // A key that fits stays a prediction.
        let c = chunk(&key[..3_000], br#"{"value":"a fire"}"#, None);
        assert_eq!(
            build(&ORIGIN, &c, &c.records[0], Outcome::Score(0.9), &l).destination,
            Destination::Output
        );
    }

    #[test]
    fn limits_take_the_smallest_of_producer_and_topic() {
        let l = Limits::new(1_000_000, 500_000, 200_000);
        assert_eq!(l.output_record_bytes, 500_000 - BATCH_OVERHEAD);
        assert_eq!(l.dlq_value_bytes, 200_000 - 4096);
        assert_eq!(
            Limits::new(2_000, 1_000_000, 1_000_000).dlq_value_bytes,
            DLQ_MIN_VALUE_BYTES
        );
    }
}
