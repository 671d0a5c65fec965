//! The worker against a real Kafka-protocol broker (tansu, over TCP), run as a child process
//! exactly as users run it. Each test has its own broker, topics and group.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use support::{assert_partition_order, on_every_partition, tweets, World, PARTITIONS};

const WAIT: Duration = Duration::from_secs(120);

/// Input offsets (partition, offset) that have a prediction.
fn predicted(outs: &[support::Out]) -> HashSet<(i32, i64)> {
    outs.iter().map(|o| o.source()).collect()
}

#[test]
fn clean_run_predicts_every_tweet_in_partition_order_and_commits_to_the_end() {
    let w = World::new();
    let input = tweets(600, 0);
    w.produce(&input);
    let mut worker = w.start_worker(&[]);
    let outs = w.read_until(&w.output, WAIT, |o| o.len() >= 600);
    assert_eq!(outs.len(), 600, "worker log:\n{}", worker.log_text());

    // Exactly one prediction per input, each to the same partition, in input order.
    let keys: HashSet<_> = outs
        .iter()
        .map(|o| o.key.clone().expect("key propagated"))
        .collect();
    assert_eq!(keys.len(), 600, "duplicate or missing keys");
    for o in &outs {
        let key = o.key.as_deref().unwrap_or_default();
        assert!(
            key.starts_with(&format!("{}-", o.partition)),
            "key {key} landed in partition {}",
            o.partition
        );
        let s = o.score();
        assert!((0.0..=1.0).contains(&s), "score {s}");
        assert_eq!(o.headers.get("model-version").map(String::len), Some(12));
        assert!(
            o.timestamp.is_some_and(|t| t > 0),
            "input timestamp propagated"
        );
    }
    assert_partition_order(&outs);

    // Keys within a partition increase with offsets: "p-0", "p-1", ...
    let mut per_part: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for o in &outs {
        let seq = o
            .key
            .as_deref()
            .and_then(|k| k.split_once('-'))
            .and_then(|(_, s)| s.parse().ok())
            .expect("seq");
        per_part.entry(o.partition).or_default().push(seq);
    }
    for (p, seqs) in per_part {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {p} out of order"
        );
    }

    // Input timestamps equal output timestamps (read the input back for its timestamps).
    let ins = w.read_until(&w.input, WAIT, |i| i.len() >= 600);
    let in_ts: BTreeMap<_, _> = ins.iter().map(|i| (i.key.clone(), i.timestamp)).collect();
    for o in &outs {
        assert_eq!(
            in_ts.get(&o.key).copied().flatten(),
            o.timestamp,
            "timestamp of {:?}",
            o.key
        );
    }

    // Committed offsets reach the end of every partition (200 records each).
    w.wait_for_commits(
        &on_every_partition(200),
        Duration::from_secs(20),
        &worker.log_text(),
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// Every input offset below each committed offset has a prediction.
fn assert_commits_covered(committed: &BTreeMap<i32, i64>, done: &HashSet<(i32, i64)>) {
    for (p, c) in committed {
        for off in 0..*c {
            assert!(
                done.contains(&(*p, off)),
                "committed {c} on partition {p} but offset {off} has no prediction"
            );
        }
    }
}

/// Produces `n` tweets in chunks from a background thread, so the stream is still flowing
/// while the test acts on the worker.
fn produce_slowly(w: &World, n: usize) -> std::thread::JoinHandle<()> {
    let (bootstrap, input) = (w.bootstrap(), w.input.clone());
    let records = tweets(n, 0);
    std::thread::spawn(move || {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let p: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("producer");
        for chunk in records.chunks(100) {
            for (part, key, value) in chunk {
                let rec = BaseRecord::to(&input)
                    .partition(*part)
                    .key(key)
                    .payload(value);
                kafka_infer::testkit::send_waiting(&p, rec).expect("produce input");
            }
            p.flush(Duration::from_secs(10)).expect("flush");
            std::thread::sleep(Duration::from_millis(40));
        }
    })
}

/// Asserts that each of the `n` inputs (see [`all_inputs`]) has a prediction in `outs`.
fn assert_every_input_predicted(n: usize, outs: &[support::Out], logs: &str) {
    let missing: Vec<_> = all_inputs(n)
        .difference(&predicted(outs))
        .copied()
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "inputs without a prediction: {missing:?}\n{logs}"
    );
}

