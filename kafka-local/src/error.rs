//! The library's errors. Each says what failed in one line (the binary prints it after
//! `kafka: error: `); [`Error::Usage`] is a mistake in the caller's arguments (exit 2).

use std::path::Path;

/// Everything that can go wrong while running Kafka on loopback.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments (the CLI exits 2 and points to `--help`).
    #[error("{0}")]
    Usage(String),
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A Kafka client (librdkafka) operation failed.
    #[error("{context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The cluster (or a node) did not become ready; `details` holds the reason and the
    /// interesting end of the broker logs.
    #[error("{message}\n{details}")]
    NotReady { message: String, details: String },
    /// A start or wait was interrupted by SIGINT/SIGTERM/SIGHUP (the CLI exits 128+signal).
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
    /// Anything else, said in one line.
    #[error("{0}")]
    Failed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Error {
        Error::Kafka {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn failed(msg: impl Into<String>) -> Error {
        Error::Failed(msg.into())
    }

    pub(crate) fn usage(msg: impl Into<String>) -> Error {
        Error::Usage(msg.into())
    }
}

/// `map_err` helpers for io results with a path in the message.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(format!("{what} {}", path.display()), e))
    }
}

/// `a/b` as a displayable string.
pub(crate) fn show(p: &Path) -> String {
    p.display().to_string()
}
