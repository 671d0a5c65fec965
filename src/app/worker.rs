//! `kafka-infer run`: the streaming worker, wired together, and its coordinator loop.
//!
//! ```text
//!  partition threads ──► bounded channel ──► batcher ──► inference threads ──► sink ──► Kafka
//!  (1 per partition:      (chunks;            (size /     (1 model state      (per-partition
//!   poll, decode,          backpressure,      time /       each; they         order; the one
//!   tokenize, chunk)       byte budget)       tokens)      produce)           producer path)
//!        ▲                                                                        │ acks
//!  main thread: polls the consumer (rebalances run here), commits, health   ◄─ commit tracking
//! ```
//!
//! Stopping (signal, [`Shutdown::request`], or a fatal error): stop fetching, let every partition
//! finish what it consumed (bounded by the drain timeout), commit it, then wind the pipeline
//! down. The summary says how many consumed records were left undelivered (they will be
//! re-processed) and why the worker stopped, so the binary can exit non-zero.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::app::shutdown::Shutdown;
use crate::batching::latency::LatencyBudget;
use crate::batching::{self, BatchPolicy, BatchQueue};
use crate::error::{Error, Result};
use crate::inference;
use crate::kafka::sink::{self, Guarantee, Sink, SinkConfig};
use crate::kafka::source::{self, Source, SourceConfig, SourceConsumer, SourceShared};
use crate::model::live::{self, Models, Reload, Reloader};
use crate::obs::http;
use crate::obs::metrics::{Metrics, Role};
use crate::pipeline::{Budget, Output};

/// Everything `run` needs; built from the command line (or by the demo).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
    pub policy: BatchPolicy,
    /// How long work may be held back to coalesce it (see [`crate::batching::latency`]).
    pub latency_budget: Duration,
    /// Chunks between the partition threads and the batcher.
    pub channel_capacity: usize,
    pub inference_threads: usize,
    pub commit_interval: Duration,
    pub drain_timeout: Duration,
    pub max_text_bytes: usize,
    /// Bound on the bytes held by consumed records not yet produced.
    pub max_in_flight_bytes: usize,
    /// `None`: no HTTP endpoint.
    pub metrics_addr: Option<SocketAddr>,
    pub log_interval: Duration,
    pub startup_timeout: Duration,
    /// librdkafka properties (`-X key=value`). A `consumer.` or `producer.` prefix applies a
    /// property to that client only; otherwise it applies to both.
    pub client_properties: Vec<(String, String)>,
    pub guarantee: Guarantee,
    /// Exactly-once: prefix of each partition's `transactional.id` (default: the group id).
    pub transactional_id_prefix: Option<String>,
    /// Exactly-once: how long a transaction stays open.
    pub transaction_interval: Duration,
    /// Rewinds of a partition in a row without progress before the worker gives up.
    pub max_rewinds: u32,
    /// `/healthz` fails when a partition has records in flight and no acknowledgement for this long.
    pub stall_timeout: Duration,
    /// The model directory to watch for new models (`None`: the built-in model, no reloads).
    pub model_dir: Option<std::path::PathBuf>,
    /// How often to look at the model directory (zero: only on SIGHUP).
    pub model_poll: Duration,
    /// Benchmark pass-through mode (no model runs; no reloads).
    pub passthrough: bool,
    /// A candidate model that scores every batch too, off the hot path, into `shadow_topic`.
    pub shadow_model_dir: Option<std::path::PathBuf>,
    /// Where shadow scores go (default `<output topic>.shadow`).
    pub shadow_topic: Option<String>,
}

/// Totals and outcome when the worker stops.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub consumed: u64,
    pub predicted: u64,
    pub dead_lettered: u64,
    /// Consumed records whose outputs were not delivered and committed before the worker
    /// stopped: they will be processed again after a restart.
    pub undelivered: usize,
    /// Why the worker stopped, if it was not asked to.
    pub fatal: Option<String>,
    pub elapsed: Duration,
}

