//! `kafka-infer demo` (part of the binary, not the library): the worker, exactly as users run
//! it (`kafka-infer run`, a child process), against an in-process **demo broker** (librdkafka's
//! mock cluster, which speaks the Kafka protocol over real loopback sockets). Zero setup: no
//! broker to install. Two acts:
//!
//! 1. a backlog: the tweets are preloaded and scored; some scores are printed;
//! 2. a steady rate (1,000 tweets/s for 5 s by default), with a live progress line: the cost
//!    per tweet (the worker process's own CPU time from /proc) and the end-to-end latency (a
//!    tweet's timestamp, set when it was due, to its score's arrival) at that rate — the figures
//!    a service lives with, which a backlog's throughput says little about.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::app::shutdown::Shutdown;
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

const INPUT: &str = "incoming_tweet";
const OUTPUT: &str = "tweet_disaster_inference";
const DLQ: &str = "incoming_tweet.dlq";

/// What the demo is asked to do.
pub struct DemoPlan<'a> {
    pub tweets: &'a [String],
    pub partitions: i32,
    pub sample: usize,
    /// `kafka-infer run` flags besides the broker and topics (model, pipeline tuning).
    pub worker_args: Vec<String>,
    /// The steady act: tweets/s and for how long (zero: skipped).
    pub rate: u32,
    pub steady: Duration,
}

/// What the demo found.
#[derive(Debug)]
pub struct DemoReport {
    pub tweets: usize,
    pub predicted: usize,
}

/// Runs the demo and prints its report to stdout.
pub fn run(plan: &DemoPlan<'_>, shutdown: &Shutdown) -> Result<DemoReport> {
    println!(
        "kafka-infer demo — DEMO BROKER: librdkafka's in-process mock cluster, not a real Kafka."
    );
    let mock = MockCluster::new(1)?;
    for (topic, parts) in [
        (INPUT, plan.partitions),
        (OUTPUT, plan.partitions),
        (DLQ, 1),
    ] {
        mock.create_topic(topic, parts, 1)?;
    }
    let brokers = mock.bootstrap_servers();
    let tweets = plan.tweets;
    println!(
        "demo broker at {brokers}; feeding {} tweets into '{INPUT}' ({} partitions)",
        tweets.len(),
        plan.partitions
    );
    let producer = feeder(&brokers)?;
    for (i, text) in tweets.iter().enumerate() {
        send(&producer, &i.to_string(), text, None)?;
    }
    producer.flush(Duration::from_secs(30))?;

    let log = std::env::temp_dir().join(format!("kafka-infer-demo-{}.log", std::process::id()));
    let mut worker = Worker::start(&brokers, &plan.worker_args, &log)?;
    println!(
        "worker: kafka-infer run --brokers {brokers} … (pid {}, log {})",
        worker.child.id(),
        log.display()
    );
    let reader = reader(&brokers, plan.partitions)?;
    let started = Instant::now();
    let scores = backlog(&reader, tweets.len(), shutdown, &mut worker)?;
    let took = started.elapsed();

    println!("\n  score  verdict       tweet");
    for (i, text) in tweets.iter().enumerate().take(plan.sample) {
        if let Some(s) = scores.get(&i) {
            let verdict = if *s >= 0.5 { "DISASTER" } else { "-" };
            let short: String = text.replace('\n', " ").chars().take(90).collect();
            println!("  {s:.3}  {verdict:<12}  {short}");
        }
    }
    let disasters = scores.values().filter(|s| **s >= 0.5).count();
    let n = scores.len();
    println!(
        "\n{n} of {} tweets scored, {disasters} flagged as disasters (score ≥ 0.5)",
        tweets.len()
    );
    println!(
        "backlog: all scored {:.2} s after the worker started (model load and joining the group included)",
        took.as_secs_f64()
    );

    if !plan.steady.is_zero() && n == tweets.len() && !shutdown.is_requested() {
        steady(plan, &producer, &reader, &mut worker, shutdown)?;
    }
    worker.stop()?;
    let _ = std::fs::remove_file(&log);
    Ok(DemoReport {
        tweets: tweets.len(),
        predicted: n,
    })
}

