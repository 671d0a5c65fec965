//! Fault injection with librdkafka's in-process mock cluster (which can fail requests on
//! demand, unlike a real broker): the worker runs in-process so its metrics can be watched.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kafka_infer::app::cli::{Cli, Command};
use kafka_infer::app::shutdown::Shutdown;
use kafka_infer::app::worker::{self, WorkerConfig};
use kafka_infer::batching::BatchPolicy;
use kafka_infer::kafka::Guarantee;
use kafka_infer::model::files::ModelFiles;
use kafka_infer::model::live::{LiveModel, Models};
use kafka_infer::obs::metrics::Metrics;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const N: i64 = 30;

/// The worker configuration `kafka-infer run` has with no flags.
fn defaults() -> WorkerConfig {
    match Cli::parse_from(["kafka-infer", "run"]).command {
        Command::Run(args) => args.worker_config(),
        _ => unreachable!("parsed a run command"),
    }
}

fn committed(brokers: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "faults")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("in", 0);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(5))
        .expect("committed");
    match got.elements().first().map(|e| e.offset()) {
        Some(Offset::Offset(o)) => o,
        _ => 0,
    }
}

/// Source offsets of the predictions now in the output topic, as a read_committed reader sees
/// them (records of aborted transactions are skipped), one entry per output.
fn outputs(brokers: &str) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("out", 0, Offset::Beginning)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
            let off = m
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|x| x.key == "source-offset")
                        .and_then(|x| x.value)
                })
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .expect("source-offset header");
            out.push(off);
        }
    }
    out
}

fn predicted(brokers: &str) -> BTreeSet<i64> {
    outputs(brokers).into_iter().collect()
}

/// A mock cluster with topics in, out, dlq (one partition each) and N tweets in `in`.
fn cluster_with_tweets() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    for t in ["in", "out", "dlq"] {
        mock.create_topic(t, 1, 1).expect("topic");
    }
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .expect("producer");
    for i in 0..N {
        let (key, value) = (
            i.to_string(),
            format!(r#"{{"value":"flood warning number {i}"}}"#),
        );
        p.send(BaseRecord::to("in").key(&key).payload(&value))
            .expect("send");
    }
    p.flush(Duration::from_secs(10)).expect("flush");
    mock
}

/// The worker with small batches and a 200 ms message timeout, so that a Produce failure
/// reaches it quickly.
fn fault_config(brokers: &str, guarantee: Guarantee) -> WorkerConfig {
    WorkerConfig {
        brokers: brokers.to_owned(),
        group_id: "faults".into(),
        input_topic: "in".into(),
        output_topic: "out".into(),
        dlq_topic: "dlq".into(),
        policy: BatchPolicy {
            max_batch: 8,
            max_wait: Duration::from_millis(5),
            gather: Duration::ZERO,
            max_tokens: 32768,
        },
        client_properties: vec![
            ("producer.message.timeout.ms".into(), "200".into()),
            ("producer.retry.backoff.ms".into(), "5".into()),
        ],
        commit_interval: Duration::from_millis(50),
        transaction_interval: Duration::from_millis(50),
        inference_threads: 1,
        max_rewinds: 50,
        guarantee,
        // Tests run in parallel in this process: no fixed port.
        metrics_addr: None,
        ..defaults()
    }
}

/// The worker with the built-in model, in-process (its metrics are watched directly).
fn start(
    cfg: WorkerConfig,
) -> (
    Arc<Metrics>,
    Shutdown,
    std::thread::JoinHandle<kafka_infer::Result<worker::RunSummary>>,
) {
    let models = Models::new(LiveModel::load(&ModelFiles::builtin(), false).expect("model"));
    let metrics = Arc::new(Metrics::new(&models.current().version));
    let shutdown = Shutdown::new();
    let (m, s) = (metrics.clone(), shutdown.clone());
    let worker = std::thread::spawn(move || worker::run(&cfg, models, s, m));
    (metrics, shutdown, worker)
}

