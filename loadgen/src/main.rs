//! `loadgen`: open-loop load generator and latency collector for kafka-infer.
//! See `loadgen --help`, and the modules: [`schedule`] (pacing), [`track`] (latency
//! bookkeeping), [`producer`] / [`collector`] (Kafka), [`run`] (one run), [`search`]
//! (`--find-max`), [`report`] and [`plot`] (output).

mod cli;
mod collector;
mod error;
mod kafka;
mod plot;
mod proc;
mod producer;
mod report;
mod run;
mod schedule;
mod search;
mod track;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use cli::{Cli, Rate};
use kafka::Connection;
use producer::Sender;
use report::{FindMax, Report, RunSummary};
use run::{RunOutcome, Runner};

/// Bound on each broker round trip at start-up (metadata, end offsets).
const BROKER_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if !cli.plot_from.is_empty() {
        return plot_from_files(&cli);
    }
    validate(&cli)?;
    let run_id = cli.run_id.clone().unwrap_or_else(default_run_id);
    let tweets = match &cli.input {
        Some(input) => kafka_infer::app::data::read_tweets(input)
            .with_context(|| format!("reading tweets from {}", input.display()))?,
        None => kafka_infer::app::data::test_tweets(),
    };

    let conn = Connection {
        brokers: cli.brokers.clone(),
        properties: cli.property.clone(),
    };
    let sender = Sender::new(&conn, &cli.input_topic, &tweets).context("creating the producer")?;
    sender
        .connect(BROKER_TIMEOUT)
        .with_context(|| format!("connecting to {}", cli.brokers))?;
    let runner = Runner {
        sender: &sender,
        conn: &conn,
        output_topic: &cli.output_topic,
        grace: cli.grace,
        timeout: BROKER_TIMEOUT,
        progress: !cli.quiet,
        measure: cli.pid,
    };
    if !cli.wait_ready.is_zero() {
        let took = runner
            .wait_ready(&run_id, cli.wait_ready)
            .context("waiting for the worker")?;
        if !cli.quiet {
            eprintln!(
                "loadgen: worker answered a probe after {} ms",
                took.as_millis()
            );
        }
    }

    if !cli.warmup.is_zero() {
        let rate = cli.rate.first().copied().unwrap_or(Rate::PerSec(1000.0));
        let o = runner
            .run(&format!("{run_id}-warmup"), rate, cli.warmup)
            .context("warm-up")?;
        if !cli.quiet {
            let l = report::Latency::of(&o.latency);
            eprintln!(
                "loadgen: warm-up done ({} sent, {} lost, p50 {:.2} ms, p99 {:.2} ms; not reported)",
                o.sent, o.lost, l.p50, l.p99
            );
        }
    }

    let multi = cli.find_max || cli.rate.len() > 1;
    let name = |k: usize| {
        if multi {
            format!("{run_id}-{}", k + 1)
        } else {
            run_id.clone()
        }
    };
    let mut runs: Vec<(RunOutcome, Option<Vec<String>>)> = Vec::new();
    let mut find_max = None;
    if cli.find_max {
        let mut rate = match cli.rate.first() {
            Some(Rate::PerSec(r)) => *r,
            _ => 1000.0,
        };
        let mut best = None;
        let mut failed = false;
        for k in 0..cli.max_steps as usize {
            let o = runner
                .run(&name(k), Rate::PerSec(rate), cli.step_duration)
                .with_context(|| format!("step {} at {rate:.0}/s", k + 1))?;
            let why = search::failures(&o, cli.slo_ms);
            if !cli.quiet {
                let verdict = if why.is_empty() {
                    "pass".to_owned()
                } else {
                    why.join(", ")
                };
                eprintln!("loadgen: step {} at {rate:.0}/s: {verdict}", k + 1);
            }
            failed = !why.is_empty();
            runs.push((o, Some(why)));
            if failed {
                break;
            }
            best = Some(rate);
            rate *= search::STEP_FACTOR;
        }
        find_max = Some(FindMax {
            slo_ms: cli.slo_ms,
            max_sustainable_rate: best,
            hit_max_steps: !failed,
        });
    } else {
        for (k, &rate) in cli.rate.iter().enumerate() {
            let o = runner
                .run(&name(k), rate, cli.duration)
                .with_context(|| format!("run at {rate}"))?;
            runs.push((o, None));
        }
    }

    let mut summaries = Vec::new();
    let mut curves = Vec::new();
    for (k, (o, why)) in runs.into_iter().enumerate() {
        let path = hgrm_path(&cli, &o.run_id, multi.then_some(k + 1));
        report::save_hgrm(&path, &o.latency)?;
        let label = match o.rate {
            Rate::PerSec(r) => format!("{r:.0}/s"),
            Rate::Max => "max".to_owned(),
        };
        curves.push(plot::Curve::new(label, &o.latency));
        summaries.push(RunSummary::new(&o, &path, why));
    }
    let plot_path = cli
        .plot
        .clone()
        .unwrap_or_else(|| cli.out_dir.join(format!("loadgen-{run_id}.svg")));
    let title = format!("kafka-infer end-to-end latency ({run_id})");
    plot::save_svg(&plot_path, &title, &curves)?;

    let report = Report {
        run_id,
        runs: summaries,
        find_max,
        plot: Some(plot_path),
    };
    let mut out = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer(&mut out, &report).context("writing the JSON report")?;
        writeln!(out)?;
    } else {
        report::write_table(&mut out, &report)?;
    }
    out.flush()?;
    Ok(())
}

