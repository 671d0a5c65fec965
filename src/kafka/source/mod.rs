//! The source: one consumer, one dedicated OS thread per assigned partition ([`partition`]).
//!
//! On every assignment, each new partition's messages are split off the consumer's main queue
//! (`split_partition_queue`) *before* librdkafka starts fetching them, and a thread is started
//! that polls that queue, decodes and tokenizes the records into chunks and sends them into the
//! one bounded channel the inference threads gather from. A full channel, or a spent in-flight
//! memory budget, blocks the thread: that is the backpressure (and librdkafka stops fetching
//! once its own per-partition queue fills).
//!
//! A partition's life is explicit: its current lane is *running*; a failed delivery makes it
//! *failed*, and the partition thread **rewinds** ([`rewind`]) to the last commit on a new
//! lane. A record that cannot be consumed at all (librdkafka reports an error for it) is never
//! skipped: the partition stops and the worker fails loudly.
//!
//! Rebalances are a blocking rendezvous inside the consumer's rebalance callback, as in
//! Vector's Kafka source: revoked partitions' threads stop, finish what they consumed (bounded
//! by the drain timeout) and commit it ([`commit`], or in their transaction), and only then
//! does the rebalance proceed — so the next owner starts exactly where this worker's outputs
//! end. Lost partitions (another member owns them already) are dropped at once, without
//! commit. The context itself only signals the partition threads and waits for them.

pub mod commit;
pub mod group;
pub mod partition;
pub mod rewind;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use self::group::{GroupHealth, GroupWatch};
use self::partition::{Exit, PartitionThread, StopSignal};
use crate::app::shutdown::Shutdown;
use crate::batching::ChunkSender;
use crate::kafka::Guarantee;
use crate::model::live::Models;
use crate::obs::metrics::Metrics;
use crate::pipeline::{Budget, Lane, Output};

/// How the source behaves.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Records whose value is larger than this are dead-lettered without being parsed.
    pub max_text_bytes: usize,
    /// A chunk closes at this many records (the batch size, so a chunk always fits a batch)…
    pub chunk_records: usize,
    /// …or at this many bytes of keys and values.
    pub chunk_bytes: usize,
    /// On revoke or shutdown: how long consumed records may take to be delivered.
    pub drain_timeout: Duration,
    /// Bound on one synchronous offset commit.
    pub commit_timeout: Duration,
    /// Bound on starting a lane's output (exactly-once: init_transactions) and on reading the
    /// group's committed offset at a rewind.
    pub open_timeout: Duration,
    /// Exactly-once: how long one transaction stays open (it spans the batches of that time).
    pub transaction_interval: Duration,
    /// Rewinds of one partition in a row without progress before the worker gives up.
    pub max_rewinds: u32,
    /// Exactly-once: how long a failed partition waits before re-initialising its
    /// transactional producer (two consumer heartbeats). A zombie — an instance that was
    /// frozen while the group moved its partitions on — learns from its next heartbeat that it
    /// lost them; re-initialising first would fence the partition's rightful owner.
    pub rejoin_grace: Duration,
    /// How long the group membership may stay unsettled (rejoining) with the coordinator
    /// connected before the worker counts as stuck and stops ([`group`]).
    pub group_stuck_after: Duration,
}

/// What every partition thread shares.
pub struct SourceShared {
    /// The live model: each chunk is tokenized by (and later scored with) the one live when
    /// the chunk was started.
    pub models: Arc<Models>,
    pub output: Arc<dyn Output>,
    pub metrics: Arc<Metrics>,
    pub budget: Arc<Budget>,
    pub shutdown: Shutdown,
    pub cfg: SourceConfig,
}

/// One assigned partition: its current lane and its thread.
struct Partition {
    lane: Arc<Mutex<Arc<Lane>>>,
    signal: Arc<StopSignal>,
    exit: crossbeam_channel::Receiver<Exit>,
}

/// The consumer's context: rebalance handling, statistics (lag), errors.
pub struct Source {
    consumer: OnceLock<Weak<BaseConsumer<Source>>>,
    shared: Arc<SourceShared>,
    /// Taken (set to `None`) at shutdown so the channel closes once the threads are gone.
    tx: Mutex<Option<ChunkSender>>,
    partitions: Mutex<HashMap<(String, i32), Partition>>,
    group: Mutex<GroupWatch>,
}

pub type SourceConsumer = BaseConsumer<Source>;