/// Asks the worker to stop and returns its summary; it must not have stopped on a fatal error.
fn stop(
    shutdown: Shutdown,
    worker: std::thread::JoinHandle<kafka_infer::Result<worker::RunSummary>>,
) -> worker::RunSummary {
    shutdown.request();
    let summary = worker.join().expect("worker thread").expect("worker ran");
    assert_eq!(summary.fatal, None);
    summary
}

#[test]
fn failed_deliveries_rewind_the_partition_and_are_never_committed_before_they_land() {
    let mock = cluster_with_tweets();
    let brokers = mock.bootstrap_servers();

    // From now on the broker rejects Produce requests for a while (retriable errors); with a
    // 200 ms message timeout, deliveries fail back to the worker, which must produce again.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 80],
    );

    let (metrics, shutdown, worker) = start(fault_config(&brokers, Guarantee::AtLeastOnce));

    // While deliveries fail: whatever is committed has been delivered.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.delivery_errors_total.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "no delivery failed: the fault was not injected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..5 {
        let c = committed(&brokers);
        let done = predicted(&brokers);
        assert!(
            (0..c).all(|o| done.contains(&o)),
            "committed {c} but delivered only {done:?}"
        );
    }

    // Once the broker accepts again, every tweet is predicted and committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&brokers) < N {
        assert!(
            Instant::now() < deadline,
            "committed {} of {N}",
            committed(&brokers)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(predicted(&brokers), (0..N).collect::<BTreeSet<_>>());
    assert_eq!(metrics.dead_lettered_total.get(), 0);
    let summary = stop(shutdown, worker);
    assert_eq!(summary.undelivered, 0);
    assert!(metrics.rewinds_total.get() > 0);
    eprintln!(
        "delivery errors: {}, rewinds: {}",
        metrics.delivery_errors_total.get(),
        metrics.rewinds_total.get()
    );
}

#[test]
fn a_failed_offset_commit_is_sent_again_although_no_new_record_arrives() {
    let mock = cluster_with_tweets();
    let brokers = mock.bootstrap_servers();

    // Every offset commit fails (a non-retriable error: librdkafka gives up on it at once)
    // until the errors are cleared below.
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_COMMIT_OFFSET_SIZE; 100_000],
    );
    let cfg = fault_config(&brokers, Guarantee::AtLeastOnce);
    let commit_interval = cfg.commit_interval;
    let (metrics, shutdown, worker) = start(cfg);

    // Every tweet is scored and delivered while its commits fail, and the final position's
    // commits have been sent (and failed) several times: the input is quiet from here on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while predicted(&brokers).len() < N as usize {
        assert!(Instant::now() < deadline, "not every tweet was predicted");
    }
    // Ten commit intervals: the final position has been sent, and refused, since.
    std::thread::sleep(10 * commit_interval);
    assert!(
        metrics.commit_errors_total.get() > 0,
        "no commit failed: the fault was not injected"
    );
    assert_eq!(committed(&brokers), 0, "a commit went through the fault");

    // The broker accepts commits again; no record arrives to move the position.
    mock.clear_request_errors(RDKafkaApiKey::OffsetCommit);
    let deadline = Instant::now() + Duration::from_secs(10);
    while committed(&brokers) < N {
        assert!(
            Instant::now() < deadline,
            "committed offset stuck at {} of {N}",
            committed(&brokers)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metrics.consumed_total.get(),
        N as u64,
        "nothing was re-read"
    );
    let summary = stop(shutdown, worker);
    assert_eq!(summary.undelivered, 0);
}

