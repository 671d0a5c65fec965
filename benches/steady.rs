//! Cost per tweet at the steady rates a service lives at — not only in a drain. On one local
//! Apache Kafka (started by `scripts/kafka`), each contender in turn consumes a fresh
//! 3-partition topic fed by `loadgen` at a fixed rate, scores every tweet and produces the
//! scores; `loadgen --pid` reports the contender's own CPU time (user + system, from /proc)
//! per tweet, its wake-ups, and the end-to-end latency (intended send time → the score read
//! back, corrected for coordinated omission), lost and duplicated tweets. Then a drain of a
//! preloaded backlog, the worker's best case. Contenders, one after another:
//!
//! - `kafka-infer`: the worker with its defaults (the default latency budget);
//! - `python`: `benches/python/consumer.py` (confluent-kafka → onnxruntime → produce, the
//!   same model and preprocessing), `consume(256, 5 ms)` and a 5 ms producer linger;
//! - `bare`: a bare librdkafka consume→produce loop (this binary, re-run as a child process)
//!   with the worker's coalescing (its fetch wait, minimum bytes and linger) and the four
//!   headers every worker output carries: no JSON, no model, no ordering or delivery
//!   tracking — the floor for the worker's contract at the same latency.
//!
//! It prints a table per rate, the worker's CPU per thread role, and the ratios to the Python
//! consumer; writes everything to `target/steady/steady.json` and two plots (SVG): CPU per
//! tweet against rate (log-log) and latency against rate.
//!
//!     cargo bench --bench steady                                 # 200,1000,5000/s + a drain of 300k
//!     STEADY_RATES=100,300,1000,3000,10000 cargo bench --bench steady
//!     STEADY_ONLY=kafka-infer,bare STEADY_SECONDS=10 cargo bench --bench steady
//!     STEADY_WORKER_ARGS="--latency-budget-ms 0" cargo bench --bench steady
//!     STEADY_BEFORE=/path/to/older/kafka-infer cargo bench --bench steady   # + that binary
//!     STEADY_PLOTS=docs cargo bench --bench steady               # where the SVGs go
//!
//! The Python contender needs a virtualenv with `benches/python/requirements.txt`: the bench
//! makes one in `target/bench-venv` on first use (or set STEADY_PYTHON to a python that has
//! them); without one it says so and runs the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_infer::app::data::test_tweets;
use kafka_infer::batching::latency::{
    LatencyBudget, DEFAULT_LATENCY_BUDGET_MS, IDLE_FETCH_WAIT_MS,
};
use plotters::prelude::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;

use kafka_local::{create_topics, send_waiting, unique, Kafka};

const PARTITIONS: i32 = 3;
/// Makes this binary the bare-librdkafka contender (it runs itself as a child process, so its
/// CPU time is its own): "bootstrap input output group".
const BARE_ENV: &str = "STEADY_BARE_CONTENDER";

/// One contender: how to start it, and its line style in the plots.
#[derive(Clone)]
struct Contender {
    name: String,
    kind: Kind,
    colour: RGBColor,
}

#[derive(Clone)]
enum Kind {
    Worker { bin: PathBuf, args: Vec<String> },
    Python { python: PathBuf },
    Bare,
}

