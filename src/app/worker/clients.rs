//! The librdkafka settings of the worker's two clients: what the guarantees rest on (never
//! overridable), what the latency budget sets, and what the user adds with `-X`.

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use super::WorkerConfig;
use crate::batching::latency::LatencyBudget;
use crate::error::{Error, Result};

/// librdkafka properties the worker's guarantees rest on: set by the worker, never by `-X`.
const RESERVED: [(&str, &str); 8] = [
    ("bootstrap.servers", "use --brokers"),
    ("group.id", "use --group-id"),
    ("transactional.id", "use --transactional-id-prefix"),
    (
        "enable.auto.commit",
        "offsets are committed only once outputs are acknowledged",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only once outputs are acknowledged",
    ),
    (
        "isolation.level",
        "the worker reads only committed records (read_committed)",
    ),
    ("enable.idempotence", "the producer is always idempotent"),
    (
        "acks",
        "outputs are acknowledged by all in-sync replicas (acks=all)",
    ),
];

/// Rejects `-X` properties that would silently override a flag or a guarantee.
pub fn check_properties(props: &[(String, String)]) -> Result<()> {
    for (k, _) in props {
        let bare = k
            .strip_prefix("consumer.")
            .or_else(|| k.strip_prefix("producer."))
            .unwrap_or(k);
        if let Some((_, why)) = RESERVED.iter().find(|(r, _)| *r == bare) {
            return Err(Error::Config(format!("-X {k} is not allowed: {why}")));
        }
    }
    Ok(())
}

/// The consumer's and the producer's configuration.
pub fn client_configs(cfg: &WorkerConfig) -> (ClientConfig, ClientConfig) {
    let mut consumer = ClientConfig::new();
    consumer
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Records of aborted upstream transactions are never scored (in both modes).
        .set("isolation.level", "read_committed")
        // fetch.wait.max.ms and fetch.min.bytes come from the latency budget (below).
        //
        // librdkafka prefetches up to this much per partition (default 64 MiB): 16 MiB is ~100k
        // tweets, plenty to keep the pipeline fed, and keeps memory under overload bounded
        // (partitions × this + --max-in-flight-bytes). Overridable with -X.
        .set("queued.max.messages.kbytes", "16384")
        // Statistics carry each partition's end offset, for the lag in /metrics.
        .set("statistics.interval.ms", "5000");
    // At least warnings, whatever logger the process has (rdkafka derives the level from the
    // `log` crate's): a failed offset commit is reported only as a COMMITFAIL warning, which
    // the consumer's context counts (see `kafka::source::commit`).
    if (consumer.log_level as i32) < (RDKafkaLogLevel::Warning as i32) {
        consumer.set_log_level(RDKafkaLogLevel::Warning);
    }
    let mut producer = ClientConfig::new();
    producer
        .set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // linger.ms comes from the latency budget (below).
        // The Java client's key hashing, so keyed outputs land where Kafka Streams would put them.
        .set("partitioner", "murmur2_random");
    LatencyBudget::new(cfg.latency_budget).apply(&mut consumer, &mut producer);
    for (k, v) in &cfg.client_properties {
        if let Some(k) = k.strip_prefix("consumer.") {
            consumer.set(k, v);
        } else if let Some(k) = k.strip_prefix("producer.") {
            producer.set(k, v);
        } else {
            consumer.set(k, v);
            producer.set(k, v);
        }
    }
    // Only the consumer's statistics are read (for the lag); the producers' contexts would hand
    // theirs to rdkafka's default, which logs each (kilobytes) at INFO. So even a plain
    // `-X statistics.interval.ms=…` stays out of the log.
    producer.remove("statistics.interval.ms");
    // rdkafka caps librdkafka's log level at what the `log` crate's filter lets through for the
    // target `librdkafka` (warnings, by default): a `debug` property would then print nothing.
    // Whoever names debug contexts wants their lines (the log shows them under
    // `librdkafka::debug`, see `kafka::log_librdkafka`).
    for client in [&mut consumer, &mut producer] {
        if client.get("debug").is_some_and(|d| !d.is_empty()) {
            client.set_log_level(RDKafkaLogLevel::Debug);
        }
    }
    (consumer, producer)
}

/// A property as configured (or librdkafka's default), parsed as a number.
pub fn number(client: &ClientConfig, key: &str, default: u64) -> u64 {
    client
        .get(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_a_guarantee_rests_on_are_refused_with_a_reason() {
        let props = |k: &str| vec![(k.to_owned(), "x".to_owned())];
        assert!(check_properties(&props("producer.linger.ms")).is_ok());
        let e = check_properties(&props("consumer.enable.auto.commit")).expect_err("reserved");
        assert!(e.to_string().contains("acknowledged"), "{e}");
        assert!(check_properties(&props("acks")).is_err());
    }

    #[test]
    fn statistics_are_requested_from_the_consumer_only_even_when_set_for_both() {
        let cfg = WorkerConfig {
            client_properties: vec![("statistics.interval.ms".into(), "1000".into())],
            ..WorkerConfig::default()
        };
        let (c, p) = client_configs(&cfg);
        assert_eq!(c.get("statistics.interval.ms"), Some("1000"));
        assert_eq!(p.get("statistics.interval.ms"), None);
        let (c, p) = client_configs(&WorkerConfig::default());
        assert_eq!(c.get("statistics.interval.ms"), Some("5000"), "for the lag");
        assert_eq!(p.get("statistics.interval.ms"), None);
    }

    #[test]
    fn a_debug_property_lifts_the_log_level_of_its_client_only() {
        let cfg = WorkerConfig {
            client_properties: vec![("consumer.debug".into(), "cgrp,broker".into())],
            ..WorkerConfig::default()
        };
        let (c, p) = client_configs(&cfg);
        assert_eq!(c.log_level as i32, RDKafkaLogLevel::Debug as i32);
        assert!((p.log_level as i32) < (RDKafkaLogLevel::Debug as i32));
    }

    #[test]
    fn user_properties_come_last_and_prefixes_pick_the_client() {
        let cfg = WorkerConfig {
            client_properties: vec![
                ("producer.linger.ms".into(), "9".into()),
                ("consumer.fetch.wait.max.ms".into(), "3".into()),
                ("security.protocol".into(), "SSL".into()),
            ],
            ..WorkerConfig::default()
        };
        let (c, p) = client_configs(&cfg);
        assert_eq!(p.get("linger.ms"), Some("9"), "over the budget's");
        assert_eq!(c.get("fetch.wait.max.ms"), Some("3"));
        assert_eq!(c.get("fetch.min.bytes"), Some("65536"), "the budget's");
        assert_eq!(c.get("security.protocol"), Some("SSL"));
        assert_eq!(p.get("security.protocol"), Some("SSL"));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(number(&c, "fetch.wait.max.ms", 500), 3);
        assert_eq!(number(&c, "nonexistent", 7), 7);
    }
}
