//! `kafka-infer demo` (part of the binary, not the library): the whole worker against an in-process **demo broker** (librdkafka's mock
//! cluster, which speaks the Kafka protocol over real loopback sockets). Zero setup: no broker
//! to install. It preloads the tweets, runs the real worker code path until every tweet is
//! scored, and reports what a user wants to see first: some scores, throughput and latency.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use anyhow::{bail, Result};
use kafka_infer::metrics::{Metrics, Role, Stage};
use kafka_infer::models::Models;
use kafka_infer::shutdown::Shutdown;
use kafka_infer::worker::{self, WorkerConfig};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

const INPUT: &str = "incoming_tweet";
const OUTPUT: &str = "tweet_disaster_inference";
const DLQ: &str = "incoming_tweet.dlq";

/// What the demo found.
#[derive(Debug)]
pub struct DemoReport {
    pub tweets: usize,
    pub predicted: usize,
}

/// Runs the demo and prints its report to stdout. `template` supplies the pipeline tuning;
/// brokers, topics and group are the demo's own.
pub fn run(
    models: Arc<Models>,
    tweets: &[String],
    partitions: i32,
    sample: usize,
    template: WorkerConfig,
    shutdown: Shutdown,
) -> Result<DemoReport> {
    println!(
        "kafka-infer demo — DEMO BROKER: librdkafka's in-process mock cluster, not a real Kafka."
    );
    let mock = MockCluster::new(1)?;
    for (topic, parts) in [(INPUT, partitions), (OUTPUT, partitions), (DLQ, 1)] {
        mock.create_topic(topic, parts, 1)?;
    }
    let brokers = mock.bootstrap_servers();
    println!("demo broker at {brokers}; model {}; feeding {} tweets into '{INPUT}' ({partitions} partitions)", models.current().version, tweets.len());

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()?;
    for (i, text) in tweets.iter().enumerate() {
        let payload = serde_json::json!({ "value": text }).to_string();
        let key = i.to_string();
        let mut rec = BaseRecord::to(INPUT).key(&key).payload(&payload);
        // Preloading outruns librdkafka's queue: wait for deliveries while it is full.
        while let Err((e, back)) = producer.send(rec) {
            if !matches!(
                e,
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
            ) {
                return Err(e.into());
            }
            rec = back;
            producer.poll(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(30))?;

    let metrics = Arc::new(Metrics::new(&models.current().version));
    let live = models.current();
    metrics.watch_drift(Role::Live, &live.version, live.drift.clone());
    let cfg = WorkerConfig {
        brokers: brokers.clone(),
        group_id: "kafka-infer-demo".into(),
        input_topic: INPUT.into(),
        output_topic: OUTPUT.into(),
        dlq_topic: DLQ.into(),
        metrics_addr: None,
        ..template
    };
    let (worker_stop, m) = (Shutdown::new(), metrics.clone());
    let stop = worker_stop.clone();
    let worker = std::thread::spawn(move || worker::run(&cfg, models, stop, m));

    let (scores, drain) = collect(&brokers, partitions, tweets.len(), &shutdown, &worker)?;
    worker_stop.request();
    match worker.join() {
        Ok(r) => {
            let summary = r?;
            if let Some(reason) = summary.fatal {
                bail!("the worker stopped: {reason}");
            }
        }
        Err(_) => bail!("the worker thread panicked"),
    }

    println!("\n  score  verdict       tweet");
    for (i, text) in tweets.iter().enumerate().take(sample) {
        if let Some(s) = scores.get(&i) {
            let verdict = if *s >= 0.5 { "DISASTER" } else { "-" };
            let short: String = text.replace('\n', " ").chars().take(90).collect();
            println!("  {s:.3}  {verdict:<12}  {short}");
        }
    }
    let disasters = scores.values().filter(|s| **s >= 0.5).count();
    let n = scores.len();
    println!(
        "\n{n} of {} tweets scored, {disasters} flagged as disasters (score ≥ 0.5)",
        tweets.len()
    );
    println!(
        "throughput: {:.0} tweets/s (first to last prediction: {:.2} s; all tweets were preloaded)",
        n.saturating_sub(1) as f64 / drain.as_secs_f64().max(1e-9),
        drain.as_secs_f64()
    );
    let b = metrics.batch_sizes();
    println!(
        "batches: {} (mean size {:.1}, max {})",
        b.len(),
        b.mean(),
        b.max()
    );
    println!("latency per stage          p50        p99      p99.9        max");
    for (stage, name) in [
        (Stage::ChannelWait, "channel wait"),
        (Stage::BatchWait, "batch wait"),
        (Stage::Inference, "inference (batch)"),
        (Stage::ProduceAck, "produce ack"),
        (Stage::EndToEnd, "end to end (queued)"),
    ] {
        let h = metrics.histogram(stage);
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        println!(
            "  {name:<20} {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>7.2} ms",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1e3
        );
    }
    println!("(end to end counts from each tweet's produce timestamp, so it includes the preload backlog.)");
    Ok(DemoReport {
        tweets: tweets.len(),
        predicted: n,
    })
}

/// Reads the output topic until a score has arrived for each of `expected` keys. Returns the
/// scores by key and the time from the first to the last arrival.
fn collect<T>(
    brokers: &str,
    partitions: i32,
    expected: usize,
    shutdown: &Shutdown,
    worker: &std::thread::JoinHandle<T>,
) -> Result<(HashMap<usize, f32>, Duration)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "kafka-infer-demo-reader")
        .set("enable.auto.commit", "false")
        // Short fetch waits, so arrival times reflect when predictions were produced.
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(OUTPUT, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut scores = HashMap::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut first, mut last) = (None, Instant::now());
    while scores.len() < expected {
        if shutdown.is_requested() || worker.is_finished() || Instant::now() > deadline {
            break;
        }
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
            let key = msg
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| k.parse().ok());
            let score = msg
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .and_then(|v| v["value"][0].as_f64());
            if let (Some(k), Some(s)) = (key, score) {
                scores.insert(k, s as f32);
                last = Instant::now();
                first.get_or_insert(last);
            }
        }
    }
    Ok((scores, last - first.unwrap_or(last)))
}
