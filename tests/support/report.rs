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
    arrivals: Arc<std::sync::Mutex<Vec<Instant>>>,
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
        let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), arrivals.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(Ok(_)) = c.poll(Duration::from_millis(50)) {
                    a.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Instant::now());
                }
            }
        });
        Watcher { stop, arrivals }
    }

    /// The longest time between two consecutive records so far.
    pub fn longest_stall_so_far(&self) -> Duration {
        let arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        arrivals
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Stops watching; the longest time between two consecutive records, from the first to
    /// the last that arrived (how long the output stood still while the stream went on).
    pub fn longest_stall(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.longest_stall_so_far()
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

/// One run of one scenario, for the reliability report. `records`, `lost` and `duplicates`
/// are `None` when the run failed before measuring them.
pub struct Row<'a> {
    pub scenario: &'a str,
    pub passed: bool,
    pub records: Option<usize>,
    pub lost: Option<usize>,
    pub duplicates: Option<usize>,
    pub longest_stall: Duration,
    pub rss_peak_mib: f64,
    pub note: String,
}

/// What a run measured, recorded before its assertions judge it.
struct Measured {
    records: usize,
    lost: usize,
    duplicates: usize,
    note: String,
}

/// A scenario being measured: watches the output topic and keeps the workers' peak RSS.
///
/// Its row is written when it is dropped — after the test's assertions, whether they passed
/// or not (a panicking test drops it while unwinding, and the row says `failed`). So the
/// report shows every run, failures included, with whatever the run measured: call
/// [`Scenario::measured`] as soon as the figures are known, *before* asserting on them.
pub struct Scenario {
    name: &'static str,
    watcher: Option<Watcher>,
    rss_peak_mib: f64,
    measured: Option<Measured>,
}

impl Scenario {
    pub fn start(name: &'static str, bootstrap: &str, output: &str, partitions: i32) -> Scenario {
        Scenario {
            name,
            watcher: Some(Watcher::start(bootstrap, output, partitions)),
            rss_peak_mib: 0.0,
            measured: None,
        }
    }

    /// Samples a worker's peak RSS (call before it exits).
    pub fn sample(&mut self, pid: u32) {
        self.rss_peak_mib = self.rss_peak_mib.max(peak_rss_mib(pid));
    }

    /// Records the run's figures (the row is written when the scenario is dropped).
    pub fn measured(
        &mut self,
        records: usize,
        lost: usize,
        duplicates: usize,
        note: impl Into<String>,
    ) {
        self.measured = Some(Measured {
            records,
            lost,
            duplicates,
            note: note.into(),
        });
    }

    /// The longest the output stood still so far (see [`Watcher`]).
    pub fn longest_stall(&self) -> Duration {
        self.watcher
            .as_ref()
            .map_or(Duration::ZERO, Watcher::longest_stall_so_far)
    }

    /// Records the figures and writes the row now.
    pub fn finish(
        mut self,
        records: usize,
        lost: usize,
        duplicates: usize,
        note: impl Into<String>,
    ) {
        self.measured(records, lost, duplicates, note);
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let stall = self
            .watcher
            .take()
            .map_or(Duration::ZERO, Watcher::longest_stall);
        let m = self.measured.take();
        report(&Row {
            scenario: self.name,
            passed: !std::thread::panicking(),
            records: m.as_ref().map(|m| m.records),
            lost: m.as_ref().map(|m| m.lost),
            duplicates: m.as_ref().map(|m| m.duplicates),
            longest_stall: stall,
            rss_peak_mib: self.rss_peak_mib,
            note: m.map_or_else(|| "failed before measuring".to_owned(), |m| m.note),
        });
    }
}

/// Prints the row and appends it to `target/reliability.jsonl`.
pub fn report(row: &Row<'_>) {
    let line = serde_json::json!({
        "scenario": row.scenario,
        "passed": row.passed,
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