/// The outcome of stopping partitions.
#[derive(Debug, Default, Clone)]
pub struct Released {
    pub partitions: usize,
    /// Consumed records that were not delivered, or not committed: they will be processed
    /// again (by the next owner, or after a restart).
    pub undelivered: usize,
    /// At-least-once: why the final offset commit did not go through, if it did not.
    pub commit_error: Option<String>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Source {
    pub fn new(shared: SourceShared, tx: ChunkSender) -> Self {
        let group = Mutex::new(GroupWatch::new(shared.cfg.group_stuck_after));
        Source {
            group,
            consumer: OnceLock::new(),
            shared: Arc::new(shared),
            tx: Mutex::new(Some(tx)),
            partitions: Mutex::new(HashMap::new()),
        }
    }

    /// Must be called right after creating the consumer, before subscribing: the rebalance
    /// callback needs the `Arc` to split partition queues.
    pub fn attach(&self, consumer: &Arc<SourceConsumer>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }

    /// The current lane of every partition owned.
    pub fn lanes(&self) -> Vec<Arc<Lane>> {
        lock(&self.partitions)
            .values()
            .map(|p| lock(&p.lane).clone())
            .collect()
    }

    /// Starts a thread for each newly assigned partition. Its output (exactly-once: a
    /// transactional producer) is started by the thread itself, off this callback.
    fn assign(&self, tpl: &TopicPartitionList) {
        let Some(tx) = lock(&self.tx).clone() else {
            return; // shutting down
        };
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            if self.consumer.get().is_some() {
                // Attached, but the last `Arc` is gone: the consumer is being closed (its drop
                // leaves the group, and the group may hand out partitions one last time).
                // Nothing may start on them now; the next owner will take them.
                tracing::debug!("assignment while the consumer closes: ignored");
            } else {
                self.shared
                    .shutdown
                    .fail("rebalance before the consumer was attached");
            }
            return;
        };
        for elem in tpl.elements() {
            let (topic, partition) = (elem.topic().to_owned(), elem.partition());
            if lock(&self.partitions).contains_key(&(topic.clone(), partition)) {
                continue;
            }
            if let Err(why) = self.start(&consumer, &tx, &topic, partition) {
                self.shared.shutdown.fail(why);
                return;
            }
        }
    }

    /// Splits off `partition`'s queue and starts its thread.
    fn start(
        &self,
        consumer: &Arc<SourceConsumer>,
        tx: &ChunkSender,
        topic: &str,
        partition: i32,
    ) -> Result<(), String> {
        // A partition assigned but never read would silently stop advancing.
        let queue = consumer
            .split_partition_queue(topic, partition)
            .ok_or_else(|| {
                format!("cannot read partition {partition} of {topic} on its own queue")
            })?;
        let slot = Arc::new(Mutex::new(Arc::new(Lane::new(
            topic.into(),
            partition,
            None,
        ))));
        let signal = Arc::new(StopSignal::new());
        let (exit_tx, exit_rx) = crossbeam_channel::bounded(1);
        let thread = PartitionThread::new(
            consumer.clone(),
            topic.to_owned(),
            partition,
            slot.clone(),
            signal.clone(),
            self.shared.clone(),
            tx.clone(),
        );
        std::thread::Builder::new()
            .name(format!("partition-{partition}"))
            .spawn(move || {
                let exit = thread.run(&queue);
                let _ = exit_tx.send(exit);
            })
            .map_err(|e| format!("cannot start the thread of partition {partition}: {e}"))?;
        tracing::info!(topic, partition, "partition assigned");
        lock(&self.partitions).insert(
            (topic.to_owned(), partition),
            Partition {
                lane: slot,
                signal,
                exit: exit_rx,
            },
        );
        Ok(())
    }

