//! Counters, per-stage latency histograms and per-partition gauges, rendered as Prometheus text
//! and as a one-line log summary.
//!
//! Latencies are recorded in HdrHistograms (µs, 3 significant digits) so the log line can show
//! true percentiles; `/metrics` exposes them as Prometheus histograms with fixed buckets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A pipeline stage whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Consumed from Kafka → taken by the batcher (time in the bounded channel).
    ChannelWait,
    /// Batch opened (first tweet) → batch closed.
    BatchWait,
    /// One batched model run.
    Inference,
    /// Handed to the producer → acknowledged by the broker.
    ProduceAck,
    /// Input record timestamp → output acknowledged (millisecond resolution, like timestamps).
    EndToEnd,
}

const STAGES: [(Stage, &str); 5] = [
    (Stage::ChannelWait, "channel_wait"),
    (Stage::BatchWait, "batch_wait"),
    (Stage::Inference, "inference"),
    (Stage::ProduceAck, "produce_ack"),
    (Stage::EndToEnd, "end_to_end"),
];

const LATENCY_BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const BATCH_BUCKETS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// Per-partition gauges.
#[derive(Debug, Default, Clone, Copy)]
pub struct PartitionGauges {
    pub committed: Option<i64>,
    pub lag: Option<i64>,
    pub in_flight: u64,
}

/// All worker metrics. Shared (`Arc`) by every thread.
pub struct Metrics {
    pub consumed: AtomicU64,
    pub predicted: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub delivery_errors: AtomicU64,
    pub batches: AtomicU64,
    /// Records the client handed over twice (same partition and offset), skipped.
    pub redelivered: AtomicU64,
    stages: [Mutex<Histogram<u64>>; 5],
    batch_size: Mutex<Histogram<u64>>,
    partitions: Mutex<BTreeMap<i32, PartitionGauges>>,
    model_version: String,
    started: Instant,
}

