//! Tweets for demos, benchmarks and load tests: the 3,263 tweets of `data/disaster-tweets/test.csv`
//! compiled into the binary (so `kafka-infer demo` and `loadgen` work from any directory), or any
//! CSV / JSON-lines file a user points at.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `data/disaster-tweets/test.csv`, as shipped in the repository (see `data/README.md`).
const TEST_CSV: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/disaster-tweets/test.csv"
));

/// The shipped test tweets (unlabelled, realistic traffic), in file order.
pub fn test_tweets() -> Vec<String> {
    // The file is part of the build and its parse is covered by a test below.
    parse_csv(
        TEST_CSV.as_bytes(),
        Path::new("data/disaster-tweets/test.csv"),
    )
    .unwrap_or_else(|e| unreachable!("the compiled-in test.csv parses: {e}"))
}

/// Path of a file under the repository's `data/disaster-tweets/` (for tools run from a checkout,
/// such as the training script's default; the worker itself never needs it).
pub fn repo_data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/disaster-tweets")
        .join(name)
}

/// Reads the `text` column of a CSV file with a header (commas, quotes and newlines inside
/// fields are handled), or, for a `.jsonl`/`.json` file, the `value` field of each line.
pub fn read_tweets(path: &Path) -> Result<Vec<String>> {
    let is_json = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json")
    );
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(|e| Error::io(path, e))?;
    if is_json {
        let text = String::from_utf8(raw)
            .map_err(|e| Error::Config(format!("{}: not UTF-8: {e}", path.display())))?;
        return text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                crate::wire::decode_value(l.as_bytes())
                    .map_err(|e| Error::Config(format!("{}: line {}: {e}", path.display(), i + 1)))
            })
            .collect();
    }
    parse_csv(&raw[..], path)
}

fn parse_csv(raw: &[u8], path: &Path) -> Result<Vec<String>> {
    let bad = |e: csv::Error| Error::Config(format!("{}: {e}", path.display()));
    let mut rdr = csv::Reader::from_reader(raw);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_test_set_has_every_tweet() {
        let t = test_tweets();
        assert_eq!(t.len(), 3263);
        assert!(t.iter().all(|s| !s.is_empty()));
    }

    #[test]
    fn the_compiled_in_copy_is_the_repository_file() {
        let from_file = read_tweets(&repo_data_file("test.csv")).expect("test.csv");
        assert_eq!(from_file, test_tweets());
    }
}
