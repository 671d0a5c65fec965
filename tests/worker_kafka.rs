//! The worker against Apache Kafka (started by `scripts/kafka`), run as a child process exactly
//! as users run it. One broker per test binary; each test has its own topics and group.
//!
//! Conditions are created, not hoped for: "records in flight" means outputs provably not
//! acknowledged — the worker's producer holds every output for seconds (`linger.ms`) while
//! consumption and offset commits carry on — and the tests check the worker's own live
//! counters before acting.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::report::Scenario;
use support::*;

const QUIET: Duration = Duration::from_secs(3);

#[test]
fn clean_run_predicts_every_tweet_once_in_partition_order_and_commits_to_the_end() {
    let w = World::new();
    let n = 600;
    w.produce(&tweets(n, 0));
    let mut worker = w.start_worker(&[]);
    // Read on past the 600th output: a duplicate would show up.
    let outs = w.read(&w.output, WAIT, QUIET, |o| o.len() >= n);
    assert_eq!(outs.len(), n, "worker log:\n{}", worker.log_text());
    assert_eq!(duplicates(&outs), 0);
    assert_every_input_predicted(&all_inputs(n), &outs, &worker.log_text());

    for o in &outs {
        let key = o.key.as_deref().expect("key propagated");
        assert!(
            key.starts_with(&format!("{}-", o.partition)),
            "key {key} landed in partition {}",
            o.partition
        );
        let s = o.score();
        assert!((0.0..=1.0).contains(&s), "score {s}");
        assert_eq!(o.headers.get("model-version").map(String::len), Some(12));
        assert_eq!(o.headers["source-topic"], w.input);
    }
    assert_partition_order(&outs);

    // Input timestamps are output timestamps.
    let ins = w.read(&w.input, WAIT, Duration::ZERO, |i| i.len() >= n);
    let in_ts: BTreeMap<_, _> = ins.iter().map(|i| (i.key.clone(), i.timestamp)).collect();
    for o in &outs {
        assert_eq!(in_ts[&o.key], o.timestamp, "timestamp of {:?}", o.key);
        assert!(o.timestamp.is_some_and(|t| t > 0));
    }

    w.wait_for_commits(&ends(n), Duration::from_secs(20), &worker.log_text());
    // Drift statistics saw every score and tweet; real tweets show no large shift (0.089 on
    // these 600, computed offline with `score` and reference.json).
    let m = worker.metrics();
    assert_eq!(m.get("kafka_infer_model_scores_count"), Some(&(n as f64)));
    let psi = m["kafka_infer_model_score_psi"];
    assert!((0.0..0.25).contains(&psi), "score PSI {psi} on real tweets");
    let psi = m["kafka_infer_model_token_length_psi"];
    assert!(
        (0.0..0.25).contains(&psi),
        "token length PSI {psi} on real tweets"
    );
    let oov = m["kafka_infer_model_oov_rate"];
    assert!(oov > 0.0 && oov < 0.5, "OOV rate {oov}");
    worker.terminate_cleanly(Duration::from_secs(30));
    let summary = worker
        .wait_for_log("stopped: consumed=", Duration::ZERO)
        .expect("summary line");
    assert!(
        summary.contains(&format!("consumed={n} predicted={n} dead_lettered=0")),
        "{summary}"
    );
}