/// The worker child process.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(brokers: &str, args: &[String], log: &std::path::Path) -> Result<Worker> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("creating the worker's log {}", log.display()))?;
        let child = Command::new(exe)
            .arg("run")
            .args(["--brokers", brokers, "--group-id", "kafka-infer-demo"])
            .args([
                "--input-topic",
                INPUT,
                "--output-topic",
                OUTPUT,
                "--dlq-topic",
                DLQ,
            ])
            .args(["--metrics-addr", "off"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting the worker")?;
        Ok(Worker {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Fails (with the log's last lines) if the worker has exited.
    fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "the worker exited ({status}):\n  {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            );
        }
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit (it drains and commits).
    fn stop(mut self) -> Result<()> {
        self.check()?;
        // SAFETY: kill() has no memory-safety preconditions; the pid is our own child's.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!(
                "the worker exited with {status} (log: {})",
                self.log.display()
            );
        }
        Ok(())
    }

    /// The worker's CPU time (user + system) so far, in seconds (Linux: from /proc).
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }
}

fn feeder(brokers: &str) -> Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        .create()?)
}

/// Sends `{"value": text}` with `key` (and the timestamp `ts_ms`), waiting while the queue is
/// full.
fn send(producer: &BaseProducer, key: &str, text: &str, ts_ms: Option<i64>) -> Result<()> {
    let payload = serde_json::json!({ "value": text }).to_string();
    let mut rec = BaseRecord::to(INPUT).key(key).payload(&payload);
    if let Some(ts) = ts_ms {
        rec = rec.timestamp(ts);
    }
    while let Err((e, back)) = producer.send(rec) {
        if !matches!(
            e,
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
        ) {
            return Err(e.into());
        }
        rec = back;
        producer.poll(Duration::from_millis(5));
    }
    producer.poll(Duration::ZERO);
    Ok(())
}

