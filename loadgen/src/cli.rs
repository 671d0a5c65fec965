//! The command line. The doc comments below *are* `loadgen --help`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

/// Open-loop load generator and latency collector for kafka-infer.
///
/// Sends tweets as `{"value":"<tweet>"}` to the input topic on a fixed schedule (send i is due
/// at t0 + i/rate, whatever the system under test does: if loadgen falls behind it sends at
/// once but keeps the *intended* time), and concurrently reads the predictions
/// `{"value":[score]}` from the output topic. Each record's key is a unique id
/// `<run-id>-<seq>` (the worker copies it to its prediction) and its header
/// `loadgen-intended-us` holds the intended send time (decimal µs since the Unix epoch).
/// Latency = arrival time - intended send time, so it is corrected for coordinated omission:
/// a stalled system is charged for the whole time the request *should* have been waiting.
///
/// The collector assigns every partition of the output topic at the end offsets read before
/// sending starts (no group membership, nothing committed).
/// With --output-topic equal to --input-topic, loadgen reads back its own tweets: one hop
/// through the broker with no worker, i.e. the broker's latency floor.
/// A run ends when every prediction is in, or --grace after the last send. Lost: sent, and
/// no prediction by then. Duplicate: a second prediction for the same id (a record the
/// consumer merely delivers twice, same partition and offset, is skipped, not counted).
/// Predictions with other keys (earlier runs, probes) are counted as unknown and ignored.
///
/// With --pid, each run also reports what the process under test (the worker) spent on it:
/// its CPU time (user + system, from /proc) and context switches from the first send to the
/// last prediction, divided by the tweets sent — in total and per thread role. That is the
/// worker's cost per tweet at the rate of the run.
///
/// --warmup runs first at the first --rate and is left out of the report (as wrk2 does): a
/// broker that just started, and its JIT, answer slowly for their first seconds.
///
/// Results: a table on stdout (or one JSON object with --json), a .hgrm percentile
/// distribution per run (HdrHistogram text format, values in ms; load it in the HdrHistogram
/// plotter), and an SVG plot of latency by percentile with one curve per run.
/// While running, one status line per second goes to stderr.
///
/// Examples:
///   loadgen --rate 2000 --duration 30s
///   loadgen --rate 1000,2000,4000 --duration 10s
///   loadgen --rate 1000 --duration 20s --pid $(pgrep -x kafka-infer)
///   loadgen --find-max --rate 500 --slo-ms 20
///   loadgen --rate max --duration 5s --brokers kafka:9092 -X security.protocol=ssl
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", version, verbatim_doc_comment)]
pub struct Cli {
    /// Kafka bootstrap servers (host:port[,host:port...]).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,

    /// A librdkafka property for both the producer and the collector (repeatable), e.g.
    /// -X security.protocol=ssl. Applied last, so it overrides loadgen's own settings
    /// (producer: linger.ms=1).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub property: Vec<(String, String)>,

    /// Topic the tweets are sent to.
    #[arg(long, default_value = "incoming_tweet")]
    pub input_topic: String,

    /// Topic the predictions are read from.
    #[arg(long, default_value = "tweet_disaster_inference")]
    pub output_topic: String,

    /// Tweets to send, cycled: a CSV file with a `text` column, or a JSON-lines file
    /// (.jsonl/.json) of {"value": "<tweet>"}. Default: the 3,263 tweets of the repository's
    /// data/disaster-tweets/test.csv, compiled in.
    #[arg(long, value_name = "PATH")]
    pub input: Option<PathBuf>,

