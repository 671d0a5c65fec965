//! Errors of the load generator's building blocks. `main` adds context with `anyhow`.

use std::path::PathBuf;

/// Everything that can go wrong below `main`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka client or broker error (connecting, metadata, assigning, producing).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker answered, but not as needed (e.g. the topic does not exist).
    #[error("{0}")]
    Broker(String),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Drawing the latency plot.
    #[error("plot: {0}")]
    Plot(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
