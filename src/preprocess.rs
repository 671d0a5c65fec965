//! Tweet text → token ids, exactly as `model/preprocess.py` does it at training time.
//!
//! The definition lives in `model/preprocess.py` and `model/README.md`; the constants
//! (length limits, stop words, the URL marker, the patterns) are read from
//! `model/preprocess.json`, and the vocabulary from `model/vocab.txt`. Rather than run the
//! Python regexes through a regex engine, this is a single pass over the bytes, which is both
//! faster and easy to reason about: every pattern involved is ASCII-only, so any byte ≥ 0x80
//! (part of a non-ASCII character) is simply a separator. The golden vectors written by the
//! training script (`tests/golden.rs`) prove the two agree.

use std::path::Path;

use rustc_hash::FxHashMap as HashMap;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The patterns this tokenizer implements. `preprocess.json` names the patterns the model was
/// trained with; loading fails if they differ, so a change on the Python side cannot silently
/// skew serving.
const URL_PATTERN: &str = "https?://[!-~]*";
const ENTITY_PATTERN: &str = "&[A-Za-z]+;|&#[0-9]+;";
const TOKEN_PATTERN: &str = "[A-Za-z]+";

#[derive(Debug, Deserialize)]
struct Config {
    max_len: usize,
    min_token_len: usize,
    pad_id: i32,
    oov_id: i32,
    lowercase: String,
    url_pattern: String,
    url_token: String,
    entity_pattern: String,
    token_pattern: String,
    stopwords: Vec<String>,
}

/// What a lowercased token maps to.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Id(i32),
    Stopword,
}

/// Text → token ids. Cheap to share between threads (`&self` only).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Vocabulary words and stop words, lowercased, in one map: one lookup per token.
    entries: HashMap<Box<[u8]>, Entry>,
    /// Longest key in `entries`: longer tokens are out-of-vocabulary without a lookup.
    longest_entry: usize,
    max_len: usize,
    min_token_len: usize,
    pad_id: i32,
    oov_id: i32,
    /// The id the URL marker token turns into, or `None` if the filters drop it.
    url_id: Option<i32>,
}

impl Tokenizer {
    /// Loads `preprocess.json` and `vocab.txt` from a model directory.
    pub fn load(model_dir: &Path) -> Result<Self> {
        let cfg_path = model_dir.join("preprocess.json");
        let raw = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let vocab_path = model_dir.join("vocab.txt");
        let vocab = std::fs::read_to_string(&vocab_path).map_err(|e| Error::io(&vocab_path, e))?;
        Self::from_bytes(&raw, &vocab, &cfg_path)
    }

    /// Builds a tokenizer from the contents of `preprocess.json` and `vocab.txt`; `config_path`
    /// only names the configuration in errors.
    pub fn from_bytes(preprocess_json: &[u8], vocab: &str, config_path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::PreprocessConfig {
            path: config_path.to_path_buf(),
            reason,
        };
        let cfg: Config =
            serde_json::from_slice(preprocess_json).map_err(|e| bad(e.to_string()))?;
        Self::from_parts(cfg, vocab.lines()).map_err(bad)
    }

