//! Command-line interface (clap derive). Every flag can also be set from the environment.
//!
//! The doc comments here are `--help` text first: `{"value":[score]}` and `<tweet>` stay as a
//! user types them, not escaped for rustdoc (which would read them as a link and an HTML tag).
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::worker::WorkerConfig;
use crate::batching::BatchPolicy;
use crate::kafka::Guarantee;

/// Scores tweets with a disaster-tweet CNN: offline (`score`), as a Kafka worker (`run`), or
/// end to end against an in-process demo broker (`demo`).
#[derive(Debug, Parser)]
#[command(name = "kafka-infer", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score JSON lines ({"value": "<tweet>"}) or text lines from stdin or a file, offline.
    ///
    /// Writes one JSON line per input line, in input order: {"value":[score]} for a scored
    /// tweet, {"error":"<reason>","line":N} for a line that is not valid JSON, lacks a string
    /// "value", or is not UTF-8 (N counts from 1). Bad lines never stop the run.
    Score(ScoreArgs),
    /// Run the streaming worker: consume tweets, score them in micro-batches, produce scores.
    ///
    /// Reads {"value": "<tweet>"} records from the input topic (one thread per assigned
    /// partition), scores them in batches, and writes {"value":[score]} to the same partition of
    /// the output topic (when the output has fewer partitions than the input: to the partition
    /// of the key's hash, and records without a key are spread over all partitions, so their
    /// order is not kept) with the input's key and timestamp and headers model-version,
    /// source-topic, source-partition, source-offset. Records that cannot be scored go to the
    /// dead-letter topic with headers dlq-reason / dlq-error. An input offset is committed only
    /// once its output is acknowledged by the broker (at-least-once), or in the same transaction
    /// as its output (--guarantee exactly-once).
    ///
    /// SIGINT / SIGTERM: stop fetching, finish what was consumed (bounded by
    /// --drain-timeout-ms), commit it and exit; a second signal exits at once (code 130).
    ///
    /// Exit codes: 0 stopped cleanly (everything consumed was delivered and committed); 1 a
    /// start-up error (bad flag, broker unreachable, topic missing, bad model); 2 stopped with
    /// records undelivered or progress not committed (a failed final commit: the records after
    /// the last commit are re-processed after a restart); 3 stopped because something
    /// could not be handled (a partition that cannot make progress, a fatal client error).
    Run(Box<RunArgs>),
    /// Zero-setup demo: an in-process DEMO broker (librdkafka's mock cluster), the real worker,
    /// and the tweets of test.csv; prints sample scores, throughput and latency.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Directory holding model.onnx, vocab.txt and preprocess.json (and golden.jsonl), as
    /// written by model/train.py [default: the model built into this binary].
    #[arg(long, env = "KAFKA_INFER_MODEL_DIR", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// {"value": "<tweet>"} per line; other fields are ignored.
    Json,
    /// One plain-text tweet per line.
    Text,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Read from this file instead of stdin.
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// Read one plain-text tweet per line instead of JSON lines (same as --format text).
    #[arg(long, conflicts_with = "format")]
    pub text: bool,
    /// Input format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Tweets per inference batch.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
}

/// Parses `-X key=value`.
fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    if k.trim().is_empty() {
        return Err(format!("empty property name in {s:?}"));
    }
    Ok((k.trim().to_owned(), v.to_owned()))
}

/// One `-X` value (or `KAFKA_INFER_PROPERTIES`): `key=value`, or several separated by commas.
/// A comma starts a new property only when what follows it has an `=`; otherwise it belongs to
/// the value — librdkafka has list-valued properties (`debug=cgrp,broker`,
/// `partition.assignment.strategy=range,roundrobin`).
fn parse_properties(s: &str) -> Result<Properties, String> {
    let mut items: Vec<String> = Vec::new();
    for part in s.split(',') {
        match items.last_mut() {
            Some(last) if !part.contains('=') => {
                last.push(',');
                last.push_str(part);
            }
            _ => items.push(part.to_owned()),
        }
    }
    items
        .iter()
        .map(|i| parse_property(i))
        .collect::<Result<_, _>>()
        .map(Properties)
}

