//! `--guarantee exactly-once` on Apache Kafka: each input partition has its own transactional
//! producer, and a partition's outputs commit together with its input offsets. A reader with
//! `isolation.level=read_committed` must see every input's output exactly once, across crashes,
//! zombies and rebalances; a read_uncommitted reader sees the aborted duplicates, which shows
//! the duplicate count is able to tell.

mod support;

use std::time::Duration;

use support::report::Scenario;
use support::*;

const EOS: [&str; 4] = [
    "--guarantee",
    "exactly-once",
    "--transaction-interval-ms",
    "100",
];

/// An exactly-once worker; `extra` may set its own `--transaction-interval-ms`.
fn eos_worker(w: &World, extra: &[&str]) -> Worker {
    let own_interval = extra.contains(&"--transaction-interval-ms");
    let defaults = if own_interval { &EOS[..2] } else { &EOS[..] };
    let args: Vec<&str> = defaults.iter().chain(extra).copied().collect();
    w.start_worker(&args)
}

/// Every input exactly once for read_committed; returns the read_uncommitted duplicates (and
/// reports the run).
fn assert_exactly_once(w: &World, mut sc: Scenario, sent: usize, logs: &str) -> usize {
    let want = all_inputs(sent);
    let committed = w.read_isolated(
        &w.output,
        "read_committed",
        WAIT,
        Duration::from_secs(3),
        |o| want.is_subset(&predicted(o)),
    );
    measure_run(&mut sc, sent, &committed, "read_committed");
    assert_every_input_predicted(&want, &committed, logs);
    assert_eq!(
        duplicates(&committed),
        0,
        "read_committed saw duplicates\n{logs}"
    );
    assert_eq!(committed.len(), sent);
    assert_partition_order(&committed);
    let uncommitted = w.read(&w.output, WAIT, Duration::from_secs(2), |o| {
        want.is_subset(&predicted(o))
    });
    let aborted = duplicates(&uncommitted);
    measure_run(
        &mut sc,
        sent,
        &committed,
        format!("read_committed; a read_uncommitted reader saw {aborted} aborted duplicates"),
    );
    aborted
}

