//! The library's error type. The binary turns these into one-line messages with `anyhow`.

use std::path::PathBuf;

/// Everything that can go wrong inside the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model artifact (ONNX graph, vocabulary, preprocessing config) could not be read.
    // The cause is the error's source, printed by the caller's chain (`{:#}`), not repeated here.
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `preprocess.json` is malformed, or describes a preprocessing this build does not implement.
    #[error("bad preprocessing config {path}: {reason}")]
    PreprocessConfig { path: PathBuf, reason: String },
    /// tract could not load, optimize or run the model.
    #[error("model error: {0}")]
    Model(String),
    /// Kafka client or broker error.
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Invalid configuration or environment (unreachable broker, missing topic, bad flag).
    #[error("{0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn model(e: impl std::fmt::Display) -> Self {
        // `{:#}` keeps anyhow-style context chains that tract errors carry.
        Error::Model(format!("{e:#}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
