//! Counters, per-stage latency histograms and per-partition gauges: exposed in the Prometheus /
//! OpenMetrics text format through `prometheus-client`, and summarised in a one-line log.
//!
//! Latencies are recorded twice: in Prometheus histograms with fixed buckets (for dashboards)
//! and in HdrHistograms (µs, 3 significant digits), so the log line and the demo can show true
//! percentiles. Recording happens per chunk or per batch, not per record, except the
//! end-to-end latency (one value per record, taken in the delivery callback).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram as Hdr;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::model::drift::Drift;
use crate::obs::cpu::{CpuAccount, Efficiency};

/// A pipeline stage whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Chunk consumed from Kafka → taken by the batcher (time in the bounded channel).
    ChannelWait,
    /// Batch opened (first chunk) → batch closed.
    BatchWait,
    /// One batched model run.
    Inference,
    /// Chunk handed to the producer → every output of it acknowledged by the broker, as seen
    /// by the worker: acknowledgements are served after the next batch or within 10 ms, so this
    /// includes that wait (at 1,000 tweets/s the next batch comes ~7 ms later).
    ProduceAck,
    /// Input record timestamp → output acknowledgement seen (millisecond resolution, like
    /// timestamps; includes the same wait).
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
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

type Labels = Vec<(&'static str, String)>;

fn partition_label(partition: i32) -> Labels {
    vec![("partition", partition.to_string())]
}

/// All worker metrics. Shared (`Arc`) by every thread.
pub struct Metrics {
    registry: Registry,
    pub consumed_total: Counter,
    pub predicted_total: Counter,
    pub dead_lettered_total: Counter,
    pub dead_letters_truncated_total: Counter,
    pub delivery_errors_total: Counter,
    pub redelivered_total: Counter,
    pub rewinds_total: Counter,
    pub consume_errors_total: Counter,
    pub client_errors_total: Counter,
    pub commit_errors_total: Counter,
    pub partition_failures_total: Counter,
    pub undelivered_at_revoke_total: Counter,
    pub transactions_committed_total: Counter,
    pub transactions_aborted_total: Counter,
    /// Per stage (in [`STAGES`] order): its series of the `stage_seconds` family, resolved once
    /// (a lookup by label hashes and allocates, per batch and per chunk otherwise).
    stage_seconds: [Histogram; 5],
    batch_size: Histogram,
    committed: Family<Labels, Gauge>,
    lag: Family<Labels, Gauge>,
    in_flight: Family<Labels, Gauge>,
    pub in_flight_bytes: Gauge,
    model_info: Family<Labels, Gauge>,
    pub shadow_shed_total: Counter,
    pub shadow_scored_total: Counter,
    pub shadow_errors_total: Counter,
    shadow_agreement: Family<Labels, Gauge<f64, AtomicU64>>,
    shadow_mean_abs_diff: Family<Labels, Gauge<f64, AtomicU64>>,
    reloads: Family<Labels, Counter>,
    stages_hdr: [Mutex<Hdr<u64>>; 5],
    batch_hdr: Mutex<Hdr<u64>>,
    model_version: String,
    /// Drift statistics of the live model and of the shadow candidate, rendered at scrape time.
    drift: Mutex<[Watched; 2]>,
    started: Instant,
    /// CPU time per thread role (rendered at scrape time).
    cpu: CpuAccount,
    /// Records per CPU second over the last summary interval.
    records_per_cpu_second: Gauge<f64, AtomicU64>,
    efficiency: Mutex<Efficiency>,
    /// Predictions at the last summary line, for its rate.
    last_summary: Mutex<(Instant, u64)>,
    batches: AtomicU64,
}

fn new_hdr() -> Hdr<u64> {
    // 1 µs to 1 hour at 3 significant digits (~190 KB). Fixed bounds, because
    // `saturating_record` clamps to the current range instead of growing an auto-resizing one.
    Hdr::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// A model version whose drift statistics are exposed, if any.
type Watched = Option<(String, Arc<Drift>)>;

/// Which model a drift series belongs to (the `role` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The model that scores the output.
    Live = 0,
    /// The `--shadow-model-dir` candidate.
    Shadow = 1,
}

/// The drift families, computed from snapshots at scrape time (each family once, with a
/// series per watched model). A figure that does not exist yet (PSI before enough samples, a
/// rate of nothing) is left out rather than written as NaN or 0, so a dashboard shows a gap
/// instead of a fake value.
fn render_drift(out: &mut String, watched: &[Watched; 2]) {
    let series: Vec<(String, crate::model::drift::DriftSnapshot)> = watched
        .iter()
        .zip(["live", "shadow"])
        .filter_map(|(w, role)| {
            let (version, drift) = w.as_ref()?;
            let labels = format!("role=\"{role}\",version=\"{}\"", escape_label(version));
            Some((labels, drift.snapshot()))
        })
        .collect();
    if series.is_empty() {
        return;
    }
    let mut gauge =
        |name: &str,
         help: &str,
         value: &dyn Fn(&crate::model::drift::DriftSnapshot) -> Option<f64>| {
            let _ = writeln!(out, "# HELP kafka_infer_{name} {help}");
            let _ = writeln!(out, "# TYPE kafka_infer_{name} gauge");
            for (l, snap) in &series {
                if let Some(v) = value(snap).filter(|v| v.is_finite()) {
                    let _ = writeln!(out, "kafka_infer_{name}{{{l}}} {v}");
                }
            }
        };
    gauge(
        "model_score_psi",
        "Population stability index of the recent scores against the model's training reference (<0.1 stable, >0.25 large shift).",
        &|s| s.score_psi,
    );
    gauge(
        "model_token_length_psi",
        "Population stability index of the recent tweets' lengths in ids against the training reference.",
        &|s| s.token_length_psi,
    );
    gauge(
        "model_positive_rate",
        "Share of the recent scores at or above the decision threshold.",
        &|s| Some(s.recent_positive_rate),
    );
    gauge(
        "model_oov_rate",
        "Share of out-of-vocabulary ids among the recent tweets' ids.",
        &|s| Some(s.recent_oov_rate),
    );
    gauge(
        "model_reference_oov_rate",
        "Share of out-of-vocabulary ids in the training reference (compare with model_oov_rate).",
        &|s| s.reference_oov_rate,
    );
    let _ = writeln!(
        out,
        "# HELP kafka_infer_model_scores Scores given by the model since start."
    );
    let _ = writeln!(out, "# TYPE kafka_infer_model_scores histogram");
    for (l, snap) in &series {
        for (le, count) in &snap.score_buckets {
            let le = if le.is_infinite() {
                "+Inf".to_owned()
            } else {
                format!("{le:?}")
            };
            let _ = writeln!(
                out,
                "kafka_infer_model_scores_bucket{{{l},le=\"{le}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "kafka_infer_model_scores_sum{{{l}}} {}",
            snap.score_sum
        );
        let _ = writeln!(
            out,
            "kafka_infer_model_scores_count{{{l}}} {}",
            snap.scores_total
        );
    }
}

/// CPU seconds per thread role, a counter family.
fn render_cpu(out: &mut String, by_role: &std::collections::BTreeMap<String, f64>) {
    if by_role.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP kafka_infer_cpu_seconds CPU time (user + system) of this process's threads by role (partition, inference, rdk:broker, ...), from the threads' own clocks."
    );
    let _ = writeln!(out, "# TYPE kafka_infer_cpu_seconds counter");
    for (role, seconds) in by_role {
        let _ = writeln!(
            out,
            "kafka_infer_cpu_seconds_total{{role=\"{}\"}} {seconds}",
            escape_label(role)
        );
    }
}

/// A label value as the exposition format wants it.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every counter: name (without `kafka_infer_` and `_total`) and help, in the order
/// `Metrics::new` takes them.
const COUNTERS: [(&str, &str); 17] = [
    ("records_consumed", "Records read from the input topic"),
    ("records_predicted", "Predictions acknowledged by the broker"),
    ("records_dead_lettered", "Dead letters acknowledged by the broker"),
    (
        "dead_letters_truncated",
        "Dead letters whose value or key was cut to fit the dead-letter topic's size limit",
    ),
    (
        "delivery_errors",
        "Outputs the broker did not accept (the partition then rewinds to its last commit)",
    ),
    ("records_redelivered", "Records handed over twice by the client, skipped"),
    (
        "partition_rewinds",
        "Times a partition restarted from its last commit after a failed output",
    ),
    (
        "consume_errors",
        "Errors reading a partition (any but an offset reset stops the worker)",
    ),
    (
        "client_errors",
        "Errors reported by the Kafka clients (connections, rebalances, …)",
    ),
    ("commit_errors", "Offset commits that failed"),
    (
        "partition_failures",
        "Partitions that could not make progress (the worker stops)",
    ),
    (
        "undelivered_at_revoke",
        "Records still undelivered or uncommitted when their partition was revoked (re-processed by the next owner)",
    ),
    ("transactions_committed", "Exactly-once transactions committed"),
    ("transactions_aborted", "Exactly-once transactions aborted"),
    (
        "shadow_shed",
        "Tweets the shadow model did not score because its queue was full (live work is never shed)",
    ),
    ("shadow_scored", "Tweets the shadow model scored"),
    (
        "shadow_errors",
        "Shadow outputs not written (queue full or refused by the broker)",
    ),
];

/// The per-partition gauges: committed offset, lag, records in flight.
const PARTITION_GAUGES: [(&str, &str); 3] = [
    (
        "committed_offset",
        "Last committed offset (next to read) per input partition",
    ),
    (
        "consumer_lag",
        "Records of the partition not yet committed by this worker: the partition's last stable offset minus the worker's committed position (exactly-once: in its transactions)",
    ),
    (
        "in_flight",
        "Records consumed whose outputs are not acknowledged yet, per input partition",
    ),
];

/// The remaining families, registered together.
struct Fam {
    in_flight_bytes: Gauge,
    model_info: Family<Labels, Gauge>,
    shadow_agreement: Family<Labels, Gauge<f64, AtomicU64>>,
    shadow_mean_abs_diff: Family<Labels, Gauge<f64, AtomicU64>>,
    reloads: Family<Labels, Counter>,
    records_per_cpu_second: Gauge<f64, AtomicU64>,
}

impl Fam {
    fn register(registry: &mut Registry, model_version: &str) -> Fam {
        let f = Fam {
            in_flight_bytes: Gauge::default(),
            model_info: Family::default(),
            shadow_agreement: Family::default(),
            shadow_mean_abs_diff: Family::default(),
            reloads: Family::default(),
            records_per_cpu_second: Gauge::default(),
        };
        registry.register(
            "in_flight_bytes",
            "Bytes held by records between consumption and production (bounded by --max-in-flight-bytes)",
            f.in_flight_bytes.clone(),
        );
        f.model_info
            .get_or_create(&vec![("version", model_version.to_owned())])
            .set(1);
        registry.register(
            "model_info",
            "The live model's version (1 for the one in use)",
            f.model_info.clone(),
        );
        registry.register(
            "shadow_agreement_rate",
            "Share of tweets on which the shadow model and the live one agree at the 0.5 threshold",
            f.shadow_agreement.clone(),
        );
        registry.register(
            "shadow_mean_abs_diff",
            "Mean |shadow score - live score|",
            f.shadow_mean_abs_diff.clone(),
        );
        registry.register(
            "model_reloads",
            "Model reloads by result: ok (swapped in) or rejected (failed validation; the live model kept serving)",
            f.reloads.clone(),
        );
        registry.register(
            "records_per_cpu_second",
            "Records acknowledged (predictions and dead letters) per CPU second of the whole process, over the last log interval",
            f.records_per_cpu_second.clone(),
        );
        f
    }
}

impl Metrics {
    pub fn new(model_version: &str) -> Self {
        let mut registry = Registry::with_prefix("kafka_infer");
        let [consumed_total, predicted_total, dead_lettered_total, dead_letters_truncated_total, delivery_errors_total, redelivered_total, rewinds_total, consume_errors_total, client_errors_total, commit_errors_total, partition_failures_total, undelivered_at_revoke_total, transactions_committed_total, transactions_aborted_total, shadow_shed_total, shadow_scored_total, shadow_errors_total] =
            COUNTERS.map(|(name, help)| {
                let c = Counter::default();
                registry.register(name, help, c.clone());
                c
            });
        let [committed, lag, in_flight] = PARTITION_GAUGES.map(|(name, help)| {
            let g = Family::<Labels, Gauge>::default();
            registry.register(name, help, g.clone());
            g
        });
        let f = Fam::register(&mut registry, model_version);
        let stage_family = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS_S)) as fn() -> Histogram,
        );
        registry.register(
            "stage_seconds",
            "Latency per pipeline stage",
            stage_family.clone(),
        );
        let stage_seconds = STAGES.map(|(_, name)| {
            stage_family
                .get_or_create(&vec![("stage", name.to_owned())])
                .clone()
        });
        let batch_size = Histogram::new(BATCH_BUCKETS);
        registry.register(
            "batch_size",
            "Records per inference batch",
            batch_size.clone(),
        );
        Metrics {
            registry,
            consumed_total,
            predicted_total,
            dead_lettered_total,
            dead_letters_truncated_total,
            delivery_errors_total,
            redelivered_total,
            rewinds_total,
            consume_errors_total,
            client_errors_total,
            commit_errors_total,
            partition_failures_total,
            undelivered_at_revoke_total,
            transactions_committed_total,
            transactions_aborted_total,
            stage_seconds,
            batch_size,
            committed,
            lag,
            in_flight,
            in_flight_bytes: f.in_flight_bytes,
            model_info: f.model_info,
            shadow_shed_total,
            shadow_scored_total,
            shadow_errors_total,
            shadow_agreement: f.shadow_agreement,
            shadow_mean_abs_diff: f.shadow_mean_abs_diff,
            reloads: f.reloads,
            stages_hdr: std::array::from_fn(|_| Mutex::new(new_hdr())),
            batch_hdr: Mutex::new(new_hdr()),
            model_version: model_version.to_owned(),
            drift: Mutex::new([None, None]),
            started: Instant::now(),
            cpu: CpuAccount::new(),
            records_per_cpu_second: f.records_per_cpu_second,
            efficiency: Mutex::new(Efficiency::default()),
            last_summary: Mutex::new((Instant::now(), 0)),
            batches: AtomicU64::new(0),
        }
    }

    fn idx(stage: Stage) -> usize {
        STAGES.iter().position(|(s, _)| *s == stage).unwrap_or(0)
    }

    pub fn record(&self, stage: Stage, d: Duration) {
        let i = Self::idx(stage);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = lock(&self.stages_hdr[i]).record(us.min(3_600_000_000));
        self.stage_seconds[i].observe(d.as_secs_f64());
    }

    /// End-to-end latencies of a chunk's records, from their input timestamps to `now_ms`.
    pub fn record_end_to_end(&self, timestamps: impl Iterator<Item = i64>, now_ms: i64) {
        let i = Self::idx(Stage::EndToEnd);
        let h = &self.stage_seconds[i];
        let mut hdr = lock(&self.stages_hdr[i]);
        for ts in timestamps {
            let ms = u64::try_from(now_ms - ts).unwrap_or(0);
            h.observe(ms as f64 / 1e3);
            hdr.saturating_record((ms * 1000).max(1));
        }
    }

    pub fn record_batch_size(&self, n: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_size.observe(n as f64);
        lock(&self.batch_hdr).saturating_record(n as u64);
    }

    /// A copy of one stage's percentile histogram (for reports).
    pub fn histogram(&self, stage: Stage) -> Hdr<u64> {
        lock(&self.stages_hdr[Self::idx(stage)]).clone()
    }

    pub fn batch_sizes(&self) -> Hdr<u64> {
        lock(&self.batch_hdr).clone()
    }

    pub fn set_committed(&self, partition: i32, offset: i64) {
        self.committed
            .get_or_create(&partition_label(partition))
            .set(offset);
    }

    pub fn set_lag(&self, partition: i32, lag: i64) {
        self.lag.get_or_create(&partition_label(partition)).set(lag);
    }

    pub fn set_in_flight(&self, partition: i32, records: usize) {
        self.in_flight
            .get_or_create(&partition_label(partition))
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    pub fn remove_partition(&self, partition: i32) {
        let l = partition_label(partition);
        self.committed.remove(&l);
        self.lag.remove(&l);
        self.in_flight.remove(&l);
    }

    pub fn model_version(&self) -> &str {
        &self.model_version
    }

    /// A reload swapped model `from` for model `to`.
    pub fn model_swapped(&self, from: &str, to: &str) {
        self.model_info.remove(&vec![("version", from.to_owned())]);
        self.model_info
            .get_or_create(&vec![("version", to.to_owned())])
            .set(1);
        self.reloads
            .get_or_create(&vec![("result", "ok".to_owned())])
            .inc();
    }

    /// Shadow comparison so far for candidate `version`.
    pub fn set_shadow_comparison(&self, version: &str, agreement: f64, mean_abs_diff: f64) {
        let l = vec![("version", version.to_owned())];
        self.shadow_agreement.get_or_create(&l).set(agreement);
        self.shadow_mean_abs_diff
            .get_or_create(&l)
            .set(mean_abs_diff);
    }

    /// A reload was rejected; the live model keeps serving.
    pub fn model_rejected(&self) {
        self.reloads
            .get_or_create(&vec![("result", "rejected".to_owned())])
            .inc();
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Exposes `drift` as the statistics of model `version` in `role` (replacing the previous
    /// model's in that role: a gauge of a model that no longer serves would be read as current).
    pub fn watch_drift(&self, role: Role, version: &str, drift: Arc<Drift>) {
        lock(&self.drift)[role as usize] = Some((version.to_owned(), drift));
    }

    /// The OpenMetrics text exposition (which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(16384);
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        let watched = lock(&self.drift).clone();
        let mut d = String::with_capacity(4096);
        render_cpu(&mut d, &self.cpu.sample());
        render_drift(&mut d, &watched);
        let at = s.rfind("# EOF").unwrap_or(s.len());
        s.insert_str(at, &d);
        s
    }

    /// Updates records per CPU second since the previous call (the main loop calls it every log
    /// interval) and returns the CPU µs per record it implies, if any.
    pub fn update_efficiency(&self) -> Option<f64> {
        let cpu_s: f64 = self.cpu.sample().values().sum();
        let records = self.predicted_total.get() + self.dead_lettered_total.get();
        let per_cpu_s = lock(&self.efficiency).update(records, cpu_s)?;
        self.records_per_cpu_second.set(per_cpu_s);
        (per_cpu_s > 0.0).then(|| 1e6 / per_cpu_s)
    }

    /// Predictions per second since the previous call (for the periodic log line).
    pub fn interval_rate(&self) -> f64 {
        let predicted = self.predicted_total.get();
        let mut last = lock(&self.last_summary);
        let secs = last.0.elapsed().as_secs_f64().max(1e-9);
        let r = predicted.saturating_sub(last.1) as f64 / secs;
        *last = (Instant::now(), predicted);
        r
    }

    /// One log line: counts, and p50/p99 per stage since start.
    pub fn summary_line(&self) -> String {
        let mut s = format!(
            "consumed={} predicted={} dead_lettered={} batches={} avg_batch={:.1}",
            self.consumed_total.get(),
            self.predicted_total.get(),
            self.dead_lettered_total.get(),
            self.batches.load(Ordering::Relaxed),
            self.batch_sizes().mean(),
        );
        for (stage, name) in STAGES {
            let h = self.histogram(stage);
            if !h.is_empty() {
                use std::fmt::Write as _;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::drift::Reference;

    #[test]
    fn the_exposition_has_counters_histograms_and_partition_gauges() {
        let m = Metrics::new("abc123");
        m.consumed_total.inc_by(3);
        m.record(Stage::Inference, Duration::from_micros(700));
        m.record(Stage::Inference, Duration::from_millis(30));
        m.record_batch_size(5);
        m.set_committed(2, 41);
        let text = m.render();
        for want in [
            "kafka_infer_records_consumed_total 3",
            "kafka_infer_stage_seconds_bucket{le=\"0.001\",stage=\"inference\"} 1",
            "kafka_infer_stage_seconds_bucket{le=\"0.05\",stage=\"inference\"} 2",
            "kafka_infer_stage_seconds_count{stage=\"inference\"} 2",
            // The exact sum of the observations, not a mean × count estimate.
            "kafka_infer_stage_seconds_sum{stage=\"inference\"} 0.0306999",
            "kafka_infer_batch_size_bucket{le=\"4.0\"} 0",
            "kafka_infer_batch_size_bucket{le=\"8.0\"} 1",
            "# HELP kafka_infer_records_consumed Records read from the input topic.\n",
            "kafka_infer_committed_offset{partition=\"2\"} 41",
            "kafka_infer_model_info{version=\"abc123\"} 1",
            "# TYPE kafka_infer_cpu_seconds counter\n",
            "kafka_infer_cpu_seconds_total{role=\"",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        m.remove_partition(2);
        assert!(!m.render().contains("partition=\"2\""));
        assert!(text.ends_with("# EOF\n"));
        assert!(
            m.summary_line().contains("inference_p50/p99=0.70/30.0"),
            "{}",
            m.summary_line()
        );
    }

    #[test]
    fn drift_families_are_exposed_for_the_live_model_only() {
        let m = Metrics::new("abc123");
        let reference = Reference::from_json(include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/model/reference.json"
        )))
        .expect("reference");
        let first = Arc::new(Drift::new(Some(reference), 10_000));
        first.observe_scores(&[0.05; 600]);
        first.observe_tweets((0..600).map(|_| (10, 1)));
        m.watch_drift(Role::Live, "abc123", first);
        let text = m.render();
        for want in [
            "kafka_infer_model_score_psi{role=\"live\",version=\"abc123\"} ",
            "kafka_infer_model_token_length_psi{role=\"live\",version=\"abc123\"} ",
            "kafka_infer_model_positive_rate{role=\"live\",version=\"abc123\"} 0\n",
            "kafka_infer_model_oov_rate{role=\"live\",version=\"abc123\"} 0.1\n",
            "kafka_infer_model_reference_oov_rate{role=\"live\",version=\"abc123\"} 0.1",
            "kafka_infer_model_scores_bucket{role=\"live\",version=\"abc123\",le=\"0.1\"} 600",
            "kafka_infer_model_scores_bucket{role=\"live\",version=\"abc123\",le=\"+Inf\"} 600",
            "kafka_infer_model_scores_count{role=\"live\",version=\"abc123\"} 600",
            "# TYPE kafka_infer_model_scores histogram",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // A swap: the previous model's figures go; a new model without enough samples has
        // no PSI sample at all (a gap, not a fake 0).
        m.model_swapped("abc123", "def456");
        m.watch_drift(Role::Live, "def456", Arc::new(Drift::new(None, 10_000)));
        let text = m.render();
        assert!(!text.contains("abc123\"}"), "{text}");
        assert!(!text.contains("kafka_infer_model_score_psi{"), "{text}");
        assert!(text.contains("kafka_infer_model_scores_count{role=\"live\",version=\"def456\"} 0"));
    }
}
