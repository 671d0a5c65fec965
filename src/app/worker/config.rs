//! What the worker is told: [`WorkerConfig`], whose [`Default`] is the one source of every
//! default (the command line takes its defaults from it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::batching::latency::DEFAULT_LATENCY_BUDGET_MS;
use crate::batching::BatchPolicy;
use crate::kafka::Guarantee;

/// Everything `run` needs; built from the command line, or by tests from the default.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
    pub policy: BatchPolicy,
    /// How long work may be held back to coalesce it (see [`crate::batching::latency`]).
    pub latency_budget: Duration,
    /// Chunks between the partition threads and the inference threads.
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
    pub model_dir: Option<PathBuf>,
    /// How often to look at the model directory (zero: only on SIGHUP).
    pub model_poll: Duration,
    /// Benchmark pass-through mode (no model runs; no reloads).
    pub passthrough: bool,
    /// A candidate model that scores every batch too, off the hot path, into `shadow_topic`.
    pub shadow_model_dir: Option<PathBuf>,
    /// Where shadow scores go (default `<output topic>.shadow`).
    pub shadow_topic: Option<String>,
}

/// Threads that run inference by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let latency_budget = Duration::from_millis(DEFAULT_LATENCY_BUDGET_MS);
        let max_wait = Duration::from_millis(5);
        WorkerConfig {
            brokers: "localhost:9092".into(),
            group_id: "kafka-infer".into(),
            input_topic: "incoming_tweet".into(),
            output_topic: "tweet_disaster_inference".into(),
            dlq_topic: "incoming_tweet.dlq".into(),
            policy: BatchPolicy::new(256, max_wait, latency_budget, 32768),
            latency_budget,
            channel_capacity: 64,
            inference_threads: default_threads(),
            commit_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            max_text_bytes: 65536,
            max_in_flight_bytes: 32 << 20,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9898))),
            log_interval: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(10),
            client_properties: Vec::new(),
            guarantee: Guarantee::AtLeastOnce,
            transactional_id_prefix: None,
            transaction_interval: Duration::from_millis(100),
            max_rewinds: 5,
            stall_timeout: Duration::from_secs(120),
            model_dir: None,
            model_poll: Duration::from_secs(5),
            passthrough: false,
            shadow_model_dir: None,
            shadow_topic: None,
        }
    }
}
