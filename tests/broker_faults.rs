//! Broker faults under load: a partition leader SIGKILLed and restarted in a 3-node Apache Kafka
//! cluster, a single broker stopped and restarted with its data, and a broker *frozen*
//! (SIGSTOP/SIGCONT: it neither dies nor answers) many times during produce and commits, in
//! both modes. The worker must never exit, resume by itself, lose nothing, keep each
//! partition's order, and — exactly-once — show a read_committed reader no duplicate. Each test runs its own cluster (scripts/kafka),
//! one test at a time: four brokers, two workers and their feeders at once on a small CI
//! machine would test the machine's patience more than the worker.

mod support;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use support::kafka::Kafka;
use support::report::Scenario;
use support::*;

/// The node (its `node.id`, 1-based as scripts/kafka numbers them) leading `topic`/`partition`.
fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> usize {
    leader_of_any(bootstrap, topic, partition).expect("a leader")
}

/// The leader of `topic`/`partition` now, if it has one.
fn leader_of_any(bootstrap: &str, topic: &str, partition: i32) -> Option<usize> {
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let md = rdkafka::consumer::Consumer::fetch_metadata(&c, Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let leader = md.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == partition)?
        .leader();
    usize::try_from(leader).ok()
}

/// Held for a whole test: the tests of this file run one after the other.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a fault scenario went: what the worker re-scored and how long the output stood still.
struct Outcome {
    duplicates: usize,
    stall: Duration,
}

/// Feeds 300 tweets/s, lets the worker score 10 s of it (so that a restart from the beginning
/// would duplicate ≥ 3,000 outputs, far past any bound below), applies `fault`, lets the
/// stream flow 5 s more, then checks: every input has an output, the first output of each
/// input comes in input order per partition, the worker never exited, everything got
/// committed, and it exits 0 on SIGTERM. Measured figures are recorded before any assertion.
fn survive(
    name: &'static str,
    broker: &'static Kafka,
    replication: i32,
    worker_args: &[&str],
    fault: impl FnOnce(&World, &Worker),
) -> Outcome {
    let w = World::on(broker, replication);
    let feeder = w.feed(300);
    let mut sc = Scenario::start(name, &w.bootstrap(), &w.output, PARTITIONS);
    let mut worker = w.start_worker(worker_args);
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 3000);
    fault(&w, &worker);
    // Let the stream flow a while after the fault.
    std::thread::sleep(Duration::from_secs(5));
    let sent = feeder.stop();
    let want = all_inputs(sent);
    let outs = w.read(&w.output, WAIT, Duration::from_secs(3), |o| {
        want.is_subset(&predicted(o))
    });
    let m = worker.metrics();
    let note = format!(
        "{} rewinds, {} delivery errors; the worker never exited",
        m.get("kafka_infer_partition_rewinds_total")
            .copied()
            .unwrap_or(0.0),
        m.get("kafka_infer_delivery_errors_total")
            .copied()
            .unwrap_or(0.0),
    );
    measure_run(&mut sc, sent, &outs, note);
    worker.sample(&mut sc);
    assert_every_input_predicted(&want, &outs, &worker.log_text());
    assert_partition_order(&outs);
    assert!(
        worker.is_running(),
        "the worker exited:\n{}",
        worker.log_text()
    );
    w.wait_for_commits(&ends(sent), Duration::from_secs(60), &worker.log_text());
    assert_eq!(
        worker.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        worker.log_text()
    );
    let o = Outcome {
        duplicates: duplicates(&outs),
        stall: sc.longest_stall(),
    };
    eprintln!(
        "{sent} sent, {} duplicates, longest stall {:?}",
        o.duplicates, o.stall
    );
    o
}

/// At-least-once re-scores only what was acknowledged but not committed (≤ a commit
/// interval, 200 ms, of the 300 tweets/s) or in flight when a fault struck: 1 s of load per
/// fault is allowed. A worker that restarted further back would exceed it.
fn assert_duplicates_bounded(o: &Outcome, faults: usize) {
    let bound = 300 * faults;
    assert!(
        o.duplicates <= bound,
        "{} duplicates for {faults} faults (bound {bound})",
        o.duplicates
    );
}

