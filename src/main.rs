//! The `kafka-infer` binary: parses the command line and wires library pieces together.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kafka_infer::app::cli::{
    Cli, Command, DemoArgs, Format, ModelArgs, PipelineArgs, RunArgs, ScoreArgs,
};
use kafka_infer::app::data::{read_tweets, test_tweets};
use kafka_infer::app::score::{score_stream, InputFormat};
use kafka_infer::app::shutdown::Shutdown;
use kafka_infer::app::worker;
use kafka_infer::model::files::ModelFiles;
use kafka_infer::model::live::{LiveModel, Models};
use kafka_infer::obs::metrics::{Metrics, Role};
use kafka_infer::Classifier;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!(
                    "info,librdkafka=warn,{}=info,tract_linalg=warn",
                    kafka_infer::kafka::DEBUG_TARGET
                ))
            }),
        )
        .init();
    // Usage errors exit 1 like every other start-up problem (clap's own default is 2, which
    // `run` uses for "stopped with records undelivered"); --help and --version exit 0.
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 });
    });
    let result = match cli.command {
        Command::Score(args) => {
            restore_sigpipe();
            score(args).map(|()| 0)
        }
        Command::Run(args) => run(*args),
        Command::Demo(args) => {
            restore_sigpipe();
            run_demo(args).map(|()| 0)
        }
    };
    let code = result.unwrap_or_else(|e| {
        // stderr may be a closed pipe: never panic on reporting.
        let _ = writeln!(io::stderr(), "kafka-infer: error: {e:#}");
        1
    });
    std::process::exit(code);
}

/// `score` and `demo` write their results to stdout like any filter: when the reader goes away
/// (`… | head`), they end quietly, as Unix tools do, instead of panicking on a closed pipe.
/// (`run` keeps Rust's default — SIGPIPE ignored — so a closed log pipe never kills a worker
/// before it has drained and committed.)
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn files(model: &ModelArgs) -> anyhow::Result<ModelFiles> {
    ModelFiles::from_dir_or_builtin(model.model_dir.as_deref())
        .context("loading the model given by --model-dir (KAFKA_INFER_MODEL_DIR)")
}

/// The model for `score` (loaded as is: it scores what the user asks).
fn load(model: &ModelArgs) -> anyhow::Result<Classifier> {
    let files = files(model)?;
    Classifier::from_files(&files)
        .with_context(|| format!("loading the model from {}", files.origin))
}

/// The model for the worker: validated against its own golden vectors before it may serve
/// (or, in pass-through benchmark mode, no model at all).
fn load_live(model: &ModelArgs, pipeline: &PipelineArgs) -> anyhow::Result<Arc<Models>> {
    let files = files(model)?;
    if pipeline.benchmark_passthrough {
        tracing::warn!("BENCHMARK PASSTHROUGH MODE: no model runs; every tweet scores 0.5");
    }
    let live = LiveModel::load(&files, pipeline.benchmark_passthrough)
        .with_context(|| format!("loading the model from {}", files.origin))?;
    Ok(Models::new(live))
}

fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let classifier = load(&args.model)?;
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

/// Runs the worker; returns the process exit code (see `kafka-infer run --help`).
fn run(args: RunArgs) -> anyhow::Result<i32> {
    let cfg = args.worker_config();
    // Flag problems first: before the model loads and long before a broker is reached.
    worker::check_properties(&cfg.client_properties)?;
    let models = load_live(&args.model, &args.pipeline)?;
    let shutdown = Shutdown::new().on_signals()?;
    let metrics = Arc::new(Metrics::new(&models.current().version));
    let live = models.current();
    metrics.watch_drift(Role::Live, &live.version, live.drift.clone());
    let summary = worker::run(&cfg, models, shutdown, metrics)?;
    tracing::info!(
        consumed = summary.consumed,
        predicted = summary.predicted,
        dead_lettered = summary.dead_lettered,
        undelivered = summary.undelivered,
        "worker stopped after {:.1} s",
        summary.elapsed.as_secs_f64()
    );
    if let Some(reason) = &summary.fatal {
        let _ = writeln!(io::stderr(), "kafka-infer: error: {reason}");
        return Ok(3);
    }
    if let Some(why) = &summary.uncommitted {
        let _ = writeln!(
            io::stderr(),
            "kafka-infer: error: stopped without committing its progress ({why}): the records after the last commit will be processed again after a restart"
        );
        return Ok(2);
    }
    if summary.undelivered > 0 {
        let _ = writeln!(
            io::stderr(),
            "kafka-infer: error: stopped with {} consumed records undelivered or uncommitted (they will be processed again after a restart)",
            summary.undelivered
        );
        return Ok(2);
    }
    Ok(0)
}

fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    // Check the model here (one clear error) before the worker child would fail on it.
    load_live(&args.model, &args.pipeline)?;
    let mut tweets = match &args.input {
        Some(path) => {
            read_tweets(path).with_context(|| format!("reading tweets from {}", path.display()))?
        }
        None => test_tweets(),
    };
    if args.limit > 0 {
        tweets.truncate(args.limit);
    }
    anyhow::ensure!(!tweets.is_empty(), "no tweets to feed");
    let mut worker_args = args.pipeline.to_args();
    if let Some(dir) = &args.model.model_dir {
        worker_args.push("--model-dir".into());
        worker_args.push(dir.display().to_string());
    }
    let shutdown = Shutdown::new().on_signals()?;
    let report = kafka_infer::app::demo::run(
        &kafka_infer::app::demo::DemoPlan {
            tweets: &tweets,
            partitions: args.partitions,
            sample: args.sample,
            worker_args,
            rate: args.rate,
            steady: std::time::Duration::from_secs(args.steady_seconds),
        },
        &shutdown,
    )?;
    anyhow::ensure!(
        report.predicted == report.tweets,
        "only {} of {} tweets were scored",
        report.predicted,
        report.tweets
    );
    Ok(())
}
