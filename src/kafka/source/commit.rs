//! At-least-once commits: the consumer commits, for each running lane, the first offset whose
//! output is not acknowledged yet (`pipeline::offsets`). Exactly-once lanes commit inside their
//! transactions instead (`partition::PartitionThread::commit_transaction`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::SourceConsumer;
use crate::obs::metrics::Metrics;
use crate::pipeline::Lane;

/// Progress that was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("offset commit failed: {0}")]
    Failed(#[from] rdkafka::error::KafkaError),
    #[error("offset commit did not finish within {0:?}")]
    TimedOut(Duration),
}

/// Commits (asynchronously) the current safe position of every running lane, whether it moved
/// since the last commit or not.
///
/// Re-sending unmoved positions is what makes a failed commit harmless: librdkafka tells nobody
/// how a manual asynchronous commit ended (it raises the commit event for its own
/// auto-commits only and merely logs `COMMITFAIL` for ours), so a commit lost to a rebalance
/// would otherwise leave an idle partition's committed offset behind for good — found in CI,
/// where the group-churn test saw the last positions' commits fail and never sent again.
/// Java's auto-commit re-sends every position each interval for the same reason. The cost is
/// one small OffsetCommit request per interval.
pub fn commit_async(consumer: &SourceConsumer, lanes: &[Arc<Lane>], metrics: &Metrics) {
    let positions: Vec<(Arc<Lane>, i64)> = lanes
        .iter()
        .filter(|l| l.is_running())
        .filter_map(|l| l.tracker.commit_position().map(|p| (l.clone(), p)))
        .collect();
    if let Err(e) = commit(consumer, &positions, CommitMode::Async, metrics) {
        tracing::warn!("commit failed (will retry): {e}");
    }
}

/// Commits every lane's position synchronously, bounded by `timeout` (librdkafka's synchronous
/// commit has no timeout of its own, so it runs on a helper thread that may outlive the wait).
/// `strong` reaches the consumer from that thread. An error means the positions were not
/// committed: the caller reports it (the records after the last commit are processed again).
pub fn commit_sync(
    consumer: &SourceConsumer,
    strong: &Weak<SourceConsumer>,
    lanes: &[Arc<Lane>],
    timeout: Duration,
    metrics: &Arc<Metrics>,
) -> Result<(), CommitError> {
    let positions: Vec<(Arc<Lane>, i64)> = lanes
        .iter()
        .filter_map(|l| l.tracker.commit_position().map(|p| (l.clone(), p)))
        .collect();
    if positions.is_empty() {
        return Ok(());
    }
    let Some(strong) = strong.upgrade() else {
        // The consumer is closing: commit inline.
        return Ok(commit(consumer, &positions, CommitMode::Sync, metrics)?);
    };
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let m = metrics.clone();
    let spawned = std::thread::Builder::new()
        .name("commit".into())
        .spawn(move || {
            let _ = done_tx.send(commit(&strong, &positions, CommitMode::Sync, &m));
        });
    if spawned.is_err() {
        return Err(CommitError::TimedOut(Duration::ZERO));
    }
    match done_rx.recv_timeout(timeout) {
        Ok(result) => Ok(result?),
        Err(_) => Err(CommitError::TimedOut(timeout)),
    }
}

fn commit(
    consumer: &SourceConsumer,
    positions: &[(Arc<Lane>, i64)],
    mode: CommitMode,
    metrics: &Metrics,
) -> KafkaResult<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (lane, pos) in positions {
        tpl.add_partition_offset(&lane.topic, lane.partition, Offset::Offset(*pos))?;
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        metrics.commit_errors_total.inc();
        return Err(e);
    }
    // For an async commit this records what was *sent* (librdkafka does not report how it
    // ended; `commit_async` re-sends every interval); for a sync one, what the broker took.
    for (lane, pos) in positions {
        lane.tracker.mark_committed(*pos);
        metrics.set_committed(lane.partition, *pos);
    }
    Ok(())
}
