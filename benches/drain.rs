//! Drain benchmark on a local Apache Kafka (started by kafka-local): preload N tweets
//! (test.csv, cycled) into a 3-partition input topic, start a contender, time its first to
//! last output as seen by a reader of the output topic. Contenders, one after the other on the
//! same preloaded topic in one run: the worker with the real model; its pass-through mode
//! (`--benchmark-passthrough`: no inference, constant score); a bare librdkafka
//! consume→produce loop (this binary, re-run as a child process: the floor of any Kafka
//! worker); the real model with exactly-once at two transaction intervals; and the bare loop
//! again with the four headers every worker output carries (the floor for that contract). It reports
//! tweets/s, each process's own **CPU per tweet** (user + system time from /proc divided by
//! the tweets), its busiest threads and its peak RSS.
//!
//!     cargo bench --bench drain                          # 1,000,000 tweets
//!     DRAIN_TWEETS=200000 cargo bench --bench drain      # quicker
//!     DRAIN_ONLY=0,2 cargo bench --bench drain           # some contenders (by index)
//!     DRAIN_ARGS="-X producer.linger.ms=5" cargo bench --bench drain   # extra worker flags
//!     DRAIN_BEFORE=/path/to/older/kafka-infer cargo bench --bench drain  # before vs after
//!
//! With `DRAIN_BEFORE`, every worker contender also runs with that binary, right after the
//! current one on the same preloaded topic: before-and-after figures from one run.
//!
//! The reader of the output topic shares the machine with the worker, as a real consumer would.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_infer::app::data::test_tweets;

use kafka_local::{create_topics, send_waiting, unique, Kafka};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;

/// Environment variable that turns this binary into the bare-librdkafka baseline (it runs
/// itself as a child process, so its CPU time is its own).
const BASELINE_ENV: &str = "DRAIN_BARE_BASELINE";

/// One contender: a label and how to start it against (bootstrap, input, output, dlq, group).
struct Contender {
    label: &'static str,
    args: &'static [&'static str],
    bare: bool,
}

const CONTENDERS: [Contender; 6] = [
    Contender {
        label: "kafka-infer, real model",
        args: &[],
        bare: false,
    },
    Contender {
        label: "kafka-infer --benchmark-passthrough (no model)",
        args: &["--benchmark-passthrough"],
        bare: false,
    },
    Contender {
        label: "bare librdkafka consume→produce (no JSON, no model)",
        args: &[],
        bare: true,
    },
    Contender {
        label: "kafka-infer, real model, exactly-once, 100 ms transactions",
        args: &[
            "--guarantee",
            "exactly-once",
            "--transaction-interval-ms",
            "100",
        ],
        bare: false,
    },
    Contender {
        label: "kafka-infer, real model, exactly-once, 1 s transactions",
        args: &[
            "--guarantee",
            "exactly-once",
            "--transaction-interval-ms",
            "1000",
        ],
        bare: false,
    },
    Contender {
        label: "bare librdkafka consume→produce + the worker's four output headers",
        args: &["headers"],
        bare: true,
    },
];

