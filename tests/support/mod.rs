//! Shared pieces of the broker integration tests: Apache Kafka (from the kafka-local crate,
//! re-exported as `kafka`: one broker per test binary, unique topics and group per test;
//! clusters for failover tests), the worker as a child
//! process exactly as users run it, a background load, and readers for the output, dead
//! letters, committed offsets and the worker's own metrics.
#![allow(dead_code)]

pub mod kafka;
pub mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka::{send_waiting, unique, Kafka};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub const PARTITIONS: i32 = 3;

/// How long a test waits for something that should happen in a few seconds.
pub const WAIT: Duration = Duration::from_secs(120);

/// One test's world: a broker, unique topics and group.
pub struct World {
    pub broker: &'static Kafka,
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
}

impl World {
    /// A world on the broker shared by this test binary.
    pub fn new() -> World {
        Self::on(Kafka::shared(), 1)
    }

    /// A world on a given broker or cluster.
    pub fn on(broker: &'static Kafka, replication: i32) -> World {
        let w = World {
            input: unique("in"),
            output: unique("out"),
            dlq: unique("dlq"),
            group: unique("group"),
            broker,
        };
        kafka::create_topics_with(
            &w.bootstrap(),
            &[(&w.input, PARTITIONS), (&w.output, PARTITIONS), (&w.dlq, 1)],
            replication,
            &[],
        );
        w
    }

    pub fn bootstrap(&self) -> String {
        self.broker.bootstrap.clone()
    }