    fn from_parts<'a>(
        cfg: Config,
        vocab: impl Iterator<Item = &'a str>,
    ) -> std::result::Result<Self, String> {
        for (name, got, want) in [
            ("url_pattern", cfg.url_pattern.as_str(), URL_PATTERN),
            ("entity_pattern", &cfg.entity_pattern, ENTITY_PATTERN),
            ("token_pattern", &cfg.token_pattern, TOKEN_PATTERN),
            ("lowercase", &cfg.lowercase, "ascii"),
        ] {
            if got != want {
                return Err(format!(
                    "{name} is {got:?} but this build implements {want:?}"
                ));
            }
        }
        // FxHash: tokens are short and come from our own vocabulary lookups, so a fast
        // non-cryptographic hash beats the default SipHash (no untrusted-key DoS concern here:
        // the keys are the model's vocabulary, fixed at load).
        let mut entries: HashMap<Box<[u8]>, Entry> = HashMap::default();
        for (id, word) in vocab.enumerate() {
            let id = i32::try_from(id).map_err(|_| "vocabulary too large".to_string())?;
            // Ids 0 and 1 are the reserved padding / out-of-vocabulary rows.
            if id == cfg.pad_id || id == cfg.oov_id {
                continue;
            }
            entries.insert(word.as_bytes().into(), Entry::Id(id));
        }
        if entries.is_empty() {
            return Err("empty vocabulary".into());
        }
        // Python filters stop words before the vocabulary lookup, so they win.
        for w in &cfg.stopwords {
            entries.insert(w.as_bytes().into(), Entry::Stopword);
        }
        let longest_entry = entries.keys().map(|k| k.len()).max().unwrap_or(0);
        let mut tok = Tokenizer {
            entries,
            longest_entry,
            max_len: cfg.max_len,
            min_token_len: cfg.min_token_len,
            pad_id: cfg.pad_id,
            oov_id: cfg.oov_id,
            url_id: None,
        };
        if !cfg.url_token.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(format!(
                "url_token {:?} must be lowercase ASCII letters",
                cfg.url_token
            ));
        }
        tok.url_id = tok.lookup(cfg.url_token.as_bytes());
        Ok(tok)
    }

    /// Longest token sequence the model sees (the training truncation, 121).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The padding id (0).
    pub fn pad_id(&self) -> i32 {
        self.pad_id
    }

    /// The out-of-vocabulary id (1).
    pub fn oov_id(&self) -> i32 {
        self.oov_id
    }

    /// Tokenizes `text` into a new vector of ids (at most `max_len`).
    pub fn encode(&self, text: &str) -> Vec<i32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out);
        out
    }

    /// Tokenizes `text`, appending ids to `out` (cleared first).
    pub fn encode_into(&self, text: &str, out: &mut Vec<i32>) {
        out.clear();
        self.encode_append(text, out);
    }

    /// Tokenizes `text`, appending at most `max_len` ids to `out` (which may already hold other
    /// tweets' ids: the worker keeps one id buffer per chunk of records).
    pub fn encode_append(&self, text: &str, out: &mut Vec<i32>) {
        let limit = out.len() + self.max_len;
        let b = text.as_bytes();
        let mut i = 0;
        let mut start: Option<usize> = None;
        while i < b.len() && out.len() < limit {
            let c = b[i];
            if c == b'h' {
                if let Some(end) = url_end(b, i) {
                    self.flush(b, &mut start, i, out);
                    if out.len() < limit {
                        out.extend(self.url_id);
                    }
                    i = end;
                    continue;
                }
            } else if c == b'&' {
                if let Some(end) = entity_end(b, i) {
                    self.flush(b, &mut start, i, out);
                    i = end;
                    continue;
                }
            }
            if c.is_ascii_alphabetic() {
                start.get_or_insert(i);
            } else {
                self.flush(b, &mut start, i, out);
            }
            i += 1;
        }
        if out.len() < limit {
            self.flush(b, &mut start, b.len(), out);
        }
    }

    /// Ends the letter run that started at `start` (if any) at `end` and emits its id.
    #[inline]
    fn flush(&self, b: &[u8], start: &mut Option<usize>, end: usize, out: &mut Vec<i32>) {
        if let Some(s) = start.take() {
            if let Some(id) = self.lookup(&b[s..end]) {
                out.push(id);
            }
        }
    }

    /// Token (ASCII letters, any case) → id, or `None` if the filters drop it.
    #[inline]
    fn lookup(&self, token: &[u8]) -> Option<i32> {
        if token.len() < self.min_token_len {
            return None;
        }
        if token.len() > self.longest_entry {
            return Some(self.oov_id);
        }
        let mut buf = [0u8; 64];
        let key: &[u8] = if token.len() <= buf.len() {
            let lower = &mut buf[..token.len()];
            for (d, s) in lower.iter_mut().zip(token) {
                *d = s.to_ascii_lowercase();
            }
            lower
        } else {
            // Only reachable with a vocabulary word longer than 64 letters.
            return match self.entries.get(token.to_ascii_lowercase().as_slice()) {
                Some(Entry::Id(id)) => Some(*id),
                Some(Entry::Stopword) => None,
                None => Some(self.oov_id),
            };
        };
        match self.entries.get(key) {
            Some(Entry::Id(id)) => Some(*id),
            Some(Entry::Stopword) => None,
            None => Some(self.oov_id),
        }
    }
}