    /// Send rate in tweets/s, or `max` for as fast as the producer accepts them (then the
    /// intended send time is the moment of sending). Several comma-separated values
    /// (e.g. 1000,2000,4000) make several runs of --duration each, one curve per run in the
    /// plot. With --find-max: the rate of the first step.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000",
        value_name = "RATE[,RATE...]"
    )]
    pub rate: Vec<Rate>,

    /// How long each run sends, e.g. 10s, 2m, 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// How long to wait for outstanding predictions after the last send; a tweet whose
    /// prediction has not arrived by then counts as lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Before the measured runs, send at the first --rate for this long and leave it out of
    /// the report: a freshly started broker (its JVM's JIT) and a worker that just joined
    /// answer slowly for their first seconds. 0s: no warm-up.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Report the CPU time (user + system) and context switches this process (the worker
    /// under test, on this machine) spent on each run, per tweet, in total and per thread
    /// role (from /proc; Linux only).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Saturation search: run steps of --step-duration, starting at --rate and multiplying
    /// the rate by 1.5 each step, until a step fails (p99 above --slo-ms, predictions
    /// slower than 95% of the send rate, or any tweet lost). Reports the rate of the last
    /// step that passed as the maximum sustainable rate.
    #[arg(long)]
    pub find_max: bool,

    /// Duration of each --find-max step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub step_duration: Duration,

    /// Latency objective for --find-max: a step fails when its p99 exceeds this (ms).
    #[arg(long, default_value_t = 10.0, value_name = "MS")]
    pub slo_ms: f64,

    /// Upper bound on the number of --find-max steps, so the search always ends.
    #[arg(long, default_value_t = 20)]
    pub max_steps: u32,

    /// Before measuring, send a probe tweet every second until its prediction comes back
    /// (the worker is up and has its partitions), and fail if none does within this time.
    /// Keeps worker start-up out of the measurement. 0s skips the check.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub wait_ready: Duration,

    /// Directory for the default .hgrm and plot files (created if missing).
    #[arg(long, default_value = "target/loadgen", value_name = "DIR")]
    pub out_dir: PathBuf,

    /// Where to write the percentile distribution (.hgrm, values in ms). Default:
    /// <out-dir>/loadgen-<run-id>.hgrm. With several runs, `-<n>` (the run number) is
    /// inserted before the extension.
    #[arg(long, value_name = "PATH")]
    pub hgrm: Option<PathBuf>,

    /// Where to write the latency-by-percentile plot (SVG). Default:
    /// <out-dir>/loadgen-<run-id>.svg.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,

    /// Send nothing: draw the plot (--plot, required) from existing .hgrm files, one curve per
    /// file, labelled LABEL or the file name. Use it to compare runs made separately, e.g. each
    /// on a freshly started broker: `--plot out.svg --plot-from 250/s=a.hgrm 500/s=b.hgrm`.
    #[arg(long, value_name = "[LABEL=]FILE.hgrm", num_args = 1.., requires = "plot")]
    pub plot_from: Vec<String>,

    /// Print one JSON object (all runs, max sustainable rate, file paths) on stdout instead
    /// of the table.
    #[arg(long)]
    pub json: bool,

    /// Identifies this invocation in record keys and file names (letters, digits, `_`, `.`;
    /// default: derived from the clock and process id). Runs of a multi-run invocation use
    /// <run-id>-<n>.
    #[arg(long, value_parser = parse_run_id)]
    pub run_id: Option<String>,

    /// No per-second status lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// A run's send rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    /// Tweets per second, on a fixed schedule.
    PerSec(f64),
    /// As fast as the producer accepts them.
    Max,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        let s = s.strip_suffix("/s").unwrap_or(s);
        match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSec(r)),
            _ => Err(format!(
                "`{s}` is not a rate: expected a positive number of tweets/s or `max`"
            )),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::PerSec(r) => write!(f, "{r}/s"),
            Rate::Max => f.write_str("max"),
        }
    }
}

/// `10s`, `2m`, `500ms`, `1m 30s` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}`: {e} (e.g. 10s, 2m, 500ms)"))
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}`: expected KEY=VALUE")),
    }
}

fn parse_run_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}`: use 1-64 letters, digits, `_` or `.` (it goes into keys and file names)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!("1000".parse::<Rate>(), Ok(Rate::PerSec(1000.0)));
        assert_eq!("2.5/s".parse::<Rate>(), Ok(Rate::PerSec(2.5)));
        assert_eq!("MAX".parse::<Rate>(), Ok(Rate::Max));
        assert!("0".parse::<Rate>().is_err());
        assert!("-3".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        assert!("inf".parse::<Rate>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn command_line() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "--rate",
            "1000,max",
            "-X",
            "a.b=c=d",
            "--duration",
            "3s",
            "--run-id",
            "r1",
        ])
        .expect("valid command line");
        assert_eq!(cli.rate, vec![Rate::PerSec(1000.0), Rate::Max]);
        assert_eq!(cli.property, vec![("a.b".to_owned(), "c=d".to_owned())]);
        assert_eq!(cli.duration, Duration::from_secs(3));
        assert!(Cli::try_parse_from(["loadgen", "-X", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "--run-id", "a-b"]).is_err());
    }
}