#[test]
fn the_leader_of_an_input_partition_killed_and_restarted_in_a_three_node_cluster_loses_nothing() {
    let _serial = one_at_a_time();
    let cluster: &'static Kafka = Box::leak(Box::new(Kafka::start(3)));
    let o = survive(
        "3-node cluster: an input partition's leader SIGKILLed, restarted 12 s later",
        cluster,
        3,
        &[],
        |w, _| {
            let leader = leader_of(&w.bootstrap(), &w.input, 0);
            cluster.kill_node(leader);
            // Past the broker session timeout (9 s): the dead node is fenced, leadership
            // moves — and the test checks that it did, or it would test nothing.
            wait_until(Duration::from_secs(30), "leadership to move", || {
                leader_of_any(&w.bootstrap(), &w.input, 0).is_some_and(|l| l != leader)
            });
            std::thread::sleep(Duration::from_secs(3));
            cluster.start_node(leader);
        },
    );
    assert_duplicates_bounded(&o, 1);
    // Leadership moves within the broker session timeout (9 s), then the consumer follows.
    assert!(
        o.stall < Duration::from_secs(30),
        "output stood still {:?}",
        o.stall
    );
}

#[test]
fn a_single_broker_stopped_and_restarted_with_its_data_loses_nothing() {
    let _serial = one_at_a_time();
    let broker: &'static Kafka = Box::leak(Box::new(Kafka::start(1)));
    let o = survive(
        "single broker stopped for 10 s and restarted with its data",
        broker,
        1,
        &[],
        |_, _| {
            broker.stop_node(1);
            // Longer than the worker's session timeout (6 s): its partitions are lost meanwhile.
            std::thread::sleep(Duration::from_secs(10));
            broker.start_node(1);
        },
    );
    assert_duplicates_bounded(&o, 1);
    // 10 s down, then reconnection (librdkafka backs off up to 10 s) and a rejoin.
    assert!(
        o.stall < Duration::from_secs(45),
        "output stood still {:?}",
        o.stall
    );
}

/// Freezes (SIGSTOP) the only broker `times` times for `freeze`, thawing it for `thaw` in
/// between: the broker neither dies nor answers — requests hang until it is continued.
fn freezes(broker: &Kafka, times: usize, freeze: Duration, thaw: Duration) {
    for _ in 0..times {
        broker.pause_node(1);
        std::thread::sleep(freeze);
        broker.resume_node(1);
        std::thread::sleep(thaw);
    }
}

