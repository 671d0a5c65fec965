//! What the producer and the collector share: client configuration and error reporting.

use std::sync::atomic::{AtomicU32, Ordering};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

/// How to reach the cluster: bootstrap servers and the user's `-X` properties.
#[derive(Clone, Debug)]
pub struct Connection {
    pub brokers: String,
    pub properties: Vec<(String, String)>,
}

impl Connection {
    /// A client configuration: `bootstrap.servers`, then loadgen's `defaults`, then the
    /// user's properties, so that the user always has the last word.
    pub fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            cfg.set(*k, *v);
        }
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
        cfg
    }
}

/// At most this many client errors are printed per client; a dead broker would otherwise
/// print one line per reconnect attempt.
const MAX_LOGGED: u32 = 10;

/// Prints librdkafka's client-level errors (broker down, authentication failed, ...) to
/// stderr: without it they would go to the `log` crate, which nothing here listens to, and
/// a misconfigured run would just look slow.
#[derive(Debug)]
pub struct LogContext {
    name: &'static str,
    logged: AtomicU32,
}

impl LogContext {
    pub fn new(name: &'static str) -> Self {
        LogContext {
            name,
            logged: AtomicU32::new(0),
        }
    }

    /// Prints `msg` unless [`MAX_LOGGED`] messages were already printed.
    pub fn warn(&self, msg: impl FnOnce() -> String) {
        let n = self.logged.fetch_add(1, Ordering::Relaxed);
        if n < MAX_LOGGED {
            eprintln!("loadgen: {}: {}", self.name, msg());
        } else if n == MAX_LOGGED {
            eprintln!("loadgen: {}: more errors, not shown", self.name);
        }
    }
}

impl ClientContext for LogContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.warn(|| format!("{error}: {reason}"));
    }
}

impl ConsumerContext for LogContext {}
