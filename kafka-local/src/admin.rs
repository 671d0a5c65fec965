//! Admin operations on a running cluster through librdkafka: readiness (the metadata lists the
//! brokers), topic creation, and `describe` (with [`crate::wire`] for the quorum and features).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, Result};
use crate::process;

/// Topics Kafka marks internal (left out of `describe` without topic names, as `listTopics`).
const INTERNAL_TOPICS: [&str; 3] = [
    "__consumer_offsets",
    "__transaction_state",
    "__share_group_state",
];

fn client_config(bootstrap: &str, timeout_ms: u64) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", "kafka-local")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "500")
        .set("retry.backoff.ms", "100")
        .set(
            "socket.timeout.ms",
            timeout_ms.clamp(10, 300_000).to_string(),
        )
        .set("topic.metadata.refresh.interval.ms", "1000");
    c
}

fn metadata_client(bootstrap: &str, timeout_ms: u64) -> Result<BaseConsumer> {
    client_config(bootstrap, timeout_ms)
        .create()
        .map_err(|e| Error::kafka("cannot create a Kafka client", e))
}

/// Waits until the cluster at `bootstrap` lists at least `brokers` brokers (and `require_node`
/// among them) in its metadata. Fails early if a pid of `watch` (pid, start time) exits, or at
/// `timeout`. The message says what was last seen.
pub fn wait_ready(
    bootstrap: &str,
    brokers: usize,
    require_node: Option<i32>,
    watch: &[(u32, u64)],
    timeout: Duration,
) -> Result<Vec<i32>, String> {
    let deadline = Instant::now() + timeout;
    let client = metadata_client(bootstrap, 2_000).map_err(|e| e.to_string())?;
    let mut last;
    loop {
        if let Some(sig) = process::interrupted() {
            return Err(format!("interrupted by signal {sig}"));
        }
        for (pid, start) in watch {
            if !process::same_process(*pid, *start) {
                return Err(format!(
                    "process {pid} exited while waiting for the cluster"
                ));
            }
        }
        match client.fetch_metadata(None, Duration::from_secs(2)) {
            Ok(md) => {
                let ids: BTreeSet<i32> = md.brokers().iter().map(|b| b.id()).collect();
                let has_node = require_node.is_none_or(|n| ids.contains(&n));
                if ids.len() >= brokers && has_node {
                    return Ok(ids.into_iter().collect());
                }
                last = format!(
                    "metadata lists {} of {brokers} broker(s): {ids:?}{}",
                    ids.len(),
                    match require_node {
                        Some(n) if !ids.contains(&n) => format!(", not yet node {n}"),
                        _ => String::new(),
                    }
                );
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cluster at {bootstrap} not ready within {} s ({last})",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What `create-topic` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReady {
    pub created: bool,
    pub partitions: usize,
    pub replication: usize,
}

impl TopicReady {
    /// The line `create-topic` prints: `created NAME partitions=3 replication=1` (or `exists  …`).
    pub fn line(&self, name: &str) -> String {
        format!(
            "{}{name} partitions={} replication={}",
            if self.created { "created " } else { "exists  " },
            self.partitions,
            self.replication
        )
    }
}

/// Creates a topic unless it exists (then its partition count, and a given replication
/// factor, must match) and waits until every partition has a leader. `replication` None is
/// the broker's `default.replication.factor`.
pub fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    replication: Option<i32>,
    configs: &[(String, String)],
    timeout: Duration,
) -> Result<TopicReady> {
    let deadline = Instant::now() + timeout;
    let request_ms = timeout.as_millis().clamp(1_000, 30_000) as u64;
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap, request_ms)
        .create()
        .map_err(|e| Error::kafka("cannot create a Kafka admin client", e))?;
    let mut topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(replication.unwrap_or(-1)),
    );
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new()
        .request_timeout(Some(Duration::from_millis(request_ms)))
        .operation_timeout(Some(Duration::from_millis(request_ms)));
    let results = futures_executor::block_on(admin.create_topics([&topic], &opts))
        .map_err(|e| Error::kafka(format!("creating topic {name}"), e))?;
    let mut created = true;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => created = false,
            Err((_, code)) => {
                return Err(Error::failed(format!("creating topic {name}: {code}")));
            }
        }
    }
    // Verify through the metadata: partition count, and every partition has a leader.
    let mut last;
    loop {
        match admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(2))
        {
            Ok(md) => match md.topics().iter().find(|t| t.name() == name) {
                Some(t) if t.error().is_none() => {
                    let got = t.partitions().len();
                    if got != partitions as usize {
                        return Err(Error::failed(format!(
                            "topic {name} exists with {got} partition(s), expected {partitions}"
                        )));
                    }
                    let leaderless = t.partitions().iter().filter(|p| p.leader() < 0).count();
                    if leaderless == 0 {
                        let rf = t.partitions().first().map_or(0, |p| p.replicas().len());
                        if let Some(want) = replication {
                            if !created && rf != want as usize {
                                return Err(Error::failed(format!(
                                    "topic {name} exists with replication factor {rf}, expected {want}"
                                )));
                            }
                        }
                        return Ok(TopicReady {
                            created,
                            partitions: got,
                            replication: rf,
                        });
                    }
                    last = format!("{leaderless} partition(s) without a leader");
                }
                _ => last = "not in the metadata yet".into(),
            },
            Err(e) => last = format!("metadata: {e}"),
        }
        if Instant::now() >= deadline {
            return Err(Error::failed(format!(
                "topic {name} not ready within the timeout ({last})"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A partition as `describe` shows it.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub id: i32,
    pub leader: Option<i32>,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// What `describe` reports.
#[derive(Debug, Clone)]
pub struct Description {
    pub cluster_id: Option<String>,
    /// (node id, host, port), by id.
    pub brokers: Vec<(i32, String, i32)>,
    pub quorum: std::result::Result<crate::wire::Quorum, String>,
    pub features: std::result::Result<Vec<crate::wire::Feature>, String>,
    pub topics: Vec<(String, Vec<PartitionInfo>)>,
    /// Why a named topic could not be described (the topics after it are left out): `describe`
    /// prints the cluster, then fails with this.
    pub topic_error: Option<String>,
}

impl Description {
    /// `brokers 1@127.0.0.1:9092 2@…`
    pub fn brokers_line(&self) -> String {
        let b: Vec<String> = self
            .brokers
            .iter()
            .map(|(id, host, port)| format!("{id}@{host}:{port}"))
            .collect();
        format!("brokers {}", b.join(" "))
    }

    /// `controller 1 (epoch 3, voters 1,2,3)` or `controller unknown (why)`.
    pub fn controller_line(&self) -> String {
        match &self.quorum {
            Ok(q) => format!(
                "controller {} (epoch {}, voters {})",
                q.leader_id,
                q.leader_epoch,
                q.voters
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Err(e) => format!("controller unknown ({e})"),
        }
    }

    /// All of `describe`'s output lines.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "cluster {}",
            self.cluster_id.as_deref().unwrap_or("unknown")
        );
        let _ = writeln!(s, "{}", self.brokers_line());
        let _ = writeln!(s, "{}", self.controller_line());
        match &self.features {
            Ok(f) => {
                let f: Vec<String> = f
                    .iter()
                    .map(|f| format!("{}={}", f.name, f.max_version_level))
                    .collect();
                let _ = writeln!(s, "features {}", f.join(" "));
            }
            Err(e) => {
                let _ = writeln!(s, "features unknown ({e})");
            }
        }
        let ids = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        for (name, parts) in &self.topics {
            let _ = writeln!(s, "topic {name} partitions={}", parts.len());
            for p in parts {
                let _ = writeln!(
                    s,
                    "  {name}-{} leader={} replicas={} isr={}",
                    p.id,
                    p.leader.map_or("none".into(), |l| l.to_string()),
                    ids(&p.replicas),
                    ids(&p.isr)
                );
            }
        }
        s
    }
}

/// The cluster's id, brokers, active controller, finalized features, and `topics` (all
/// non-internal topics if empty) with their partitions.
pub fn describe(bootstrap: &str, topics: &[String], timeout: Duration) -> Result<Description> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let client = metadata_client(bootstrap, timeout.as_millis().clamp(1_000, 30_000) as u64)?;
    let md = client
        .fetch_metadata(None, left())
        .map_err(|e| Error::kafka(format!("metadata from {bootstrap}"), e))?;
    let cluster_id = client.client().fetch_cluster_id(left());
    let mut brokers: Vec<(i32, String, i32)> = md
        .brokers()
        .iter()
        .map(|b| (b.id(), b.host().to_owned(), b.port()))
        .collect();
    brokers.sort();
    let (quorum, features) = match crate::wire::Conn::connect(bootstrap, left()) {
        Ok(mut c) => (c.describe_quorum(), Ok(c.features().to_vec())),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    let names: Vec<String> = if topics.is_empty() {
        let mut n: Vec<String> = md
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|n| !INTERNAL_TOPICS.contains(&n.as_str()))
            .collect();
        n.sort();
        n
    } else {
        topics.to_vec()
    };
    let mut out_topics = Vec::new();
    let mut topic_error = None;
    for name in names {
        let tmd = if topics.is_empty() {
            None
        } else {
            match client.fetch_metadata(Some(&name), left()) {
                Ok(m) => Some(m),
                Err(e) => {
                    topic_error = Some(format!("metadata of topic {name}: {e}"));
                    break;
                }
            }
        };
        let source = tmd.as_ref().unwrap_or(&md);
        let Some(t) = source.topics().iter().find(|t| t.name() == name) else {
            topic_error = Some(format!("topic {name} is not in the metadata"));
            break;
        };
        if let Some(e) = t.error() {
            let code = RDKafkaErrorCode::from(e);
            topic_error = Some(format!("topic {name}: {}", KafkaError::MetadataFetch(code)));
            break;
        }
        let mut parts: Vec<PartitionInfo> = t
            .partitions()
            .iter()
            .map(|p| PartitionInfo {
                id: p.id(),
                leader: (p.leader() >= 0).then_some(p.leader()),
                replicas: p.replicas().to_vec(),
                isr: p.isr().to_vec(),
            })
            .collect();
        parts.sort_by_key(|p| p.id);
        out_topics.push((name, parts));
    }
    Ok(Description {
        cluster_id,
        brokers,
        quorum,
        features,
        topics: out_topics,
        topic_error,
    })
}