    /// Starts `kafka-infer run` against this world. Logs go to a file.
    pub fn start_worker(&self, extra: &[&str]) -> Worker {
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{}-worker-{}.log",
            self.group,
            unique("w")
        ));
        // Test defaults, unless the test passes the flag itself.
        let defaults = [
            ("--metrics-addr", "127.0.0.1:0"),
            ("--commit-interval-ms", "200"),
            ("--log-interval-ms", "1000"),
            // The drain (5 s) plus commit bounds stay below max.poll.interval.ms (15 s, below),
            // as the worker checks.
            ("--drain-timeout-ms", "5000"),
        ];
        let mut args: Vec<&str> = Vec::new();
        for (flag, value) in defaults {
            if !extra.iter().any(|a| a.split('=').next() == Some(flag)) {
                args.extend([flag, value]);
            }
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafka-infer"));
        cmd.arg("run")
            .args(["--brokers", &self.bootstrap(), "--group-id", &self.group])
            .args(["--input-topic", &self.input])
            .args(["--output-topic", &self.output, "--dlq-topic", &self.dlq])
            .args(&args)
            // Short session timeouts: a killed member leaves the group quickly.
            .args(["-X", "consumer.session.timeout.ms=6000"])
            .args(["-X", "consumer.heartbeat.interval.ms=500"])
            .args(["-X", "consumer.max.poll.interval.ms=15000"])
            .args(extra)
            // For hunting a rare failure: more worker flags (e.g. `-X consumer.debug=cgrp`)
            // for every worker a test starts, split on whitespace.
            .args(
                std::env::var("WORKER_EXTRA_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env(
                "RUST_LOG",
                std::env::var("WORKER_RUST_LOG")
                    .unwrap_or_else(|_| "info,kafka_infer=debug".into()),
            );
        Worker::spawn(cmd, log)
    }

    fn producer(&self, props: &[(&str, &str)]) -> BaseProducer {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap())
            .set("linger.ms", "5")
            .set("enable.idempotence", "true");
        for (k, v) in props {
            c.set(*k, *v);
        }
        c.create().expect("producer")
    }

    /// Produces `{"value": text}` records with key `id` to the given partitions.
    pub fn produce(&self, records: &[(i32, String, Vec<u8>)]) {
        self.produce_with(records, &[]);
    }

    /// Like [`World::produce`], with extra producer properties (e.g. a compression codec).
    pub fn produce_with(&self, records: &[(i32, String, Vec<u8>)], props: &[(&str, &str)]) {
        let p = self.producer(props);
        for (partition, key, value) in records {
            let rec = BaseRecord::to(&self.input)
                .partition(*partition)
                .key(key)
                .payload(value);
            send_waiting(&p, rec).expect("produce input");
        }
        p.flush(Duration::from_secs(60)).expect("flush input");
    }

    /// Produces tweets in the background at about `rate` per second (round robin over the
    /// partitions, keys "<partition>-<seq>") until [`Feeder::stop`].
    pub fn feed(&self, rate: u32) -> Feeder {
        let (bootstrap, input) = (self.bootstrap(), self.input.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let texts = kafka_infer::app::data::test_tweets();
        let handle = std::thread::spawn(move || {
            // Its broker and idempotence log is kept (the last lines), to say why if it ever
            // cannot flush.
            let p: BaseProducer<LogTail> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "5")
                .set("enable.idempotence", "true")
                .set("debug", "broker,eos")
                .set_log_level(RDKafkaLogLevel::Debug)
                .create_with_context(LogTail::default())
                .expect("producer");
            let mut sent = 0usize;
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let due = (t0.elapsed().as_secs_f64() * f64::from(rate)) as usize;
                while sent < due {
                    let (part, key, value) = tweet(sent, &texts);
                    let rec = BaseRecord::to(&input)
                        .partition(part)
                        .key(&key)
                        .payload(&value);
                    send_waiting(&p, rec).expect("produce input");
                    sent += 1;
                }
                p.poll(Duration::from_millis(5));
            }
            // Generous: after a broker restart librdkafka may take a while to reconnect and
            // re-establish the idempotent producer; the feeder is not what is under test.
            if let Err(e) = p.flush(Duration::from_secs(180)) {
                panic!(
                    "flush input: {e}; {} of {sent} sends still unacknowledged; the feeder's \
                     last librdkafka log lines:\n{}",
                    p.in_flight_count(),
                    p.context().lines()
                );
            }
            sent
        });
        Feeder {
            stop,
            handle: Some(handle),
        }
    }

    fn reader(&self, isolation: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create()
            .expect("reader")
    }

    /// Reads every record of `topic` (read_uncommitted) from the beginning until `want(records)`
    /// holds (or `timeout`), then `quiet` longer, so duplicates after the last expected record
    /// are seen too.
    pub fn read(
        &self,
        topic: &str,
        timeout: Duration,
        quiet: Duration,
        want: impl Fn(&[Out]) -> bool,
    ) -> Vec<Out> {
        self.read_isolated(topic, "read_uncommitted", timeout, quiet, want)
    }

    /// [`World::read`] with an isolation level ("read_committed" hides aborted transactions).
    pub fn read_isolated(
        &self,
        topic: &str,
        isolation: &str,
        timeout: Duration,
        quiet: Duration,
        want: impl Fn(&[Out]) -> bool,
    ) -> Vec<Out> {
        let c = self.reader(isolation);
        let md = asking_again(&format!("metadata of {topic}"), || {
            c.fetch_metadata(Some(topic), Duration::from_secs(10))
        });
        let mut tpl = TopicPartitionList::new();
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .expect("tpl");
            }
        }
        c.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut satisfied: Option<Instant> = None;
        let mut checked = Instant::now();
        loop {
            let now = Instant::now();
            match satisfied {
                Some(t) if now >= t + quiet => break,
                None if now >= deadline => break,
                _ => {}
            }
            let got = c.poll(Duration::from_millis(50));
            if let Some(Ok(m)) = &got {
                out.push(Out::from(m));
            }
            // `want` may look at every record: ask it when caught up, or now and then.
            let idle = got.is_none();
            if satisfied.is_none() && (idle || checked.elapsed() > Duration::from_millis(500)) {
                checked = Instant::now();
                if want(&out) {
                    satisfied = Some(Instant::now());
                }
            }
        }
        out
    }

    /// The group's committed offsets per input partition (absent = nothing committed). A
    /// broker that is slow to answer (a loaded 2-core machine, a broker just thawed) is asked
    /// again, up to [`WAIT`]; only then does the test fail.
    pub fn committed(&self) -> BTreeMap<i32, i64> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offsets reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&self.input, p);
        }
        let got = asking_again("committed offsets", || {
            c.committed_offsets(tpl.clone(), Duration::from_secs(10))
        });
        got.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    /// Waits (up to `timeout`) until the group's committed offsets are exactly `want`; panics
    /// with what was committed and `context` otherwise.
    pub fn wait_for_commits(&self, want: &BTreeMap<i32, i64>, timeout: Duration, context: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.committed();
            if &got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "committed {got:?}, want {want:?}\n{context}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sets one dynamic config of a topic.
    pub fn set_topic_config(&self, topic: &str, key: &str, value: &str) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("admin");
        let alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let res = futures_executor::block_on(admin.alter_configs(&[alter], &opts))
            .expect("alter configs");
        for r in res {
            r.unwrap_or_else(|e| panic!("alter {topic} {key}={value}: {e:?}"));
        }
    }
}

