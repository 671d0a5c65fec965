//! Command-line interface (clap derive). Every flag can also be set from the environment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Scores tweets with a disaster-tweet CNN: offline (`score`), as a Kafka worker (`run`), or
/// end to end against an in-process demo broker (`demo`).
#[derive(Debug, Parser)]
#[command(name = "kafka-infer", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score JSON lines ({"value": "<tweet>"}) or text lines from stdin or a file, offline.
    ///
    /// Writes one JSON line per input line, in input order: {"value":[score]} for a scored
    /// tweet, {"error":"<reason>","line":N} for a line that is not valid JSON, lacks a string
    /// "value", or is not UTF-8 (N counts from 1). Bad lines never stop the run.
    Score(ScoreArgs),
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Directory holding model.onnx, vocab.txt and preprocess.json.
    #[arg(long, env = "KAFKA_INFER_MODEL_DIR", default_value = "model")]
    pub model_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// {"value": "<tweet>"} per line; other fields are ignored.
    Json,
    /// One plain-text tweet per line.
    Text,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Read from this file instead of stdin.
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// Read one plain-text tweet per line instead of JSON lines (same as --format text).
    #[arg(long, conflicts_with = "format")]
    pub text: bool,
    /// Input format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Tweets per inference batch.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
}