fn all_inputs(n: usize) -> HashSet<(i32, i64)> {
    (0..n)
        .map(|i| {
            (
                (i % PARTITIONS as usize) as i32,
                (i / PARTITIONS as usize) as i64,
            )
        })
        .collect()
}

#[test]
fn sigkill_mid_stream_then_restart_loses_nothing_and_never_committed_past_an_undelivered_record() {
    let w = World::new();
    let n = 3000;
    let feeder = produce_slowly(&w, n);
    let mut worker = w.start_worker(&["--max-batch", "32"]);
    w.read_until(&w.output, WAIT, |o| o.len() >= 300);
    worker.kill9();
    let killed_at = std::time::Instant::now();

    // At the crash point: nothing committed that was not delivered.
    let committed = w.committed();
    let at_crash = w.read_until(&w.output, Duration::from_secs(4), |_| false);
    let done = predicted(&at_crash);
    assert!(
        !committed.is_empty(),
        "something was committed before the crash\n{}",
        worker.log_text()
    );
    assert_commits_covered(&committed, &done);
    eprintln!(
        "at crash: {} predictions, committed {committed:?}",
        done.len()
    );

    feeder.join().expect("feeder");
    // tansu evicts a dead member only when someone joins after its session timed out (6 s in
    // these tests); a member joining earlier gets a generation led by the dead member and no
    // partitions, for good (Apache Kafka evicts it on its own). So restart after the timeout.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(killed_at.elapsed()));
    let mut restarted = w.start_worker(&[]);
    let outs = w.read_until(&w.output, WAIT, |o| all_inputs(n).is_subset(&predicted(o)));
    assert_every_input_predicted(n, &outs, &restarted.log_text());
    w.wait_for_commits(
        &on_every_partition(1000),
        Duration::from_secs(20),
        &restarted.log_text(),
    );
    assert_eq!(restarted.terminate(Duration::from_secs(30)), Some(0));
}

#[test]
fn poison_records_go_to_the_dlq_with_reasons_and_good_ones_are_all_predicted() {
    let w = World::new();
    let good = tweets(90, 0);
    let mut records = Vec::new();
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_json", b"this is not json".to_vec()),
        ("missing_value", br#"{"text":"no value field"}"#.to_vec()),
        ("not_utf8", b"{\"value\":\"\xff\xfe\"}".to_vec()),
        ("value_not_string", br#"{"value":["a list"]}"#.to_vec()),
        (
            "too_large",
            serde_json::to_vec(&serde_json::json!({ "value": "fire ".repeat(400) })).expect("json"),
        ),
        ("not_an_object", b"[1,2,3]".to_vec()),
    ];
    for (i, g) in good.into_iter().enumerate() {
        records.push(g);
        if i % 15 == 7 {
            let (reason, value) = &poison[i / 15];
            records.push((
                records.last().map_or(0, |r| r.0),
                format!("poison-{reason}"),
                value.clone(),
            ));
        }
    }
    w.produce(&records);
    let mut worker = w.start_worker(&["--max-text-bytes", "1000"]);

    let dlq = w.read_until(&w.dlq, WAIT, |d| d.len() >= poison.len());
    assert_eq!(dlq.len(), poison.len(), "{}", worker.log_text());
    for d in &dlq {
        let key = d.key.clone().expect("original key kept");
        let reason = key.trim_start_matches("poison-");
        assert_eq!(
            d.headers.get("dlq-reason").map(String::as_str),
            Some(reason),
            "{:?}",
            d.headers
        );
        assert!(!d.headers["dlq-error"].is_empty());
        assert_eq!(d.headers["source-topic"], w.input);
        let original = &poison
            .iter()
            .find(|p| p.0 == reason)
            .expect("known poison")
            .1;
        assert_eq!(&d.value, original, "original value kept for {reason}");
        let (p, off) = d.source();
        assert!(records
            .iter()
            .filter(|r| r.0 == p)
            .nth(off as usize)
            .is_some_and(|r| r.1 == key));
    }

    let outs = w.read_until(&w.output, WAIT, |o| o.len() >= 90);
    assert_eq!(outs.len(), 90);
    assert!(outs
        .iter()
        .all(|o| !o.key.as_deref().unwrap_or_default().starts_with("poison")));

    // Dead-lettered offsets commit like any other: the end of every partition.
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, records.iter().filter(|r| r.0 == p).count() as i64))
        .collect();
    w.wait_for_commits(&ends, Duration::from_secs(20), &worker.log_text());
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

