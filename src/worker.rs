//! `kafka-infer run`: the streaming worker, wired together.
//!
//! ```text
//!  partition threads ──► bounded channel ──► batcher ──► inference threads ──► sink (reorder)
//!  (1 per partition:      (backpressure)     (size /     (1 tract session      ──► producer ──►
//!   poll, decode,                             time /      each, prefetch-one)      delivery ack
//!   tokenize; bad                             tokens)                                  │
//!   records → DLQ)                                                                     ▼
//!        ▲                                                                   commit tracking
//!  main thread: polls the consumer (rebalances, errors), commits periodically, logs stats
//! ```
//!
//! Shutdown (signal or [`Shutdown::request`]): stop fetching, let queued tweets finish, wait for
//! their deliveries (bounded by the drain timeout), commit synchronously, close, return.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, Producer};

use crate::batcher::{self, Batch, BatchPolicy};
use crate::error::{Error, Result};
use crate::http;
use crate::metrics::{Metrics, Stage};
use crate::model::Classifier;
use crate::shutdown::Shutdown;
use crate::sink::{self, Scored, Sink, SinkConfig};
use crate::source::{self, SourceConsumer, SourceContext, SourceShared};

/// Everything `run` needs; built from the command line (or by the demo).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
    pub policy: BatchPolicy,
    pub channel_capacity: usize,
    pub inference_threads: usize,
    pub commit_interval: Duration,
    pub drain_timeout: Duration,
    pub max_text_bytes: usize,
    /// `None`: no HTTP endpoint.
    pub metrics_addr: Option<String>,
    pub log_interval: Duration,
    pub startup_timeout: Duration,
    /// librdkafka properties (`-X key=value`). A `consumer.` or `producer.` prefix applies a
    /// property to that client only; otherwise it applies to both.
    pub client_properties: Vec<(String, String)>,
}

/// Totals when the worker stops.
#[derive(Debug, Clone, Copy)]
pub struct RunSummary {
    pub consumed: u64,
    pub predicted: u64,
    pub dead_lettered: u64,
    pub elapsed: Duration,
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
        // Low-latency fetches: a broker that holds a waiting fetch until this expires (tansu)
        // would otherwise add up to 500 ms per hop. Apache Kafka answers earlier when data come.
        .set("fetch.wait.max.ms", "10")
        // Statistics carry per-partition consumer lag for /metrics.
        .set("statistics.interval.ms", "5000");
    let mut producer = ClientConfig::new();
    producer
        .set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Batching comes from the micro-batcher; a long linger would only add latency.
        .set("linger.ms", "1")
        // The Java client's key hashing, so keyed outputs land where Kafka Streams would put them.
        .set("partitioner", "murmur2_random");
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

/// Partition count of `topic`, or a one-line error naming what is wrong.
fn partition_count(
    producer: &BaseProducer,
    brokers: &str,
    topic: &str,
    what: &str,
    timeout: Duration,
) -> Result<usize> {
    let md = producer
        .client()
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| {
            Error::Config(format!(
                "cannot reach Kafka at {brokers} within {timeout:?}: {e}"
            ))
        })?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| {
            Error::Config(format!(
                "{what} topic '{topic}' does not exist on {brokers}"
            ))
        })?;
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(Error::Config(format!(
            "{what} topic '{topic}' does not exist on {brokers}"
        )));
    }
    Ok(t.partitions().len())
}

fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::io(name, e))
}