/// Exactly-once: freezes the only broker for `freeze` (thawing it for `thaw` after each) until
/// `wanted` freezes have caught a transaction in progress, at most `3 × wanted` freezes. A
/// freeze counts when the worker's own metrics show it: half a second into it, records consumed
/// whose outputs are not acknowledged (nothing is acknowledged while the broker is frozen, so
/// their transaction's commit, which flushes them, is pending in that freeze), or, by its end,
/// a transactional call that timed out and was called again (pending for a second and more of
/// that freeze). A freeze can fall where nothing is in flight and no call is made; such a
/// freeze is not counted. Each freeze starts once the worker consumes again (300 records since
/// the thaw, at most a minute): after a freeze past its session it first has to rejoin its
/// group, and a freeze while it owns no partition would catch nothing (a run of 2026-12-05 with
/// fixed 4 s thaws: 2 of 9). Returns (freezes that counted, freezes made).
fn freezes_during_transactions(
    broker: &Kafka,
    worker: &Worker,
    wanted: usize,
    freeze: Duration,
    thaw: Duration,
) -> (usize, usize) {
    let resumed = || worker.metric("kafka_infer_transaction_calls_resumed_total");
    let consumed = || worker.metric("kafka_infer_records_consumed_total");
    // The in-flight gauge is refreshed every commit interval (200 ms in the tests): the value
    // read here was set at least 300 ms into the freeze. (Later it says less: a commit that
    // times out fails its lane, and the rewound lane has nothing in flight.)
    let look_after = Duration::from_millis(500).min(freeze);
    let (mut counted, mut made) = (0, 0);
    while counted < wanted && made < 3 * wanted {
        let before = resumed();
        broker.pause_node(1);
        made += 1;
        std::thread::sleep(look_after);
        let in_flight = worker.in_flight() > 0;
        std::thread::sleep(freeze - look_after);
        if in_flight || resumed() > before {
            counted += 1;
        }
        broker.resume_node(1);
        std::thread::sleep(thaw);
        let thawed = consumed();
        let working_by = Instant::now() + Duration::from_secs(60);
        while consumed() < thawed + 300.0 && Instant::now() < working_by {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    (counted, made)
}

#[test]
fn at_least_once_through_ten_freezes_past_the_message_timeout_loses_nothing_and_keeps_order() {
    let _serial = one_at_a_time();
    let broker: &'static Kafka = Box::leak(Box::new(Kafka::start(1)));
    let mut rewinds = 0.0;
    let o = survive(
        "at-least-once: broker frozen 3 s ten times, outputs time out after 1.5 s",
        broker,
        1,
        // Outputs in flight at a freeze time out (the idempotent producer bumps its epoch,
        // while records queued behind them may still be sent): each time the partition
        // rewinds and the first appearance of every output must still follow input order.
        &["-X", "producer.message.timeout.ms=1500"],
        |_, worker| {
            freezes(broker, 10, Duration::from_secs(3), Duration::from_secs(2));
            rewinds = worker.metrics()["kafka_infer_partition_rewinds_total"];
        },
    );
    // The condition the test is named after: outputs did time out and the worker rewound.
    assert!(
        rewinds >= 1.0,
        "no output timed out: the freezes tested nothing"
    );
    assert_duplicates_bounded(&o, 10);
}

#[test]
fn exactly_once_through_ten_freezes_during_commits_shows_read_committed_readers_no_duplicate() {
    let _serial = one_at_a_time();
    let broker: &'static Kafka = Box::leak(Box::new(Kafka::start(1)));
    frozen_exactly_once(
        "exactly-once, 20 ms transactions: broker frozen 3 s ten times",
        broker,
        &[
            "--transaction-interval-ms",
            "20",
            "--drain-timeout-ms",
            "1500",
        ],
        10,
        Duration::from_secs(3),
        Duration::from_secs(2),
    );
}

// Ignored from 2026-12-04 to 12-05: the consumer sometimes never rejoined its group after a
// freeze. librdkafka's debug log showed why (it lost every broker: a Metadata answer listing
// none decommissioned the only one, and re-bootstrapping had been disabled by an earlier
// cancelled one); the vendored librdkafka carries the fix (third_party/README.md,
// tests/vendored_librdkafka.rs).
#[test]
fn exactly_once_with_defaults_through_freezes_longer_than_a_commit_bound_has_no_duplicate() {
    let _serial = one_at_a_time();
    let broker: &'static Kafka = Box::leak(Box::new(Kafka::start(1)));
    frozen_exactly_once(
        "exactly-once, defaults: broker frozen 12 s three times",
        broker,
        &[],
        3,
        Duration::from_secs(12),
        Duration::from_secs(4),
    );
}

/// Exactly-once under broker freezes: `wanted` freezes (of `freeze`, `thaw` after each) that
/// caught a transaction in progress ([`freezes_during_transactions`]); the worker must have
/// resumed a timed-out call, and still
/// every input comes exactly once for a read_committed reader, in order, and the worker exits 0.
fn frozen_exactly_once(
    name: &'static str,
    broker: &'static Kafka,
    extra: &[&str],
    wanted: usize,
    freeze: Duration,
    thaw: Duration,
) {
    let w = World::on(broker, 1);
    let feeder = w.feed(300);
    let mut sc = Scenario::start(name, &w.bootstrap(), &w.output, PARTITIONS);
    let mut args = vec!["--guarantee", "exactly-once"];
    args.extend_from_slice(extra);
    let mut worker = w.start_worker(&args);
    w.read_isolated(&w.output, "read_committed", WAIT, Duration::ZERO, |o| {
        o.len() >= 1500
    });
    let (caught, made) = freezes_during_transactions(broker, &worker, wanted, freeze, thaw);
    std::thread::sleep(Duration::from_secs(5));
    let sent = feeder.stop();
    let want = all_inputs(sent);
    let outs = w.read_isolated(
        &w.output,
        "read_committed",
        WAIT,
        Duration::from_secs(3),
        |o| want.is_subset(&predicted(o)),
    );
    let m = worker.metrics();
    let resumed = m
        .get("kafka_infer_transaction_calls_resumed_total")
        .copied()
        .unwrap_or(0.0);
    let aborted = m
        .get("kafka_infer_transactions_aborted_total")
        .copied()
        .unwrap_or(0.0);
    measure_run(
        &mut sc,
        sent,
        &outs,
        format!(
            "read_committed; {caught} of {made} freezes caught a transaction in progress; {resumed} transactional calls resumed, {aborted} transactions aborted"
        ),
    );
    worker.sample(&mut sc);
    let logs = worker.log_text();
    // First: a worker that stopped explains every other failure (its metrics are gone too).
    assert!(worker.is_running(), "the worker exited:\n{logs}");
    assert_eq!(
        caught, wanted,
        "only {caught} of {made} freezes caught a transaction in progress\n{logs}"
    );
    assert!(
        resumed >= 1.0,
        "no transactional call was pending across a freeze\n{logs}"
    );
    assert_every_input_predicted(&want, &outs, &logs);
    assert_eq!(
        duplicates(&outs),
        0,
        "read_committed saw duplicates\n{logs}"
    );
    assert_partition_order(&outs);
    assert_eq!(
        worker.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        worker.log_text()
    );
}

/// The partition of `__consumer_offsets` (of `partitions`) that holds `group`'s commits, hence
/// whose leader is the group's coordinator: Kafka's `Utils.abs(group.hashCode()) % partitions`
/// (Java's String hash over UTF-16 units).
fn offsets_partition(group: &str, partitions: i32) -> i32 {
    let h = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    (h & 0x7fff_ffff) % partitions
}

/// `__consumer_offsets`' partition count, once it exists and every partition has a leader.
fn offsets_partitions(bootstrap: &str) -> Option<i32> {
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let md = rdkafka::consumer::Consumer::fetch_metadata(
        &c,
        Some("__consumer_offsets"),
        Duration::from_secs(10),
    )
    .ok()?;
    let parts = md.topics().first()?.partitions();
    (!parts.is_empty() && parts.iter().all(|p| p.leader() >= 0)).then_some(parts.len() as i32)
}

#[test]
fn sigterm_while_the_group_coordinator_is_frozen_exits_2_and_says_progress_was_not_committed() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let _serial = one_at_a_time();
    let cluster: &'static Kafka = Box::leak(Box::new(Kafka::start(3)));
    let bootstrap = cluster.bootstrap.clone();
    // A throwaway group's commit makes the cluster create __consumer_offsets; then the
    // coordinator of the test's group is known before anything else exists.
    let warm_topic = kafka::unique("warm");
    kafka::create_topics(&bootstrap, &[(&warm_topic, 1)]);
    let warm: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", kafka::unique("warm"))
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&warm_topic, 0, rdkafka::Offset::Offset(0))
        .expect("tpl");
    let _ = rdkafka::consumer::Consumer::commit(&warm, &tpl, rdkafka::consumer::CommitMode::Sync);
    let mut partitions = None;
    wait_until(
        Duration::from_secs(60),
        "__consumer_offsets leaders",
        || {
            partitions = offsets_partitions(&bootstrap);
            partitions.is_some()
        },
    );
    let group = kafka::unique("group");
    let slot = offsets_partition(&group, partitions.expect("partitions"));
    let coordinator = leader_of(&bootstrap, "__consumer_offsets", slot);
    let others: Vec<i32> = (1..=3).filter(|n| *n != coordinator as i32).collect();
    // Input, output and dead letters on the two other nodes (both replicas: the cluster wants
    // two in sync): freezing the coordinator leaves produce and fetch alone, only the group
    // (and its commits) hangs.
    let w = World {
        broker: cluster,
        input: kafka::unique("in"),
        output: kafka::unique("out"),
        dlq: kafka::unique("dlq"),
        group,
    };
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    let (a, b) = (others[0], others[1]);
    let (ab, ba) = ([a, b], [b, a]);
    let spread: Vec<&[i32]> = (0..PARTITIONS as usize)
        .map(|p| if p % 2 == 0 { &ab[..] } else { &ba[..] })
        .collect();
    let topics = [
        NewTopic::new(&w.input, PARTITIONS, TopicReplication::Variable(&spread)),
        NewTopic::new(&w.output, PARTITIONS, TopicReplication::Variable(&spread)),
        NewTopic::new(&w.dlq, 1, TopicReplication::Variable(&spread[..1])),
    ];
    let created = futures_executor::block_on(admin.create_topics(&topics, &AdminOptions::new()));
    assert!(created.iter().flatten().count() == 3, "{created:?}");

    let feeder = w.feed(300);
    let mut worker = w.start_worker(&[]);
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 1500);
    cluster.pause_node(coordinator);
    // SIGTERM within a second, well inside the 6 s session timeout: the worker still owns its
    // partitions, has predicted records since its last commit (300/s, commits every 200 ms),
    // and its final commit goes to a coordinator that does not answer.
    std::thread::sleep(Duration::from_secs(1));
    let code = worker.terminate(Duration::from_secs(60));
    let sent = feeder.stop();
    cluster.resume_node(coordinator);
    let logs = worker.log_text();
    let committed: i64 = w.committed().values().sum();
    let outs = w.read(&w.output, WAIT, Duration::from_secs(2), |o| {
        predicted(o).len() as i64 >= committed
    });
    eprintln!(
        "{sent} sent, {} predicted, {committed} committed, exit {code:?}",
        predicted(&outs).len()
    );
    // (A commit request the frozen broker buffered may still apply once it thaws: the
    // worker cannot know, so it must say it did not commit — never the opposite.)
    assert!(
        committed as usize <= predicted(&outs).len(),
        "committed past the outputs"
    );
    assert_eq!(
        code,
        Some(2),
        "exit code while progress was not committed\n{logs}"
    );
    assert!(logs.contains("without committing its progress"), "{logs}");
}
