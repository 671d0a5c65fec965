//! Shared pieces of the broker integration tests: a tansu broker per test, the worker as a
//! child process, and readers for the output, DLQ and committed offsets.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_infer::testkit::{create_topics, send_waiting, unique, Tansu};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub const PARTITIONS: i32 = 3;

/// One test's world: a broker, unique topics and group.
pub struct World {
    pub broker: Tansu,
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
}

impl World {
    pub fn new() -> World {
        let broker = Tansu::start().expect("start tansu (is it installed? see README)");
        let w = World {
            input: unique("in"),
            output: unique("out"),
            dlq: unique("dlq"),
            group: unique("group"),
            broker,
        };
        create_topics(
            &w.bootstrap(),
            &[(&w.input, PARTITIONS), (&w.output, PARTITIONS), (&w.dlq, 1)],
        )
        .expect("create topics");
        w
    }

    pub fn bootstrap(&self) -> String {
        self.broker.bootstrap()
    }

    /// Starts `kafka-infer run` against this world. Logs go to a file (returned).
    pub fn start_worker(&self, extra: &[&str]) -> Worker {
        let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("model");
        let log = std::env::temp_dir().join(format!("{}-worker-{}.log", self.group, unique("w")));
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kafka-infer"))
            .arg("run")
            .args(["--brokers", &self.bootstrap(), "--group-id", &self.group])
            .args([
                "--input-topic",
                &self.input,
                "--output-topic",
                &self.output,
                "--dlq-topic",
                &self.dlq,
            ])
            .arg("--model-dir")
            .arg(model)
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--commit-interval-ms",
                "200",
                "--log-interval-ms",
                "1000",
            ])
            // Low fetch waits: tansu answers a waiting fetch only when it expires. Short session
            // timeouts: a killed member leaves the group quickly.
            .args([
                "-X",
                "fetch.wait.max.ms=5",
                "-X",
                "consumer.session.timeout.ms=6000",
                "-X",
                "consumer.heartbeat.interval.ms=500",
            ])
            .args(["-X", "consumer.max.poll.interval.ms=10000"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("WORKER_RUST_LOG")
                    .unwrap_or_else(|_| "info,kafka_infer=debug".into()),
            )
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

    /// Produces `{"value": text}` records with key `id` to the given partition.
    pub fn produce(&self, records: &[(i32, String, Vec<u8>)]) {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        for (partition, key, value) in records {
            let rec = BaseRecord::to(&self.input)
                .partition(*partition)
                .key(key)
                .payload(value);
            send_waiting(&p, rec).expect("produce input");
        }
        p.flush(Duration::from_secs(30)).expect("flush input");
    }

    /// Reads every record of `topic` until `want(records)` holds or `timeout`.
    pub fn read_until(
        &self,
        topic: &str,
        timeout: Duration,
        want: impl Fn(&[Out]) -> bool,
    ) -> Vec<Out> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .create()
            .expect("reader");
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
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
        while Instant::now() < deadline && !want(&out) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_owned(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Out {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    timestamp: m.timestamp().to_millis(),
                    headers,
                });
            }
        }
        out
    }

    /// The group's committed offsets per input partition (absent = nothing committed).
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
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        got.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }
}

impl World {
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
}

/// `offset` committed on every partition.
pub fn on_every_partition(offset: i64) -> BTreeMap<i32, i64> {
    (0..PARTITIONS).map(|p| (p, offset)).collect()
}

/// A record read back from an output topic.
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
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `n` tweets from test.csv as (partition, key, {"value": text}) records spread over the
/// partitions; key = "<partition>-<sequence within partition>".
pub fn tweets(n: usize, first_seq: usize) -> Vec<(i32, String, Vec<u8>)> {
    let texts = kafka_infer::data::test_tweets();
    (first_seq..first_seq + n)
        .map(|i| {
            let p = (i % PARTITIONS as usize) as i32;
            let seq = i / PARTITIONS as usize;
            let value = serde_json::to_vec(&serde_json::json!({ "value": texts[i % texts.len()] }))
                .expect("json");
            (p, format!("{p}-{seq}"), value)
        })
        .collect()
}

/// Asserts predictions of one input partition arrive in input order (by key sequence).
pub fn assert_partition_order(outs: &[Out]) {
    let mut last: HashMap<i32, i64> = HashMap::new();
    for o in outs {
        let (p, off) = o.source();
        let prev = last.insert(p, off);
        assert!(
            prev.is_none_or(|x| x < off),
            "partition {p}: offset {off} after {prev:?}"
        );
    }
}