#[test]
fn a_produce_failure_mid_transaction_aborts_it_and_the_partition_is_processed_again() {
    let mock = cluster_with_tweets();
    let brokers = mock.bootstrap_servers();
    // The first Produce requests fail: with a 200 ms message timeout the outputs of the open
    // transaction fail, so it must be aborted (never committed with holes), the partition
    // rewound to its last committed offset and the records scored again.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 8],
    );
    let mut cfg = fault_config(&brokers, Guarantee::ExactlyOnce);
    // A failed partition waits two heartbeats before it re-initialises its producer.
    cfg.client_properties
        .push(("consumer.heartbeat.interval.ms".into(), "500".into()));
    let (metrics, shutdown, worker) = start(cfg);

    // (The mock cluster accepts transactional offset commits but does not store them, so
    // progress is read from the output, as a read_committed consumer downstream sees it.)
    let deadline = Instant::now() + Duration::from_secs(120);
    while predicted(&brokers).len() < N as usize {
        assert!(
            Instant::now() < deadline,
            "{} of {N} visible; aborted {}",
            predicted(&brokers).len(),
            metrics.transactions_aborted_total.get()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The injected failures did abort a transaction (else this test proves nothing)…
    assert!(
        metrics.transactions_aborted_total.get() > 0,
        "no transaction was aborted: the fault was not injected"
    );
    assert!(metrics.rewinds_total.get() > 0);
    assert!(metrics.transactions_committed_total.get() > 0);
    // …and every input is visible exactly once: read past N (2 s) to see duplicates.
    let seen = outputs(&brokers);
    assert_eq!(seen.len() as i64, N, "outputs {seen:?}");
    assert_eq!(
        seen.iter().copied().collect::<BTreeSet<_>>(),
        (0..N).collect::<BTreeSet<_>>()
    );
    stop(shutdown, worker);
    eprintln!(
        "transactions aborted: {}, committed: {}, rewinds: {}",
        metrics.transactions_aborted_total.get(),
        metrics.transactions_committed_total.get(),
        metrics.rewinds_total.get()
    );
}

/// `/healthz` answers at once while a partition's transactional producer is still starting:
/// the assignment does not wait for `init_transactions` (the partition's own thread runs it)
/// and the health check takes the partition map only to copy it. The mock cluster refuses the
/// worker's InitProducerId requests 16 times (the coordinator "still loading"; librdkafka asks
/// again every ~500 ms, so ~8 s), so the call
/// provably stays pending — the worker's count of resumed transactional calls grows across
/// the probes — then lets it through, and every input is scored once. The worker runs as the
/// binary users run, against the mock cluster over TCP.
#[test]
fn healthz_answers_while_a_partition_waits_for_its_transactional_producer() {
    let mock = cluster_with_tweets();
    let brokers = mock.bootstrap_servers();
    mock.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 16],
    );
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mock-healthz-{}.log", std::process::id()));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kafka-infer"));
    cmd.arg("run")
        .args(["--brokers", &brokers, "--group-id", "faults"])
        .args([
            "--input-topic",
            "in",
            "--output-topic",
            "out",
            "--dlq-topic",
            "dlq",
        ])
        .args([
            "--guarantee",
            "exactly-once",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info,kafka_infer=debug");
    let mut worker = support::Worker::spawn(cmd, log);
    let resumed = |w: &support::Worker| w.metric("kafka_infer_transaction_calls_resumed_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    while resumed(&worker) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "init_transactions never pending:\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = resumed(&worker);
    for _ in 0..5 {
        let t0 = Instant::now();
        let answer = worker.health();
        let took = t0.elapsed();
        let (code, body) = answer.unwrap_or_else(|| panic!("no answer:\n{}", worker.log_text()));
        assert!(took < Duration::from_secs(1), "answered after {took:?}");
        assert_eq!(code, 200, "{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        resumed(&worker) > before,
        "init_transactions was no longer pending during the probes"
    );
    assert!(
        predicted(&brokers).is_empty(),
        "scored before its producer started"
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    while predicted(&brokers).len() < N as usize {
        assert!(Instant::now() < deadline, "{}", worker.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(outputs(&brokers).len(), N as usize, "duplicates");
    worker.terminate_cleanly(Duration::from_secs(30));
}
