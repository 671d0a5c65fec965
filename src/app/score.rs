//! `kafka-infer score`: offline scoring of JSON lines (or plain-text lines), in input order.
//!
//! Used by people to try the model and by tests to check it end to end without a broker.

use std::io::{BufRead, Write};

use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use crate::model::{Classifier, Session};
use crate::wire::{decode_value, encode_score};

/// How input lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON object per line with a string `value` (other fields ignored).
    JsonLines,
    /// One plain-text tweet per line.
    Text,
}

/// Counts reported after a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScoreStats {
    pub scored: u64,
    pub errors: u64,
}

/// Scores every line of `input`, writing one JSON line per input line to `output`:
/// `{"value":[score]}` or `{"error":"<reason>","line":N}` (N counts from 1).
pub fn score_stream(
    classifier: &Classifier,
    mut input: impl BufRead,
    mut output: impl Write,
    format: InputFormat,
    batch_size: usize,
) -> Result<ScoreStats> {
    let batch_size = batch_size.max(1);
    let mut session = classifier.session()?;
    let mut stats = ScoreStats::default();
    let mut pending: Vec<Result<Vec<i32>, String>> = Vec::with_capacity(batch_size);
    let mut first_line = 1u64;
    let mut line = Vec::new();
    let out_err = |e: std::io::Error| Error::io("<stdout>", e);
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("<input>", e))?;
        if n > 0 {
            let text = strip_newline(&mut line);
            pending.push(tokenize_line(text, format, classifier.tokenizer()));
        }
        if pending.len() == batch_size || (n == 0 && !pending.is_empty()) {
            let done = pending.len() as u64;
            flush(
                &mut session,
                &mut pending,
                first_line,
                &mut output,
                &mut stats,
            )
            .map_err(out_err)?;
            first_line += done;
        }
        if n == 0 {
            break;
        }
    }
    output.flush().map_err(out_err)?;
    Ok(stats)
}

fn strip_newline(line: &mut Vec<u8>) -> &mut [u8] {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line.as_mut_slice()
}

/// A line's token ids, or why it cannot be scored.
fn tokenize_line(
    line: &mut [u8],
    format: InputFormat,
    tokenizer: &Tokenizer,
) -> Result<Vec<i32>, String> {
    match format {
        InputFormat::Text => std::str::from_utf8(line)
            .map(|text| tokenizer.encode(text))
            .map_err(|e| {
                format!(
                    "line is not UTF-8 (invalid byte at offset {})",
                    e.valid_up_to()
                )
            }),
        InputFormat::JsonLines => decode_value(line)
            .map(|text| tokenizer.encode(&text))
            .map_err(|e| e.to_string()),
    }
}

fn flush(
    session: &mut Session,
    pending: &mut Vec<Result<Vec<i32>, String>>,
    first_line: u64,
    out: &mut impl Write,
    stats: &mut ScoreStats,
) -> std::io::Result<()> {
    let ids: Vec<&[i32]> = pending.iter().filter_map(|p| p.as_deref().ok()).collect();
    let mut scores = session.score_each(&ids).into_iter();
    let mut buf = Vec::with_capacity(32);
    for (i, p) in pending.drain(..).enumerate() {
        buf.clear();
        let result = p.and_then(|_| scores.next().unwrap_or_else(|| Err("no score".into())));
        match result {
            Ok(score) => {
                let mut tmp = [0u8; 128];
                let n = encode_score(score, &mut tmp);
                buf.extend_from_slice(&tmp[..n]);
                stats.scored += 1;
            }
            Err(reason) => {
                let reason = serde_json::to_string(&reason).unwrap_or_else(|_| "\"?\"".into());
                let _ = write!(
                    buf,
                    "{{\"error\":{reason},\"line\":{}}}",
                    first_line + i as u64
                );
                stats.errors += 1;
            }
        }
        buf.push(b'\n');
        out.write_all(&buf)?;
    }
    Ok(())
}
