//! The `kafka-infer` binary: parses the command line and wires library pieces together.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kafka_infer::config::{Cli, Command, DemoArgs, Format, PipelineArgs, RunArgs, ScoreArgs};
use kafka_infer::data::{read_tweets, test_tweets};
use kafka_infer::metrics::Metrics;
use kafka_infer::score::{score_stream, InputFormat};
use kafka_infer::shutdown::Shutdown;
use kafka_infer::{demo, worker, Classifier};

fn main() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,librdkafka=warn,tract_linalg=warn")
            }),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score(args) => score(args),
        Command::Run(args) => run(args),
        Command::Demo(args) => run_demo(args),
    };
    if let Err(e) = result {
        eprintln!("kafka-infer: error: {e:#}");
        std::process::exit(1);
    }
}

fn load(dir: &Path, pipeline: Option<&PipelineArgs>) -> anyhow::Result<Classifier> {
    let c = if pipeline.is_some_and(|p| p.benchmark_passthrough) {
        tracing::warn!("BENCHMARK PASSTHROUGH MODE: no model runs; every tweet scores 0.5");
        Classifier::constant(dir, 0.5)
    } else {
        Classifier::load(dir)
    };
    c.with_context(|| format!("loading the model from {}", dir.display()))
}

fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let classifier = load(&args.model.model_dir, None)?;
    let format = if args.text || args.format == Format::Text {
        InputFormat::Text
    } else {
        InputFormat::JsonLines
    };
    let out = io::BufWriter::new(io::stdout().lock());
    let batch = args.batch_size as usize;
    let stats = match &args.input {
        Some(path) => {
            let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            score_stream(&classifier, BufReader::new(f), out, format, batch)?
        }
        None => score_stream(&classifier, io::stdin().lock(), out, format, batch)?,
    };
    if stats.errors > 0 {
        eprintln!(
            "kafka-infer: scored {} lines, {} errors",
            stats.scored, stats.errors
        );
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let classifier = load(&args.model.model_dir, Some(&args.pipeline))?;
    let shutdown = Shutdown::new().on_signals()?;
    let metrics = Arc::new(Metrics::new(classifier.version()));
    let summary = worker::run(&args.worker_config(), classifier, shutdown, metrics)?;
    tracing::info!(
        consumed = summary.consumed,
        predicted = summary.predicted,
        dead_lettered = summary.dead_lettered,
        "worker stopped after {:.1} s",
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}

fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let classifier = load(&args.model.model_dir, Some(&args.pipeline))?;
    let mut tweets = match &args.input {
        Some(path) => {
            read_tweets(path).with_context(|| format!("reading tweets from {}", path.display()))?
        }
        None => test_tweets(),
    };
    if args.limit > 0 {
        tweets.truncate(args.limit);
    }
    let template = args.pipeline.worker_config();
    let shutdown = Shutdown::new().on_signals()?;
    let report = demo::run(
        classifier,
        &tweets,
        args.partitions,
        args.sample,
        template,
        shutdown,
    )?;
    anyhow::ensure!(
        report.predicted == report.tweets,
        "only {} of {} tweets were scored",
        report.predicted,
        report.tweets
    );
    Ok(())
}