/// librdkafka properties the worker's guarantees rest on: set by the worker, never by `-X`.
const RESERVED: [(&str, &str); 8] = [
    ("bootstrap.servers", "use --brokers"),
    ("group.id", "use --group-id"),
    ("transactional.id", "use --transactional-id-prefix"),
    (
        "enable.auto.commit",
        "offsets are committed only once outputs are acknowledged",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only once outputs are acknowledged",
    ),
    (
        "isolation.level",
        "the worker reads only committed records (read_committed)",
    ),
    ("enable.idempotence", "the producer is always idempotent"),
    (
        "acks",
        "outputs are acknowledged by all in-sync replicas (acks=all)",
    ),
];

/// Rejects `-X` properties that would silently override a flag or a guarantee.
pub fn check_properties(props: &[(String, String)]) -> Result<()> {
    for (k, _) in props {
        let bare = k
            .strip_prefix("consumer.")
            .or_else(|| k.strip_prefix("producer."))
            .unwrap_or(k);
        if let Some((_, why)) = RESERVED.iter().find(|(r, _)| *r == bare) {
            return Err(Error::Config(format!("-X {k} is not allowed: {why}")));
        }
    }
    Ok(())
}

fn client_configs(cfg: &WorkerConfig) -> (ClientConfig, ClientConfig) {
    let mut consumer = ClientConfig::new();
    consumer
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Records of aborted upstream transactions are never scored (in both modes).
        .set("isolation.level", "read_committed")
        // fetch.wait.max.ms and fetch.min.bytes come from the latency budget (below).
        //
        // librdkafka prefetches up to this much per partition (default 64 MiB): 16 MiB is ~100k
        // tweets, plenty to keep the pipeline fed, and keeps memory under overload bounded
        // (partitions × this + --max-in-flight-bytes). Overridable with -X.
        .set("queued.max.messages.kbytes", "16384")
        // Statistics carry per-partition consumer lag for /metrics.
        .set("statistics.interval.ms", "5000");
    // At least warnings, whatever logger the process has (rdkafka derives the level from the
    // `log` crate's): a failed offset commit is reported only as a COMMITFAIL warning, which
    // the consumer's context counts (see `source::commit_async`).
    if (consumer.log_level as i32) < (rdkafka::config::RDKafkaLogLevel::Warning as i32) {
        consumer.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    }
    let mut producer = ClientConfig::new();
    producer
        .set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // linger.ms comes from the latency budget (below).
        // The Java client's key hashing, so keyed outputs land where Kafka Streams would put them.
        .set("partitioner", "murmur2_random");
    LatencyBudget::new(cfg.latency_budget).apply(&mut consumer, &mut producer);
    for (k, v) in &cfg.client_properties {
        if let Some(k) = k.strip_prefix("consumer.") {
            consumer.set(k, v);
        } else if let Some(k) = k.strip_prefix("producer.") {
            producer.set(k, v);
        } else {
            consumer.set(k, v);
            producer.set(k, v);
        }
    }
    (consumer, producer)
}

/// The start-up probe's context: its connection errors are reported as the one start-up error
/// line, not also as librdkafka log lines.
struct QuietContext;

impl rdkafka::ClientContext for QuietContext {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: rdkafka::error::KafkaError, _: &str) {}
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// A property as configured (or librdkafka's default), parsed as a number.
fn number(client: &ClientConfig, key: &str, default: u64) -> u64 {
    client
        .get(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Partition count of `topic`, or a one-line error naming what is wrong.
fn partition_count(
    probe: &BaseConsumer<QuietContext>,
    brokers: &str,
    topic: &str,
    what: &str,
    timeout: Duration,
) -> Result<usize> {
    let md = probe.fetch_metadata(Some(topic), timeout).map_err(|e| {
        Error::Config(format!(
            "cannot reach Kafka at {brokers} within {timeout:?}: {e}"
        ))
    })?;
    let missing = || {
        Error::Config(format!(
            "{what} topic '{topic}' does not exist on {brokers}"
        ))
    };
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(missing)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(missing());
    }
    Ok(t.partitions().len())
}

/// The topic's `max.message.bytes`, if the broker tells (it needs DescribeConfigs rights).
fn topic_max_message_bytes(client: &ClientConfig, topic: &str, timeout: Duration) -> Option<usize> {
    let admin: AdminClient<DefaultClientContext> = client.create().ok()?;
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let results = futures_executor::block_on(
        admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts),
    )
    .ok()?;
    let resource = results.into_iter().next()?.ok()?;
    resource
        .get("max.message.bytes")?
        .value
        .as_deref()?
        .parse()
        .ok()
}