/// The librdkafka properties of one `-X` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

/// The one source of defaults: the worker's own (`WorkerConfig::default()`).
fn d() -> WorkerConfig {
    WorkerConfig::default()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Batching and pipeline tuning shared by `run` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Close a batch at this many records.
    #[arg(long, env = "KAFKA_INFER_MAX_BATCH", default_value_t = d().policy.max_batch as u32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_batch: u32,
    /// The latency the worker may spend coalescing work, in ms: the one knob between latency
    /// and CPU per tweet at moderate rates. It is split between the consumer's fetch wait (70 %:
    /// the broker holds a fetch until 64 KiB are there or this long), the producer's linger
    /// (10 %) and the batch's wait for chunks of the same burst (5 %). At high rates every
    /// stage fills by size long before its time is up, so only moderate and low rates pay it.
    /// 0: latency first (a fetch, a batch and a produce request as soon as anything is there).
    /// librdkafka settings given with -X take precedence.
    #[arg(long, env = "KAFKA_INFER_LATENCY_BUDGET_MS", default_value_t = ms(d().latency_budget), value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub latency_budget_ms: u64,
    /// Under load, close a batch at the latest this long after its first tweet arrived, even if
    /// not full.
    #[arg(long, env = "KAFKA_INFER_MAX_WAIT_MS", default_value_t = ms(d().policy.max_wait))]
    pub max_wait_ms: u64,
    /// Close a batch before batch size × longest tweet (padded tokens) would exceed this.
    #[arg(long, env = "KAFKA_INFER_MAX_BATCH_TOKENS", default_value_t = d().policy.max_tokens as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_tokens: u32,
    /// Chunks (the records one partition thread read in one go, at most --max-batch) queued
    /// between the partition threads and the batcher. When full, partition threads wait.
    #[arg(long, env = "KAFKA_INFER_CHANNEL_CAPACITY", default_value_t = d().channel_capacity as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub channel_capacity: u32,
    /// Bound on the memory held by records consumed but not yet handed to the producer
    /// (keys, values, token ids), in bytes. When spent, partition threads wait.
    #[arg(long, env = "KAFKA_INFER_MAX_IN_FLIGHT_BYTES", default_value_t = d().max_in_flight_bytes as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight_bytes: u64,
    /// Threads running inference, each with its own model state [default: number of cores].
    #[arg(long, env = "KAFKA_INFER_INFERENCE_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub inference_threads: Option<u32>,
    /// At-least-once: commit acknowledged offsets this often (also on revoke and at shutdown).
    #[arg(long, env = "KAFKA_INFER_COMMIT_INTERVAL_MS", default_value_t = ms(d().commit_interval), value_parser = clap::value_parser!(u64).range(1..))]
    pub commit_interval_ms: u64,
    /// On revoke or shutdown, wait at most this long for consumed records to be delivered.
    #[arg(long, env = "KAFKA_INFER_DRAIN_TIMEOUT_MS", default_value_t = ms(d().drain_timeout))]
    pub drain_timeout_ms: u64,
    /// Records whose value is larger than this go to the dead-letter topic unparsed.
    #[arg(long, env = "KAFKA_INFER_MAX_TEXT_BYTES", default_value_t = d().max_text_bytes as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_text_bytes: u32,
    /// BENCHMARK MODE ONLY: skip the model and score every tweet 0.5 (still decodes, tokenizes,
    /// batches, produces and commits). Measures the worker's own overhead.
    #[arg(long, env = "KAFKA_INFER_BENCHMARK_PASSTHROUGH")]
    pub benchmark_passthrough: bool,
}

