//! Results: the table, the JSON summary, and the `.hgrm` percentile distribution.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::Rate;
use crate::error::{Error, Result};
use crate::proc::ProcessCost;
use crate::run::RunOutcome;

/// Histograms hold µs; reports are in ms.
const US_PER_MS: f64 = 1_000.0;

/// Latency percentiles of one run, in ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let q = |q: f64| h.value_at_quantile(q) as f64 / US_PER_MS;
        Latency {
            count: h.len(),
            mean: h.mean() / US_PER_MS,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
            max: h.max() as f64 / US_PER_MS,
        }
    }
}

/// One run, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    /// Requested rate (tweets/s); null for `--rate max`.
    pub target_rate: Option<f64>,
    pub duration_s: f64,
    pub sent: u64,
    pub send_rate: f64,
    pub predicted: u64,
    pub prediction_rate: f64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub unknown: u64,
    pub malformed: u64,
    pub send_errors: u64,
    pub unsent: u64,
    pub redelivered: u64,
    pub consumer_errors: u64,
    pub max_send_lag_ms: f64,
    pub latency_ms: Latency,
    /// `--pid`: the process under test's CPU and context switches for this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessCost>,
    pub hgrm: PathBuf,
    /// --find-max only: whether the step met the objective, and if not, why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

impl RunSummary {
    pub fn new(o: &RunOutcome, hgrm: &Path, failures: Option<Vec<String>>) -> Self {
        RunSummary {
            run_id: o.run_id.clone(),
            target_rate: match o.rate {
                Rate::PerSec(r) => Some(r),
                Rate::Max => None,
            },
            duration_s: o.duration.as_secs_f64(),
            sent: o.sent,
            send_rate: o.send_rate(),
            predicted: o.predicted,
            prediction_rate: o.prediction_rate(),
            lost: o.lost,
            late: o.late,
            duplicates: o.duplicates,
            unknown: o.unknown,
            malformed: o.malformed,
            send_errors: o.send_errors,
            unsent: o.unsent,
            redelivered: o.redelivered,
            consumer_errors: o.consumer_errors,
            max_send_lag_ms: o.max_send_lag.as_secs_f64() * 1e3,
            latency_ms: Latency::of(&o.latency),
            process: o.cost.clone(),
            hgrm: hgrm.to_path_buf(),
            passed: failures.as_ref().map(Vec::is_empty),
            failures: failures.unwrap_or_default(),
        }
    }
}

/// The outcome of `--find-max`.
#[derive(Clone, Debug, Serialize)]
pub struct FindMax {
    pub slo_ms: f64,
    /// Rate of the last step that passed; null if the first step failed already.
    pub max_sustainable_rate: Option<f64>,
    /// True if the search stopped at --max-steps without any step failing.
    pub hit_max_steps: bool,
}

/// Everything `--json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub run_id: String,
    pub runs: Vec<RunSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub find_max: Option<FindMax>,
    pub plot: Option<PathBuf>,
}

/// The human-readable report.
pub fn write_table(w: &mut impl Write, r: &Report) -> io::Result<()> {
    let verdicts = r.find_max.is_some();
    writeln!(
        w,
        "{:<16} {:>8} {:>8} {:>8} {:>9} {:>8} {:>5} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}{}",
        "run",
        "rate/s",
        "sent",
        "sent/s",
        "predicted",
        "pred/s",
        "lost",
        "dup",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "p99.99",
        "max ms",
        if verdicts { "  verdict" } else { "" }
    )?;
    for s in &r.runs {
        let l = &s.latency_ms;
        let target = s
            .target_rate
            .map_or_else(|| "max".to_owned(), |t| format!("{t:.0}"));
        let verdict = match s.passed {
            Some(true) => "  pass".to_owned(),
            Some(false) => format!("  FAIL: {}", s.failures.join(", ")),
            None => String::new(),
        };
        writeln!(
            w,
            "{:<16} {:>8} {:>8} {:>8.1} {:>9} {:>8.1} {:>5} {:>4} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}{}",
            s.run_id, target, s.sent, s.send_rate, s.predicted, s.prediction_rate, s.lost,
            s.duplicates, l.p50, l.p90, l.p99, l.p99_9, l.p99_99, l.max, verdict
        )?;
    }
    for s in &r.runs {
        if let Some(c) = &s.process {
            write_cost(w, &s.run_id, c)?;
        }
    }
    for s in &r.runs {
        let mut notes = Vec::new();
        let mut note = |n: u64, what: &str| {
            if n > 0 {
                notes.push(format!("{n} {what}"));
            }
        };
        note(s.late, "of the lost arrived after the grace period");
        note(
            s.unknown,
            "predictions with keys not of this run (older runs, probes) ignored",
        );
        note(s.malformed, "malformed predictions");
        note(s.send_errors, "send errors");
        note(
            s.unsent,
            "scheduled sends not made: loadgen could not keep up",
        );
        note(
            s.redelivered,
            "records delivered twice by the consumer (same offset) skipped",
        );
        note(s.consumer_errors, "consumer errors");
        if !notes.is_empty() {
            writeln!(w, "note: {}: {}", s.run_id, notes.join("; "))?;
        }
        if s.max_send_lag_ms > 100.0 {
            writeln!(
                w,
                "note: {}: sends ran up to {:.0} ms behind schedule (latency still counts from the schedule)",
                s.run_id, s.max_send_lag_ms
            )?;
        }
    }
    if let Some(f) = &r.find_max {
        match f.max_sustainable_rate {
            Some(rate) => writeln!(
                w,
                "max sustainable rate: {rate:.0}/s (p99 <= {} ms, predictions >= 95% of sends, none lost){}",
                f.slo_ms,
                if f.hit_max_steps { "; --max-steps reached, the true maximum may be higher" } else { "" }
            )?,
            None => writeln!(w, "max sustainable rate: none, the first step failed already")?,
        }
    }
    for s in &r.runs {
        writeln!(w, "hgrm: {}", s.hgrm.display())?;
    }
    if let Some(p) = &r.plot {
        writeln!(w, "plot: {}", p.display())?;
    }
    Ok(())
}

