//! Reading tweets from the Kaggle CSV files (or JSON lines) for demos, benchmarks and load tests.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `../shared/data/disaster-tweets/test.csv` relative to the repository: 3,263 real tweets,
/// realistic load. Resolved against the current directory first, then the source tree.
pub fn default_tweets_csv() -> PathBuf {
    let rel = Path::new("../shared/data/disaster-tweets/test.csv");
    if rel.exists() {
        return rel.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Reads the `text` column of a CSV file with a header (commas, quotes and newlines inside
/// fields are handled), or, for a `.jsonl`/`.json` file, the `value` field of each line.
pub fn read_tweets(path: &Path) -> Result<Vec<String>> {
    let is_json = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json")
    );
    if is_json {
        let raw = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        return raw
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                let mut buf = l.as_bytes().to_vec();
                crate::json::decode_value(&mut buf)
                    .map(|v| v.into_owned())
                    .map_err(|e| Error::Config(format!("{}: line {}: {e}", path.display(), i + 1)))
            })
            .collect();
    }
    let bad = |e: csv::Error| Error::Config(format!("{}: {e}", path.display()));
    let mut rdr = csv::Reader::from_path(path).map_err(bad)?;
    let col = rdr
        .headers()
        .map_err(bad)?
        .iter()
        .position(|h| h == "text")
        .ok_or_else(|| Error::Config(format!("{}: no \"text\" column", path.display())))?;
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(bad)?;
        out.push(rec.get(col).unwrap_or_default().to_owned());
    }
    if out.is_empty() {
        return Err(Error::Config(format!("{}: no tweets", path.display())));
    }
    Ok(out)
}
