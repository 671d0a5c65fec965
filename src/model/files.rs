//! The files that make a model — `model.onnx`, `vocab.txt`, `preprocess.json` and, when present,
//! `golden.jsonl` and `reference.json` — read from a directory or compiled into the binary.
//!
//! The binary carries the repository's `model/` so that `kafka-infer score`, `run` and `demo`
//! work from any directory with no flags; `--model-dir` (`KAFKA_INFER_MODEL_DIR`) replaces it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The contents of one model directory.
#[derive(Clone)]
pub struct ModelFiles {
    /// Where the files came from, for logs and errors: a directory, or `built-in`.
    pub origin: String,
    pub onnx: Cow<'static, [u8]>,
    pub vocab: Cow<'static, str>,
    pub preprocess: Cow<'static, [u8]>,
    /// Golden vectors written by the training script (absent in hand-made model directories).
    pub golden: Option<Cow<'static, str>>,
    /// The training reference for drift statistics (`reference.json`; optional).
    pub reference: Option<Cow<'static, [u8]>>,
    /// `preprocess.json`'s path, to name it in configuration errors.
    pub preprocess_path: PathBuf,
}

impl ModelFiles {
    /// The model compiled into this binary (the repository's `model/` at build time).
    pub fn builtin() -> Self {
        ModelFiles {
            origin: "built-in".into(),
            onnx: Cow::Borrowed(include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/model/model.onnx"
            ))),
            vocab: Cow::Borrowed(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/model/vocab.txt"
            ))),
            preprocess: Cow::Borrowed(include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/model/preprocess.json"
            ))),
            golden: Some(Cow::Borrowed(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/model/golden.jsonl"
            )))),
            reference: Some(Cow::Borrowed(include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/model/reference.json"
            )))),
            preprocess_path: PathBuf::from("<built-in>/preprocess.json"),
        }
    }

    /// Reads a model directory. `golden.jsonl` and `reference.json` are optional; the other
    /// three files are not.
    pub fn read(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| Error::io(path, e))
        };
        let onnx = read("model.onnx")?;
        let preprocess = read("preprocess.json")?;
        let vocab_path = dir.join("vocab.txt");
        let vocab = String::from_utf8(read("vocab.txt")?).map_err(|e| {
            Error::io(
                vocab_path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        let golden_path = dir.join("golden.jsonl");
        let golden = match std::fs::read_to_string(&golden_path) {
            Ok(g) => Some(Cow::Owned(g)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(golden_path, e)),
        };
        let reference_path = dir.join("reference.json");
        let reference = match std::fs::read(&reference_path) {
            Ok(r) => Some(Cow::Owned(r)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(reference_path, e)),
        };
        Ok(ModelFiles {
            origin: dir.display().to_string(),
            onnx: Cow::Owned(onnx),
            vocab: Cow::Owned(vocab),
            preprocess: Cow::Owned(preprocess),
            golden,
            reference,
            preprocess_path: dir.join("preprocess.json"),
        })
    }

    /// From `dir` if given, else the built-in model.
    pub fn from_dir_or_builtin(dir: Option<&Path>) -> Result<Self> {
        dir.map_or_else(|| Ok(Self::builtin()), Self::read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_model_is_the_repository_model_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("model");
        let (a, b) = (
            ModelFiles::builtin(),
            ModelFiles::read(&dir).expect("model/"),
        );
        assert!(a.onnx == b.onnx && a.vocab == b.vocab && a.preprocess == b.preprocess);
        assert_eq!(a.golden, b.golden);
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = ModelFiles::read(Path::new("/nonexistent-model-dir"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("cannot read /nonexistent-model-dir/model.onnx")
        );
    }
}