/// `--pid`'s table: the process under test's cost per tweet, in total and per thread role.
fn write_cost(w: &mut impl Write, run_id: &str, c: &ProcessCost) -> io::Result<()> {
    writeln!(
        w,
        "process {} during {run_id}: CPU {:.2} s = {:.1} µs/tweet; wake-ups {:.2}/tweet, preemptions {:.2}/tweet",
        c.pid, c.cpu_s, c.cpu_us_per_tweet, c.wakeups_per_tweet, c.preemptions_per_tweet
    )?;
    writeln!(
        w,
        "  {:<18} {:>7} {:>10} {:>12} {:>13}",
        "thread role", "threads", "CPU s", "µs/tweet", "wake-ups/tweet"
    )?;
    for r in &c.roles {
        writeln!(
            w,
            "  {:<18} {:>7} {:>10.2} {:>12.1} {:>13.2}",
            r.role, r.threads, r.cpu_s, r.cpu_us_per_tweet, r.wakeups_per_tweet
        )?;
    }
    Ok(())
}

/// The percentile distribution in HdrHistogram's text format (as Java's
/// `outputPercentileDistribution(out, 5, scale)` prints it), so that the HdrHistogram
/// plotter and other tooling can read it. `h` holds µs; values are written in ms.
pub fn write_hgrm(w: &mut impl Write, h: &Histogram<u64>) -> io::Result<()> {
    let digits = usize::from(h.sigfig());
    writeln!(
        w,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total: u64 = 0;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / US_PER_MS;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let inv = 1.0 / (1.0 - q);
                writeln!(w, "{value:>12.digits$} {q:>2.12} {total:>10} {inv:>14.2}")?;
            } else {
                writeln!(w, "{value:>12.digits$} {q:>2.12} {total:>10}")?;
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / US_PER_MS,
            h.stdev() / US_PER_MS,
            h.max() as f64 / US_PER_MS,
        )
    };
    writeln!(
        w,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    )?;
    writeln!(
        w,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    )?;
    writeln!(
        w,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    )
}

/// HdrHistogram's sub-bucket count for `sigfig` digits (not exposed by the crate):
/// the power of two that can count `2 * 10^sigfig` values with unit resolution.
fn sub_bucket_count(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// Writes `h` as a `.hgrm` file at `path`, creating its directory.
pub fn save_hgrm(path: &Path, h: &Histogram<u64>) -> Result<()> {
    let mut buf = Vec::new();
    write_hgrm(&mut buf, h).map_err(|e| Error::io(path, e))?;
    write_file(path, &buf)
}

/// Writes `bytes` to `path`, creating the parent directory if needed.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::new_histogram;

    /// Parses the rows of an .hgrm text: (value, percentile, total count).
    fn rows(text: &str) -> Vec<(f64, f64, u64)> {
        text.lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert!(f.len() == 3 || f.len() == 4, "bad row {l:?}");
                (
                    f[0].parse().expect("value"),
                    f[1].parse().expect("percentile"),
                    f[2].parse().expect("count"),
                )
            })
            .collect()
    }

    #[test]
    fn hgrm_has_header_monotone_rows_and_footer() {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            h.saturating_record(i * 10); // 0.01 .. 100 ms
        }
        let mut out = Vec::new();
        write_hgrm(&mut out, &h).expect("write to memory");
        let text = String::from_utf8(out).expect("utf-8");
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("       Value     Percentile TotalCount 1/(1-Percentile)")
        );
        assert_eq!(lines.next(), Some(""));

        let rows = rows(&text);
        assert!(rows.len() > 20, "{} rows", rows.len());
        for pair in rows.windows(2) {
            assert!(pair[0].0 <= pair[1].0, "values not monotone: {pair:?}");
            assert!(pair[0].1 <= pair[1].1, "percentiles not monotone: {pair:?}");
            assert!(pair[0].2 <= pair[1].2, "counts not monotone: {pair:?}");
        }
        let last = rows.last().copied().unwrap_or_default();
        assert_eq!(last.1, 1.0);
        assert_eq!(last.2, 10_000);
        assert!((last.0 - 100.0).abs() < 0.1, "max row {last:?}");
        assert!((rows[0].0 - 0.01).abs() < 0.001, "first row {:?}", rows[0]);

        let footer: Vec<&str> = text.lines().filter(|l| l.starts_with("#[")).collect();
        assert_eq!(footer.len(), 3, "{footer:?}");
        assert!(footer[0].starts_with("#[Mean    =") && footer[0].contains("StdDeviation"));
        assert!(
            footer[1].contains("Total count    =        10000]"),
            "{}",
            footer[1]
        );
        assert!(
            footer[2].contains("SubBuckets     =         2048]"),
            "{}",
            footer[2]
        );
    }

    #[test]
    fn hgrm_of_an_empty_histogram_is_just_header_and_footer() {
        let mut out = Vec::new();
        write_hgrm(&mut out, &new_histogram()).expect("write to memory");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(rows(&text).is_empty());
        assert!(text.contains("Total count    =            0]"));
    }

    #[test]
    fn latency_percentiles_are_in_ms() {
        let mut h = new_histogram();
        for v in [1_000, 2_000, 3_000, 100_000] {
            h.saturating_record(v);
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 4);
        assert!((l.p50 - 2.0).abs() < 0.01, "{l:?}");
        assert!((l.max - 100.0).abs() < 0.1, "{l:?}");
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }
}
