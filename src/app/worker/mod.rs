//! `kafka-infer run`: the streaming worker, assembled — start-up checks ([`startup`]), the
//! stages ([`pipeline`]), the source's consumer and the coordinator loop ([`coordinator`]),
//! then the drain.
//!
//! ```text
//!  partition threads ──► bounded channel ──► inference threads ──► sink ──► Kafka
//!  (1 per partition:      (chunks;            (gather a batch,     (per-partition
//!   poll, decode,          backpressure,       score it, produce)   order; the one
//!   tokenize, chunk)       byte budget)                             producer path)
//!        ▲                                                               │ acks
//!  main thread: polls the consumer (rebalances run here), commits, health ◄─ commit tracking
//! ```
//!
//! Stopping (signal, [`Shutdown::request`], or a fatal error): stop fetching, let every partition
//! finish what it consumed (bounded by the drain timeout), commit it, then wind the pipeline
//! down. The summary says how many consumed records were left undelivered or uncommitted (they
//! will be processed again) and why the worker stopped, so the binary can exit non-zero.

pub mod clients;
pub mod config;
pub mod coordinator;
pub mod pipeline;
pub mod startup;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

pub use self::clients::check_properties;
pub use self::config::WorkerConfig;
use self::coordinator::Liveness;
use self::pipeline::Pipeline;
use self::startup::{Topology, COMMIT_TIMEOUT};
use crate::app::shutdown::Shutdown;
use crate::batching::ChunkSender;
use crate::error::Result;
use crate::kafka::source::{Released, Source, SourceConfig, SourceConsumer, SourceShared};
use crate::model::live::Models;
use crate::obs::http;
use crate::obs::metrics::Metrics;

/// Totals and outcome when the worker stops.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub consumed: u64,
    pub predicted: u64,
    pub dead_lettered: u64,
    /// Consumed records whose outputs were not delivered and committed before the worker
    /// stopped: they will be processed again after a restart.
    pub undelivered: usize,
    /// At-least-once: the final offset commit did not go through (why).
    pub uncommitted: Option<String>,
    /// Why the worker stopped, if it was not asked to.
    pub fatal: Option<String>,
    pub elapsed: Duration,
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
    check_properties(&cfg.client_properties)?;
    let (consumer_cfg, producer_cfg) = clients::client_configs(cfg);
    startup::check(cfg, &consumer_cfg, &producer_cfg)?;
    let topology = startup::probe(cfg, &consumer_cfg, &producer_cfg)?;
    log_start(cfg, &models, &topology, &consumer_cfg, &producer_cfg);
    let (mut pipeline, tx) =
        Pipeline::start(cfg, topology, &producer_cfg, &models, &metrics, &shutdown)?;
    let consumer = source(
        cfg,
        &consumer_cfg,
        &pipeline,
        &models,
        &metrics,
        &shutdown,
        tx,
    )?;
    let live = Liveness::new();
    if let Some(addr) = cfg.metrics_addr {
        let health = coordinator::health_check(
            live.clone(),
            shutdown.clone(),
            Arc::downgrade(&consumer),
            cfg.stall_timeout,
        );
        let bound = http::serve(addr, metrics.clone(), health)?;
        tracing::info!("metrics on http://{bound}/metrics, health on http://{bound}/healthz");
    }
    pipeline.watch_models(cfg, &models, &metrics, &shutdown)?;
    consumer.subscribe(&[&cfg.input_topic])?;
    coordinator::run(cfg, &consumer, &pipeline, &metrics, &shutdown, &live);

    live.stopping();
    tracing::info!("stopping: draining what was consumed");
    // Stop fetching; every partition finishes (bounded) what it consumed, and commits it.
    let released = consumer.context().revoke(&consumer, None, false);
    consumer.context().close_channel();
    pipeline.drain();
    consumer.unsubscribe();
    drop(consumer);
    Ok(summary(&metrics, released, &shutdown, started))
}

/// The consumer, with the source as its context (rebalances start and stop partition threads).
fn source(
    cfg: &WorkerConfig,
    consumer_cfg: &rdkafka::ClientConfig,
    pipeline: &Pipeline,
    models: &Arc<Models>,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
    tx: ChunkSender,
) -> Result<Arc<SourceConsumer>> {
    let heartbeat = clients::number(consumer_cfg, "heartbeat.interval.ms", 3000);
    let shared = SourceShared {
        models: models.clone(),
        output: pipeline.sink.clone(),
        metrics: metrics.clone(),
        budget: pipeline.budget.clone(),
        shutdown: shutdown.clone(),
        cfg: SourceConfig {
            max_text_bytes: cfg.max_text_bytes,
            chunk_records: cfg.policy.max_batch,
            chunk_bytes: 1 << 20,
            drain_timeout: cfg.drain_timeout,
            commit_timeout: COMMIT_TIMEOUT,
            open_timeout: Duration::from_secs(30),
            transaction_interval: cfg.transaction_interval,
            max_rewinds: cfg.max_rewinds,
            rejoin_grace: 2 * Duration::from_millis(heartbeat),
        },
    };
    let consumer: Arc<SourceConsumer> =
        Arc::new(consumer_cfg.create_with_context(Source::new(shared, tx))?);
    consumer.context().attach(&consumer);
    Ok(consumer)
}

fn log_start(
    cfg: &WorkerConfig,
    models: &Models,
    topology: &Topology,
    consumer: &rdkafka::ClientConfig,
    producer: &rdkafka::ClientConfig,
) {
    let live = models.current();
    tracing::info!(
        brokers = cfg.brokers,
        input = cfg.input_topic,
        output = cfg.output_topic,
        dlq = cfg.dlq_topic,
        model_version = live.version,
        model = live.origin,
        guarantee = ?cfg.guarantee,
        latency_budget_ms = cfg.latency_budget.as_millis() as u64,
        fetch_wait_ms = consumer.get("fetch.wait.max.ms").unwrap_or("500"),
        fetch_min_bytes = consumer.get("fetch.min.bytes").unwrap_or("1"),
        linger_ms = producer.get("linger.ms").unwrap_or("5"),
        batch_gather_us = cfg.policy.gather.as_micros() as u64,
        routing = if topology.same_partition { "same partition" } else { "key hash" },
        "starting worker ({} input / {} output partitions)",
        topology.inputs,
        topology.outputs
    );
}

fn summary(
    metrics: &Metrics,
    released: Released,
    shutdown: &Shutdown,
    started: Instant,
) -> RunSummary {
    let summary = RunSummary {
        consumed: metrics.consumed_total.get(),
        predicted: metrics.predicted_total.get(),
        dead_lettered: metrics.dead_lettered_total.get(),
        undelivered: released.undelivered,
        uncommitted: released.commit_error,
        fatal: shutdown.fatal(),
        elapsed: started.elapsed(),
    };
    tracing::info!(
        undelivered = summary.undelivered,
        uncommitted = summary.uncommitted.is_some(),
        "stopped: {}",
        metrics.summary_line()
    );
    summary
}