/// If `https?://` starts at `i`, the end of the URL (`[!-~]*` after the scheme).
#[inline]
fn url_end(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i..];
    let scheme = if rest.starts_with(b"http://") {
        7
    } else if rest.starts_with(b"https://") {
        8
    } else {
        return None;
    };
    let tail = &rest[scheme..];
    let n = tail
        .iter()
        .position(|&c| !(b'!'..=b'~').contains(&c))
        .unwrap_or(tail.len());
    Some(i + scheme + n)
}

/// If `&[A-Za-z]+;` or `&#[0-9]+;` starts at `i`, the end of the entity.
#[inline]
fn entity_end(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i + 1..];
    let (body, skip): (fn(&u8) -> bool, usize) = match rest.first() {
        Some(b'#') => (u8::is_ascii_digit, 1),
        Some(c) if c.is_ascii_alphabetic() => (u8::is_ascii_alphabetic, 0),
        _ => return None,
    };
    let run = rest[skip..].iter().take_while(|c| body(c)).count();
    if run == 0 || rest.get(skip + run) != Some(&b';') {
        return None;
    }
    Some(i + 1 + skip + run + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        let cfg = Config {
            max_len: 5,
            min_token_len: 2,
            pad_id: 0,
            oov_id: 1,
            lowercase: "ascii".into(),
            url_pattern: URL_PATTERN.into(),
            url_token: "xurlx".into(),
            entity_pattern: ENTITY_PATTERN.into(),
            token_pattern: TOKEN_PATTERN.into(),
            stopwords: vec!["the".into(), "at".into()],
        };
        let vocab = ["<pad>", "<oov>", "xurlx", "fire", "news", "amp"];
        Tokenizer::from_parts(cfg, vocab.into_iter()).expect("valid config")
    }

    #[test]
    fn lowercases_drops_stopwords_short_and_unknown_words() {
        assert_eq!(tok().encode("The FIRE at a zzz"), vec![3, 1]);
    }

    #[test]
    fn url_glued_to_a_word_splits_it_and_becomes_the_marker() {
        assert_eq!(
            tok().encode("Newshttp://t.co/x&amp;fire fire"),
            vec![4, 2, 3]
        );
    }

    #[test]
    fn entities_separate_words_but_malformed_ones_are_letters() {
        assert_eq!(
            tok().encode("fire&amp;news &amp fire&#39;"),
            vec![3, 4, 5, 3]
        );
    }

    #[test]
    fn non_ascii_bytes_separate_tokens() {
        assert_eq!(tok().encode("fireÛ_news café"), vec![3, 4, 1]);
    }

    #[test]
    fn truncates_at_max_len_including_the_url_marker() {
        assert_eq!(
            tok().encode("fire fire fire fire http://x fire"),
            vec![3, 3, 3, 3, 2]
        );
        assert_eq!(
            tok().encode("fire fire fire fire fire http://x"),
            vec![3; 5]
        );
    }

    #[test]
    fn rejects_a_config_for_another_preprocessing() {
        let mut cfg = serde_json::from_str::<Config>(
            r#"{"max_len":1,"min_token_len":1,"pad_id":0,"oov_id":1,"lowercase":"unicode",
                "url_pattern":"x","url_token":"u","entity_pattern":"e","token_pattern":"t","stopwords":[]}"#,
        )
        .expect("json");
        cfg.url_pattern = URL_PATTERN.into();
        let err = Tokenizer::from_parts(cfg, ["a"].into_iter()).expect_err("must reject");
        assert!(err.contains("entity_pattern"), "{err}");
    }
}