    /// Stops the given partitions (all with `None`): their threads finish what they consumed
    /// (bounded by the drain timeout), their positions are committed and the lanes closed. With
    /// `lost`, nothing is waited for or committed: the partitions already belong to someone else.
    pub fn revoke(
        &self,
        consumer: &SourceConsumer,
        keys: Option<Vec<(String, i32)>>,
        lost: bool,
    ) -> Released {
        let stopping: Vec<((String, i32), Partition)> = {
            let mut partitions = lock(&self.partitions);
            let keys = keys.unwrap_or_else(|| partitions.keys().cloned().collect());
            keys.into_iter()
                .filter_map(|k| partitions.remove(&k).map(|p| (k, p)))
                .collect()
        };
        let mut released = Released {
            partitions: stopping.len(),
            ..Released::default()
        };
        if stopping.is_empty() {
            return released;
        }
        let cfg = &self.shared.cfg;
        let drain = if lost {
            Duration::ZERO
        } else {
            cfg.drain_timeout
        };
        let deadline = Instant::now() + drain;
        for ((topic, partition), p) in &stopping {
            tracing::info!(
                topic,
                partition,
                in_flight = lock(&p.lane).tracker.in_flight(),
                lost,
                "revoking partition"
            );
            *lock(&p.signal.deadline) = deadline;
            p.signal.lost.store(lost, Ordering::Release);
            p.signal.stop.store(true, Ordering::Release);
        }
        let lanes = self.join(&stopping, deadline, &mut released);
        if !lost && self.shared.output.guarantee() == Guarantee::AtLeastOnce {
            let all: Vec<_> = lanes.iter().map(|(l, _)| l.clone()).collect();
            let weak = self.consumer.get().cloned().unwrap_or_default();
            let metrics = &self.shared.metrics;
            if let Err(e) = commit::commit_sync(consumer, &weak, &all, cfg.commit_timeout, metrics)
            {
                let behind: usize = all.iter().map(|l| l.tracker.in_flight()).sum();
                tracing::error!(
                    partitions = ?all.iter().map(|l| l.partition).collect::<Vec<_>>(),
                    "progress not committed at revoke: {e}; the next owner starts from the previous commit"
                );
                released.commit_error = Some(e.to_string());
                released.undelivered += behind;
            }
        }
        for (lane, drained) in &lanes {
            lane.close();
            self.shared.output.close(lane, cfg.commit_timeout);
            tracing::info!(
                partition = lane.partition,
                committed = ?lane.tracker.last_committed(),
                drained,
                lost,
                "partition released"
            );
            self.shared.metrics.remove_partition(lane.partition);
        }
        released
    }

    /// Waits (until `deadline` and a moment more) for the stopping threads; returns their
    /// lanes and whether each drained. A thread that does not stop in time is left behind with
    /// its lane closed: it can neither produce nor commit nor start a producer (it checks its
    /// stop signal first), so it cannot fence the partition's next owner.
    fn join(
        &self,
        stopping: &[((String, i32), Partition)],
        deadline: Instant,
        released: &mut Released,
    ) -> Vec<(Arc<Lane>, bool)> {
        let join_by = deadline + Duration::from_secs(2);
        let mut lanes = Vec::new();
        for ((topic, partition), p) in stopping {
            let exit = p
                .exit
                .recv_timeout(join_by.saturating_duration_since(Instant::now()));
            let lane = lock(&p.lane).clone();
            let undelivered = match exit {
                Ok(exit) => exit.undelivered,
                Err(_) => {
                    tracing::error!(
                        topic,
                        partition,
                        "partition thread did not stop in time; leaving it behind"
                    );
                    lane.tracker.in_flight().max(1)
                }
            };
            released.undelivered += undelivered;
            lanes.push((lane, undelivered == 0));
        }
        lanes
    }

    /// Closes this side of the batch channel (shutdown: the partition threads are stopped).
    pub fn close_channel(&self) {
        lock(&self.tx).take();
    }

    fn keys(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
        tpl.elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect()
    }

    /// Stops the worker, loudly, when its group membership has stayed unsettled past the
    /// bound ([`group`]): a consumer that never rejoins would otherwise idle for ever.
    fn watch_group(&self, stats: &Statistics) {
        let Some(cgrp) = &stats.cgrp else {
            return;
        };
        let mut watch = lock(&self.group);
        if watch.changed(&cgrp.state, &cgrp.join_state, cgrp.assignment_size) {
            tracing::info!(
                state = %cgrp.state,
                join_state = %cgrp.join_state,
                partitions = cgrp.assignment_size,
                last_rebalance = %cgrp.rebalance_reason,
                brokers = %broker_states(stats),
                "consumer group membership"
            );
        }
        let health = watch.observe(Instant::now(), &cgrp.join_state, cgrp.assignment_size);
        drop(watch);
        if let GroupHealth::Stuck { join_state, for_ } = health {
            self.shared.shutdown.fail(format!(
                "the consumer has owned no partition and not rejoined its group for {} s (librdkafka group state \"{}\", join state \"{join_state}\", last rebalance: {}; the consumer's brokers: {}); a restart joins afresh and resumes from the committed offsets",
                for_.as_secs(),
                cgrp.state,
                cgrp.rebalance_reason,
                broker_states(stats)
            ));
        }
    }