impl PipelineArgs {
    pub fn policy(&self) -> BatchPolicy {
        BatchPolicy::new(
            self.max_batch as usize,
            Duration::from_millis(self.max_wait_ms),
            self.latency_budget(),
            self.max_batch_tokens as usize,
        )
    }

    pub fn latency_budget(&self) -> Duration {
        Duration::from_millis(self.latency_budget_ms)
    }

    /// These settings as `kafka-infer run` flags (the demo starts the worker with them).
    pub fn to_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            ("--max-batch", self.max_batch.to_string()),
            ("--latency-budget-ms", self.latency_budget_ms.to_string()),
            ("--max-wait-ms", self.max_wait_ms.to_string()),
            ("--max-batch-tokens", self.max_batch_tokens.to_string()),
            ("--channel-capacity", self.channel_capacity.to_string()),
            (
                "--max-in-flight-bytes",
                self.max_in_flight_bytes.to_string(),
            ),
            ("--commit-interval-ms", self.commit_interval_ms.to_string()),
            ("--drain-timeout-ms", self.drain_timeout_ms.to_string()),
            ("--max-text-bytes", self.max_text_bytes.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect();
        if let Some(n) = self.inference_threads {
            args.extend(["--inference-threads".to_owned(), n.to_string()]);
        }
        if self.benchmark_passthrough {
            args.push("--benchmark-passthrough".to_owned());
        }
        args
    }

    /// `base` with this tuning.
    pub fn apply(&self, base: WorkerConfig) -> WorkerConfig {
        WorkerConfig {
            policy: self.policy(),
            latency_budget: self.latency_budget(),
            channel_capacity: self.channel_capacity as usize,
            inference_threads: self
                .inference_threads
                .map_or(base.inference_threads, |n| n as usize),
            commit_interval: Duration::from_millis(self.commit_interval_ms),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            max_text_bytes: self.max_text_bytes as usize,
            max_in_flight_bytes: usize::try_from(self.max_in_flight_bytes).unwrap_or(usize::MAX),
            passthrough: self.benchmark_passthrough,
            ..base
        }
    }
}

/// `--metrics-addr`: an address to listen on, or none ("off").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub Option<SocketAddr>);

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("off"),
        }
    }
}