fn new_hist() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits (~190 KB). Fixed bounds, because
    // `saturating_record` clamps to the current range instead of growing an auto-resizing one.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn new(model_version: &str) -> Self {
        Metrics {
            consumed: AtomicU64::new(0),
            predicted: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            delivery_errors: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            stages: std::array::from_fn(|_| Mutex::new(new_hist())),
            batch_size: Mutex::new(new_hist()),
            partitions: Mutex::new(BTreeMap::new()),
            model_version: model_version.to_owned(),
            started: Instant::now(),
        }
    }

    fn idx(stage: Stage) -> usize {
        STAGES.iter().position(|(s, _)| *s == stage).unwrap_or(0)
    }

    pub fn record(&self, stage: Stage, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        lock(&self.stages[Self::idx(stage)]).saturating_record(us.max(1));
    }

    pub fn record_batch_size(&self, n: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        lock(&self.batch_size).saturating_record(n as u64);
    }

    /// A copy of one stage's histogram (for reports).
    pub fn histogram(&self, stage: Stage) -> Histogram<u64> {
        lock(&self.stages[Self::idx(stage)]).clone()
    }

    pub fn batch_sizes(&self) -> Histogram<u64> {
        lock(&self.batch_size).clone()
    }

    pub fn update_partition(&self, partition: i32, f: impl FnOnce(&mut PartitionGauges)) {
        f(lock(&self.partitions).entry(partition).or_default());
    }

    pub fn remove_partition(&self, partition: i32) {
        lock(&self.partitions).remove(&partition);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self) -> String {
        let mut s = String::with_capacity(8192);
        let counters = [
            (
                "records_consumed_total",
                "Records read from the input topic.",
                &self.consumed,
            ),
            (
                "records_predicted_total",
                "Predictions acknowledged by the broker.",
                &self.predicted,
            ),
            (
                "records_dead_lettered_total",
                "Dead letters acknowledged by the broker.",
                &self.dead_lettered,
            ),
            (
                "delivery_errors_total",
                "Failed deliveries (each is retried).",
                &self.delivery_errors,
            ),
            ("batches_total", "Inference batches run.", &self.batches),
            (
                "records_redelivered_total",
                "Records handed over twice by the client, skipped.",
                &self.redelivered,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                s,
                "# HELP kafka_infer_{name} {help}\n# TYPE kafka_infer_{name} counter"
            );
            let _ = writeln!(s, "kafka_infer_{name} {}", c.load(Ordering::Relaxed));
        }
        let _ = writeln!(s, "# HELP kafka_infer_model_info Model version in use.\n# TYPE kafka_infer_model_info gauge");
        let _ = writeln!(
            s,
            "kafka_infer_model_info{{version=\"{}\"}} 1",
            self.model_version
        );
        let _ = writeln!(
            s,
            "# TYPE kafka_infer_uptime_seconds gauge\nkafka_infer_uptime_seconds {:.3}",
            self.uptime().as_secs_f64()
        );

        let parts = lock(&self.partitions).clone();
        type Gauge = (
            &'static str,
            &'static str,
            fn(&PartitionGauges) -> Option<i64>,
        );
        let gauges: [Gauge; 3] = [
            (
                "committed_offset",
                "Last committed offset (next to read) per input partition.",
                |g| g.committed,
            ),
            (
                "consumer_lag",
                "High watermark minus consumer position, per input partition.",
                |g| g.lag,
            ),
            (
                "in_flight",
                "Records consumed whose output is not acknowledged yet.",
                |g| Some(g.in_flight as i64),
            ),
        ];
        for (name, help, get) in gauges {
            let _ = writeln!(
                s,
                "# HELP kafka_infer_{name} {help}\n# TYPE kafka_infer_{name} gauge"
            );
            for (p, g) in &parts {
                if let Some(v) = get(g) {
                    let _ = writeln!(s, "kafka_infer_{name}{{partition=\"{p}\"}} {v}");
                }
            }
        }

        let _ = writeln!(s, "# HELP kafka_infer_batch_size Tweets per inference batch.\n# TYPE kafka_infer_batch_size histogram");
        let h = self.batch_sizes();
        for le in BATCH_BUCKETS {
            let _ = writeln!(
                s,
                "kafka_infer_batch_size_bucket{{le=\"{le}\"}} {}",
                count_le(&h, le)
            );
        }
        let _ = writeln!(
            s,
            "kafka_infer_batch_size_bucket{{le=\"+Inf\"}} {}",
            h.len()
        );
        let _ = writeln!(
            s,
            "kafka_infer_batch_size_sum {}",
            (h.mean() * h.len() as f64).round()
        );
        let _ = writeln!(s, "kafka_infer_batch_size_count {}", h.len());

        let _ = writeln!(s, "# HELP kafka_infer_stage_seconds Latency per pipeline stage.\n# TYPE kafka_infer_stage_seconds histogram");
        for (stage, name) in STAGES {
            let h = self.histogram(stage);
            for le in LATENCY_BUCKETS_S {
                let _ = writeln!(
                    s,
                    "kafka_infer_stage_seconds_bucket{{stage=\"{name}\",le=\"{le}\"}} {}",
                    count_le(&h, (le * 1e6) as u64)
                );
            }
            let _ = writeln!(
                s,
                "kafka_infer_stage_seconds_bucket{{stage=\"{name}\",le=\"+Inf\"}} {}",
                h.len()
            );
            let _ = writeln!(
                s,
                "kafka_infer_stage_seconds_sum{{stage=\"{name}\"}} {:.6}",
                h.mean() * h.len() as f64 / 1e6
            );
            let _ = writeln!(
                s,
                "kafka_infer_stage_seconds_count{{stage=\"{name}\"}} {}",
                h.len()
            );
        }
        s
    }

    /// One log line: counts, rates and p50/p99 per stage since start.
    pub fn summary_line(&self) -> String {
        let secs = self.uptime().as_secs_f64().max(1e-9);
        let predicted = self.predicted.load(Ordering::Relaxed);
        let mut s = format!(
            "consumed={} predicted={} dead_lettered={} batches={} avg_batch={:.1} rate={:.0}/s",
            self.consumed.load(Ordering::Relaxed),
            predicted,
            self.dead_lettered.load(Ordering::Relaxed),
            self.batches.load(Ordering::Relaxed),
            self.batch_sizes().mean(),
            predicted as f64 / secs,
        );
        for (stage, name) in STAGES {
            let h = self.histogram(stage);
            if !h.is_empty() {
                let _ = write!(
                    s,
                    " {name}_p50/p99={:.2}/{:.2}ms",
                    h.value_at_quantile(0.5) as f64 / 1e3,
                    h.value_at_quantile(0.99) as f64 / 1e3
                );
            }
        }
        s
    }
}

fn count_le(h: &Histogram<u64>, le: u64) -> u64 {
    // Recorded values come in ascending order; each stands for its HdrHistogram bucket.
    h.iter_recorded()
        .take_while(|v| v.value_iterated_to() <= le)
        .map(|v| v.count_at_value())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_counters_histograms_and_partition_gauges() {
        let m = Metrics::new("abc123");
        m.consumed.fetch_add(3, Ordering::Relaxed);
        m.record(Stage::Inference, Duration::from_micros(700));
        m.record(Stage::Inference, Duration::from_millis(30));
        m.record_batch_size(5);
        m.update_partition(2, |g| g.committed = Some(41));
        let text = m.render_prometheus();
        assert!(
            text.contains("kafka_infer_records_consumed_total 3"),
            "{text}"
        );
        assert!(
            text.contains("kafka_infer_stage_seconds_bucket{stage=\"inference\",le=\"0.001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kafka_infer_stage_seconds_bucket{stage=\"inference\",le=\"0.05\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kafka_infer_batch_size_bucket{le=\"4\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kafka_infer_batch_size_bucket{le=\"8\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kafka_infer_committed_offset{partition=\"2\"} 41"),
            "{text}"
        );
        assert!(text.contains("kafka_infer_model_info{version=\"abc123\"} 1"));
        assert!(
            m.summary_line().contains("inference_p50/p99=0.70/30.0"),
            "{}",
            m.summary_line()
        );
    }
}