/// Sets its flag when dropped: a helper thread that checks the flag ends with the scope that
/// started it, on early returns too.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::io(name, e))
}

/// Runs the worker until `shutdown` is requested (or something fatal happens); then drains,
/// commits and returns a summary.
pub fn run(
    cfg: &WorkerConfig,
    models: Arc<Models>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> Result<RunSummary> {
    let started = Instant::now();
    let live = models.current();
    if cfg.channel_capacity == 0 || cfg.policy.max_batch == 0 || cfg.inference_threads == 0 {
        return Err(Error::Config(
            "channel capacity, batch size and inference threads must be ≥ 1".into(),
        ));
    }
    check_properties(&cfg.client_properties)?;
    let (consumer_cfg, producer_cfg) = client_configs(cfg);
    let commit_timeout = Duration::from_secs(5);
    // The rebalance callback drains revoked partitions; it must end well before the group
    // coordinator gives up on this member (max.poll.interval.ms), or the drain is for nothing.
    let max_poll = Duration::from_millis(number(&consumer_cfg, "max.poll.interval.ms", 300_000));
    let rendezvous = cfg.drain_timeout + commit_timeout + Duration::from_secs(3);
    if rendezvous >= max_poll {
        return Err(Error::Config(format!(
            "--drain-timeout-ms ({} ms) + commit and join bounds ({} ms) must stay below max.poll.interval.ms ({} ms): lower the drain timeout or raise -X consumer.max.poll.interval.ms",
            cfg.drain_timeout.as_millis(),
            (rendezvous - cfg.drain_timeout).as_millis(),
            max_poll.as_millis()
        )));
    }
    if cfg.guarantee == Guarantee::ExactlyOnce {
        let txn_timeout = number(&producer_cfg, "transaction.timeout.ms", 60_000);
        if cfg.transaction_interval + cfg.drain_timeout >= Duration::from_millis(txn_timeout) {
            return Err(Error::Config(format!(
                "--transaction-interval-ms + --drain-timeout-ms must stay below the producer's transaction.timeout.ms ({txn_timeout} ms)"
            )));
        }
    }

    // Check the broker and the topics first, with a bounded wait, so a wrong address or a
    // missing topic is one clear error instead of a worker that silently waits. The probe is a
    // consumer: its metadata requests never auto-create a mistyped topic.
    let mut probe_cfg = consumer_cfg.clone();
    probe_cfg.set("allow.auto.create.topics", "false");
    let probe: BaseConsumer<QuietContext> = probe_cfg.create_with_context(QuietContext)?;
    let t = cfg.startup_timeout;
    let inputs = partition_count(&probe, &cfg.brokers, &cfg.input_topic, "input", t)?;
    let outputs = partition_count(&probe, &cfg.brokers, &cfg.output_topic, "output", t)?;
    partition_count(&probe, &cfg.brokers, &cfg.dlq_topic, "dead-letter", t)?;
    let shadow_topic = cfg
        .shadow_topic
        .clone()
        .unwrap_or_else(|| format!("{}.shadow", cfg.output_topic));
    let shadow_model = match &cfg.shadow_model_dir {
        Some(dir) => {
            let shadows = partition_count(&probe, &cfg.brokers, &shadow_topic, "shadow", t)?;
            let files = crate::model::files::ModelFiles::read(dir)?;
            let model = live::LiveModel::load(&files, false)?;
            tracing::info!(version = model.version, dir = %dir.display(), topic = shadow_topic, "shadow model");
            Some((model, shadows >= inputs))
        }
        None => None,
    };
    drop(probe);
    let same_partition = outputs >= inputs;
    let producer_max = number(
        &producer_cfg,
        "message.max.bytes",
        sink::KAFKA_DEFAULT_MAX_MESSAGE_BYTES as u64,
    ) as usize;
    // Optional knowledge (the limit is also learnt when the broker rejects a dead letter), so a
    // broker that does not answer DescribeConfigs (the demo's mock cluster) costs 2 s, not the
    // whole start-up timeout.
    let dlq_max =
        topic_max_message_bytes(&consumer_cfg, &cfg.dlq_topic, t.min(Duration::from_secs(2)))
            .unwrap_or(sink::KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
            .min(producer_max);
    let sink = Arc::new(Sink::new(
        SinkConfig {
            output_topic: cfg.output_topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            source_topic: cfg.input_topic.clone(),
            same_partition,
            guarantee: cfg.guarantee,
            client: producer_cfg.clone(),
            transactional_id_prefix: cfg
                .transactional_id_prefix
                .clone()
                .unwrap_or_else(|| cfg.group_id.clone()),
            dlq_max_value_bytes: sink::dlq_value_limit(dlq_max),
            transaction_timeout: Duration::from_secs(30),
        },
        metrics.clone(),
        shutdown.clone(),
    )?);
    tracing::info!(
        brokers = cfg.brokers,
        input = cfg.input_topic,
        output = cfg.output_topic,
        dlq = cfg.dlq_topic,
        model_version = live.version,
        model = live.origin,
        guarantee = ?cfg.guarantee,
        latency_budget_ms = cfg.latency_budget.as_millis() as u64,
        fetch_wait_ms = consumer_cfg.get("fetch.wait.max.ms").unwrap_or("500"),
        fetch_min_bytes = consumer_cfg.get("fetch.min.bytes").unwrap_or("1"),
        linger_ms = producer_cfg.get("linger.ms").unwrap_or("5"),
        batch_gather_us = cfg.policy.gather.as_micros() as u64,
        routing = if same_partition {
            "same partition"
        } else {
            "key hash"
        },
        "starting worker ({inputs} input / {outputs} output partitions)"
    );

    // Acknowledgements are served by the inference threads after each batch; this thread
    // serves them when no batch comes (idle, draining, shutting down).
    let deliveries_stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let deliveries = {
        let (sink, stop) = (sink.clone(), deliveries_stop.0.clone());
        spawn("deliveries", move || sink.serve_deliveries_until(&stop))?
    };

    let mut shadow_thread = None;
    let shadow: Option<Arc<dyn crate::pipeline::Shadow>> = match shadow_model {
        Some((model, same)) => {
            let out = Arc::new(sink::ShadowSink::new(
                &producer_cfg,
                shadow_topic.clone(),
                same,
                metrics.clone(),
            )?);
            metrics.watch_drift(Role::Shadow, &model.version, model.drift.clone());
            let (stage, handle) =
                crate::inference::shadow::start(model, out.clone(), metrics.clone(), 8)?;
            shadow_thread = Some((handle, out));
            Some(stage)
        }
        None => None,
    };
    let (chunk_tx, chunk_rx, doorbell) = batching::channel(cfg.channel_capacity);
    // The inference threads gather their batches from the chunk channel themselves.
    let queue = Arc::new(BatchQueue::new(chunk_rx, doorbell, cfg.policy));
    let mut pipeline = Vec::new();
    // Each inference thread builds its own model state (it is not `Send`) and reports back, so
    // a model problem fails start-up rather than a thread.
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<()>>(cfg.inference_threads);
    for i in 0..cfg.inference_threads {
        let (queue, out, m, model, ready, shadow) = (
            queue.clone(),
            sink.clone() as Arc<dyn Output>,
            metrics.clone(),
            live.clone(),
            ready_tx.clone(),
            shadow.clone(),
        );
        pipeline.push(spawn(&format!("inference-{i}"), move || {
            let session = match model.classifier.session() {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            drop(ready);
            inference::run((model, session), &queue, out, shadow, &m);
        })?);
    }
    drop(ready_tx);
    for _ in 0..cfg.inference_threads {
        ready_rx
            .recv()
            .map_err(|_| Error::Model("an inference thread died at start-up".into()))??;
    }
    drop((queue, shadow));

    let budget = Budget::new(cfg.max_in_flight_bytes);
    let shared = SourceShared {
        models: models.clone(),
        output: sink.clone(),
        metrics: metrics.clone(),
        budget: budget.clone(),
        shutdown: shutdown.clone(),
        cfg: SourceConfig {
            max_text_bytes: cfg.max_text_bytes,
            chunk_records: cfg.policy.max_batch,
            chunk_bytes: 1 << 20,
            drain_timeout: cfg.drain_timeout,
            commit_timeout,
            transaction_interval: cfg.transaction_interval,
            max_rewinds: cfg.max_rewinds,
            rejoin_grace: 2 * Duration::from_millis(number(
                &consumer_cfg,
                "heartbeat.interval.ms",
                3000,
            )),
        },
    };
    let context = Source::new(shared, chunk_tx);
    let consumer: Arc<SourceConsumer> = Arc::new(consumer_cfg.create_with_context(context)?);
    consumer.context().attach(&consumer);

    let heartbeat = Arc::new(AtomicU64::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    if let Some(addr) = cfg.metrics_addr {
        let health = health_check(
            started,
            heartbeat.clone(),
            stopping.clone(),
            shutdown.clone(),
            Arc::downgrade(&consumer),
            cfg.stall_timeout,
        );
        let bound = http::serve(addr, metrics.clone(), health)?;
        tracing::info!("metrics on http://{bound}/metrics, health on http://{bound}/healthz");
    }
    let reloads = match &cfg.model_dir {
        Some(dir) if !cfg.passthrough => {
            let (m, st, live) = (metrics.clone(), shutdown.clone(), models.clone());
            let hup = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
                .map_err(|e| Error::Config(format!("cannot install the SIGHUP handler: {e}")))?;
            tracing::info!(
                dir = %dir.display(),
                poll_ms = cfg.model_poll.as_millis() as u64,
                "watching the model directory (SIGHUP reloads at once)"
            );
            Some(live::spawn_reloader(
                Reloader::new(dir.clone(), models.clone()),
                cfg.model_poll,
                hup,
                move || st.is_requested(),
                move |outcome| match outcome {
                    Reload::Swapped { from, to } => {
                        tracing::info!(from, to, "model reloaded");
                        m.model_swapped(from, to);
                        let live = live.current();
                        m.watch_drift(Role::Live, &live.version, live.drift.clone());
                    }
                    Reload::Rejected(why) => {
                        tracing::error!(
                            "model reload rejected, the live model keeps serving: {why}"
                        );
                        m.model_rejected();
                    }
                    Reload::Unchanged => {}
                },
            )?)
        }
        _ => None,
    };
    consumer.subscribe(&[&cfg.input_topic])?;

    let mut last_commit = Instant::now();
    let mut last_log = Instant::now();
    while !shutdown.is_requested() {
        heartbeat.store(started.elapsed().as_secs(), Ordering::Relaxed);
        match consumer.poll(Duration::from_millis(100)) {
            // Every assigned partition is read on its own queue, split off before assignment;
            // a record here would be read outside its partition's order.
            Some(Ok(msg)) => shutdown.fail(format!(
                "a record of partition {} arrived outside its partition queue",
                rdkafka::Message::partition(&msg)
            )),
            Some(Err(e)) => {
                metrics.client_errors_total.inc();
                tracing::warn!("consumer: {e}");
            }
            None => {}
        }
        let lanes = consumer.context().lanes();
        if last_commit.elapsed() >= cfg.commit_interval {
            if !sink.transactional() {
                source::commit_async(&consumer, &lanes, &metrics);
            }
            for lane in &lanes {
                metrics.set_in_flight(lane.partition, lane.tracker.in_flight());
            }
            metrics.in_flight_bytes.set(budget.used() as i64);
            last_commit = Instant::now();
        }
        if last_log.elapsed() >= cfg.log_interval {
            let rate = metrics.interval_rate();
            let cost = metrics
                .update_efficiency()
                .map_or_else(String::new, |us| format!(" cpu={us:.0}µs/record"));
            tracing::info!("{} rate={rate:.0}/s{cost}", metrics.summary_line());
            last_log = Instant::now();
        }
        if pipeline.iter().any(|h| h.is_finished()) {
            shutdown.fail("an internal pipeline thread stopped unexpectedly");
        }
    }

    stopping.store(true, Ordering::Relaxed);
    tracing::info!("stopping: draining what was consumed");
    // Stop fetching; every partition finishes (bounded) what it consumed, and commits it.
    let released = consumer.context().revoke(&consumer, None, false);
    consumer.context().close_channel();
    // The pipeline now runs dry: the batcher ends when the channel is empty and closed, the
    // inference threads when the batcher is gone. Bounded, like everything on the way out.
    let deadline = Instant::now() + Duration::from_secs(5);
    for h in pipeline {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
    if let Err(e) = sink.flush(Duration::from_secs(5)) {
        tracing::warn!("producer flush: {e}");
    }
    sink.serve_deliveries();
    drop(deliveries_stop);
    deliveries.thread().unpark();
    let _ = deliveries.join();
    if let Some((handle, out)) = shadow_thread {
        // The inference threads are gone, so the shadow queue is closed: what it holds is
        // scored (bounded: a few batches), then the thread ends.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        out.flush(Duration::from_secs(2));
    }
    consumer.unsubscribe();
    drop(consumer);
    if let Some(h) = reloads {
        // It checks the stop flag every 100 ms; a load in progress finishes first.
        let _ = h.join();
    }
    let summary = RunSummary {
        consumed: metrics.consumed_total.get(),
        predicted: metrics.predicted_total.get(),
        dead_lettered: metrics.dead_lettered_total.get(),
        undelivered: released.undelivered,
        fatal: shutdown.fatal(),
        elapsed: started.elapsed(),
    };
    tracing::info!(
        undelivered = summary.undelivered,
        "stopped: {}",
        metrics.summary_line()
    );
    Ok(summary)
}

/// `/healthz`: healthy while the main loop runs, nothing fatal happened, and no partition has
/// records in flight without any acknowledgement for `stall` — the pipeline, not just a thread.
fn health_check(
    started: Instant,
    heartbeat: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
    shutdown: Shutdown,
    consumer: std::sync::Weak<SourceConsumer>,
    stall: Duration,
) -> http::HealthCheck {
    Arc::new(move || {
        if let Some(reason) = shutdown.fatal() {
            return Err(format!("failed: {reason}"));
        }
        if stopping.load(Ordering::Relaxed) || shutdown.is_requested() {
            return Err("shutting down".into());
        }
        let age = started
            .elapsed()
            .as_secs()
            .saturating_sub(heartbeat.load(Ordering::Relaxed));
        if age > 30 {
            return Err(format!("main loop stalled for {age} s"));
        }
        if let Some(c) = consumer.upgrade() {
            for lane in c.context().lanes() {
                if let Some(d) = lane.tracker.stalled_for().filter(|d| *d > stall) {
                    return Err(format!(
                        "partition {}: no output acknowledged for {} s with {} records in flight",
                        lane.partition,
                        d.as_secs(),
                        lane.tracker.in_flight()
                    ));
                }
            }
        }
        Ok(())
    })
}