fn parse_metrics_addr(s: &str) -> Result<ListenAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(ListenAddr(None));
    }
    s.parse::<SocketAddr>()
        .map(|a| ListenAddr(Some(a)))
        .map_err(|_| format!("expected HOST:PORT (an IP address and a port, e.g. 127.0.0.1:9898) or \"off\", got {s:?}"))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, env = "KAFKA_BROKERS", default_value_t = d().brokers)]
    pub brokers: String,
    /// Consumer group.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value_t = d().group_id)]
    pub group_id: String,
    /// Topic to read tweets from.
    #[arg(long, env = "KAFKA_INPUT_TOPIC", default_value_t = d().input_topic)]
    pub input_topic: String,
    /// Topic to write scores to.
    #[arg(
        long,
        env = "KAFKA_OUTPUT_TOPIC",
        default_value_t = d().output_topic
    )]
    pub output_topic: String,
    /// Topic for records that cannot be scored.
    #[arg(long, env = "KAFKA_DLQ_TOPIC", default_value_t = d().dlq_topic)]
    pub dlq_topic: String,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Serve Prometheus /metrics and /healthz here ("off" to disable).
    #[arg(
        long,
        env = "KAFKA_INFER_METRICS_ADDR",
        default_value_t = ListenAddr(d().metrics_addr),
        value_parser = parse_metrics_addr
    )]
    pub metrics_addr: ListenAddr,
    /// Delivery guarantee. at-least-once: offsets are committed once outputs are acknowledged
    /// (duplicates possible after a crash or rebalance). exactly-once: each input partition has
    /// its own transactional producer; outputs and input offsets commit in one transaction, so
    /// read_committed readers see each prediction once.
    #[arg(long, env = "KAFKA_INFER_GUARANTEE", value_enum, default_value_t = d().guarantee)]
    pub guarantee: Guarantee,
    /// Exactly-once: transactional.id prefix; partition P of the input topic T writes with
    /// "<prefix>-T-P", which fences any earlier owner of that partition [default: the group id].
    #[arg(long, env = "KAFKA_INFER_TRANSACTIONAL_ID_PREFIX")]
    pub transactional_id_prefix: Option<String>,
    /// Exactly-once: how long one transaction stays open (it spans the batches of that time).
    /// Longer: fewer commits, more throughput; read_committed readers see outputs this much later.
    #[arg(long, env = "KAFKA_INFER_TRANSACTION_INTERVAL_MS", default_value_t = ms(d().transaction_interval), value_parser = clap::value_parser!(u64).range(1..))]
    pub transaction_interval_ms: u64,
    /// Rewinds of a partition in a row (after failed outputs) without progress before the worker
    /// stops with an error (exit code 3).
    #[arg(long, env = "KAFKA_INFER_MAX_REWINDS", default_value_t = d().max_rewinds)]
    pub max_rewinds: u32,
    /// /healthz reports 503 when a partition has records in flight and no output acknowledged
    /// for this long.
    #[arg(long, env = "KAFKA_INFER_STALL_TIMEOUT_MS", default_value_t = ms(d().stall_timeout))]
    pub stall_timeout_ms: u64,
    /// With --model-dir: look for a new model there this often (0: only on SIGHUP). A change is
    /// loaded once the files have stayed the same for one interval, validated against its own
    /// golden vectors off the hot path, and swapped in between chunks; a model that fails
    /// validation is rejected (log line, metric) and the live one keeps serving. Replace model
    /// directories atomically (rename, or switch a symlink) rather than file by file.
    #[arg(long, env = "KAFKA_INFER_MODEL_POLL_MS", default_value_t = ms(d().model_poll))]
    pub model_poll_ms: u64,
    /// A candidate model directory: it scores every batch too, off the hot path (shed, never
    /// delaying live work, when it cannot keep up), into --shadow-topic with the same key and
    /// partition; /metrics compares it with the live model (agreement, mean |Δscore|).
    #[arg(long, env = "KAFKA_INFER_SHADOW_MODEL_DIR", value_name = "DIR")]
    pub shadow_model_dir: Option<PathBuf>,
    /// Topic for shadow scores [default: <output topic>.shadow]; must exist.
    #[arg(long, env = "KAFKA_INFER_SHADOW_TOPIC", requires = "shadow_model_dir")]
    pub shadow_topic: Option<String>,
    /// Log a one-line stats summary this often.
    #[arg(long, env = "KAFKA_INFER_LOG_INTERVAL_MS", default_value_t = ms(d().log_interval))]
    pub log_interval_ms: u64,
    /// Give up at start-up if the broker does not answer within this time.
    #[arg(long, env = "KAFKA_INFER_STARTUP_TIMEOUT_MS", default_value_t = ms(d().startup_timeout))]
    pub startup_timeout_ms: u64,
    /// A librdkafka property (repeatable), e.g. -X security.protocol=SASL_SSL. Prefix with
    /// "consumer." or "producer." to set it on one client only (e.g. -X consumer.fetch.wait.max.ms=1).
    /// List values keep their commas (-X consumer.debug=cgrp,broker). Env:
    /// KAFKA_INFER_PROPERTIES, comma-separated (a comma followed by no "=" belongs to the value).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_properties, env = "KAFKA_INFER_PROPERTIES")]
    pub properties: Vec<Properties>,
}

