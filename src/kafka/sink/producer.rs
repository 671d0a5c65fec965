//! The delivery guarantee as a type: how a lane's outputs are produced and committed.
//!
//! - **At-least-once**: one idempotent producer serves every lane ([`LaneProducer::Shared`]) —
//!   librdkafka already keeps a queue, batches and an idempotence sequence per partition, so
//!   more producers would only multiply connections. Input offsets are committed by the
//!   consumer once outputs are acknowledged (`kafka::source::commit`).
//! - **Exactly-once**: each lane has its own transactional producer
//!   ([`LaneProducer::Transactional`], `transactional.id` = prefix + input topic + partition),
//!   so whichever instance owns a partition fences every earlier owner of *that* partition, and
//!   a failure aborts only that partition's transaction. Outputs and the next input offset
//!   commit in one transaction.
//!
//! **A transactional call that times out is not a failure.** librdkafka goes on with it in the
//! background and refuses an abort meanwhile; calling the same method again resumes it. A
//! worker that gave up on a timed-out `commit_transaction`, aborted and rewound scored the same
//! records again in the next transaction while the first one committed: duplicates for
//! read_committed readers (85 in 23,452 inputs with the broker frozen for 3 s ten times). So
//! every transactional call here is retried while librdkafka says it is retriable, until a
//! deadline or a stop; only an abortable or fatal error (or the deadline) ends it — and then
//! the lane rewinds through a *new* producer, whose `init_transactions` resolves whatever the
//! old one left (committing a prepared transaction, aborting an open one) before the position
//! is read back from the group (see `kafka::source::rewind`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::delivery::Deliveries;
use crate::kafka::{ErrorKind, OutputError};
use crate::pipeline::Lane;

/// A producer whose delivery reports the sink serves itself (see `Sink::serve_deliveries`),
/// rather than a `ThreadedProducer`, whose thread wakes up for each report.
pub type Producer = BaseProducer<Deliveries>;

/// How a lane's outputs are produced (see the module doc).
#[derive(Clone)]
pub enum LaneProducer {
    /// At-least-once: the producer every lane shares.
    Shared(Arc<Producer>),
    /// Exactly-once: the lane's own transactional producer, a transaction open.
    Transactional(Arc<Producer>),
}

/// Each transactional call is made in slices of at most this long, so that a stop is noticed
/// and a retriable timeout is retried.
const CALL_SLICE: Duration = Duration::from_secs(1);

impl LaneProducer {
    pub fn producer(&self) -> &Arc<Producer> {
        match self {
            LaneProducer::Shared(p) | LaneProducer::Transactional(p) => p,
        }
    }

    /// Exactly-once: creates the lane's producer with `transactional.id` = `id`, initialises it
    /// (fencing every earlier producer with that id and resolving what it left open) and begins
    /// a transaction. Bounded by `deadline`; gives up early once `stop()`.
    pub fn transactional(
        client: &ClientConfig,
        id: &str,
        context: Deliveries,
        partition: i32,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<LaneProducer, OutputError> {
        // A partition thread left behind at a revoke must never start a producer: its
        // init_transactions would fence the partition's next owner.
        if stop() {
            return Err(OutputError::lane_stopped(partition, "init transactions"));
        }
        let mut client = client.clone();
        client.set("transactional.id", id);
        let producer: Producer = client.create_with_context(context).map_err(|e| {
            OutputError::new(partition, "create the transactional producer", e, None)
        })?;
        retrying(
            &producer,
            partition,
            "init transactions",
            deadline,
            stop,
            |t| producer.init_transactions(t),
        )?;
        producer
            .begin_transaction()
            .map_err(|e| error(&producer, partition, "begin transaction", e))?;
        Ok(LaneProducer::Transactional(Arc::new(producer)))
    }

    /// Exactly-once: commits the open transaction together with `position` (the next input
    /// offset of `lane`) for `group`, and begins the next one. At-least-once: nothing to do.
    /// Refuses (without committing) when the lane is no longer running: an output that failed —
    /// even one refused synchronously, never handed to librdkafka — must not have its input
    /// offset committed past it.
    pub fn commit(
        &self,
        lane: &Lane,
        position: i64,
        group: &ConsumerGroupMetadata,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), OutputError> {
        let LaneProducer::Transactional(p) = self else {
            return Ok(());
        };
        let partition = lane.partition;
        if !lane.is_running() {
            return Err(OutputError::lane_stopped(partition, "commit transaction"));
        }
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&lane.topic, partition, Offset::Offset(position))
            .map_err(|e| error(p, partition, "send offsets to transaction", e))?;
        retrying(
            p,
            partition,
            "send offsets to transaction",
            deadline,
            stop,
            |t| p.send_offsets_to_transaction(&offsets, group, t),
        )?;
        retrying(p, partition, "commit transaction", deadline, stop, |t| {
            p.commit_transaction(t)
        })?;
        p.begin_transaction()
            .map_err(|e| error(p, partition, "begin transaction", e))
    }

    /// Exactly-once: aborts the open transaction (what it holds is discarded), bounded by
    /// `timeout`. Returns whether it was aborted.
    pub fn abort(&self, timeout: Duration) -> bool {
        match self {
            LaneProducer::Shared(_) => false,
            LaneProducer::Transactional(p) => p.abort_transaction(timeout).is_ok(),
        }
    }
}

fn error(producer: &Producer, partition: i32, op: &'static str, e: KafkaError) -> OutputError {
    let fatal = producer.client().fatal_error().map(|(code, _)| code);
    OutputError::new(partition, op, e, fatal)
}

/// Calls `call` with slices of [`CALL_SLICE`] while it fails with a retriable error (a timeout
/// the next call resumes), until `deadline` or `stop()`.
fn retrying<T>(
    producer: &Producer,
    partition: i32,
    op: &'static str,
    deadline: Instant,
    stop: &dyn Fn() -> bool,
    mut call: impl FnMut(Duration) -> KafkaResult<T>,
) -> Result<T, OutputError> {
    loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), CALL_SLICE);
        match call(slice) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let err = error(producer, partition, op, e);
                if err.kind != ErrorKind::Retriable || Instant::now() >= deadline || stop() {
                    return Err(err);
                }
                tracing::debug!(partition, "{op}: {err}; calling again");
            }
        }
    }
}

/// Whether `code` says a record was refused for its size (synchronously by the client, or by
/// the broker).
pub fn is_too_large(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(code, Some(RDKafkaErrorCode::MessageSizeTooLarge))
}