/// Calls `ask` until the broker answers, up to [`WAIT`]: a broker slow to answer (a loaded
/// 2-core machine, a broker just thawed) is asked again; only then does the test fail.
fn asking_again<T>(what: &str, mut ask: impl FnMut() -> KafkaResult<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match ask() {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => eprintln!("{what}: {e}; asking again"),
            Err(e) => panic!("{what}: {e} (for {} s)", WAIT.as_secs()),
        }
    }
}

/// Worker flags that hold every output in the worker's producer for `ms` before it is sent
/// (librdkafka's `linger.ms`): records then stay in flight — consumed, not acknowledged —
/// for at least that long, deterministically, while consumption and offset commits go on.
pub fn hold_outputs(ms: u32) -> [String; 2] {
    ["-X".into(), format!("producer.linger.ms={ms}")]
}

/// A background load started by [`World::feed`].
/// A client context that keeps the last [`LogTail::KEEP`] librdkafka log lines.
#[derive(Default)]
pub struct LogTail {
    lines: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl LogTail {
    const KEEP: usize = 300;

    pub fn lines(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl rdkafka::ClientContext for LogTail {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == Self::KEEP {
            lines.pop_front();
        }
        lines.push_back(format!(
            "{:.3} {level:?} {fac} {log_message}",
            t0().elapsed().as_secs_f64()
        ));
    }
}

impl rdkafka::producer::ProducerContext for LogTail {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// When this test process first asked (log lines are stamped relative to it).
fn t0() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

pub struct Feeder {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<usize>>,
}

impl Feeder {
    /// Stops sending; returns how many tweets were sent (all acknowledged by the broker).
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("feeder"))
            .unwrap_or(0)
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Out {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub timestamp: Option<i64>,
    pub headers: HashMap<String, String>,
}

impl Out {
    fn from(m: &rdkafka::message::BorrowedMessage<'_>) -> Out {
        let mut headers = HashMap::new();
        if let Some(h) = m.headers() {
            for hd in h.iter() {
                headers.insert(
                    hd.key.to_owned(),
                    String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        Out {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            timestamp: m.timestamp().to_millis(),
            headers,
        }
    }

    pub fn score(&self) -> f64 {
        let v: serde_json::Value = serde_json::from_slice(&self.value).expect("output is JSON");
        v["value"][0].as_f64().expect("{\"value\":[score]}")
    }

    /// (source partition, source offset) from the headers.
    pub fn source(&self) -> (i32, i64) {
        let p = self.headers["source-partition"]
            .parse()
            .expect("partition header");
        let o = self.headers["source-offset"]
            .parse()
            .expect("offset header");
        (p, o)
    }
}

/// The worker child process; killed on drop if still running.
pub struct Worker {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Worker {
    /// Starts `cmd` (a `kafka-infer` command line) with stdin closed and stdout and stderr
    /// going to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Worker {
        let f = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone"))
            .stderr(f)
            .spawn()
            .expect("spawn worker");
        Worker {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Samples this worker's peak RSS into a scenario (before it exits).
    pub fn sample(&self, s: &mut report::Scenario) {
        if let Some(c) = &self.child {
            s.sample(c.id());
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status();
        }
    }

    /// Waits (bounded) for the process to exit by itself; its exit code, or None if it is
    /// still running at `timeout` (it is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    /// SIGTERM and the exit code must be 0; on anything else the assertion shows the log's tail.
    #[track_caller]
    pub fn terminate_cleanly(&mut self, timeout: Duration) {
        let code = self.terminate(timeout);
        if code != Some(0) {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "worker exited with {code:?} instead of 0; its log ends:\n{}",
                tail.join("\n")
            );
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a log line contains `pattern`; the line, or None at `timeout`.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_text().lines().find(|l| l.contains(pattern)) {
                return Some(l.to_owned());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address of the worker's /metrics, from its start-up log line.
    fn metrics_url(&self) -> Option<String> {
        let line = self.wait_for_log("metrics on http://", Duration::from_secs(60))?;
        let start = line.find("http://")? + "http://".len();
        let rest = &line[start..];
        let end = rest.find('/')?;
        Some(rest[..end].to_owned())
    }

    /// Scrapes /metrics: each sample's value, summed over labels (by metric name).
    pub fn metrics(&self) -> HashMap<String, f64> {
        let Some(addr) = self.metrics_url() else {
            return HashMap::new();
        };
        let body = http_get(&addr, "/metrics").unwrap_or_default();
        let mut out: HashMap<String, f64> = HashMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name.split('{').next().unwrap_or(name);
            if let Ok(v) = value.parse::<f64>() {
                *out.entry(name.to_owned()).or_default() += v;
            }
        }
        out
    }

    /// /healthz: (status code, body).
    pub fn health(&self) -> Option<(u16, String)> {
        let addr = self.metrics_url()?;
        let resp = http_get_full(&addr, "/healthz")?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        Some((code, body))
    }

    /// One metric from a fresh scrape, summed over its labels (0 when absent or unreachable).
    /// Several values that must agree with each other come from one [`Worker::metrics`].
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics().get(name).copied().unwrap_or(0.0)
    }

    /// Records consumed whose outputs are not acknowledged now, from the worker's own
    /// per-partition gauge (lifetime counters would still count what a rewind or a revoke
    /// dropped, long after nothing is in flight).
    pub fn in_flight(&self) -> i64 {
        self.metric("kafka_infer_in_flight") as i64
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn http_get_full(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let resp = http_get_full(addr, path)?;
    Some(resp.split_once("\r\n\r\n")?.1.to_owned())
}

/// Tweet number `i`: (partition, key "<partition>-<seq within partition>", {"value": text}).
pub fn tweet(i: usize, texts: &[String]) -> (i32, String, Vec<u8>) {
    let p = (i % PARTITIONS as usize) as i32;
    let seq = i / PARTITIONS as usize;
    let value =
        serde_json::to_vec(&serde_json::json!({ "value": texts[i % texts.len()] })).expect("json");
    (p, format!("{p}-{seq}"), value)
}

/// `n` tweets from test.csv as (partition, key, {"value": text}) records spread over the
/// partitions; key = "<partition>-<sequence within partition>".
pub fn tweets(n: usize, first_seq: usize) -> Vec<(i32, String, Vec<u8>)> {
    let texts = kafka_infer::app::data::test_tweets();
    (first_seq..first_seq + n)
        .map(|i| tweet(i, &texts))
        .collect()
}

/// Input offsets (partition, offset) that have an output.
pub fn predicted(outs: &[Out]) -> HashSet<(i32, i64)> {
    outs.iter().map(|o| o.source()).collect()
}

/// The inputs of `n` tweets produced with [`tweets`] / [`World::feed`] on a fresh topic.
pub fn all_inputs(n: usize) -> HashSet<(i32, i64)> {
    (0..n)
        .map(|i| {
            (
                (i % PARTITIONS as usize) as i32,
                (i / PARTITIONS as usize) as i64,
            )
        })
        .collect()
}

/// Committed offsets when `n` tweets were produced with [`tweets`] / [`World::feed`].
pub fn ends(n: usize) -> BTreeMap<i32, i64> {
    let mut e: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for (p, _) in all_inputs(n) {
        *e.entry(p).or_default() += 1;
    }
    e
}

/// Asserts that each input has an output in `outs`.
pub fn assert_every_input_predicted(inputs: &HashSet<(i32, i64)>, outs: &[Out], logs: &str) {
    let got = predicted(outs);
    let mut missing: Vec<_> = inputs.difference(&got).copied().collect();
    missing.sort_unstable();
    assert!(
        missing.is_empty(),
        "{} inputs without an output, e.g. {:?}\n{logs}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Outputs beyond the first per input.
pub fn duplicates(outs: &[Out]) -> usize {
    outs.len() - predicted(outs).len()
}

/// Asserts that the *first* outputs of each input partition arrive in input order (later
/// duplicates, from a restart at the last commit, are allowed to repeat earlier offsets).
pub fn assert_partition_order(outs: &[Out]) {
    let mut seen: HashSet<(i32, i64)> = HashSet::new();
    let mut last: HashMap<i32, i64> = HashMap::new();
    for o in outs {
        let (p, off) = o.source();
        if !seen.insert((p, off)) {
            continue;
        }
        let prev = last.insert(p, off);
        assert!(
            prev.is_none_or(|x| x < off),
            "partition {p}: first output of offset {off} after that of {prev:?}"
        );
    }
}

/// An exit code as a report shows it: the number, or that the process had not exited.
pub fn exit_text(code: Option<i32>) -> String {
    code.map_or_else(|| "none (still running)".to_string(), |c| c.to_string())
}

/// How many input offsets below the committed ones have no output in `done` (lost, for a
/// scenario that commits only what was delivered).
pub fn committed_without_output(
    committed: &BTreeMap<i32, i64>,
    done: &HashSet<(i32, i64)>,
) -> usize {
    committed
        .iter()
        .flat_map(|(p, c)| (0..*c).map(move |off| (*p, off)))
        .filter(|k| !done.contains(k))
        .count()
}

/// Every input offset below each committed offset has an output.
pub fn assert_commits_covered(committed: &BTreeMap<i32, i64>, done: &HashSet<(i32, i64)>) {
    for (p, c) in committed {
        for off in 0..*c {
            assert!(
                done.contains(&(*p, off)),
                "committed {c} on partition {p} but offset {off} has no output"
            );
        }
    }
}

/// Records the figures of a scenario whose `sent` tweets (see [`tweets`]) all had to get an
/// output — call it before asserting on them: the row is written when `sc` is dropped, passed
/// or failed (see [`report::Scenario`]).
pub fn measure_run(sc: &mut report::Scenario, sent: usize, outs: &[Out], note: impl Into<String>) {
    let lost = all_inputs(sent).difference(&predicted(outs)).count();
    sc.measured(sent, lost, duplicates(outs), note);
}

/// Waits until `f()` holds (polling), or panics with `what` at `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One bad record must never stop the worker, whatever field of it is too large: 30 tweets,
/// two of them (offsets 1 of partitions 1 and 2) with 6,000-byte keys, into a worker whose
/// producer takes records of at most 4,096 bytes (`worker_args` adds the mode). Their
/// predictions cannot be written; they must become `output_too_large` dead letters (key cut,
/// original key size in a header), the 28 others be predicted (`isolation` for the reader),
/// every offset committed, and the worker keep running. Returns the worker, still running.
pub fn an_oversized_key_run(w: &World, worker_args: &[&str], isolation: &str) -> Worker {
    let mut records = tweets(30, 0);
    let big_key = "k".repeat(6_000);
    for i in [4, 5] {
        records[i].1 = format!("{}-{big_key}", records[i].1);
    }
    let big: HashSet<(i32, i64)> = [4usize, 5]
        .iter()
        .map(|i| {
            (
                (i % PARTITIONS as usize) as i32,
                (i / PARTITIONS as usize) as i64,
            )
        })
        .collect();
    let mut args = vec!["-X", "producer.message.max.bytes=4096"];
    args.extend_from_slice(worker_args);
    let mut sc = report::Scenario::start(
        if isolation == "read_committed" {
            "exactly-once: two inputs whose 6,000-byte keys make their outputs too large"
        } else {
            "two inputs whose 6,000-byte keys make their outputs too large (4,096-byte producer)"
        },
        &w.bootstrap(),
        &w.output,
        PARTITIONS,
    );
    let worker = w.start_worker(&args);
    w.produce(&records);
    let outs = w.read_isolated(&w.output, isolation, WAIT, Duration::from_secs(1), |o| {
        o.len() >= 28
    });
    let dlq = w.read_isolated(&w.dlq, isolation, WAIT, Duration::from_secs(1), |d| {
        d.len() >= 2
    });
    let scored: HashSet<(i32, i64)> = predicted(&outs).union(&predicted(&dlq)).copied().collect();
    sc.measured(
        30,
        all_inputs(30).difference(&scored).count(),
        outs.len() + dlq.len() - scored.len(),
        format!(
            "{} predictions, {} output_too_large dead letters",
            outs.len(),
            dlq.len()
        ),
    );
    let logs = worker.log_text();
    assert_eq!(predicted(&dlq), big, "{logs}");
    assert_eq!(outs.len(), 28, "{logs}");
    assert!(predicted(&outs).is_disjoint(&big));
    for d in &dlq {
        assert_eq!(d.headers["dlq-reason"], "output_too_large");
        assert_eq!(d.headers["dlq-original-key-size"], (6_000 + 4).to_string());
        assert!(d.key.as_ref().is_some_and(|k| k.len() < 6_000));
    }
    w.wait_for_commits(&ends(30), Duration::from_secs(30), &logs);
    worker
}
