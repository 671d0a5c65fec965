//! Fault injection with librdkafka's in-process mock cluster (which can fail requests on
//! demand, unlike a real broker): the worker runs in-process so its metrics can be watched.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kafka_infer::batcher::BatchPolicy;
use kafka_infer::config::{Cli, Command};
use kafka_infer::metrics::Metrics;
use kafka_infer::model_files::ModelFiles;
use kafka_infer::models::{LiveModel, Models};
use kafka_infer::shutdown::Shutdown;
use kafka_infer::worker::{self, WorkerConfig};
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

/// Source offsets of the predictions now in the output topic.
fn predicted(brokers: &str) -> BTreeSet<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("out", 0, Offset::Beginning)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    let mut out = BTreeSet::new();
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
            out.insert(off);
        }
    }
    out
}

#[test]
fn failed_deliveries_rewind_the_partition_and_are_never_committed_before_they_land() {
    let mock = MockCluster::new(1).expect("mock cluster");
    for t in ["in", "out", "dlq"] {
        mock.create_topic(t, 1, 1).expect("topic");
    }
    let brokers = mock.bootstrap_servers();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
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

    // From now on the broker rejects Produce requests for a while (retriable errors); with a
    // 200 ms message timeout, deliveries fail back to the worker, which must produce again.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 80],
    );

    let models = Models::new(LiveModel::load(&ModelFiles::builtin(), false).expect("model"));
    let cfg = WorkerConfig {
        brokers: brokers.clone(),
        group_id: "faults".into(),
        input_topic: "in".into(),
        output_topic: "out".into(),
        dlq_topic: "dlq".into(),
        policy: BatchPolicy {
            max_batch: 8,
            max_wait: Duration::from_millis(5),
            max_tokens: 32768,
        },
        client_properties: vec![
            ("producer.message.timeout.ms".into(), "200".into()),
            ("producer.retry.backoff.ms".into(), "5".into()),
        ],
        commit_interval: Duration::from_millis(50),
        inference_threads: 1,
        max_rewinds: 50,
        ..defaults()
    };
    let metrics = Arc::new(Metrics::new(&models.current().version));
    let shutdown = Shutdown::new();
    let (m, s) = (metrics.clone(), shutdown.clone());
    let worker = std::thread::spawn(move || worker::run(&cfg, models, s, m));

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
    shutdown.request();
    let summary = worker.join().expect("worker thread").expect("worker ran");
    assert_eq!(summary.fatal, None);
    assert_eq!(summary.undelivered, 0);
    assert!(metrics.rewinds_total.get() > 0);
    eprintln!(
        "delivery errors: {}, rewinds: {}",
        metrics.delivery_errors_total.get(),
        metrics.rewinds_total.get()
    );
}