fn main() {
    if let Ok(spec) = std::env::var(BASELINE_ENV) {
        bare_passthrough(&spec);
        return;
    }
    // `cargo bench` passes --bench; any other argument is not ours to interpret.
    let n: usize = std::env::var("DRAIN_TWEETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let only: Option<Vec<usize>> = std::env::var("DRAIN_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let extra: Vec<String> = std::env::var("DRAIN_ARGS")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let broker = Kafka::start(1);
    let bootstrap = broker.bootstrap.clone();
    let input = unique("drain-in");
    create_topics(&bootstrap, &[(&input, PARTITIONS)]);

    let tweets = test_tweets();
    let t0 = Instant::now();
    preload(&bootstrap, &input, &tweets, n);
    let preload_s = t0.elapsed().as_secs_f64();
    println!(
        "preloaded {n} tweets into {PARTITIONS} partitions in {preload_s:.1} s ({:.0}/s)",
        n as f64 / preload_s
    );

    let before = std::env::var("DRAIN_BEFORE").ok();
    let current = env!("CARGO_BIN_EXE_kafka-infer").to_owned();
    let mut runs: Vec<(String, &Contender, String)> = Vec::new();
    for (i, c) in CONTENDERS.iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        runs.push((c.label.to_owned(), c, current.clone()));
        if let (Some(b), false) = (&before, c.bare) {
            runs.push((format!("{} (before)", c.label), c, b.clone()));
        }
    }
    let mut rows = Vec::new();
    for (label, c, bin) in &runs {
        let output = unique("drain-out");
        let dlq = unique("drain-dlq");
        let group = unique("drain");
        create_topics(&bootstrap, &[(&output, PARTITIONS), (&dlq, 1)]);
        let reader = reader(&bootstrap, &output);
        let log = std::env::temp_dir().join(format!("{group}.log"));
        let mut child = if c.bare {
            Command::new(std::env::current_exe().expect("own path"))
                .env(
                    BASELINE_ENV,
                    format!("{bootstrap} {input} {output} {group} {}", c.args.join(" ")),
                )
                .stdin(Stdio::null())
                .spawn()
                .expect("start the baseline")
        } else {
            Command::new(bin)
                .arg("run")
                .args(["--brokers", &bootstrap, "--group-id", &group])
                .args(["--input-topic", &input, "--output-topic", &output])
                .args(["--dlq-topic", &dlq, "--metrics-addr", "off"])
                .args(c.args)
                .args(&extra)
                // Warnings, and the exit summary (batches and their mean size).
                .env("RUST_LOG", "warn,kafka_infer::app::worker=info")
                .stdin(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("worker log"))
                .spawn()
                .expect("start worker")
        };
        let (first, last, got) = drain(&reader, n, &mut child);
        if got < n {
            if let Ok(Some(status)) = child.try_wait() {
                println!("{label}: exited early ({status}) after {got} of {n} outputs");
                if let Ok(l) = std::fs::read_to_string(&log) {
                    for line in l
                        .lines()
                        .rev()
                        .take(5)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                    {
                        println!("  | {line}");
                    }
                }
            }
        }
        let rss_kb = peak_rss_kb(child.id());
        let cpu = cpu_seconds(child.id());
        let threads = thread_cpu(child.id());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let _ = child.wait();
        let exit_summary = std::fs::read_to_string(&log).ok().and_then(|l| {
            l.lines()
                .rev()
                .find(|l| l.contains("avg_batch"))
                .map(str::to_owned)
        });
        let _ = std::fs::remove_file(&log);
        let secs = (last - first).as_secs_f64();
        let rate = (got.saturating_sub(1)) as f64 / secs.max(1e-9);
        let us_per_tweet = cpu * 1e6 / got.max(1) as f64;
        println!(
            "{}: {got} outputs, first→last {secs:.2} s, {rate:.0} tweets/s, CPU {us_per_tweet:.2} µs/tweet ({cpu:.2} s), peak RSS {:.0} MiB",
            label,
            rss_kb as f64 / 1024.0
        );
        println!(
            "  busiest threads (CPU s): {}",
            threads
                .iter()
                .take(8)
                .map(|(n, s)| format!("{n} {s:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(line) = exit_summary {
            let batches: Vec<&str> = line
                .split_whitespace()
                .filter(|w| w.starts_with("batches=") || w.starts_with("avg_batch="))
                .collect();
            println!("  worker: {}", batches.join(" "));
        }
        rows.push((label.as_str(), got, secs, rate, us_per_tweet, rss_kb));
    }
    println!("\n| contender | outputs | first→last (s) | tweets/s | CPU µs/tweet | peak RSS (MiB) |\n|---|---:|---:|---:|---:|---:|");
    for (label, got, secs, rate, us, rss) in &rows {
        println!(
            "| {label} | {got} | {secs:.2} | {rate:.0} | {us:.2} | {:.0} |",
            *rss as f64 / 1024.0
        );
    }
    let rate_of = |label: &str| rows.iter().find(|r| r.0 == label).map(|r| r.3);
    if let (Some(real), Some(bare)) = (rate_of(CONTENDERS[0].label), rate_of(CONTENDERS[2].label)) {
        println!(
            "\nreal model / bare librdkafka throughput: {:.2}",
            real / bare
        );
    }
    if let (Some(real), Some(pass)) = (rate_of(CONTENDERS[0].label), rate_of(CONTENDERS[1].label)) {
        println!("real model / pass-through throughput: {:.2}", real / pass);
    }
    // CPU per tweet against the floors: the bare loop, and the bare loop with the headers.
    let cpu_of = |i: usize| {
        rows.iter()
            .find(|r| r.0 == CONTENDERS[i].label)
            .map(|r| r.4)
    };
    for (i, name) in [(0, "real model"), (1, "pass-through")] {
        for (floor, floor_name) in [(2, "bare"), (5, "bare + headers")] {
            if let (Some(us), Some(base)) = (cpu_of(i), cpu_of(floor)) {
                println!("{name} / {floor_name} CPU per tweet: {:.2}", us / base);
            }
        }
    }
}

/// The baseline: what the worker does minus everything of its own — consume each record and
/// produce a constant `{"value":[0.5]}` with the same key to the same partition of the output
/// topic (idempotent producer, acks=all), committing consumed offsets every second. No JSON,
/// no tokenizer, no model, no ordering or delivery tracking. `spec`: "bootstrap input output
/// group [headers]". Runs until SIGTERM.
///
/// With `headers`, each output also carries the four headers every worker output carries
/// (`model-version`, `source-topic`, `source-partition`, `source-offset`, values of the same
/// lengths): the floor for a worker that keeps that contract. librdkafka allocates each header
/// and the list holding them per record, and serializes them into every produce request.
fn bare_passthrough(spec: &str) {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let (bootstrap, input, output, group, headers) = match parts[..] {
        [b, i, o, g] => (b, i, o, g, false),
        [b, i, o, g, "headers"] => (b, i, o, g, true),
        _ => panic!("bad {BASELINE_ENV}: {spec}"),
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()).expect("signal");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .expect("consumer");
    consumer.subscribe(&[input]).expect("subscribe");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let payload = br#"{"value":[0.5]}"#;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            let mut rec = BaseRecord::<[u8], [u8]>::to(output)
                .partition(m.partition())
                .payload(&payload[..]);
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            if headers {
                let mut p = itoa::Buffer::new();
                let mut o = itoa::Buffer::new();
                rec = rec.headers(
                    OwnedHeaders::new_with_capacity(6)
                        .insert(Header {
                            key: "model-version",
                            value: Some("0123456789ab"),
                        })
                        .insert(Header {
                            key: "source-topic",
                            value: Some(input),
                        })
                        .insert(Header {
                            key: "source-partition",
                            value: Some(p.format(m.partition())),
                        })
                        .insert(Header {
                            key: "source-offset",
                            value: Some(o.format(m.offset())),
                        }),
                );
            }
            send_waiting(&producer, rec).expect("produce");
        }
        producer.poll(Duration::ZERO);
    }
    let _ = producer.flush(Duration::from_secs(10));
}

