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
    /// The broker answered but refused this client. Final — waiting longer does not help — so
    /// start-up reports it at once, naming the cause; `reason` is librdkafka's own description.
    #[error("{refusal} with Kafka at {brokers}: {reason}")]
    Refused {
        brokers: String,
        refusal: Refusal,
        reason: String,
    },
}

/// Why a broker refused a client, from librdkafka's error codes (never from message text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// SASL: wrong user name or password, or a mechanism the listener does not offer.
    #[error("authentication failed (check -X sasl.mechanism, sasl.username, sasl.password)")]
    Authentication,
    /// The TLS handshake failed: most often the broker's certificate is not signed by a CA the
    /// client trusts.
    #[error("TLS handshake failed (does -X ssl.ca.location hold the CA that signed the broker's certificate?)")]
    Tls,
}

impl Refusal {
    /// The refusal an error code stands for, if it is one.
    pub fn from_code(code: rdkafka::types::RDKafkaErrorCode) -> Option<Refusal> {
        use rdkafka::types::RDKafkaErrorCode as C;
        match code {
            C::Authentication
            | C::SaslAuthenticationFailed
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState => Some(Refusal::Authentication),
            C::SSL => Some(Refusal::Tls),
            _ => None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn refusals_are_classified_by_error_code() {
        assert_eq!(
            Refusal::from_code(C::Authentication),
            Some(Refusal::Authentication)
        );
        assert_eq!(
            Refusal::from_code(C::SaslAuthenticationFailed),
            Some(Refusal::Authentication)
        );
        assert_eq!(Refusal::from_code(C::SSL), Some(Refusal::Tls));
        // Not a refusal: the broker may yet answer.
        assert_eq!(Refusal::from_code(C::BrokerTransportFailure), None);
        assert_eq!(Refusal::from_code(C::AllBrokersDown), None);
    }

    #[test]
    fn a_refusal_is_one_line_naming_the_cause_and_the_broker() {
        let e = Error::Refused {
            brokers: "127.0.0.1:9092".into(),
            refusal: Refusal::Authentication,
            reason: "SASL authentication error: invalid credentials".into(),
        };
        let line = e.to_string();
        assert!(
            line.starts_with("authentication failed (check -X sasl.mechanism"),
            "{line}"
        );
        assert!(
            line.contains("with Kafka at 127.0.0.1:9092: SASL"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