/// Runs the worker until `shutdown` is requested; then drains, commits and returns.
pub fn run(
    cfg: &WorkerConfig,
    classifier: Classifier,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> Result<RunSummary> {
    let started = Instant::now();
    if cfg.channel_capacity == 0 || cfg.policy.max_batch == 0 || cfg.inference_threads == 0 {
        return Err(Error::Config(
            "channel capacity, batch size and inference threads must be ≥ 1".into(),
        ));
    }
    let (consumer_cfg, producer_cfg) = client_configs(cfg);

    // Check the broker and the topics first, with a bounded wait, so a wrong address or a
    // missing topic is one clear error instead of a worker that silently waits.
    let probe: BaseProducer = producer_cfg.create()?;
    let t = cfg.startup_timeout;
    let inputs = partition_count(&probe, &cfg.brokers, &cfg.input_topic, "input", t)?;
    let outputs = partition_count(&probe, &cfg.brokers, &cfg.output_topic, "output", t)?;
    partition_count(&probe, &cfg.brokers, &cfg.dlq_topic, "dead-letter", t)?;
    drop(probe);
    let same_partition = outputs >= inputs;
    let sink_cfg = SinkConfig {
        output_topic: cfg.output_topic.clone(),
        dlq_topic: cfg.dlq_topic.clone(),
        source_topic: cfg.input_topic.clone(),
        same_partition,
        model_version: classifier.version().to_owned(),
    };
    let (sink, retries) = Sink::new(&producer_cfg, sink_cfg, metrics.clone())?;
    tracing::info!(
        brokers = cfg.brokers,
        input = cfg.input_topic,
        output = cfg.output_topic,
        dlq = cfg.dlq_topic,
        model_version = classifier.version(),
        routing = if same_partition {
            "same partition"
        } else {
            "key hash"
        },
        "starting worker ({inputs} input / {outputs} output partitions)"
    );

    let (item_tx, item_rx) = crossbeam_channel::bounded(cfg.channel_capacity);
    // Prefetch-one: a closed batch waits here while every inference thread is busy.
    let (batch_tx, batch_rx) = crossbeam_channel::bounded::<Batch>(1);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Scored>(cfg.inference_threads * 2);

    let mut pipeline = Vec::new();
    // Inference threads waiting for a batch: the batcher flushes early while one is idle.
    let idle_threads = Arc::new(AtomicUsize::new(0));
    let (m, policy, idle) = (metrics.clone(), cfg.policy, idle_threads.clone());
    pipeline.push(spawn("batcher", move || {
        batcher::run(item_rx, batch_tx, policy, &idle, &m)
    })?);
    // Each inference thread builds its own tract state (it is not `Send`) and reports back, so
    // a model problem fails start-up rather than a thread.
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<()>>(cfg.inference_threads);
    for i in 0..cfg.inference_threads {
        let (rx, tx, m, c, ready) = (
            batch_rx.clone(),
            done_tx.clone(),
            metrics.clone(),
            classifier.clone(),
            ready_tx.clone(),
        );
        let idle = idle_threads.clone();
        pipeline.push(spawn(&format!("inference-{i}"), move || {
            let mut session = match c.session() {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            drop(ready);
            loop {
                idle.fetch_add(1, Ordering::AcqRel);
                let next = rx.recv();
                idle.fetch_sub(1, Ordering::AcqRel);
                let Ok(batch) = next else { return };
                let t0 = Instant::now();
                let ids: Vec<&[i32]> = batch.items.iter().map(|it| it.ids.as_slice()).collect();
                let results = session.score_each(&ids);
                m.record(Stage::Inference, t0.elapsed());
                if tx.send(Scored { batch, results }).is_err() {
                    return;
                }
            }
        })?);
    }
    drop(ready_tx);
    for _ in 0..cfg.inference_threads {
        ready_rx
            .recv()
            .map_err(|_| Error::Model("an inference thread died at start-up".into()))??;
    }
    drop((batch_rx, done_tx));
    let s = sink.clone();
    pipeline.push(spawn("sink", move || sink::run(done_rx, retries, s))?);

    let heartbeat = Arc::new(AtomicU64::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    if let Some(addr) = &cfg.metrics_addr {
        let (hb, st) = (heartbeat.clone(), stopping.clone());
        let health: http::HealthCheck = Arc::new(move || {
            let age = started
                .elapsed()
                .as_secs()
                .saturating_sub(hb.load(Ordering::Relaxed));
            match (st.load(Ordering::Relaxed), age) {
                (true, _) => Err("shutting down".into()),
                (false, a) if a > 30 => Err(format!("main loop stalled for {a} s")),
                _ => Ok(()),
            }
        });
        let bound = http::serve(addr, metrics.clone(), health)?;
        tracing::info!("metrics on http://{bound}/metrics, health on http://{bound}/healthz");
    }

    let shared = SourceShared {
        tokenizer: Arc::new(classifier.tokenizer().clone()),
        sink: sink.clone(),
        metrics: metrics.clone(),
        max_text_bytes: cfg.max_text_bytes,
    };
    let context = SourceContext::new(shared, item_tx, cfg.drain_timeout);
    let consumer: Arc<SourceConsumer> = Arc::new(consumer_cfg.create_with_context(context)?);
    consumer.context().attach(&consumer);
    consumer.subscribe(&[&cfg.input_topic])?;

    let mut last_commit = Instant::now();
    let mut last_log = Instant::now();
    while !shutdown.is_requested() {
        heartbeat.store(started.elapsed().as_secs(), Ordering::Relaxed);
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => consumer.context().handle_main_queue_message(&msg),
            Some(Err(e)) => tracing::warn!("consumer error: {e}"),
            None => {}
        }
        if last_commit.elapsed() >= cfg.commit_interval {
            source::commit(
                &consumer,
                &consumer.context().trackers(),
                CommitMode::Async,
                &metrics,
            );
            last_commit = Instant::now();
        }
        if last_log.elapsed() >= cfg.log_interval {
            tracing::info!("{}", metrics.summary_line());
            last_log = Instant::now();
        }
        if pipeline.iter().any(|h| h.is_finished()) {
            return Err(Error::Config(
                "an internal pipeline thread stopped unexpectedly".into(),
            ));
        }
    }

    stopping.store(true, Ordering::Relaxed);
    tracing::info!("shutdown requested: draining in-flight records");
    // Stop fetching, wait for what was consumed to be delivered, commit it.
    consumer.context().revoke(&consumer, None);
    consumer.context().close_channel();
    for h in pipeline {
        let _ = h.join();
    }
    if let Err(e) = sink.flush(Duration::from_secs(5)) {
        tracing::warn!("producer flush: {e}");
    }
    consumer.unsubscribe();
    drop(consumer);
    let summary = RunSummary {
        consumed: metrics.consumed.load(Ordering::Relaxed),
        predicted: metrics.predicted.load(Ordering::Relaxed),
        dead_lettered: metrics.dead_lettered.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    };
    tracing::info!("stopped: {}", metrics.summary_line());
    Ok(summary)
}
