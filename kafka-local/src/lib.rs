//! Apache Kafka (KRaft, from the pinned Maven Central jars) on loopback, without Docker: a
//! 1-node broker or a 3-node cluster per directory, started, stopped, frozen and killed node by
//! node, optionally with SASL and TLS listeners.
//!
//! Two users: the `kafka-local` binary behind `scripts/kafka` (its `--help` is the reference),
//! and tests, benches and loadgen through [`Kafka`]:
//!
//! ```no_run
//! use kafka_local::{create_topics, unique, Kafka};
//! let kafka = Kafka::start(1); // free loopback ports, stopped on drop or when this process dies
//! let topic = unique("in");
//! create_topics(&kafka.bootstrap, &[(&topic, 3)]);
//! kafka.pause_node(1); // SIGSTOP: the broker freezes
//! kafka.resume_node(1);
//! ```
//!
//! Secured listeners: [`Kafka::builder`] with [`KafkaBuilder::sasl`] / [`KafkaBuilder::tls`],
//! then [`Kafka::sasl_client`] / [`Kafka::tls_client`] give the client settings.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod compose;
pub mod config;
pub mod error;
pub mod ports;
pub mod process;
pub mod security;
mod testing;
pub mod watch;
pub mod wire;

use std::path::PathBuf;
use std::time::Instant;

pub use admin::{create_topic, describe, TopicReady};
pub use cluster::{PauseOutcome, StartOptions, Started, Status, Target};
pub use config::{Layout, LogLevel, SaslMechanism, Security, User};
pub use error::{Error, Result};
pub use ports::free_ports;
pub use security::ClientSettings;
pub use testing::{create_topics, create_topics_with, send_waiting, unique, Kafka, KafkaBuilder};

/// The Apache Kafka release this crate runs (kafka_2.13 from Maven Central).
pub const KAFKA_VERSION: &str = "4.1.2";
/// log4j-core and the SLF4J 1.7 binding, which Kafka's poms lack.
pub const LOG4J_VERSION: &str = "2.25.3";

/// Where progress goes: `kafka: …` lines on stderr, or nowhere.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub prog: String,
    pub verbose: bool,
}

impl Reporter {
    /// Progress on stderr, prefixed `kafka: ` (the CLI).
    pub fn stderr() -> Reporter {
        Reporter {
            prog: "kafka".into(),
            verbose: true,
        }
    }

    /// No progress (tests; failures still carry their details).
    pub fn quiet() -> Reporter {
        Reporter {
            prog: "kafka".into(),
            verbose: false,
        }
    }

    pub fn say(&self, msg: &str) {
        if self.verbose {
            eprintln!("{}: {msg}", self.prog);
        }
    }
}

/// What every operation needs: the repository (config/kafka, docker-compose.yml), the jar
/// cache, and where progress goes.
#[derive(Debug, Clone)]
pub struct Env {
    pub root: PathBuf,
    pub cache: cache::Cache,
    pub reporter: Reporter,
    /// Set for the class-data archive's training broker only.
    pub(crate) cds_dump: Option<PathBuf>,
}

impl Env {
    /// The repository this crate was built from (or `$KAFKA_LOCAL_ROOT`), the cache from the
    /// environment.
    pub fn new(reporter: Reporter) -> Env {
        Env {
            root: repo_root(),
            cache: cache::Cache::from_env(),
            reporter,
            cds_dump: None,
        }
    }
}

/// The repository root: `$KAFKA_LOCAL_ROOT` (scripts/kafka sets it), else the parent of this
/// crate's directory.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("KAFKA_LOCAL_ROOT") {
        Some(r) if !r.is_empty() => PathBuf::from(r),
        _ => {
            let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            here.parent().map(PathBuf::from).unwrap_or(here)
        }
    }
}

/// "1.23 s" since `t0`.
pub fn elapsed(t0: Instant) -> String {
    let ms = t0.elapsed().as_millis();
    format!("{}.{:02} s", ms / 1000, ms % 1000 / 10)
}

/// The current UTC time as `2026-01-31T12:34:56Z` (`date -u +%FT%TZ`).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Random bytes from /dev/urandom (the time and pid if it cannot be read).
pub(crate) fn random_bytes(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    random_bytes(&mut b);
    u64::from_le_bytes(b)
}

/// Six random characters for temporary names.
pub(crate) fn random_suffix() -> String {
    let mut b = [0u8; 6];
    random_bytes(&mut b);
    base64_url(&b)
}

/// URL-safe base64 without padding.
pub(crate) fn base64_url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A decimal number (at most 9 digits) with `lo <= n <= hi`, like the bash script's in_range.
pub fn parse_in_range(s: &str, lo: u32, hi: u32) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u32 = s.parse().ok()?;
    (lo..=hi).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(format_utc(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn base64_and_cluster_ids() {
        assert_eq!(base64_url(b"\xfb\xff"), "-_8");
        assert_eq!(base64_url(b"Man"), "TWFu");
        let id = cluster::new_cluster_id();
        assert_eq!(id.len(), 22);
        assert!(!id.starts_with('-'));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_in_range("0042", 1, 65535), Some(42));
        assert_eq!(parse_in_range("0", 1, 3), None);
        assert_eq!(parse_in_range("-1", 0, 3), None);
        assert_eq!(parse_in_range("1234567890", 0, u32::MAX), None);
    }
}