impl RunArgs {
    pub fn worker_config(&self) -> WorkerConfig {
        self.pipeline.apply(WorkerConfig {
            brokers: self.brokers.clone(),
            group_id: self.group_id.clone(),
            input_topic: self.input_topic.clone(),
            output_topic: self.output_topic.clone(),
            dlq_topic: self.dlq_topic.clone(),
            metrics_addr: self.metrics_addr.0,
            guarantee: self.guarantee,
            transactional_id_prefix: self.transactional_id_prefix.clone(),
            transaction_interval: Duration::from_millis(self.transaction_interval_ms),
            max_rewinds: self.max_rewinds,
            stall_timeout: Duration::from_millis(self.stall_timeout_ms),
            model_dir: self.model.model_dir.clone(),
            model_poll: Duration::from_millis(self.model_poll_ms),
            shadow_model_dir: self.shadow_model_dir.clone(),
            shadow_topic: self.shadow_topic.clone(),
            log_interval: Duration::from_millis(self.log_interval_ms),
            startup_timeout: Duration::from_millis(self.startup_timeout_ms),
            client_properties: self.properties.iter().flat_map(|p| p.0.clone()).collect(),
            ..WorkerConfig::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tweets to feed: a CSV with a "text" column or a JSON-lines file [default: the 3,263
    /// tweets of data/disaster-tweets/test.csv, compiled in].
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// Feed at most this many tweets (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Partitions of the demo input and output topics.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// How many scored tweets to print.
    #[arg(long, default_value_t = 12)]
    pub sample: usize,
    /// After the backlog, feed the worker at this many tweets/s and report its CPU per tweet and
    /// end-to-end latency at that rate.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// How long the steady rate runs, in seconds (0: skip it).
    #[arg(long, default_value_t = 5)]
    pub steady_seconds: u64,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_lines_defaults_are_the_workers_defaults() {
        let Command::Run(args) = Cli::parse_from(["kafka-infer", "run"]).command else {
            unreachable!("parsed a run command");
        };
        assert_eq!(args.worker_config(), WorkerConfig::default());
    }

    #[test]
    fn the_demo_passes_its_pipeline_flags_on_to_the_worker_it_starts() {
        let Command::Demo(demo) = Cli::parse_from([
            "kafka-infer",
            "demo",
            "--latency-budget-ms",
            "3",
            "--max-batch",
            "64",
        ])
        .command
        else {
            unreachable!("parsed a demo command");
        };
        let mut argv = vec!["kafka-infer".to_owned(), "run".to_owned()];
        argv.extend(demo.pipeline.to_args());
        let Command::Run(run) = Cli::parse_from(argv).command else {
            unreachable!("parsed a run command");
        };
        let cfg = run.worker_config();
        assert_eq!(cfg.latency_budget, Duration::from_millis(3));
        assert_eq!(cfg.policy.max_batch, 64);
        assert_eq!(cfg.policy, demo.pipeline.policy());
    }

    fn run_properties(argv: &[&str]) -> Vec<(String, String)> {
        let Command::Run(run) = Cli::parse_from(argv).command else {
            unreachable!("parsed a run command");
        };
        run.worker_config().client_properties
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_property_with_a_list_value_keeps_its_commas() {
        let got = run_properties(&[
            "kafka-infer",
            "run",
            "-X",
            "consumer.debug=cgrp,broker",
            "-X",
            "partition.assignment.strategy=range,roundrobin",
            "-X",
            "linger.ms=5",
        ]);
        assert_eq!(
            got,
            pairs(&[
                ("consumer.debug", "cgrp,broker"),
                ("partition.assignment.strategy", "range,roundrobin"),
                ("linger.ms", "5"),
            ])
        );
    }

    #[test]
    fn commas_followed_by_a_key_separate_properties() {
        assert_eq!(
            parse_properties("a=1,debug=cgrp,broker,b=2"),
            Ok(Properties(pairs(&[
                ("a", "1"),
                ("debug", "cgrp,broker"),
                ("b", "2")
            ])))
        );
        assert!(parse_properties("no-equals-sign").is_err());
        assert!(parse_properties("=value").is_err());
    }
}