fn reader(brokers: &str, partitions: i32) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "kafka-infer-demo-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(OUTPUT, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// A score read back: its key and value, if it is one.
fn score_of(msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<(String, f32)> {
    let key = std::str::from_utf8(msg.key()?).ok()?.to_owned();
    let value: serde_json::Value = serde_json::from_slice(msg.payload()?).ok()?;
    Some((key, value["value"][0].as_f64()? as f32))
}

/// Reads the output until a score has arrived for each of the `expected` preloaded tweets.
fn backlog(
    reader: &BaseConsumer,
    expected: usize,
    shutdown: &Shutdown,
    worker: &mut Worker,
) -> Result<HashMap<usize, f32>> {
    let mut scores = HashMap::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(300);
    while scores.len() < expected && !shutdown.is_requested() && Instant::now() < deadline {
        worker.check()?;
        if let Some(Ok(msg)) = reader.poll(Duration::from_millis(100)) {
            if let Some((k, s)) = score_of(&msg) {
                if let Ok(i) = k.parse() {
                    scores.insert(i, s);
                }
            }
        }
    }
    Ok(scores)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The steady act: `plan.rate` tweets/s for `plan.steady` (after a second of warm-up that is
/// not counted), each stamped with the time it was due; a progress line per second; then CPU
/// per tweet and latency.
fn steady(
    plan: &DemoPlan<'_>,
    producer: &BaseProducer,
    reader: &BaseConsumer,
    worker: &mut Worker,
    shutdown: &Shutdown,
) -> Result<()> {
    println!(
        "\nsteady rate: {} tweets/s for {} s (after 1 s of warm-up), each tweet timestamped when due",
        plan.rate,
        plan.steady.as_secs()
    );
    let mut run = SteadyRun::new(plan)?;
    let mut next_status = run.t0 + Duration::from_secs(1);
    let tty = std::io::stdout().is_terminal();
    let grace_until = run.t0 + run.total + Duration::from_secs(10);
    while run.scored < run.counted() && Instant::now() < grace_until && !shutdown.is_requested() {
        run.send_due(plan, producer, worker)?;
        if let Some(Ok(msg)) = reader.poll(Duration::from_millis(1)) {
            run.arrived(&msg);
        }
        if Instant::now() >= next_status {
            worker.check()?;
            let line = run.progress(worker);
            if tty {
                print!("\r{line}   ");
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
            next_status += Duration::from_secs(1);
        }
    }
    if tty {
        println!("\r{}   ", run.progress(worker));
    }
    let cpu = cpu_per_tweet(run.cpu_from, run.sent, worker);
    println!(
        "at {} tweets/s: {} scored of {} sent after the warm-up; CPU {} per tweet ({} of a core); end to end p50 {} ms, p99 {} ms, max {} ms",
        plan.rate,
        run.scored,
        run.counted(),
        cpu.map_or_else(|| "n/a".into(), |us| format!("{us:.0} µs")),
        cpu.map_or_else(|| "n/a".into(), |us| format!("{:.1} %", us * run.rate / 1e4)),
        run.latency.value_at_quantile(0.5),
        run.latency.value_at_quantile(0.99),
        run.latency.max()
    );
    println!(
        "(the demo broker answers a fetch later than Kafka would, up to two fetch waits; README \"Cost per tweet at steady rates\" has the figures on Apache Kafka)"
    );
    Ok(())
}

/// The steady act's bookkeeping.
struct SteadyRun {
    rate: f64,
    total: Duration,
    n_total: u64,
    n_warm: u64,
    t0: Instant,
    ms0: i64,
    sent: u64,
    scored: u64,
    /// The worker's CPU seconds and tweets sent when the warm-up ended.
    cpu_from: Option<(f64, u64)>,
    latency: Histogram<u64>,
}

impl SteadyRun {
    fn new(plan: &DemoPlan<'_>) -> Result<SteadyRun> {
        let rate = f64::from(plan.rate.max(1));
        let warmup = Duration::from_secs(1);
        let total = warmup + plan.steady;
        Ok(SteadyRun {
            rate,
            total,
            n_total: (rate * total.as_secs_f64()) as u64,
            n_warm: (rate * warmup.as_secs_f64()) as u64,
            t0: Instant::now(),
            ms0: now_ms(),
            sent: 0,
            scored: 0,
            cpu_from: None,
            latency: Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)
                .map_err(|e| anyhow::anyhow!("histogram: {e}"))?,
        })
    }

    /// Tweets counted (sent after the warm-up).
    fn counted(&self) -> u64 {
        self.n_total - self.n_warm
    }

    /// Sends what is due by now, each stamped with the time it was due.
    fn send_due(
        &mut self,
        plan: &DemoPlan<'_>,
        producer: &BaseProducer,
        worker: &Worker,
    ) -> Result<()> {
        let due = ((self.t0.elapsed().as_secs_f64() * self.rate) as u64).min(self.n_total);
        while self.sent < due {
            let text = &plan.tweets[self.sent as usize % plan.tweets.len()];
            let ts = self.ms0 + (self.sent as f64 * 1000.0 / self.rate) as i64;
            send(producer, &format!("s{}", self.sent), text, Some(ts))?;
            self.sent += 1;
            if self.sent == self.n_warm {
                self.cpu_from = worker.cpu_seconds().map(|c| (c, self.sent));
            }
        }
        Ok(())
    }

    /// A score read back: counted after the warm-up, its latency from the due time.
    fn arrived(&mut self, msg: &rdkafka::message::BorrowedMessage<'_>) {
        let seq = msg
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.strip_prefix('s'))
            .and_then(|k| k.parse::<u64>().ok());
        if let (Some(seq), Some(ts)) = (seq, msg.timestamp().to_millis()) {
            if seq >= self.n_warm {
                self.scored += 1;
                let ms = u64::try_from(now_ms() - ts).unwrap_or(0).max(1);
                self.latency.saturating_record(ms);
            }
        }
    }

    fn progress(&self, worker: &Worker) -> String {
        progress(
            self.t0.elapsed(),
            self.sent,
            self.scored,
            &self.latency,
            self.cpu_from,
            worker,
        )
    }
}

/// CPU µs per tweet sent since the warm-up ended (`from`: the CPU seconds and tweets sent then).
fn cpu_per_tweet(from: Option<(f64, u64)>, sent: u64, worker: &Worker) -> Option<f64> {
    let (c0, s0) = from?;
    let c1 = worker.cpu_seconds()?;
    (sent > s0).then(|| (c1 - c0) * 1e6 / (sent - s0) as f64)
}

fn progress(
    elapsed: Duration,
    sent: u64,
    scored: u64,
    latency: &Histogram<u64>,
    cpu_from: Option<(f64, u64)>,
    worker: &Worker,
) -> String {
    let cpu = cpu_per_tweet(cpu_from, sent, worker)
        .map_or_else(|| "CPU –".into(), |us| format!("CPU {us:.0} µs/tweet"));
    let pct = |q: f64| {
        if latency.is_empty() {
            "–".to_owned()
        } else {
            latency.value_at_quantile(q).to_string()
        }
    };
    format!(
        "  {:>4.1} s  sent {sent:>6}  scored {scored:>6}  p50 {} ms  p99 {} ms  {cpu}",
        elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    )
}