fn preload(bootstrap: &str, topic: &str, tweets: &[String], n: usize) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    for i in 0..n {
        let value = serde_json::to_vec(&serde_json::json!({ "value": tweets[i % tweets.len()] }))
            .expect("json");
        let key = i.to_string();
        send_waiting(&p, BaseRecord::to(topic).key(&key).payload(&value)).expect("produce");
    }
    p.flush(Duration::from_secs(120)).expect("flush preload");
}

/// A reader of the (still empty) output topic, connected and fetching *before* the worker
/// starts: a reader that connects late would see the first predictions late and shorten the
/// measured first→last time.
fn reader(bootstrap: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("drain-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    for p in 0..PARTITIONS {
        c.fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("reader connects");
    }
    let warm = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warm {
        assert!(
            c.poll(Duration::from_millis(50)).is_none(),
            "output topic not empty"
        );
    }
    c
}

/// Reads the output topic until `n` predictions arrived, 20 minutes passed, or the contender
/// exited (a worker that refused its flags must not cost a 20-minute wait); returns the
/// arrival times of the first and last and the count.
fn drain(c: &BaseConsumer, n: usize, child: &mut std::process::Child) -> (Instant, Instant, usize) {
    let deadline = Instant::now() + Duration::from_secs(1200);
    let (mut first, mut last, mut got) = (None, Instant::now(), 0usize);
    let mut exited_at: Option<Instant> = None;
    while got < n && Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            got += 1;
        } else if exited_at.is_none() && !matches!(child.try_wait(), Ok(None)) {
            exited_at = Some(Instant::now());
        }
        // Outputs it produced before exiting may still be on their way: read for 5 s more.
        if exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            break;
        }
    }
    (first.unwrap_or(last), last, got)
}

/// Clock ticks per second for /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
const TICKS: f64 = 100.0;

/// User + system CPU seconds of a process (or thread) from a `stat` file.
fn stat_cpu(path: &str) -> Option<(String, f64)> {
    let s = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may contain spaces.
    let (head, rest) = s.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 0; utime and stime are fields 11 and 12.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks / TICKS))
}

/// The worker's own CPU time (user + system, all threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu(&format!("/proc/{pid}/stat")).map_or(0.0, |(_, s)| s)
}

/// CPU seconds per thread name (threads of the same name summed), busiest first.
fn thread_cpu(pid: u32) -> Vec<(String, f64)> {
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Some((name, s)) = stat_cpu(&format!("{}/stat", t.path().display())) {
                *by_name.entry(name).or_default() += s;
            }
        }
    }
    let mut v: Vec<_> = by_name.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