#[test]
fn a_second_worker_joining_mid_stream_loses_nothing() {
    let w = World::new();
    let n = 3000;
    let feeder = produce_slowly(&w, n);
    let mut first = w.start_worker(&["--max-batch", "32"]);
    w.read_until(&w.output, WAIT, |o| o.len() >= 200);
    let mut second = w.start_worker(&["--max-batch", "32"]);
    feeder.join().expect("feeder");

    let outs = w.read_until(&w.output, WAIT, |o| all_inputs(n).is_subset(&predicted(o)));
    let logs = format!(
        "first:\n{}\nsecond:\n{}",
        first.log_text(),
        second.log_text()
    );
    assert_every_input_predicted(n, &outs, &logs);
    assert_partition_order(&outs);
    assert!(
        second.log_text().contains("partition assigned"),
        "the second worker never got a partition:\n{}",
        second.log_text()
    );
    w.wait_for_commits(&on_every_partition(1000), Duration::from_secs(30), &logs);
    assert_eq!(second.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(first.terminate(Duration::from_secs(30)), Some(0));
}

#[test]
fn sigterm_drains_everything_consumed_and_commits_it() {
    let w = World::new();
    let feeder = produce_slowly(&w, 3000);
    let mut worker = w.start_worker(&[]);
    w.read_until(&w.output, WAIT, |o| o.len() >= 500);
    let t0 = std::time::Instant::now();
    let code = worker.terminate(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(0),
        "exit within the drain timeout + a little\n{}",
        worker.log_text()
    );
    eprintln!("stopped {:?} after SIGTERM", t0.elapsed());
    feeder.join().expect("feeder");

    // Exactly what was committed was predicted: nothing consumed was left unfinished, and
    // nothing committed lacks a prediction.
    let committed = w.committed();
    let outs = w.read_until(&w.output, Duration::from_secs(4), |_| false);
    let done = predicted(&outs);
    assert_commits_covered(&committed, &done);
    for (p, off) in &done {
        let c = committed.get(p).copied().unwrap_or(0);
        assert!(
            *off < c,
            "offset {off} of partition {p} was predicted but not committed (committed {c})"
        );
    }
    let log = worker.log_text();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped: consumed="))
        .expect("summary line");
    assert!(
        line.contains(&format!("predicted={}", done.len())),
        "{line}"
    );
}

#[test]
fn startup_problems_are_one_clear_line_and_exit_code_1() {
    let w = World::new();
    let run = |args: &[&str]| {
        let model = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("model");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kafka-infer"))
            .arg("run")
            .arg("--model-dir")
            .arg(model)
            .args(["--metrics-addr", "off", "--startup-timeout-ms", "3000"])
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .expect("run worker");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let (dlq, bootstrap) = (w.dlq.clone(), w.bootstrap());
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec!["--brokers", &bootstrap, "--input-topic", "no-such-topic"],
            "input topic 'no-such-topic' does not exist",
        ),
        (
            vec![
                "--brokers",
                &bootstrap,
                "--input-topic",
                &w.input,
                "--output-topic",
                &w.output,
                "--dlq-topic",
                "nope",
            ],
            "dead-letter topic 'nope' does not exist",
        ),
        (
            vec!["--brokers", "127.0.0.1:1", "--dlq-topic", &dlq],
            "cannot reach Kafka at 127.0.0.1:1",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one line expected, got:\n{err}"
        );
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