#[test]
fn exactly_once_an_input_whose_key_makes_its_output_too_large_is_dead_lettered_in_its_transaction()
{
    let w = World::new();
    let mut worker = an_oversized_key_run(&w, &EOS, "read_committed");
    assert!(worker.is_running());
    worker.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn exactly_once_lag_falls_to_zero_once_caught_up() {
    // Transactional offset commits never update the consumer's own committed offset: lag
    // read from it would grow forever while the worker is caught up.
    let w = World::new();
    let mut worker = eos_worker(&w, &[]);
    w.produce(&tweets(300, 0));
    w.read_isolated(&w.output, "read_committed", WAIT, Duration::ZERO, |o| {
        o.len() >= 300
    });
    wait_until(WAIT, "lag gauges reporting", || {
        worker.metrics().contains_key("kafka_infer_consumer_lag")
    });
    wait_until(Duration::from_secs(30), "lag 0 once caught up", || {
        worker.metrics()["kafka_infer_consumer_lag"] == 0.0
    });
    // And it says so while more arrives and is committed.
    w.produce(&tweets(300, 300));
    w.read_isolated(&w.output, "read_committed", WAIT, Duration::ZERO, |o| {
        o.len() >= 600
    });
    wait_until(Duration::from_secs(30), "lag 0 again", || {
        worker.metrics()["kafka_infer_consumer_lag"] == 0.0
    });
    worker.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn exactly_once_through_twenty_kill9s_of_two_workers_under_load() {
    let w = World::new();
    let feeder = w.feed(400);
    let mut sc = Scenario::start(
        "exactly-once: kill -9 20 times, 2 workers, 400 tweets/s",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut workers = [eos_worker(&w, &[]), eos_worker(&w, &[])];
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 100);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for kill in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = kill % 2;
        std::thread::sleep(Duration::from_millis(300 + seed % 1200));
        // With records in flight: outputs produced into an open transaction.
        wait_until(
            Duration::from_secs(60),
            "records in flight in the victim",
            || workers[victim].in_flight() > 0,
        );
        workers[victim].sample(&mut sc);
        workers[victim].kill9();
        workers[victim] = eos_worker(&w, &[]);
    }
    let sent = feeder.stop();
    let logs = format!("{}\n----\n{}", workers[0].log_text(), workers[1].log_text());
    let aborted_dups = assert_exactly_once(&w, sc, sent, &logs);
    eprintln!("{sent} inputs; read_uncommitted saw {aborted_dups} aborted duplicates");
    // The kills left open transactions behind: a reader that does not skip aborted records
    // sees their outputs twice — so the read_committed count of 0 is a real measurement.
    assert!(
        aborted_dups > 0,
        "no aborted output at all: the kills hit nothing in flight"
    );
    for mut worker in workers {
        worker.terminate_cleanly(Duration::from_secs(30));
    }
}

#[test]
fn a_zombie_worker_is_fenced_and_its_late_writes_are_never_visible() {
    let w = World::new();
    let feeder = w.feed(300);
    let sc = Scenario::start(
        "exactly-once: a zombie frozen 12 s (past its session) and woken",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    // The zombie's transactions stay open 20 s: when it freezes, it holds one for sure.
    let zombie = eos_worker(&w, &["--transaction-interval-ms", "20000"]);
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 100);
    let mut other = eos_worker(&w, &[]);
    zombie
        .wait_for_log("partition released", WAIT)
        .expect("the rebalance gave the newcomer partitions");
    // Outputs a read_committed reader does not see: an open transaction. The other worker
    // commits every 100 ms (≤ 30 records open at 300/s), so 200 are the zombie's.
    let open = |w: &World| {
        let all = w.read(&w.output, Duration::from_secs(3), Duration::ZERO, |_| false);
        let committed = w.read_isolated(
            &w.output,
            "read_committed",
            Duration::from_secs(3),
            Duration::ZERO,
            |_| false,
        );
        all.len().saturating_sub(committed.len())
    };
    wait_until(WAIT, "the zombie to hold an open transaction", || {
        open(&w) >= 200
    });
    let other_assigned = other.log_text().matches("partition assigned").count();
    assert!(other_assigned < 3, "the zombie kept a partition");
    // Frozen past its session timeout (6 s): its partitions move to the other worker, whose
    // producers take over the partitions' transactional ids (fencing the zombie's).
    zombie.signal("STOP");
    wait_until(WAIT, "the other worker to take every partition", || {
        other.log_text().matches("partition assigned").count() >= 3
    });
    zombie.signal("CONT");
    // Woken up, the zombie still holds records it produced into transactions whose ids the
    // other worker's producers took over (fencing them); it learns it lost its partitions.
    zombie
        .wait_for_log("lost=true", WAIT)
        .expect("the zombie learns it lost its partitions");
    std::thread::sleep(Duration::from_secs(2));
    let sent = feeder.stop();
    let logs = format!(
        "zombie:\n{}\n----\nother:\n{}",
        zombie.log_text(),
        other.log_text()
    );
    assert_exactly_once(&w, sc, sent, &logs);
    let code = other.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", other.log_text());
}

#[test]
fn rebalance_churn_keeps_exactly_once() {
    let w = World::new();
    let feeder = w.feed(400);
    let sc = Scenario::start(
        "exactly-once: a worker joins and leaves 6 times",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut stable = eos_worker(&w, &[]);
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 100);
    for round in 0..6 {
        let mut joiner = eos_worker(&w, &[]);
        joiner
            .wait_for_log("partition assigned", WAIT)
            .unwrap_or_else(|| panic!("round {round}: no partition\n{}", joiner.log_text()));
        std::thread::sleep(Duration::from_millis(700));
        joiner.terminate_cleanly(Duration::from_secs(30));
    }
    let sent = feeder.stop();
    assert_exactly_once(&w, sc, sent, &stable.log_text());
    stable.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn an_owner_fenced_by_a_stranger_takes_its_partition_back_and_stays_exactly_once() {
    // What a zombie that wakes with a transaction open can do (its producer bumps its epoch):
    // fence the partition's rightful owner. Here a stranger does it on purpose, three times,
    // with partition 0's transactional id, while the owner has records in flight. The owner is
    // still assigned the partition, so it must take the id back and go on: no exit, no loss,
    // no duplicate for read_committed.
    let w = World::new();
    let feeder = w.feed(300);
    let mut sc = Scenario::start(
        "exactly-once: the owner fenced 3 times by a stranger with its transactional id",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut worker = eos_worker(&w, &[]);
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 100);
    let id = format!("{}-{}-0", w.group, w.input);
    let rewinds = |worker: &Worker| worker.metric("kafka_infer_partition_rewinds_total");
    for round in 1..=3 {
        wait_until(WAIT, "records in flight", || worker.in_flight() > 0);
        let r0 = rewinds(&worker);
        let stranger: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", w.bootstrap())
            .set("transactional.id", &id)
            .create()
            .expect("stranger");
        rdkafka::producer::Producer::init_transactions(&stranger, Duration::from_secs(30))
            .expect("the stranger takes the id");
        drop(stranger);
        // From here on the owner's old producer can commit nothing: partition 0 commits again
        // only once the owner has noticed (its transaction refused: it rewinds) and
        // re-initialised its producer, taking the id back.
        let before = w.committed().get(&0).copied().unwrap_or(0);
        wait_until(WAIT, "the owner noticing the fence (a rewind)", || {
            rewinds(&worker) > r0
        });
        wait_until(WAIT, "partition 0 committing again", || {
            w.committed().get(&0).copied().unwrap_or(0) > before
        });
        assert!(worker.is_running(), "round {round}:\n{}", worker.log_text());
    }
    std::thread::sleep(Duration::from_secs(2));
    worker.sample(&mut sc);
    let sent = feeder.stop();
    assert!(worker.is_running(), "{}", worker.log_text());
    assert_exactly_once(&w, sc, sent, &worker.log_text());
    worker.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn upstream_records_of_an_aborted_transaction_are_never_scored() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let w = World::new();
    // Upstream writes transactionally: 30 tweets committed, 12 more in an aborted transaction
    // between them. The worker reads read_committed: the aborted ones do not exist for it.
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", w.bootstrap())
        .set("transactional.id", support::kafka::unique("upstream"))
        .create()
        .expect("producer");
    p.init_transactions(Duration::from_secs(30)).expect("init");
    let txn = |records: &[(i32, String, Vec<u8>)], commit: bool| {
        p.begin_transaction().expect("begin");
        for (part, key, value) in records {
            let rec = BaseRecord::to(&w.input)
                .partition(*part)
                .key(key)
                .payload(value);
            support::kafka::send_waiting(&p, rec).expect("send");
        }
        p.flush(Duration::from_secs(30)).expect("flush");
        if commit {
            p.commit_transaction(Duration::from_secs(30))
                .expect("commit");
        } else {
            p.abort_transaction(Duration::from_secs(30)).expect("abort");
        }
    };
    let mut aborted = tweets(12, 100);
    for r in &mut aborted {
        r.1 = format!("aborted-{}", r.1);
    }
    txn(&tweets(15, 0), true);
    txn(&aborted, false);
    txn(&tweets(15, 15), true);
    let mut worker = eos_worker(&w, &[]);
    let outs = w.read_isolated(
        &w.output,
        "read_committed",
        WAIT,
        Duration::from_secs(3),
        |o| o.len() >= 30,
    );
    let logs = worker.log_text();
    assert_eq!(outs.len(), 30, "{logs}");
    assert!(
        outs.iter()
            .all(|o| !o.key.as_deref().unwrap_or_default().starts_with("aborted")),
        "an aborted upstream record was scored"
    );
    assert_eq!(
        worker.metrics()["kafka_infer_records_dead_lettered_total"],
        0.0
    );
    worker.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn exactly_once_poison_records_are_dead_lettered_inside_the_transactions() {
    let w = World::new();
    let mut records = tweets(60, 0);
    // Every tenth record is not JSON: a dead letter, committed in the same transactions.
    for r in records.iter_mut().step_by(10) {
        r.1 = format!("poison-{}", r.1);
        r.2 = b"{not json".to_vec();
    }
    w.produce(&records);
    let mut worker = eos_worker(&w, &[]);
    let outs = w.read_isolated(
        &w.output,
        "read_committed",
        WAIT,
        Duration::from_secs(2),
        |o| o.len() >= 54,
    );
    let dlq = w.read_isolated(
        &w.dlq,
        "read_committed",
        WAIT,
        Duration::from_secs(2),
        |d| d.len() >= 6,
    );
    let logs = worker.log_text();
    assert_eq!((outs.len(), dlq.len()), (54, 6), "{logs}");
    assert!(dlq
        .iter()
        .all(|d| d.headers["dlq-reason"] == "invalid_json"));
    let all: std::collections::HashSet<_> =
        predicted(&outs).union(&predicted(&dlq)).copied().collect();
    assert_eq!(all, all_inputs(60));
    w.wait_for_commits(&ends(60), Duration::from_secs(30), &logs);
    worker.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn exactly_once_sigterm_with_an_open_transaction_commits_exactly_what_was_predicted() {
    let w = World::new();
    let feeder = w.feed(500);
    // Transactions stay open 20 s: at SIGTERM (a few seconds in) one holds records for sure,
    // and nothing was committed yet (checked below).
    let mut worker = eos_worker(&w, &["--transaction-interval-ms", "20000"]);
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 300);
    let uncommitted = w.read(&w.output, Duration::from_secs(3), Duration::ZERO, |_| false);
    let committed_before = w.read_isolated(
        &w.output,
        "read_committed",
        Duration::from_secs(3),
        Duration::ZERO,
        |_| false,
    );
    assert!(
        uncommitted.len() > committed_before.len(),
        "no open transaction at SIGTERM"
    );
    let code = worker.terminate(Duration::from_secs(30));
    feeder.stop();
    let committed = w.committed();
    let outs = w.read_isolated(
        &w.output,
        "read_committed",
        Duration::from_secs(5),
        Duration::ZERO,
        |_| false,
    );
    assert_eq!(code, Some(0), "{}", worker.log_text());
    assert_eq!(duplicates(&outs), 0);
    // What is committed is exactly what a read_committed reader sees.
    let want: std::collections::HashSet<(i32, i64)> = committed
        .iter()
        .flat_map(|(p, c)| (0..*c).map(move |o| (*p, o)))
        .collect();
    assert_eq!(predicted(&outs), want);
}
