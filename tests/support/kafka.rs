//! Apache Kafka for tests and benchmarks, started by the project's own `scripts/kafka` (KRaft,
//! from the pinned Maven Central jars) on free loopback ports. Each process that starts a broker
//! passes its pid as `--owner`, so brokers never outlive a test run, even one that crashes.
//! Shared by the integration tests, the drain benchmark and loadgen's tests (`#[path]` include).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// The repository root (where `scripts/kafka` lives).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    // loadgen is a workspace member one level down.
    if here.join("scripts/kafka").exists() {
        here.to_path_buf()
    } else {
        here.join("..")
    }
}

/// A broker (or a 3-node cluster) started by `scripts/kafka`.
pub struct Kafka {
    pub bootstrap: String,
    pub port: u16,
    pub dir: PathBuf,
    pub nodes: usize,
}

/// A port that was free a moment ago, with `span - 1` free ports after it.
fn free_ports(span: u16) -> u16 {
    for _ in 0..50 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = l.local_addr().map(|a| a.port()) else {
            continue;
        };
        drop(l);
        if port.checked_add(span).is_none() {
            continue;
        }
        let all_free = (1..span).all(|i| TcpListener::bind(("127.0.0.1", port + i)).is_ok());
        if all_free {
            return port;
        }
    }
    panic!("no free ports");
}

fn script(args: &[&str]) -> std::process::Output {
    Command::new(repo_root().join("scripts/kafka"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/kafka")
}

impl Kafka {
    /// Starts a broker (`nodes` = 1) or a cluster (3) owned by this process.
    pub fn start(nodes: usize) -> Kafka {
        Self::start_with(nodes, &[])
    }

    /// [`Kafka::start`] with extra broker properties (`KEY=VALUE`).
    pub fn start_with(nodes: usize, settings: &[&str]) -> Kafka {
        let mut last_err = String::new();
        // A port found free can be taken before the broker binds it: try a few.
        for _ in 0..3 {
            let port = free_ports(2 * nodes as u16);
            let dir = std::env::temp_dir()
                .join(format!("kafka-infer-test-{}-{port}", std::process::id()));
            let (p, n, owner) = (
                port.to_string(),
                nodes.to_string(),
                std::process::id().to_string(),
            );
            let dir_s = dir.to_string_lossy().into_owned();
            let mut args = vec![
                "start",
                "--port",
                &p,
                "--nodes",
                &n,
                "--dir",
                &dir_s,
                "--owner",
                &owner,
                "--log-level",
                "warn",
            ];
            for s in settings {
                args.extend(["--set", s]);
            }
            let out = script(&args);
            if out.status.success() {
                let stdout = String::from_utf8_lossy(&out.stdout);
                let bootstrap = stdout.lines().last().unwrap_or_default().trim().to_owned();
                assert!(
                    !bootstrap.is_empty(),
                    "scripts/kafka start printed no address"
                );
                return Kafka {
                    bootstrap,
                    port,
                    dir,
                    nodes,
                };
            }
            last_err = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        panic!("scripts/kafka start failed:\n{last_err}");
    }

    /// The broker shared by every test of this test binary (unique topics and groups per test).
    pub fn shared() -> &'static Kafka {
        static SHARED: OnceLock<Kafka> = OnceLock::new();
        SHARED.get_or_init(|| Kafka::start(1))
    }

    fn node_cmd(&self, cmd: &str, node: usize) {
        let (p, n) = (self.port.to_string(), node.to_string());
        let dir = self.dir.to_string_lossy().into_owned();
        let out = script(&[cmd, "--port", &p, "--dir", &dir, "--node", &n]);
        assert!(
            out.status.success(),
            "scripts/kafka {cmd} --node {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILLs one node of the cluster (1-based).
    pub fn kill_node(&self, node: usize) {
        self.node_cmd("kill-node", node);
    }

    /// Stops one node (SIGTERM, bounded), keeping its data.
    pub fn stop_node(&self, node: usize) {
        self.node_cmd("stop-node", node);
    }

    /// Restarts a stopped or killed node with its data; returns once the cluster lists it.
    pub fn start_node(&self, node: usize) {
        self.node_cmd("start-node", node);
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let p = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let _ = script(&["stop", "--port", &p, "--dir", &dir]);
    }
}

/// Creates topics (name, partitions) with replication `replication`; existing topics are fine.
pub fn create_topics_with(
    bootstrap: &str,
    topics: &[(&str, i32)],
    replication: i32,
    config: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, parts)| {
            config.iter().fold(
                NewTopic::new(name, *parts, TopicReplication::Fixed(replication)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        futures_executor::block_on(admin.create_topics(&new, &opts)).expect("create topics");
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => panic!("cannot create topic {name}: {code}"),
        }
    }
    // Created in the controller's metadata is not yet known to every broker: wait until a
    // metadata request shows each topic with all its partitions led.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for (name, parts) in topics {
        loop {
            let ready = admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics().iter().find(|t| t.name() == *name).map(|t| {
                        t.error().is_none()
                            && t.partitions().len() == *parts as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "topic {name} not ready after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    create_topics_with(bootstrap, topics, 1, &[]);
}

/// A unique suffix for topic and group names, so tests sharing a broker never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Sends `rec`, polling for delivery reports while librdkafka's queue is full (preloading many
/// records outruns it); any other error is returned rather than retried forever.
pub fn send_waiting<C, K, P>(
    producer: &BaseProducer<C>,
    mut rec: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    C: ProducerContext<DeliveryOpaque = ()>,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