    /// Consumer lag per owned partition, from what the worker knows: the partition's end
    /// (the last stable offset, which is what a read_committed consumer can reach) minus the
    /// worker's own committed position — exactly-once commits go through transactions, which
    /// the consumer's own committed offset never sees. Partitions not owned (revoked) get none.
    fn update_lag(&self, stats: &Statistics) {
        let partitions = lock(&self.partitions);
        for topic in stats.topics.values() {
            for (id, p) in &topic.partitions {
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                let Some(owned) = partitions.get(&(topic.topic.clone(), *id)) else {
                    continue;
                };
                let lane = lock(&owned.lane).clone();
                let position = lane
                    .tracker
                    .last_committed()
                    .or(lane.start)
                    .or_else(|| lane.tracker.commit_position());
                if let (Some(position), true) = (position, end >= 0) {
                    self.shared.metrics.set_lag(*id, (end - position).max(0));
                }
            }
        }
    }
}

/// The consumer's brokers as librdkafka's statistics see them — name, connection state and for
/// how long — for the membership log and the stuck-group error: a group that cannot rejoin is
/// often a consumer with no broker connection up (issue 20's wedge: "query-coord" for minutes
/// while the worker's producers reached the same broker).
fn broker_states(stats: &Statistics) -> String {
    let mut brokers: Vec<String> = stats
        .brokers
        .values()
        .map(|b| format!("{} {} {} s", b.name, b.state, b.stateage / 1_000_000))
        .collect();
    brokers.sort();
    brokers.join(", ")
}

impl ClientContext for Source {
    /// Logs ([`crate::kafka::log_librdkafka`]), and counts failed offset commits: for the worker's
    /// manual asynchronous commits this log line is the only sign librdkafka gives of a failure
    /// (see [`commit::commit_async`], which re-sends every position each interval).
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "COMMITFAIL" {
            self.shared.metrics.commit_errors_total.inc();
        }
        crate::kafka::log_librdkafka(level, fac, message);
    }

    fn stats(&self, stats: Statistics) {
        self.update_lag(&stats);
        self.watch_group(&stats);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.metrics.client_errors_total.inc();
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::Fatal)) {
            self.shared
                .shutdown
                .fail(format!("consumer fatal error: {error}: {reason}"));
        } else {
            tracing::warn!("kafka consumer: {error}: {reason}");
        }
    }
}

impl ConsumerContext for Source {
    /// Handles assignments ourselves (rather than in `pre_rebalance`) to see the partition
    /// list of an errored rebalance and the result of (un)assigning.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        let keys = cooperative.then(|| Self::keys(tpl));
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let released = self.revoke(consumer, keys, consumer.assignment_lost());
                self.shared
                    .metrics
                    .undelivered_at_revoke_total
                    .inc_by(released.undelivered as u64);
                unassign(consumer, tpl, cooperative)
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!("rebalance error: {code}; dropping the partitions concerned");
                self.shared.metrics.client_errors_total.inc();
                self.revoke(consumer, keys, true);
                unassign(consumer, tpl, cooperative)
            }
        };
        if let Err(e) = result {
            self.shared
                .shutdown
                .fail(format!("cannot apply a rebalance: {e}"));
        }
    }

    /// Only reached for commits librdkafka reports (not the worker's manual asynchronous ones:
    /// see [`commit::commit_async`]); counted and logged.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let failed = offsets
            .elements()
            .iter()
            .filter(|e| result.is_err() || e.error().is_err())
            .count();
        if failed == 0 {
            return;
        }
        self.shared.metrics.commit_errors_total.inc();
        match &result {
            Err(e) => tracing::warn!("offset commit failed (will retry): {e}"),
            Ok(()) => tracing::warn!("offset commit failed for {failed} partitions (will retry)"),
        }
    }
}

fn unassign(
    consumer: &BaseConsumer<Source>,
    tpl: &TopicPartitionList,
    cooperative: bool,
) -> KafkaResult<()> {
    if cooperative {
        consumer.incremental_unassign(tpl)
    } else {
        consumer.unassign()
    }
}