/// One measurement.
#[derive(Clone, Debug, serde::Serialize)]
struct Row {
    contender: String,
    /// Tweets/s fed; `None` for the drain.
    rate: Option<f64>,
    tweets: u64,
    cpu_us_per_tweet: f64,
    wakeups_per_tweet: Option<f64>,
    /// Drain: tweets/s from first to last output.
    throughput: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    lost: u64,
    duplicates: u64,
    /// CPU µs per tweet by thread role (steady rates).
    roles: BTreeMap<String, f64>,
    /// What went wrong, if the run did not complete.
    failure: Option<String>,
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

fn main() {
    if let Ok(spec) = std::env::var(BARE_ENV) {
        bare_contender(&spec);
        return;
    }
    let rates: Vec<f64> = env_list("STEADY_RATES")
        .unwrap_or_else(|| vec!["200".into(), "1000".into(), "5000".into()])
        .iter()
        .map(|r| r.parse().expect("STEADY_RATES: numbers, comma-separated"))
        .collect();
    let seconds: u64 = std::env::var("STEADY_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let drain_tweets: usize = std::env::var("STEADY_DRAIN_TWEETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let only = env_list("STEADY_ONLY");
    let out_dir = target_dir().join("steady");
    std::fs::create_dir_all(&out_dir).expect("target/steady");
    let plots = std::env::var("STEADY_PLOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| out_dir.clone());

    let loadgen = loadgen_binary();
    let mut contenders = vec![Contender {
        name: "kafka-infer".into(),
        kind: Kind::Worker {
            bin: PathBuf::from(env!("CARGO_BIN_EXE_kafka-infer")),
            args: worker_args(),
        },
        colour: RGBColor(31, 119, 180),
    }];
    if let Ok(before) = std::env::var("STEADY_BEFORE") {
        contenders.push(Contender {
            name: "kafka-infer (before)".into(),
            kind: Kind::Worker {
                bin: PathBuf::from(before),
                args: worker_args(),
            },
            colour: RGBColor(148, 103, 189),
        });
    }
    match python() {
        Ok(python) => contenders.push(Contender {
            name: "python".into(),
            kind: Kind::Python { python },
            colour: RGBColor(214, 39, 40),
        }),
        Err(why) => println!("python contender skipped: {why}"),
    }
    contenders.push(Contender {
        name: "bare".into(),
        kind: Kind::Bare,
        colour: RGBColor(127, 127, 127),
    });
    if let Some(only) = &only {
        contenders.retain(|c| only.contains(&c.name));
    }

    let broker = Kafka::start(1);
    let bootstrap = broker.bootstrap.clone();
    println!("broker {bootstrap}; rates {rates:?}/s for {seconds} s each; drain of {drain_tweets} tweets");
    warm_broker(&loadgen, &bootstrap);
    // The contenders' own protocol paths (group membership, read_committed fetches, idempotent
    // produce with headers) warm up too: one unreported run of the first contender.
    if let Some(first) = contenders.first() {
        let warm = steady_run(first, &loadgen, &bootstrap, 5000.0, 15, &out_dir);
        println!(
            "warm-up run of {} at 5000/s (not reported): p50 {} ms, p99 {} ms",
            first.name,
            fmt(warm.p50_ms, 2),
            fmt(warm.p99_ms, 2)
        );
    }

    let mut rows = Vec::new();
    for &rate in &rates {
        for c in &contenders {
            let row = steady_run(c, &loadgen, &bootstrap, rate, seconds, &out_dir);
            print_row(&row);
            rows.push(row);
        }
    }
    if drain_tweets > 0 {
        let input = unique("steady-drain-in");
        create_topics(&bootstrap, &[(&input, PARTITIONS)]);
        preload(&bootstrap, &input, drain_tweets);
        for c in &contenders {
            let row = drain_run(c, &bootstrap, &input, drain_tweets);
            print_row(&row);
            rows.push(row);
        }
    }

    report(&rows, &rates, &contenders);
    let json = serde_json::to_string_pretty(&rows).expect("json");
    std::fs::write(out_dir.join("steady.json"), json).expect("steady.json");
    std::fs::create_dir_all(&plots).expect("plot directory");
    plot_cpu(&plots.join("steady-cpu.svg"), &rows, &contenders);
    plot_latency(&plots.join("steady-latency.svg"), &rows, &contenders);
    println!(
        "\nwrote {}, {} and {}",
        out_dir.join("steady.json").display(),
        plots.join("steady-cpu.svg").display(),
        plots.join("steady-latency.svg").display()
    );
}

fn worker_args() -> Vec<String> {
    std::env::var("STEADY_WORKER_ARGS")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// `CARGO_TARGET_DIR`, or the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// loadgen, built next to the worker (release) if it is not there yet.
fn loadgen_binary() -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_kafka-infer"));
    let loadgen = worker.with_file_name("loadgen");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", "loadgen"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build -p loadgen");
    assert!(status.success(), "cargo build --release -p loadgen failed");
    assert!(loadgen.exists(), "no loadgen at {}", loadgen.display());
    loadgen
}

/// A python with the Python contender's requirements: STEADY_PYTHON, or a virtualenv made
/// once in target/bench-venv.
fn python() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("STEADY_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let venv = target_dir().join("bench-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".requirements-installed");
    if ready.exists() {
        return Ok(python);
    }
    let requirements =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python/requirements.txt");
    println!(
        "making {} for the Python contender (once; a few minutes) …",
        venv.display()
    );
    let ok = |mut c: Command| c.status().map(|s| s.success()).unwrap_or(false);
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(&venv);
    if !ok(make) {
        return Err("python3 -m venv failed (is python3 with venv installed?)".into());
    }
    let mut install = Command::new(&python);
    install
        .args(["-m", "pip", "install", "-q", "-r"])
        .arg(&requirements);
    if !ok(install) {
        return Err(format!("pip install -r {} failed", requirements.display()));
    }
    std::fs::write(&ready, b"").map_err(|e| e.to_string())?;
    Ok(python)
}

/// A fresh broker's JIT answers slowly for its first seconds: loadgen reads back its own
/// tweets at 5,000/s for 10 s before anything is measured.
fn warm_broker(loadgen: &Path, bootstrap: &str) {
    let topic = unique("steady-warm");
    create_topics(bootstrap, &[(&topic, PARTITIONS)]);
    let out = Command::new(loadgen)
        .args(["--brokers", bootstrap, "--input-topic", &topic])
        .args([
            "--output-topic",
            &topic,
            "--rate",
            "5000",
            "--duration",
            "10s",
        ])
        .args(["--warmup", "0s", "--wait-ready", "0s", "--quiet", "--json"])
        .arg("--out-dir")
        .arg(target_dir().join("steady/hgrm"))
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "warm-up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a contender reading `input` and writing `output`; its stderr goes to `log`.
fn start(
    c: &Contender,
    bootstrap: &str,
    input: &str,
    output: &str,
    dlq: &str,
    group: &str,
    log: &Path,
) -> Child {
    let stderr = std::fs::File::create(log).expect("log file");
    let mut cmd = match &c.kind {
        Kind::Worker { bin, args } => {
            let mut cmd = Command::new(bin);
            cmd.arg("run")
                .args(["--brokers", bootstrap, "--group-id", group])
                .args(["--input-topic", input, "--output-topic", output])
                .args(["--dlq-topic", dlq, "--metrics-addr", "off"])
                .args(args)
                .env("RUST_LOG", "warn,kafka_infer::app::worker=info");
            cmd
        }
        Kind::Python { python } => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python/consumer.py");
            let mut cmd = Command::new(python);
            cmd.arg(script)
                .args([bootstrap, input, output, group])
                .args(["--wait-ms", "5", "--linger-ms", "5"]);
            cmd
        }
        Kind::Bare => {
            let mut cmd = Command::new(std::env::current_exe().expect("own path"));
            cmd.env(BARE_ENV, format!("{bootstrap} {input} {output} {group}"));
            cmd
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start the contender")
}

fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn last_lines(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n  | ")
}

/// One contender at one rate: loadgen feeds it (after a warm-up of ~3,000 tweets) and
/// measures it.
fn steady_run(
    c: &Contender,
    loadgen: &Path,
    bootstrap: &str,
    rate: f64,
    seconds: u64,
    out_dir: &Path,
) -> Row {
    let (input, output, dlq, group) = (
        unique("st-in"),
        unique("st-out"),
        unique("st-dlq"),
        unique("st"),
    );
    create_topics(
        bootstrap,
        &[(&input, PARTITIONS), (&output, PARTITIONS), (&dlq, 1)],
    );
    let log = out_dir.join(format!("{group}.log"));
    let mut child = start(c, bootstrap, &input, &output, &dlq, &group, &log);
    let warmup_ms = (3_000_000.0 / rate).clamp(1_000.0, 10_000.0) as u64;
    let run = Command::new(loadgen)
        .args([
            "--brokers",
            bootstrap,
            "--input-topic",
            &input,
            "--output-topic",
            &output,
        ])
        .args([
            "--rate",
            &rate.to_string(),
            "--duration",
            &format!("{seconds}s"),
        ])
        .args([
            "--warmup",
            &format!("{warmup_ms}ms"),
            "--wait-ready",
            "60s",
            "--grace",
            "10s",
        ])
        .args(["--pid", &child.id().to_string(), "--json", "--quiet"])
        .args([
            "--run-id",
            &format!(
                "{}_{}",
                c.name.replace(|ch: char| !ch.is_ascii_alphanumeric(), "_"),
                rate as u64
            ),
        ])
        .arg("--out-dir")
        .arg(out_dir.join("hgrm"))
        .output()
        .expect("run loadgen");
    stop(&mut child);
    let mut row = Row {
        contender: c.name.clone(),
        rate: Some(rate),
        tweets: 0,
        cpu_us_per_tweet: f64::NAN,
        wakeups_per_tweet: None,
        throughput: None,
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        lost: 0,
        duplicates: 0,
        roles: BTreeMap::new(),
        failure: None,
    };
    let parsed: Option<Value> = serde_json::from_slice(&run.stdout).ok();
    let Some(r) = parsed.as_ref().and_then(|v| v["runs"].get(0)) else {
        row.failure = Some(format!(
            "loadgen failed ({}): {}\n  | {}",
            run.status,
            String::from_utf8_lossy(&run.stderr).trim(),
            last_lines(&log, 5)
        ));
        return row;
    };
    let f = |v: &Value| v.as_f64();
    row.tweets = r["sent"].as_u64().unwrap_or(0);
    row.lost = r["lost"].as_u64().unwrap_or(0);
    row.duplicates = r["duplicates"].as_u64().unwrap_or(0);
    row.p50_ms = f(&r["latency_ms"]["p50"]);
    row.p99_ms = f(&r["latency_ms"]["p99"]);
    row.max_ms = f(&r["latency_ms"]["max"]);
    if let Some(p) = r.get("process") {
        row.cpu_us_per_tweet = f(&p["cpu_us_per_tweet"]).unwrap_or(f64::NAN);
        row.wakeups_per_tweet = f(&p["wakeups_per_tweet"]);
        for role in p["roles"].as_array().into_iter().flatten() {
            if let (Some(name), Some(us)) = (role["role"].as_str(), f(&role["cpu_us_per_tweet"])) {
                row.roles.insert(name.to_owned(), us);
            }
        }
    }
    if row.lost > 0 {
        row.failure = Some(format!(
            "{} tweets lost\n  | {}",
            row.lost,
            last_lines(&log, 5)
        ));
    }
    let _ = std::fs::remove_file(&log);
    row
}

/// One contender draining a preloaded backlog of `n` tweets: CPU per tweet (the whole process,
/// start-up included) and tweets/s from the first output to the last.
fn drain_run(c: &Contender, bootstrap: &str, input: &str, n: usize) -> Row {
    let (output, dlq, group) = (unique("dr-out"), unique("dr-dlq"), unique("dr"));
    create_topics(bootstrap, &[(&output, PARTITIONS), (&dlq, 1)]);
    let reader = reader(bootstrap, &output);
    let log = target_dir().join("steady").join(format!("{group}.log"));
    let mut child = start(c, bootstrap, input, &output, &dlq, &group, &log);
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut first, mut last, mut got) = (None, Instant::now(), 0usize);
    while got < n && Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        if let Some(Ok(_)) = reader.poll(Duration::from_millis(100)) {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            got += 1;
        }
    }
    let cpu = process_cpu_seconds(child.id());
    stop(&mut child);
    let secs = (last - first.unwrap_or(last)).as_secs_f64();
    Row {
        contender: c.name.clone(),
        rate: None,
        tweets: got as u64,
        cpu_us_per_tweet: cpu * 1e6 / got.max(1) as f64,
        wakeups_per_tweet: None,
        throughput: Some(got.saturating_sub(1) as f64 / secs.max(1e-9)),
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        lost: (n - got.min(n)) as u64,
        duplicates: 0,
        roles: BTreeMap::new(),
        failure: (got < n).then(|| format!("{got} of {n} outputs\n  | {}", last_lines(&log, 5))),
    }
}

/// User + system CPU seconds of a process, from /proc.
fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some((_, rest)) = s.rsplit_once(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn preload(bootstrap: &str, topic: &str, n: usize) {
    let tweets = test_tweets();
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

/// A reader of the (empty) output topic, fetching before the contender starts.
fn reader(bootstrap: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("steady-reader"))
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
    c
}

/// The bare contender: consume each record, produce `{"value":[0.5]}` with the same key, to the
/// same partition, with the worker's four output headers; the worker's fetch and linger
/// settings at its default latency budget; offsets auto-committed. Runs until SIGTERM.
fn bare_contender(spec: &str) {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let [bootstrap, input, output, group] = parts[..] else {
        panic!("bad {BARE_ENV}: {spec}");
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()).expect("signal");
    let budget = LatencyBudget::new(Duration::from_millis(DEFAULT_LATENCY_BUDGET_MS));
    let mut consumer_cfg = ClientConfig::new();
    consumer_cfg
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true");
    let mut producer_cfg = ClientConfig::new();
    producer_cfg
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    budget.apply(&mut consumer_cfg, &mut producer_cfg);
    debug_assert_eq!(
        consumer_cfg.get("fetch.idle.wait.max.ms"),
        Some(IDLE_FETCH_WAIT_MS.to_string().as_str())
    );
    let consumer: BaseConsumer = consumer_cfg.create().expect("consumer");
    consumer.subscribe(&[input]).expect("subscribe");
    let producer: BaseProducer = producer_cfg.create().expect("producer");
    let payload = br#"{"value":[0.5]}"#;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            let (mut p, mut o) = (itoa::Buffer::new(), itoa::Buffer::new());
            let headers = OwnedHeaders::new_with_capacity(6)
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
                });
            let mut rec = BaseRecord::<[u8], [u8]>::to(output)
                .partition(m.partition())
                .payload(&payload[..])
                .headers(headers);
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            send_waiting(&producer, rec).expect("produce");
        }
        producer.poll(Duration::ZERO);
    }
    let _ = producer.flush(Duration::from_secs(10));
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite())
        .map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

