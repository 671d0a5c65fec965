//! Everything that talks to Kafka: the [`source`] (one consumer, a thread per assigned
//! partition, rewinds, commits) and the [`sink`] (the only producing code: output records,
//! producers, delivery reports). Here: the delivery guarantee and the typed errors the two
//! sides exchange, classified once from librdkafka's own error flags — never from the text of
//! a message.

pub mod sink;
pub mod source;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Where librdkafka's debug lines go: the target the default log filter lets through at INFO.
pub const DEBUG_TARGET: &str = "librdkafka::debug";

/// Logs one line of librdkafka (consumer and producers alike) under the target `librdkafka`.
///
/// librdkafka writes debug lines only for the contexts named in its `debug` property, which
/// someone sets on purpose (`-X consumer.debug=cgrp`): they are logged at INFO under
/// [`DEBUG_TARGET`], which the default filter shows, rather than at DEBUG under `librdkafka`,
/// which it hides (`librdkafka=warn`: librdkafka's own info lines are noise in normal running).
/// A `debug` property that printed nothing cost a day of hunting the rejoin wedge (issue 20).
pub fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::info!(target: DEBUG_TARGET, "librdkafka: {fac} {message}")
        }
    }
}

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

/// What a failed output operation means for its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Another producer took over the partition's transactional id: this instance must not
    /// write the partition again (unless the group still assigns it here: then the fencer was a
    /// zombie).
    Fenced,
    /// Calling again may succeed: a transactional call that timed out goes on in librdkafka's
    /// background, and the same call resumes it.
    Retriable,
    /// The transaction must be aborted (librdkafka says so).
    Abortable,
    /// The producer can do nothing more (a fatal error).
    Fatal,
    /// The partition's lane stopped running (failed, revoked, closed) before the call: nothing
    /// may be committed for it.
    LaneStopped,
    /// Anything else.
    Other,
}

/// An output operation that failed, for one input partition.
#[derive(Debug, thiserror::Error)]
#[error("partition {partition}: {op}: {}", .source.as_ref().map_or_else(|| "the lane stopped running".to_owned(), |e| e.to_string()))]
pub struct OutputError {
    pub kind: ErrorKind,
    pub partition: i32,
    /// What was being done ("commit transaction", "init transactions", ...).
    pub op: &'static str,
    #[source]
    pub source: Option<KafkaError>,
}

impl OutputError {
    /// Classifies `source` (and the producer's fatal error, if it has one: after a fatal error
    /// librdkafka answers every call with a state error, and only the fatal error says whether
    /// the instance was fenced).
    pub fn new(
        partition: i32,
        op: &'static str,
        source: KafkaError,
        fatal: Option<RDKafkaErrorCode>,
    ) -> OutputError {
        OutputError {
            kind: classify(&source, fatal),
            partition,
            op,
            source: Some(source),
        }
    }

    /// The lane stopped running before `op`.
    pub fn lane_stopped(partition: i32, op: &'static str) -> OutputError {
        OutputError {
            kind: ErrorKind::LaneStopped,
            partition,
            op,
            source: None,
        }
    }
}

/// Errors that mean another producer with the same `transactional.id` took over.
pub fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}

/// The kind of `e`, from librdkafka's flags on transactional errors and the codes otherwise.
pub fn classify(e: &KafkaError, fatal: Option<RDKafkaErrorCode>) -> ErrorKind {
    if e.rdkafka_error_code().is_some_and(is_fenced) || fatal.is_some_and(is_fenced) {
        return ErrorKind::Fenced;
    }
    if let KafkaError::Transaction(t) = e {
        if t.is_fatal() {
            return ErrorKind::Fatal;
        }
        if t.txn_requires_abort() {
            return ErrorKind::Abortable;
        }
        if t.is_retriable() {
            return ErrorKind::Retriable;
        }
    }
    if fatal.is_some() {
        return ErrorKind::Fatal;
    }
    ErrorKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_is_recognised_by_code_whether_on_the_error_or_the_fatal_one() {
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        assert_eq!(classify(&fenced, None), ErrorKind::Fenced);
        let state = KafkaError::MessageProduction(RDKafkaErrorCode::State);
        assert_eq!(
            classify(&state, Some(RDKafkaErrorCode::InvalidProducerEpoch)),
            ErrorKind::Fenced
        );
        assert_eq!(
            classify(&state, Some(RDKafkaErrorCode::OutOfOrderSequenceNumber)),
            ErrorKind::Fatal
        );
        assert_eq!(classify(&state, None), ErrorKind::Other);
    }

    #[test]
    fn an_output_error_names_its_partition_and_operation() {
        let e = OutputError::new(
            2,
            "commit transaction",
            KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced),
            None,
        );
        assert_eq!(e.kind, ErrorKind::Fenced);
        assert!(e
            .to_string()
            .starts_with("partition 2: commit transaction: "));
        let stopped = OutputError::lane_stopped(1, "commit transaction");
        assert_eq!(stopped.kind, ErrorKind::LaneStopped);
        assert_eq!(
            stopped.to_string(),
            "partition 1: commit transaction: the lane stopped running"
        );
    }
}
