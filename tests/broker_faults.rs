//! Broker faults under load: a partition leader SIGKILLed and restarted in a 3-node Apache Kafka
//! cluster, and a single broker stopped and restarted with its data. The worker must never
//! exit, resume by itself, and lose nothing. Each test runs its own cluster (scripts/kafka),
//! one test at a time: four brokers, two workers and their feeders at once on a small CI
//! machine would test the machine's patience more than the worker.

mod support;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use support::kafka::Kafka;
use support::report::Scenario;
use support::*;

/// The node (its `node.id`, 1-based as scripts/kafka numbers them) leading `topic`/`partition`.
fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> usize {
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let md = rdkafka::consumer::Consumer::fetch_metadata(&c, Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let leader = md.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == partition)
        .expect("partition")
        .leader();
    usize::try_from(leader).expect("a leader")
}

/// Held for a whole test: the tests of this file run one after the other.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn survive(
    name: &'static str,
    broker: &'static Kafka,
    replication: i32,
    fault: impl FnOnce(&World),
) {
    let w = World::on(broker, replication);
    let feeder = w.feed(300);
    let mut sc = Scenario::start(name, &w.bootstrap(), &w.output, PARTITIONS);
    let mut worker = w.start_worker(&[]);
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 300);
    fault(&w);
    // Let the stream flow a while after the fault.
    std::thread::sleep(Duration::from_secs(5));
    let sent = feeder.stop();
    let want = all_inputs(sent);
    let outs = w.read(&w.output, WAIT, Duration::from_secs(3), |o| {
        want.is_subset(&predicted(o))
    });
    assert_every_input_predicted(&want, &outs, &worker.log_text());
    assert!(
        worker.is_running(),
        "the worker exited:\n{}",
        worker.log_text()
    );
    eprintln!("{sent} sent, {} duplicates", duplicates(&outs));
    w.wait_for_commits(&ends(sent), Duration::from_secs(60), &worker.log_text());
    worker.sample(&mut sc);
    worker.terminate_cleanly(Duration::from_secs(30));
    report_run(sc, sent, &outs, "the worker never exited");
}

#[test]
fn the_leader_of_an_input_partition_killed_and_restarted_in_a_three_node_cluster_loses_nothing() {
    let _serial = one_at_a_time();
    let cluster: &'static Kafka = Box::leak(Box::new(Kafka::start(3)));
    survive(
        "3-node cluster: an input partition's leader SIGKILLed, restarted 12 s later",
        cluster,
        3,
        |w| {
            let leader = leader_of(&w.bootstrap(), &w.input, 0);
            cluster.kill_node(leader);
            // Past the broker session timeout (9 s): the dead node is fenced, leadership moves.
            std::thread::sleep(Duration::from_secs(12));
            cluster.start_node(leader);
        },
    );
}

#[test]
fn a_single_broker_stopped_and_restarted_with_its_data_loses_nothing() {
    let _serial = one_at_a_time();
    let broker: &'static Kafka = Box::leak(Box::new(Kafka::start(1)));
    survive(
        "single broker stopped for 10 s and restarted with its data",
        broker,
        1,
        |_| {
            broker.stop_node(1);
            // Longer than the worker's session timeout (6 s): its partitions are lost meanwhile.
            std::thread::sleep(Duration::from_secs(10));
            broker.start_node(1);
        },
    );
}
