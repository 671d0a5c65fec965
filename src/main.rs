//! The `kafka-infer` binary: parses the command line and hands off to the library.

use std::fs::File;
use std::io::{self, BufReader};

use anyhow::Context;
use clap::Parser;
use kafka_infer::config::{Cli, Command, Format, ScoreArgs};
use kafka_infer::score::{score_stream, InputFormat};
use kafka_infer::Classifier;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score(args) => score(args),
    };
    if let Err(e) = result {
        eprintln!("kafka-infer: error: {e:#}");
        std::process::exit(1);
    }
}

fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let classifier = Classifier::load(&args.model.model_dir)
        .with_context(|| format!("loading the model from {}", args.model.model_dir.display()))?;
    let format = if args.text || args.format == Format::Text {
        InputFormat::Text
    } else {
        InputFormat::JsonLines
    };
    let stdout = io::stdout().lock();
    let out = io::BufWriter::new(stdout);
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
