//! Start-up checks, before anything runs: the flags against each other and against librdkafka's
//! own bounds, then the broker and the topics — with bounded waits, so a wrong address or a
//! missing topic is one clear error (exit code 1) instead of a worker that silently waits.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::clients::number;
use super::WorkerConfig;
use crate::error::{Error, Result};
use crate::kafka::sink::record::{Limits, KAFKA_DEFAULT_MAX_MESSAGE_BYTES};
use crate::kafka::Guarantee;
use crate::model::files::ModelFiles;
use crate::model::live::LiveModel;

/// Bound on one synchronous offset commit (at revoke and shutdown).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the broker said about the topics.
pub struct Topology {
    pub inputs: usize,
    pub outputs: usize,
    /// The output has at least as many partitions as the input: outputs keep their input's
    /// partition number (else by key hash).
    pub same_partition: bool,
    pub limits: Limits,
    /// The candidate model and its topic (`--shadow-model-dir`), and whether that topic keeps
    /// partition numbers too.
    pub shadow: Option<(LiveModel, String, bool)>,
}

/// The flags against each other and against the clients' settings.
pub fn check(cfg: &WorkerConfig, consumer: &ClientConfig, producer: &ClientConfig) -> Result<()> {
    if cfg.channel_capacity == 0 || cfg.policy.max_batch == 0 || cfg.inference_threads == 0 {
        return Err(Error::Config(
            "channel capacity, batch size and inference threads must be ≥ 1".into(),
        ));
    }
    // The rebalance callback drains revoked partitions; it must end well before the group
    // coordinator gives up on this member (max.poll.interval.ms), or the drain is for nothing.
    let max_poll = Duration::from_millis(number(consumer, "max.poll.interval.ms", 300_000));
    let rendezvous = cfg.drain_timeout + COMMIT_TIMEOUT + Duration::from_secs(3);
    if rendezvous >= max_poll {
        return Err(Error::Config(format!(
            "--drain-timeout-ms ({} ms) + commit and join bounds ({} ms) must stay below max.poll.interval.ms ({} ms): lower the drain timeout or raise -X consumer.max.poll.interval.ms",
            cfg.drain_timeout.as_millis(),
            (rendezvous - cfg.drain_timeout).as_millis(),
            max_poll.as_millis()
        )));
    }
    if cfg.guarantee == Guarantee::ExactlyOnce {
        let txn_timeout = number(producer, "transaction.timeout.ms", 60_000);
        if cfg.transaction_interval + cfg.drain_timeout >= Duration::from_millis(txn_timeout) {
            return Err(Error::Config(format!(
                "--transaction-interval-ms + --drain-timeout-ms must stay below the producer's transaction.timeout.ms ({txn_timeout} ms)"
            )));
        }
    }
    Ok(())
}

/// The start-up probe's context: its connection errors are reported as the one start-up error
/// line, not also as librdkafka log lines.
struct QuietContext;

impl rdkafka::ClientContext for QuietContext {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: rdkafka::error::KafkaError, _: &str) {}
    fn stats(&self, _: rdkafka::Statistics) {}
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Asks the broker about the topics (and loads the shadow model, if any). The probe is a
/// consumer: its metadata requests never auto-create a mistyped topic.
pub fn probe(
    cfg: &WorkerConfig,
    consumer: &ClientConfig,
    producer: &ClientConfig,
) -> Result<Topology> {
    let mut probe_cfg = consumer.clone();
    probe_cfg
        .set("allow.auto.create.topics", "false")
        .remove("statistics.interval.ms");
    let probe: BaseConsumer<QuietContext> = probe_cfg.create_with_context(QuietContext)?;
    let count = |topic: &str, what: &str| {
        partition_count(&probe, &cfg.brokers, topic, what, cfg.startup_timeout)
    };
    let inputs = count(&cfg.input_topic, "input")?;
    let outputs = count(&cfg.output_topic, "output")?;
    count(&cfg.dlq_topic, "dead-letter")?;
    let shadow = match &cfg.shadow_model_dir {
        Some(dir) => {
            let topic = cfg
                .shadow_topic
                .clone()
                .unwrap_or_else(|| format!("{}.shadow", cfg.output_topic));
            let shadows = count(&topic, "shadow")?;
            let model = LiveModel::load(&ModelFiles::read(dir)?, false)?;
            tracing::info!(version = model.version, dir = %dir.display(), topic, "shadow model");
            Some((model, topic, shadows >= inputs))
        }
        None => None,
    };
    drop(probe);
    Ok(Topology {
        inputs,
        outputs,
        same_partition: outputs >= inputs,
        limits: limits(cfg, consumer, producer),
        shadow,
    })
}

/// The size limits: the producer's `message.max.bytes` and the topics' `max.message.bytes`.
/// Optional knowledge (a limit is also learnt when the broker rejects a record), so a broker
/// that does not answer DescribeConfigs (the demo's mock cluster) costs 2 s, not the whole
/// start-up timeout.
fn limits(cfg: &WorkerConfig, consumer: &ClientConfig, producer: &ClientConfig) -> Limits {
    let default = KAFKA_DEFAULT_MAX_MESSAGE_BYTES;
    let producer_max = number(producer, "message.max.bytes", default as u64) as usize;
    let wait = cfg.startup_timeout.min(Duration::from_secs(2));
    let mut admin_cfg = consumer.clone();
    admin_cfg.remove("statistics.interval.ms");
    let topic_max =
        |topic: &str| topic_max_message_bytes(&admin_cfg, topic, wait).unwrap_or(default);
    Limits::new(
        producer_max,
        topic_max(&cfg.output_topic),
        topic_max(&cfg.dlq_topic),
    )
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
