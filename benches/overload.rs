//! Memory under overload: the worker (real model) is fed at twice the rate it can score, for
//! 60 s, on a local Apache Kafka (kafka-local); its resident set is sampled every second.
//! What bounds it: librdkafka's per-partition prefetch (`queued.max.messages.kbytes`, set by
//! the worker), the in-flight budget (`--max-in-flight-bytes`), the producer's queue of small
//! outputs, and the model — not the backlog, which stays in Kafka.
//!
//!     cargo bench --bench overload                   # 60 s at 2× the measured drain rate
//!     OVERLOAD_SECS=30 OVERLOAD_RATE=50000 cargo bench --bench overload

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_infer::app::data::test_tweets;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord};

use kafka_local::{create_topics, send_waiting, unique, Kafka};

const PARTITIONS: i32 = 3;

fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn counter(addr: &str, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0.0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn main() {
    let secs: u64 = std::env::var("OVERLOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let broker = Kafka::start(1);
    let bootstrap = broker.bootstrap.clone();
    let (input, output, dlq) = (unique("ol-in"), unique("ol-out"), unique("ol-dlq"));
    create_topics(
        &bootstrap,
        &[(&input, PARTITIONS), (&output, PARTITIONS), (&dlq, 1)],
    );
    let metrics = "127.0.0.1:19877";
    let mut worker = Command::new(env!("CARGO_BIN_EXE_kafka-infer"))
        .arg("run")
        .args(["--brokers", &bootstrap, "--group-id", &unique("ol")])
        .args(["--input-topic", &input, "--output-topic", &output])
        .args(["--dlq-topic", &dlq, "--metrics-addr", metrics])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start worker");

    let tweets: Vec<Vec<u8>> = test_tweets()
        .iter()
        .map(|t| serde_json::to_vec(&serde_json::json!({ "value": t })).expect("json"))
        .collect();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut sent = 0usize;
    let send_for = |duration: Duration, rate: f64, sent: &mut usize| {
        let t0 = Instant::now();
        let start = *sent;
        while t0.elapsed() < duration {
            let due = start + (t0.elapsed().as_secs_f64() * rate) as usize;
            while *sent < due {
                let key = sent.to_string();
                let rec = BaseRecord::to(&input)
                    .key(&key)
                    .payload(&tweets[*sent % tweets.len()]);
                send_waiting(&p, rec).expect("produce");
                *sent += 1;
            }
            p.poll(Duration::from_millis(1));
        }
    };
    // The worker's own capacity: overfeed for 10 s and count what it scored meanwhile.
    let rate: f64 = match std::env::var("OVERLOAD_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(r) => r,
        None => {
            send_for(Duration::from_secs(3), 200_000.0, &mut sent);
            let before = counter(metrics, "kafka_infer_records_predicted_total");
            std::thread::sleep(Duration::from_secs(10));
            let capacity =
                (counter(metrics, "kafka_infer_records_predicted_total") - before) / 10.0;
            println!("worker capacity: {capacity:.0} tweets/s; feeding at 2× that");
            2.0 * capacity
        }
    };
    let t0 = Instant::now();
    let mut peak = 0.0f64;
    let mut samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        send_for(Duration::from_secs(1), rate, &mut sent);
        let (rss, hwm) = rss_mib(worker.id());
        peak = peak.max(hwm);
        samples.push(rss);
    }
    let predicted = counter(metrics, "kafka_infer_records_predicted_total");
    let lag = counter(metrics, "kafka_infer_consumer_lag");
    let in_flight_bytes = counter(metrics, "kafka_infer_in_flight_bytes");
    println!(
        "fed {sent} tweets at {rate:.0}/s for {secs} s; {predicted:.0} scored; consumer lag {lag:.0}"
    );
    println!(
        "RSS every second (MiB): first {:.0}, last {:.0}, max {:.0}; peak (VmHWM) {peak:.0} MiB; in-flight bytes at the end {in_flight_bytes:.0}",
        samples.first().copied().unwrap_or(0.0),
        samples.last().copied().unwrap_or(0.0),
        samples.iter().copied().fold(0.0, f64::max)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
}