fn validate(cli: &Cli) -> anyhow::Result<()> {
    if cli.rate.is_empty() {
        bail!("--rate needs at least one value");
    }
    if cli.find_max {
        if cli.rate.len() > 1 || cli.rate.contains(&Rate::Max) {
            bail!("--find-max takes a single numeric starting --rate");
        }
        if cli.step_duration.is_zero() || cli.max_steps == 0 {
            bail!("--find-max needs a non-zero --step-duration and --max-steps");
        }
        if !(cli.slo_ms > 0.0 && cli.slo_ms.is_finite()) {
            bail!("--slo-ms must be a positive number");
        }
    } else if cli.duration.is_zero() {
        bail!("--duration must be longer than 0s");
    }
    if let Some(pid) = cli.pid {
        proc::Sample::take(pid).with_context(|| {
            format!("--pid {pid}: cannot read that process's /proc entry (is it running here?)")
        })?;
    }
    Ok(())
}

/// `<seconds since the epoch, hex>_<pid>`: distinct across invocations, sortable by time.
fn default_run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs:x}_{}", std::process::id())
}

/// --hgrm PATH (with `-<n>` before the extension when there are several runs), else
/// <out-dir>/loadgen-<run-id>.hgrm.
fn hgrm_path(cli: &Cli, run_id: &str, run_number: Option<usize>) -> PathBuf {
    match (&cli.hgrm, run_number) {
        (None, _) => cli.out_dir.join(format!("loadgen-{run_id}.hgrm")),
        (Some(p), None) => p.clone(),
        (Some(p), Some(n)) => numbered(p, n),
    }
}

fn numbered(p: &Path, n: usize) -> PathBuf {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match p.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    p.with_file_name(name)
}

/// `--plot-from`: one SVG from existing .hgrm files.
fn plot_from_files(cli: &Cli) -> anyhow::Result<()> {
    let mut curves = Vec::new();
    for spec in &cli.plot_from {
        let (label, path) = match spec.split_once('=') {
            Some((l, p)) => (l.to_owned(), std::path::PathBuf::from(p)),
            None => {
                let p = std::path::PathBuf::from(spec);
                let stem = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (stem, p)
            }
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        curves.push(
            plot::Curve::from_hgrm(label, &text)
                .with_context(|| format!("parsing {}", path.display()))?,
        );
    }
    let out = cli.plot.clone().context("--plot-from needs --plot")?;
    plot::save_svg(
        &out,
        "kafka-infer end-to-end latency by percentile",
        &curves,
    )?;
    println!("plot: {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_paths() {
        assert_eq!(
            numbered(Path::new("/t/a.hgrm"), 2),
            PathBuf::from("/t/a-2.hgrm")
        );
        assert_eq!(numbered(Path::new("a"), 1), PathBuf::from("a-1"));
    }

    #[test]
    fn find_max_rejects_rate_lists() {
        let cli = Cli::parse_from(["loadgen", "--find-max", "--rate", "10,20"]);
        assert!(validate(&cli).is_err());
        let cli = Cli::parse_from(["loadgen", "--find-max", "--rate", "max"]);
        assert!(validate(&cli).is_err());
        let cli = Cli::parse_from(["loadgen", "--find-max"]);
        assert!(validate(&cli).is_ok());
    }
}