fn print_row(r: &Row) {
    let what = match r.rate {
        Some(rate) => format!("{rate:.0}/s"),
        None => "drain".into(),
    };
    println!(
        "{what:>8} {:<22} CPU {:>8} µs/tweet  p50 {:>7} ms  p99 {:>7} ms  max {:>7} ms  lost {}  dup {}{}",
        r.contender,
        fmt(Some(r.cpu_us_per_tweet), 1),
        fmt(r.p50_ms, 2),
        fmt(r.p99_ms, 2),
        fmt(r.max_ms, 2),
        r.lost,
        r.duplicates,
        r.throughput.map_or_else(String::new, |t| format!("  {t:.0} tweets/s")),
    );
    if let Some(f) = &r.failure {
        println!("         FAILED: {f}");
    }
}

/// The tables: per rate, every contender with its ratio to the Python consumer; the worker's
/// CPU per thread role.
fn report(rows: &[Row], rates: &[f64], contenders: &[Contender]) {
    let python = |rate: Option<f64>| {
        rows.iter()
            .find(|r| r.contender == "python" && r.rate == rate)
            .map(|r| r.cpu_us_per_tweet)
    };
    println!("\n| rate | contender | CPU µs/tweet | × Python | wake-ups/tweet | p50 ms | p99 ms | max ms | lost | dup |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut keys: Vec<Option<f64>> = rates.iter().copied().map(Some).collect();
    keys.push(None);
    for key in keys {
        for c in contenders {
            let Some(r) = rows.iter().find(|r| r.contender == c.name && r.rate == key) else {
                continue;
            };
            let ratio = python(key).map(|p| r.cpu_us_per_tweet / p);
            let what = key.map_or_else(
                || format!("drain ({} tweets/s)", fmt(r.throughput, 0)),
                |k| format!("{k:.0}/s"),
            );
            println!(
                "| {what} | {} | {} | {} | {} | {} | {} | {} | {} | {} |{}",
                r.contender,
                fmt(Some(r.cpu_us_per_tweet), 1),
                fmt(ratio, 2),
                fmt(r.wakeups_per_tweet, 2),
                fmt(r.p50_ms, 2),
                fmt(r.p99_ms, 2),
                fmt(r.max_ms, 2),
                r.lost,
                r.duplicates,
                if r.failure.is_some() { " FAILED" } else { "" }
            );
        }
    }
    for r in rows
        .iter()
        .filter(|r| r.contender == "kafka-infer" && r.rate.is_some())
    {
        let parts: Vec<String> = r.roles.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
        println!(
            "kafka-infer at {:.0}/s, CPU µs/tweet by thread role: {}",
            r.rate.unwrap_or(0.0),
            parts.join(", ")
        );
    }
}

/// Where a row sits on the rate axis: its rate, or for the drain its throughput.
fn x_of(r: &Row) -> Option<f64> {
    r.rate.or(r.throughput).filter(|x| *x > 0.0)
}

fn plot_cpu(path: &Path, rows: &[Row], contenders: &[Contender]) {
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((x_of(r)?, r.cpu_us_per_tweet)))
        .filter(|(_, y)| y.is_finite() && *y > 0.0)
        .collect();
    if pts.is_empty() {
        return;
    }
    let (xmin, xmax) = bounds(pts.iter().map(|p| p.0));
    let (ymin, ymax) = bounds(pts.iter().map(|p| p.1));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let _ = root.fill(&WHITE);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "CPU per tweet against rate (lower is better; the last point of each line is a drain)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())
        .expect("chart");
    let _ = chart
        .configure_mesh()
        .x_desc("tweets/s (steady rate; the triangle: a drain, at its throughput)")
        .y_desc("CPU µs per tweet (process user + system)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw();
    for c in contenders {
        let mut series: Vec<&Row> = rows
            .iter()
            .filter(|r| r.contender == c.name && x_of(r).is_some())
            .collect();
        series.sort_by(|a, b| {
            x_of(a)
                .partial_cmp(&x_of(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let line: Vec<(f64, f64)> = series
            .iter()
            .filter_map(|r| Some((x_of(r)?, r.cpu_us_per_tweet)))
            .filter(|(_, y)| y.is_finite() && *y > 0.0)
            .collect();
        let colour = c.colour;
        if let Ok(s) = chart.draw_series(LineSeries::new(line.clone(), colour.stroke_width(2))) {
            s.label(c.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        }
        let _ = chart.draw_series(
            series
                .iter()
                .filter(|r| r.rate.is_some())
                .filter_map(|r| Some((x_of(r)?, r.cpu_us_per_tweet)))
                .filter(|(_, y)| y.is_finite() && *y > 0.0)
                .map(|p| Circle::new(p, 4, colour.filled())),
        );
        let _ = chart.draw_series(
            series
                .iter()
                .filter(|r| r.rate.is_none())
                .filter_map(|r| Some((x_of(r)?, r.cpu_us_per_tweet)))
                .filter(|(_, y)| y.is_finite() && *y > 0.0)
                .map(|p| TriangleMarker::new(p, 7, colour.filled())),
        );
    }
    let _ = chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw();
    let _ = root.present();
}

fn plot_latency(path: &Path, rows: &[Row], contenders: &[Contender]) {
    let steady: Vec<&Row> = rows
        .iter()
        .filter(|r| r.rate.is_some() && r.p99_ms.is_some())
        .collect();
    if steady.is_empty() {
        return;
    }
    let (xmin, xmax) = bounds(steady.iter().filter_map(|r| r.rate));
    let (ymin, ymax) = bounds(steady.iter().flat_map(|r| [r.p50_ms, r.p99_ms]).flatten());
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let _ = root.fill(&WHITE);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "End-to-end latency against rate: p50 (solid) and p99 (dashed)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())
        .expect("chart");
    let _ = chart
        .configure_mesh()
        .x_desc("tweets/s")
        .y_desc("ms, intended send → score read back")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw();
    for c in contenders {
        let mut series: Vec<&&Row> = steady.iter().filter(|r| r.contender == c.name).collect();
        series.sort_by(|a, b| {
            a.rate
                .partial_cmp(&b.rate)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let colour = c.colour;
        let p50: Vec<(f64, f64)> = series
            .iter()
            .filter_map(|r| Some((r.rate?, r.p50_ms?)))
            .collect();
        let p99: Vec<(f64, f64)> = series
            .iter()
            .filter_map(|r| Some((r.rate?, r.p99_ms?)))
            .collect();
        if let Ok(s) = chart.draw_series(LineSeries::new(p50, colour.stroke_width(2))) {
            s.label(c.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        }
        let _ = chart.draw_series(DashedLineSeries::new(p99, 6, 4, colour.stroke_width(2)));
    }
    let _ = chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw();
    let _ = root.present();
}

/// A log axis's range around the values, with some room.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    (lo / 1.5, hi * 1.5)
}