/// Waits until the worker has at least `min` records in flight (from its live counters).
fn wait_in_flight(worker: &Worker, min: i64) -> i64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = worker.in_flight();
        if n >= min {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "never {min} records in flight (last {n}):\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The worker's flags, plus outputs held for `ms` (see [`hold_outputs`]).
fn held(ms: u32, extra: &[&str]) -> Vec<String> {
    hold_outputs(ms)
        .into_iter()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
}

fn start_held(w: &World, ms: u32, extra: &[&str]) -> Worker {
    let args = held(ms, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    w.start_worker(&refs)
}

#[test]
fn kill9_with_outputs_in_flight_never_committed_past_an_unacknowledged_record() {
    let w = World::new();
    let feeder = w.feed(1000);
    // Every output waits 3 s in the producer while consumption and commits (every 200 ms) go
    // on: a worker that committed what it consumed, instead of what was acknowledged, would
    // have committed past hundreds of records without outputs by the time of the kill.
    let mut sc = Scenario::start(
        "kill -9 with 3 s of outputs in flight, then restart",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut worker = start_held(&w, 3000, &["--max-batch", "32"]);
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 300);
    let in_flight = wait_in_flight(&worker, 500);
    worker.sample(&mut sc);
    worker.kill9();
    let committed = w.committed();
    let at_kill = w.read(&w.output, Duration::from_secs(4), Duration::ZERO, |_| false);
    assert!(!committed.is_empty(), "{}", worker.log_text());
    assert_commits_covered(&committed, &predicted(&at_kill));
    eprintln!("killed with {in_flight} records in flight; committed {committed:?}");

    std::thread::sleep(Duration::from_millis(500));
    let sent = feeder.stop();
    let mut restarted = w.start_worker(&[]);
    let want = all_inputs(sent);
    let outs = w.read(&w.output, WAIT, QUIET, |o| want.is_subset(&predicted(o)));
    measure_run(
        &mut sc,
        sent,
        &outs,
        format!("{in_flight} in flight at the kill"),
    );
    assert_every_input_predicted(&want, &outs, &restarted.log_text());
    assert_partition_order(&outs);
    // Only what was in flight, or acknowledged but not yet committed, is scored twice.
    let dups = duplicates(&outs);
    assert!(
        dups as i64 <= in_flight + 500,
        "{dups} duplicates for {in_flight} in flight"
    );
    w.wait_for_commits(&ends(sent), Duration::from_secs(30), &restarted.log_text());
    restarted.sample(&mut sc);
    restarted.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn kill9_twenty_times_under_load_with_two_workers_loses_nothing() {
    let w = World::new();
    let rate = 600;
    let feeder = w.feed(rate);
    let extra = ["--max-batch", "32"];
    let mut sc = Scenario::start(
        "kill -9 20 times, 2 workers, 3 partitions, 600 tweets/s",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut workers = [w.start_worker(&extra), w.start_worker(&extra)];
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 200);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut in_flight_at_kills = 0i64;
    for kill in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = kill % 2;
        std::thread::sleep(Duration::from_millis(300 + seed % 1200));
        // Kill only with records provably in flight in the victim (a freshly restarted
        // victim may not have its partitions yet: wait until it has some in flight).
        let mut in_flight = 0;
        wait_until(
            Duration::from_secs(60),
            "records in flight in the victim",
            || {
                in_flight = workers[victim].in_flight();
                in_flight > 0
            },
        );
        workers[victim].sample(&mut sc);
        workers[victim].kill9();
        in_flight_at_kills += in_flight;
        // Commits at the kill never passed an unacknowledged record.
        let committed = w.committed();
        let outs = w.read(&w.output, Duration::from_secs(2), Duration::ZERO, |_| false);
        assert_commits_covered(&committed, &predicted(&outs));
        workers[victim] = w.start_worker(&extra);
    }
    let sent = feeder.stop();
    let want = all_inputs(sent);
    let outs = w.read(&w.output, WAIT, QUIET, |o| want.is_subset(&predicted(o)));
    let logs = format!("{}\n----\n{}", workers[0].log_text(), workers[1].log_text());
    measure_run(
        &mut sc,
        sent,
        &outs,
        format!("{in_flight_at_kills} records in flight at the 20 kills"),
    );
    assert_every_input_predicted(&want, &outs, &logs);
    assert_partition_order(&outs);
    let dups = duplicates(&outs) as i64;
    // A kill re-processes what the victim had in flight plus what was acknowledged since its
    // last commit (≤ a commit interval, 200 ms, of its share of the load; 1 s allowed).
    let bound = in_flight_at_kills + 20 * i64::from(rate);
    eprintln!("{sent} sent, {dups} duplicates, {in_flight_at_kills} in flight at the kills");
    assert!(dups <= bound, "{dups} duplicates > bound {bound}");
    w.wait_for_commits(&ends(sent), Duration::from_secs(60), &logs);
    for mut worker in workers {
        worker.sample(&mut sc);
        let code = worker.terminate(Duration::from_secs(30));
        assert_eq!(code, Some(0), "{}", worker.log_text());
    }
}

#[test]
fn rebalance_with_records_in_flight_drains_them_before_handing_over() {
    let w = World::new();
    let feeder = w.feed(500);
    // The first worker's outputs wait 2 s in its producer: whenever the revoke comes, it
    // finds records in flight and must wait for them (drain timeout 5 s) before handing over.
    let mut sc = Scenario::start(
        "a worker joins while the other has 2 s of outputs in flight",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut first = start_held(&w, 2000, &["--max-batch", "16"]);
    w.read(&w.output, WAIT, Duration::ZERO, |o| !o.is_empty());
    wait_in_flight(&first, 50);
    let mut second = w.start_worker(&[]);
    let revoking = first
        .wait_for_log("revoking partition", WAIT)
        .expect("a revoke in the first worker");
    let in_flight: usize = revoking
        .split("in_flight=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("in_flight in the revoke line");
    assert!(in_flight > 0, "{revoking}");
    let released = first
        .wait_for_log("partition released", WAIT)
        .expect("released");
    assert!(released.contains("drained=true"), "{released}");
    std::thread::sleep(Duration::from_secs(1));
    let sent = feeder.stop();

    let want = all_inputs(sent);
    let outs = w.read(&w.output, WAIT, QUIET, |o| want.is_subset(&predicted(o)));
    let logs = format!("{}\n----\n{}", first.log_text(), second.log_text());
    measure_run(
        &mut sc,
        sent,
        &outs,
        format!("revoke began with {in_flight} in flight, drained"),
    );
    assert_every_input_predicted(&want, &outs, &logs);
    assert_partition_order(&outs);
    assert_eq!(
        duplicates(&outs),
        0,
        "a drained hand-over scores nothing twice"
    );
    w.wait_for_commits(&ends(sent), Duration::from_secs(30), &logs);
    first.sample(&mut sc);
    second.sample(&mut sc);
    second.terminate_cleanly(Duration::from_secs(30));
    first.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn group_churn_ten_times_mid_stream_loses_nothing_and_duplicates_nothing() {
    let w = World::new();
    let feeder = w.feed(500);
    let mut sc = Scenario::start(
        "group churn: a worker joins and leaves 10 times",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut stable = w.start_worker(&[]);
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 100);
    for round in 0..10 {
        let mut joiner = w.start_worker(&[]);
        joiner
            .wait_for_log("partition assigned", WAIT)
            .unwrap_or_else(|| panic!("round {round}: no partition\n{}", joiner.log_text()));
        std::thread::sleep(Duration::from_millis(500));
        joiner.sample(&mut sc);
        // Leaving hands its partitions back to the stable worker (which gets the same
        // partitions re-assigned, round after round).
        assert_eq!(
            joiner.terminate(Duration::from_secs(30)),
            Some(0),
            "round {round}\n{}",
            joiner.log_text()
        );
    }
    let sent = feeder.stop();
    let want = all_inputs(sent);
    let outs = w.read(&w.output, WAIT, QUIET, |o| want.is_subset(&predicted(o)));
    // The stable worker gave partitions up and got them back, round after round (a joiner
    // may also take over a leaving joiner's partitions directly, so not every round shows).
    let log = stable.log_text();
    let (revokes, assigns) = (
        log.matches("partition released").count(),
        log.matches("partition assigned").count(),
    );
    measure_run(
        &mut sc,
        sent,
        &outs,
        format!("{revokes} revokes and {assigns} assignments in the stable worker"),
    );
    assert_every_input_predicted(&want, &outs, &stable.log_text());
    assert_partition_order(&outs);
    assert_eq!(duplicates(&outs), 0, "clean hand-overs score nothing twice");
    assert!(
        revokes >= 5 && assigns >= 3 + 5,
        "{revokes} revokes, {assigns} assignments in the stable worker"
    );
    w.wait_for_commits(&ends(sent), Duration::from_secs(30), &stable.log_text());
    stable.sample(&mut sc);
    stable.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn sigterm_with_records_in_flight_delivers_and_commits_exactly_them_then_exits_0() {
    let w = World::new();
    let feeder = w.feed(1000);
    // Outputs wait 2 s in the producer: at SIGTERM, records are in flight for sure.
    let mut sc = Scenario::start(
        "SIGTERM with 2 s of outputs in flight",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut worker = start_held(&w, 2000, &[]);
    w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= 100);
    let in_flight = wait_in_flight(&worker, 100);
    worker.sample(&mut sc);
    let code = worker.terminate(Duration::from_secs(20));
    feeder.stop();

    // Exactly what was committed was predicted: nothing consumed was left unfinished, and
    // nothing committed lacks a prediction.
    let committed = w.committed();
    let outs = w.read(&w.output, Duration::from_secs(5), Duration::ZERO, |_| false);
    let done = predicted(&outs);
    let total: i64 = committed.values().sum();
    let committed_without_output = committed_without_output(&committed, &done);
    sc.measured(
        total as usize,
        committed_without_output,
        duplicates(&outs),
        format!(
            "{in_flight} in flight at SIGTERM; exit {}; {} predicted, {total} committed",
            exit_text(code),
            done.len()
        ),
    );
    assert_eq!(code, Some(0), "{}", worker.log_text());
    assert_commits_covered(&committed, &done);
    for (p, off) in &done {
        let c = committed.get(p).copied().unwrap_or(0);
        assert!(
            *off < c,
            "offset {off} of partition {p} predicted, committed only {c}"
        );
    }
    let summary = worker
        .wait_for_log("stopped: consumed=", Duration::ZERO)
        .expect("summary line");
    assert!(
        summary.contains(&format!("consumed={total} predicted={total} ")),
        "broker: {total} committed and predicted; worker: {summary} ({in_flight} were in flight)"
    );
    assert_eq!(duplicates(&outs), 0);
}

#[test]
fn sigterm_when_outputs_cannot_be_delivered_in_time_exits_2_within_the_drain_timeout() {
    let w = World::new();
    let feeder = w.feed(500);
    // Outputs held for a minute: the 5 s drain cannot deliver them.
    let mut worker = start_held(&w, 60_000, &[]);
    wait_in_flight(&worker, 50);
    let t0 = Instant::now();
    let code = worker.terminate(Duration::from_secs(30));
    let took = t0.elapsed();
    feeder.stop();
    assert_eq!(code, Some(2), "{}", worker.log_text());
    // Drain timeout 5 s, plus commit and shutdown bounds.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let committed = w.committed();
    let outs = w.read(&w.output, Duration::from_secs(4), Duration::ZERO, |_| false);
    assert_commits_covered(&committed, &predicted(&outs));
    assert!(worker.log_text().contains("undelivered"));
}

#[test]
fn a_second_signal_exits_at_once() {
    let w = World::new();
    let feeder = w.feed(500);
    let mut worker = start_held(&w, 60_000, &["--drain-timeout-ms", "6000"]);
    wait_in_flight(&worker, 10);
    worker.signal("TERM");
    worker
        .wait_for_log("stopping: draining", Duration::from_secs(10))
        .expect("drain started");
    let t0 = Instant::now();
    worker.signal("TERM");
    let code = worker.wait_exit(Duration::from_secs(5));
    feeder.stop();
    assert_eq!(code, Some(130));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn healthz_reports_a_partition_whose_outputs_are_not_acknowledged() {
    let w = World::new();
    let mut worker = start_held(&w, 4000, &["--stall-timeout-ms", "1500"]);
    worker
        .wait_for_log("partition assigned", WAIT)
        .expect("assigned");
    assert_eq!(worker.health().map(|h| h.0), Some(200));
    // Outputs wait 4 s in the producer: a partition goes longer than 1.5 s without any.
    let feeder = w.feed(300);
    wait_until(Duration::from_secs(30), "/healthz 503", || {
        worker
            .health()
            .is_some_and(|(code, body)| code == 503 && body.contains("no output acknowledged"))
    });
    feeder.stop();
    // Once everything is delivered, healthy again.
    wait_until(Duration::from_secs(60), "/healthz 200 again", || {
        worker.health().is_some_and(|(code, _)| code == 200)
    });
    worker.terminate_cleanly(Duration::from_secs(30));
}

/// JSON nested `depth` levels deep: {"value":[[[…]]]}.
fn nested(depth: usize) -> Vec<u8> {
    format!("{{\"value\":{}{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
}

#[test]
fn poison_records_go_to_the_dead_letter_topic_with_reasons_and_nothing_wedges() {
    let w = World::new();
    let good = tweets(90, 0);
    let huge =
        serde_json::to_vec(&serde_json::json!({ "value": "fire ".repeat(20_000) })).expect("json");
    // Just under the broker's default limit (1 MiB): valid JSON, far over --max-text-bytes.
    let just_under_limit = {
        let mut v = br#"{"value":""#.to_vec();
        v.resize(999_900 - 2, b'a');
        v.extend_from_slice(br#""}"#);
        v
    };
    let poison: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("invalid_json", Some(b"this is not json".to_vec())),
        (
            "missing_value",
            Some(br#"{"text":"no value field"}"#.to_vec()),
        ),
        ("not_utf8", Some(b"{\"value\":\"\xff\xfe\"}".to_vec())),
        (
            "value_not_string",
            Some(br#"{"value":["a list"]}"#.to_vec()),
        ),
        ("too_large", Some(huge.clone())),
        ("not_an_object", Some(b"[1,2,3]".to_vec())),
        ("no_payload", None),
        ("value_not_string", Some(nested(20_000))),
        ("too_large", Some(just_under_limit.clone())),
    ];
    let p = w_producer(&w);
    let mut expected_dlq = Vec::new();
    let mut counts = [0i64; PARTITIONS as usize];
    for (i, (part, key, value)) in good.iter().enumerate() {
        send(&p, &w.input, *part, key, Some(value));
        counts[*part as usize] += 1;
        if i % 10 == 5 {
            if let Some((reason, value)) = poison.get(i / 10) {
                let key = format!("poison-{}-{}", i / 10, reason);
                send(&p, &w.input, *part, &key, value.as_deref());
                expected_dlq.push((key, *reason, value.clone(), *part, counts[*part as usize]));
                counts[*part as usize] += 1;
            }
        }
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).expect("flush");
    let mut sc = Scenario::start(
        "poison: 9 kinds of bad record among 90 tweets",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut worker = w.start_worker(&[]);

    let dlq = w.read(&w.dlq, WAIT, QUIET, |d| d.len() >= expected_dlq.len());
    let outs = w.read(&w.output, WAIT, QUIET, |o| o.len() >= good.len());
    let truncated = dlq
        .iter()
        .filter(|d| d.headers.contains_key("dlq-original-size"))
        .count();
    sc.measured(
        good.len() + expected_dlq.len(),
        good.len().saturating_sub(predicted(&outs).len())
            + expected_dlq.len().saturating_sub(dlq.len()),
        duplicates(&outs) + dlq.len().saturating_sub(expected_dlq.len()),
        format!(
            "{} dead letters with reasons, {truncated} cut to the topic's limit",
            dlq.len()
        ),
    );
    assert_eq!(dlq.len(), expected_dlq.len(), "{}", worker.log_text());
    for d in &dlq {
        let key = d.key.clone().expect("original key kept");
        let (_, reason, value, part, offset) = expected_dlq
            .iter()
            .find(|e| e.0 == key)
            .expect("known poison");
        assert_eq!(
            d.headers.get("dlq-reason").map(String::as_str),
            Some(*reason),
            "{key}"
        );
        assert!(!d.headers["dlq-error"].is_empty());
        assert_eq!(d.headers["source-topic"], w.input);
        assert_eq!(d.source(), (*part, *offset), "{key}");
        let original = value.clone().unwrap_or_default();
        match d.headers.get("dlq-original-size") {
            // Too large for the dead-letter topic: a prefix of the value, and its size.
            Some(size) => {
                assert_eq!(size.parse::<usize>().ok(), Some(original.len()));
                assert!(d.value.len() < original.len() && original.starts_with(&d.value));
            }
            None => assert_eq!(d.value, original, "original value kept for {key}"),
        }
    }
    assert_eq!(truncated, 1, "only the 999,900-byte record is cut");
    assert_eq!(outs.len(), good.len());
    assert!(outs
        .iter()
        .all(|o| !o.key.as_deref().unwrap_or_default().starts_with("poison")));

    // Dead-lettered offsets commit like any other: the end of every partition.
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, counts[p as usize])).collect();
    w.wait_for_commits(&ends, Duration::from_secs(20), &worker.log_text());
    worker.terminate_cleanly(Duration::from_secs(30));
}

fn w_producer(w: &World) -> rdkafka::producer::BaseProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", w.bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

fn send(p: &rdkafka::producer::BaseProducer, topic: &str, part: i32, key: &str, v: Option<&[u8]>) {
    let mut rec = rdkafka::producer::BaseRecord::<str, [u8]>::to(topic)
        .partition(part)
        .key(key);
    if let Some(v) = v {
        rec = rec.payload(v);
    }
    support::kafka::send_waiting(p, rec).expect("produce");
}

#[test]
fn compressed_input_in_every_codec_is_scored() {
    let w = World::new();
    let per_codec = 300;
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    for (i, codec) in codecs.iter().enumerate() {
        w.produce_with(
            &tweets(per_codec, i * per_codec),
            &[("compression.type", codec), ("linger.ms", "50")],
        );
    }
    let mut sc = Scenario::start(
        "input compressed with gzip, snappy, lz4, zstd",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let mut worker = w.start_worker(&[]);
    let n = per_codec * codecs.len();
    let outs = w.read(&w.output, WAIT, QUIET, |o| o.len() >= n);
    measure_run(&mut sc, n, &outs, "300 tweets per codec");
    assert_every_input_predicted(&all_inputs(n), &outs, &worker.log_text());
    assert_eq!(duplicates(&outs), 0);
    worker.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn a_dead_letter_topic_that_rejects_large_records_gets_shortened_dead_letters() {
    let w = World::new();
    let mut worker = w.start_worker(&[]);
    worker
        .wait_for_log("partition assigned", WAIT)
        .expect("assigned");
    // After start-up (which read the topic's limit), the dead-letter topic's limit drops.
    w.set_topic_config(&w.dlq, "max.message.bytes", "4000");
    let big_bad = {
        let mut v = b"not json ".to_vec();
        v.resize(50_000, b'x');
        v
    };
    let mut records = tweets(30, 0);
    records.insert(10, (records[9].0, "poison-big".into(), big_bad.clone()));
    w.produce(&records);
    let dlq = w.read(&w.dlq, WAIT, QUIET, |d| !d.is_empty());
    assert_eq!(dlq.len(), 1, "{}", worker.log_text());
    let d = &dlq[0];
    assert_eq!(d.headers["dlq-reason"], "invalid_json");
    assert_eq!(d.headers["dlq-original-size"], "50000");
    assert!(d.value.len() <= 1024 && big_bad.starts_with(&d.value));
    let outs = w.read(&w.output, WAIT, QUIET, |o| o.len() >= 30);
    assert_eq!(predicted(&outs).len(), 30);
    let m = worker.metrics();
    assert!(m["kafka_infer_partition_rewinds_total"] >= 1.0);
    worker.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn an_input_whose_key_makes_its_prediction_too_large_is_dead_lettered_and_the_worker_goes_on() {
    let w = World::new();
    let mut worker = an_oversized_key_run(&w, &[], "read_uncommitted");
    assert!(worker.is_running());
    let m = worker.metrics();
    assert_eq!(m["kafka_infer_partition_rewinds_total"], 0.0);
    worker.terminate_cleanly(Duration::from_secs(30));
}

#[test]
fn an_output_topic_that_rejects_every_prediction_stops_the_worker_with_exit_code_3() {
    let w = World::new();
    // No prediction fits in 10 bytes: the broker refuses every one, for good.
    w.set_topic_config(&w.output, "max.message.bytes", "10");
    w.produce(&tweets(30, 0));
    let mut sc = Scenario::start(
        "output topic refuses every record (max.message.bytes 10)",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let t0 = Instant::now();
    let mut worker = w.start_worker(&["--max-rewinds", "2"]);
    let code = worker.wait_exit(Duration::from_secs(90));
    let took = t0.elapsed();
    let committed = w.committed();
    let outs = w.read(&w.output, Duration::from_secs(2), Duration::ZERO, |_| false);
    let done = predicted(&outs);
    // Lost = committed without an output: the 30 inputs without one stay uncommitted, for
    // the next start to score once the topic is fixed.
    let committed_without_output = committed_without_output(&committed, &done);
    sc.measured(
        30,
        committed_without_output,
        duplicates(&outs),
        format!(
            "exit code {} after {:.1} s (--max-rewinds 2); {} inputs committed, {} predicted",
            exit_text(code),
            took.as_secs_f64(),
            committed.values().sum::<i64>(),
            done.len()
        ),
    );
    assert_eq!(code, Some(3), "{}", worker.log_text());
    let log = worker.log_text();
    assert!(log.contains("is stuck at offset"), "{log}");
    // Nothing was committed past what has no output (nothing has one).
    assert!(committed.values().all(|c| *c == 0), "{committed:?}");
}

#[test]
fn startup_problems_are_one_clear_line_and_exit_code_1() {
    let w = World::new();
    let run = |args: &[&str]| {
        let metrics = if args.iter().any(|a| a.starts_with("--metrics-addr")) {
            &[][..]
        } else {
            &["--metrics-addr", "off"][..]
        };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kafka-infer"))
            .arg("run")
            .args(metrics)
            .args(["--startup-timeout-ms", "3000"])
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .expect("run worker");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let (dlq, bootstrap) = (w.dlq.clone(), w.bootstrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
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
        (
            vec![
                "--brokers",
                &bootstrap,
                "-X",
                "bootstrap.servers=elsewhere:9092",
            ],
            "-X bootstrap.servers is not allowed: use --brokers",
        ),
        (
            vec![
                "--brokers",
                &bootstrap,
                "-X",
                "consumer.enable.auto.commit=true",
            ],
            "-X consumer.enable.auto.commit is not allowed",
        ),
        (vec!["--metrics-addr=localhost"], "expected HOST:PORT"),
        (vec!["--inference-threads", "0"], "--inference-threads"),
        (
            vec!["--model-dir", "/nonexistent"],
            "cannot read /nonexistent/model.onnx",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        let first = err.trim().lines().next().unwrap_or_default();
        assert!(first.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn a_mistyped_topic_is_reported_not_created_on_a_broker_that_auto_creates_topics() {
    let broker: &'static support::kafka::Kafka = Box::leak(Box::new(
        support::kafka::Kafka::start_with(1, &["auto.create.topics.enable=true"]),
    ));
    let w = World::on(broker, 1);
    let topics = || -> std::collections::HashSet<String> {
        let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", w.bootstrap())
            .create()
            .expect("consumer");
        rdkafka::consumer::Consumer::fetch_metadata(&c, None, Duration::from_secs(10))
            .expect("metadata")
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    };
    // This broker does create topics on a metadata request that allows it (a producer's): so
    // the check below can fail.
    let p: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", w.bootstrap())
        .create()
        .expect("producer");
    let created = format!("{}-created-by-a-producer", w.input);
    let _ = rdkafka::producer::Producer::client(&p)
        .fetch_metadata(Some(&created), Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "auto-creation", || {
        topics().contains(&created)
    });

    let typo = format!("{}-typo", w.input);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kafka-infer"))
        .args(["run", "--metrics-addr", "off", "--brokers", &w.bootstrap()])
        .args([
            "--input-topic",
            &typo,
            "--output-topic",
            &w.output,
            "--dlq-topic",
            &w.dlq,
        ])
        .env("RUST_LOG", "off")
        .output()
        .expect("run worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("input topic '{typo}' does not exist")),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !topics().contains(&typo),
        "the worker created the mistyped topic"
    );
}

/// A worker that cannot get into its group must not idle for ever. The group's only other
/// member owns every partition and is frozen (SIGSTOP) with a 5-minute session and rebalance
/// timeout, so the rebalance the worker's JoinGroup starts cannot finish for 5 minutes: the
/// worker stays without a partition, its membership unsettled, the coordinator up. Past its
/// bound (the tests' 15 s poll interval + 6 s session + 60 s) it stops with exit code 3 and
/// says why, long before the group would have let it in.
#[test]
fn a_worker_kept_out_of_its_group_past_the_bound_stops_loudly_with_exit_code_3() {
    let w = World::new();
    w.produce(&tweets(30, 0));
    let hold = [
        "-X",
        "consumer.session.timeout.ms=300000",
        "-X",
        "consumer.max.poll.interval.ms=300000",
    ];
    let mut holder = w.start_worker(&hold);
    let outs = w.read(&w.output, WAIT, QUIET, |o| o.len() >= 30);
    assert_eq!(predicted(&outs).len(), 30, "{}", holder.log_text());
    holder.signal("STOP");
    let t0 = Instant::now();
    let mut worker = w.start_worker(&[]);
    let code = worker.wait_exit(Duration::from_secs(240));
    let took = t0.elapsed();
    holder.signal("CONT");
    holder.kill9();
    let log = worker.log_text();
    assert!(
        !log.contains("partition assigned"),
        "the worker got into the group, so the test did not create its condition:\n{log}"
    );
    assert_eq!(code, Some(3), "{log}");
    assert!(
        log.contains("owned no partition and not rejoined its group"),
        "{log}"
    );
    // Stopped past its bound (81 s), and well before the group would have let it in (300 s).
    assert!(
        took >= Duration::from_secs(81) && took < Duration::from_secs(200),
        "stopped after {took:?}:\n{log}"
    );
}

/// A copy of the shipped model whose vocabulary has one word more than the model has rows
/// (a `vocab.txt` out of step with its `model.onnx`): a tweet holding that word gets an id the
/// model's lookup refuses, so a batch holding it fails as a whole; every other tweet tokenizes
/// and scores exactly as with the shipped model, and the golden tweets (which lack the word)
/// still validate the copy at start-up.
struct PoisonedModel {
    dir: std::path::PathBuf,
    word: &'static str,
}

fn poisoned_model() -> PoisonedModel {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("ki-poisoned-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for f in [
        "model.onnx",
        "preprocess.json",
        "golden.jsonl",
        "metrics.json",
    ] {
        std::fs::copy(repo.join("model").join(f), dir.join(f)).expect("copy model file");
    }
    let word = "zzunscorable";
    let mut vocab = std::fs::read_to_string(repo.join("model/vocab.txt")).expect("vocab");
    assert!(!vocab.lines().any(|l| l == word));
    if !vocab.ends_with('\n') {
        vocab.push('\n');
    }
    vocab.push_str(word);
    vocab.push('\n');
    std::fs::write(dir.join("vocab.txt"), vocab).expect("write vocab.txt");
    PoisonedModel { dir, word }
}

#[test]
fn a_tweet_the_model_cannot_score_is_dead_lettered_and_the_rest_of_its_batch_is_still_scored() {
    let w = World::new();
    let poisoned = poisoned_model();
    let word = poisoned.word;
    let texts = kafka_infer::app::data::test_tweets();
    let bad_text = |i: usize| format!("{word} {}", texts[i % texts.len()]);

    // The condition, shown on the model itself: a batch holding the word fails as a whole;
    // scored one at a time, every other tweet gets the shipped model's score.
    let classifier = kafka_infer::Classifier::load(&poisoned.dir).expect("the copy loads");
    let shipped = kafka_infer::Classifier::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model"),
    )
    .expect("shipped model");
    let tok = classifier.tokenizer();
    let batch = [tok.encode(&bad_text(0)), tok.encode(&texts[1])];
    let mut session = classifier.session().expect("session");
    assert!(session.score_ids(&batch).is_err(), "the batch must fail");
    let each = session.score_each(&batch);
    assert!(each[0].is_err(), "{each:?}");
    let want = shipped
        .session()
        .expect("session")
        .score_ids(&batch[1..])
        .expect("score")[0];
    assert_eq!(each[1].as_ref().ok(), Some(&want), "{each:?}");

    // 300 tweets, every tenth of them holding the word, all produced before the worker starts:
    // it drains them in batches of many tweets, so poisoned and good tweets share batches.
    let mut records = Vec::new();
    let mut bad_keys = std::collections::HashSet::new();
    for i in 0..300 {
        let (p, key, value) = tweet(i, &texts);
        if i % 10 == 3 {
            let v = serde_json::to_vec(&serde_json::json!({ "value": bad_text(i) })).expect("json");
            bad_keys.insert(key.clone());
            records.push((p, key, v));
        } else {
            records.push((p, key, value));
        }
    }
    w.produce(&records);
    let mut sc = Scenario::start(
        "inference fails for 30 of 300 tweets (an id the model refuses)",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let dir = poisoned.dir.to_string_lossy().into_owned();
    let mut worker = w.start_worker(&["--model-dir", &dir]);
    let dlq = w.read(&w.dlq, WAIT, QUIET, |d| d.len() >= bad_keys.len());
    let outs = w.read(&w.output, WAIT, QUIET, |o| o.len() >= 300 - bad_keys.len());
    let m = worker.metrics();
    let alone = m["kafka_infer_tweets_rescored_alone_total"];
    let done: std::collections::HashSet<(i32, i64)> = predicted(&outs)
        .into_iter()
        .chain(dlq.iter().map(Out::source))
        .collect();
    sc.measured(
        300,
        300usize.saturating_sub(done.len()),
        duplicates(&outs) + dlq.len().saturating_sub(bad_keys.len()),
        format!(
            "{} dead letters (inference_failed), {} predictions, {alone} tweets re-scored alone",
            dlq.len(),
            outs.len()
        ),
    );
    worker.sample(&mut sc);
    let logs = worker.log_text();
    assert_eq!(dlq.len(), bad_keys.len(), "{logs}");
    for d in &dlq {
        assert!(
            bad_keys.contains(d.key.as_deref().unwrap_or_default()),
            "{d:?}"
        );
        assert_eq!(d.headers["dlq-reason"], "inference_failed");
        assert!(d.headers["dlq-error"].contains("inference failed"), "{d:?}");
    }
    // Good tweets shared batches with poisoned ones (more tweets were re-scored alone than
    // there are poisoned ones), and every one of them got the shipped model's score.
    assert!(alone > bad_keys.len() as f64, "re-scored alone: {alone}");
    assert_eq!(outs.len(), 300 - bad_keys.len(), "{logs}");
    assert_eq!(duplicates(&outs), 0);
    let mut s = shipped.session().expect("session");
    for o in &outs {
        let i = (o.source().1 as usize) * PARTITIONS as usize + o.source().0 as usize;
        let text = &texts[i % texts.len()];
        let want = s.score_ids(&[tok.encode(text)]).expect("score")[0];
        assert!(
            (o.score() - f64::from(want)).abs() < 1e-6,
            "{o:?}: want {want}"
        );
    }
    w.wait_for_commits(&ends(300), Duration::from_secs(20), &logs);
    worker.terminate_cleanly(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&poisoned.dir);
}

/// Dead letters count against `--max-in-flight-bytes` until the broker acknowledges them, not
/// only until they are handed to the producer: librdkafka would otherwise queue any number of
/// them (up to 1 GiB). The producer holds every record for 1 s (`linger.ms`, its batches far
/// from full), so dead letters provably sit unacknowledged while 3 MB of bad records wait in
/// the input; records consumed but not acknowledged must stay within the bound (plus one
/// chunk), and must have reached it (the bound, not the input, held consumption back).
#[test]
fn dead_letters_held_unacknowledged_stay_inside_the_in_flight_byte_bound() {
    const RECORD: usize = 1_000;
    const BOUND: usize = 300_000;
    const CHUNK_RECORDS: usize = 256;
    let w = World::new();
    let bad: Vec<(i32, String, Vec<u8>)> = (0..3_000)
        .map(|i| {
            let mut v = format!("not json {i} ").into_bytes();
            v.resize(RECORD, b'x');
            ((i % PARTITIONS as usize) as i32, format!("bad-{i}"), v)
        })
        .collect();
    w.produce(&bad);
    let mut sc = Scenario::start(
        "3,000 dead letters of 1 kB held 1 s by the producer, 300 kB in-flight bound",
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let bound = BOUND.to_string();
    let mut worker = start_held(&w, 1_000, &["--max-in-flight-bytes", &bound]);
    let (mut peak, mut last_acked) = (0.0f64, 0.0f64);
    let deadline = Instant::now() + WAIT;
    while last_acked < bad.len() as f64 && Instant::now() < deadline {
        let m = worker.metrics();
        let consumed = m
            .get("kafka_infer_records_consumed_total")
            .copied()
            .unwrap_or(0.0);
        last_acked = m
            .get("kafka_infer_records_dead_lettered_total")
            .copied()
            .unwrap_or(0.0);
        peak = peak.max(consumed - last_acked);
        std::thread::sleep(Duration::from_millis(50));
    }
    let dlq = w.read(&w.dlq, WAIT, QUIET, |d| d.len() >= bad.len());
    let done: std::collections::HashSet<(i32, i64)> = dlq.iter().map(Out::source).collect();
    sc.measured(
        bad.len(),
        bad.len().saturating_sub(done.len()),
        dlq.len().saturating_sub(done.len()),
        format!("at most {peak} dead letters consumed and not acknowledged at once"),
    );
    worker.sample(&mut sc);
    let logs = worker.log_text();
    assert_eq!(done.len(), bad.len(), "{logs}");
    let most = (BOUND / RECORD + CHUNK_RECORDS) as f64;
    assert!(
        peak <= most,
        "{peak} unacknowledged dead letters, over {most}"
    );
    assert!(
        peak >= (BOUND / RECORD / 2) as f64,
        "only {peak} held at once: the bound was never what held consumption back"
    );
    w.wait_for_commits(&ends(bad.len()), Duration::from_secs(20), &logs);
    worker.terminate_cleanly(Duration::from_secs(30));
}
