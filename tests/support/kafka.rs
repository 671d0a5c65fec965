//! Apache Kafka for the integration tests: the workspace crate kafka-local (KRaft from the
//! pinned Maven Central jars, free loopback ports, stopped on drop and by a watcher when the
//! test process dies). Re-exported here so the tests say `support::kafka::…`; not every test
//! binary uses every name.
#![allow(unused_imports)]

pub use kafka_local::{create_topics, create_topics_with, repo_root, send_waiting, unique, Kafka};
