//! The reliability report's measurements: a background watcher of a topic (for the longest
//! stall between outputs), the workers' peak RSS, and one JSON line per scenario run appended
//! to `target/reliability.jsonl` (scripts/reliability-report turns them into RELIABILITY.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Reads a topic from its start in the background and notes when each record arrives.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<Instant>>>,
}

impl Watcher {
    pub fn start(bootstrap: &str, topic: &str, partitions: i32) -> Watcher {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", super::kafka::unique("watcher"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("watcher");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
        }
        c.assign(&tpl).expect("assign");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut arrivals = Vec::new();
            while !s.load(Ordering::Relaxed) {
                if let Some(Ok(_)) = c.poll(Duration::from_millis(50)) {
                    arrivals.push(Instant::now());
                }
            }
            arrivals
        });
        Watcher {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops watching; the longest time between two consecutive records, from the first to
    /// the last that arrived (how long the output stood still while the stream went on).
    pub fn longest_stall(mut self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        let arrivals = self
            .handle
            .take()
            .map(|h| h.join().expect("watcher"))
            .unwrap_or_default();
        arrivals
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Peak resident set (VmHWM) of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One run of one scenario, for the reliability report.
pub struct Row<'a> {
    pub scenario: &'a str,
    pub records: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub longest_stall: Duration,
    pub rss_peak_mib: f64,
    pub note: String,
}

/// A scenario being measured: watches the output topic and keeps the workers' peak RSS.
pub struct Scenario {
    name: &'static str,
    watcher: Watcher,
    rss_peak_mib: f64,
}

impl Scenario {
    pub fn start(name: &'static str, bootstrap: &str, output: &str, partitions: i32) -> Scenario {
        Scenario {
            name,
            watcher: Watcher::start(bootstrap, output, partitions),
            rss_peak_mib: 0.0,
        }
    }

    /// Samples a worker's peak RSS (call before it exits).
    pub fn sample(&mut self, pid: u32) {
        self.rss_peak_mib = self.rss_peak_mib.max(peak_rss_mib(pid));
    }

    /// Reports the scenario's row.
    pub fn finish(self, records: usize, lost: usize, duplicates: usize, note: impl Into<String>) {
        let row = Row {
            scenario: self.name,
            records,
            lost,
            duplicates,
            longest_stall: self.watcher.longest_stall(),
            rss_peak_mib: self.rss_peak_mib,
            note: note.into(),
        };
        report(&row);
    }
}

/// Prints the row and appends it to `target/reliability.jsonl`.
pub fn report(row: &Row<'_>) {
    let line = serde_json::json!({
        "scenario": row.scenario,
        "records": row.records,
        "lost": row.lost,
        "duplicates": row.duplicates,
        "longest_stall_ms": row.longest_stall.as_millis() as u64,
        "rss_peak_mib": (row.rss_peak_mib * 10.0).round() / 10.0,
        "note": row.note,
    })
    .to_string();
    eprintln!("RELIABILITY {line}");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::kafka::repo_root().join("target"));
    let _ = std::fs::create_dir_all(&dir);
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("reliability.jsonl"))
    {
        let _ = writeln!(f, "{line}");
    }
}
