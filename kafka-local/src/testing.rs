//! The harness tests, benches and loadgen use: a broker (or 3-node cluster) on free loopback
//! ports owned by this process (stopped on drop, and by the watcher if the process dies), plus
//! small helpers for topics and producing.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::cluster::{self, PauseOutcome, StartOptions, Started, Target};
use crate::config::{LogLevel, SaslMechanism, Security, User};
use crate::error::{Error, Result};
use crate::security::ClientSettings;
use crate::{ports, Env, Reporter};

/// A broker (`nodes` = 1) or a 3-node cluster on loopback, owned by this process.
pub struct Kafka {
    /// The PLAINTEXT bootstrap list.
    pub bootstrap: String,
    /// The first client port (node i's is `port + i - 1`).
    pub port: u16,
    pub dir: PathBuf,
    pub nodes: usize,
    started: Started,
    env: Env,
}

/// How to start a [`Kafka`]: nodes, extra broker properties, secured listeners.
#[derive(Debug, Clone)]
pub struct KafkaBuilder {
    nodes: u8,
    sets: Vec<String>,
    security: Security,
    log_level: LogLevel,
    timeout: Duration,
}

impl KafkaBuilder {
    /// 1 (default) or 3 nodes.
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = if nodes == 3 { 3 } else { 1 };
        self
    }

    /// An extra broker property `KEY=VALUE` for every node.
    pub fn set(mut self, kv: &str) -> Self {
        self.sets.push(kv.to_owned());
        self
    }

    /// A SASL_PLAINTEXT listener with this mechanism and users (`admin:admin-secret` if none).
    pub fn sasl(mut self, mechanism: SaslMechanism, users: &[User]) -> Self {
        self.security.sasl = Some((mechanism, users.to_vec()));
        self
    }

    /// An SSL listener with a throwaway CA ([`Kafka::tls_client`] has its `ssl.ca.location`).
    pub fn tls(mut self) -> Self {
        self.security.tls = true;
        self
    }

    /// The brokers' log level (default warn).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// How long to wait until the cluster is ready (default 120 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Starts it on free ports (trying again on other ports if one was taken meanwhile).
    pub fn start(self) -> Result<Kafka> {
        let env = Env::new(Reporter::quiet());
        let mut last = None;
        // A port found free can be taken before the broker binds it: try a few.
        for _ in 0..3 {
            let span = u16::from(self.nodes)
                * (2 + u16::from(self.security.sasl.is_some()) + u16::from(self.security.tls));
            let port = ports::free_ports(span)?;
            let dir = std::env::temp_dir()
                .join(format!("kafka-local-test-{}-{port}", std::process::id()));
            let o = StartOptions {
                target: Target {
                    port: Some(port),
                    dir: Some(dir.clone()),
                },
                nodes: Some(self.nodes),
                owner: Some(std::process::id()),
                log_level: Some(self.log_level),
                heap: None,
                sets: self.sets.clone(),
                timeout: Some(self.timeout),
                security: self.security.clone(),
            };
            match cluster::start(&env, &o) {
                Ok(started) => {
                    return Ok(Kafka {
                        bootstrap: started.bootstrap.clone(),
                        port,
                        dir: started.dir.clone(),
                        nodes: usize::from(self.nodes),
                        started,
                        env,
                    })
                }
                Err(e @ Error::Interrupted(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::failed("start failed")))
    }
}

impl Kafka {
    /// Starts a broker (`nodes` = 1) or a cluster (3) owned by this process; panics (with the
    /// broker log's tail) if it cannot.
    pub fn start(nodes: usize) -> Kafka {
        Self::builder()
            .nodes(nodes)
            .start()
            .unwrap_or_else(|e| panic!("starting Kafka ({nodes} node(s)) failed: {e}"))
    }

    /// [`Kafka::start`] with extra broker properties (`KEY=VALUE`).
    pub fn start_with(nodes: usize, settings: &[&str]) -> Kafka {
        settings
            .iter()
            .fold(Self::builder().nodes(nodes), |b, s| b.set(s))
            .start()
            .unwrap_or_else(|e| panic!("starting Kafka ({nodes} node(s)) failed: {e}"))
    }

    /// Options beyond [`Kafka::start`]: SASL and TLS listeners, log level, timeout.
    pub fn builder() -> KafkaBuilder {
        KafkaBuilder {
            nodes: 1,
            sets: Vec::new(),
            security: Security::default(),
            log_level: LogLevel::Warn,
            timeout: Duration::from_secs(120),
        }
    }

    /// The broker shared by every test of this test binary (unique topics and groups per test).
    pub fn shared() -> &'static Kafka {
        static SHARED: OnceLock<Kafka> = OnceLock::new();
        SHARED.get_or_init(|| Kafka::start(1))
    }

    fn target(&self) -> Target {
        Target {
            port: Some(self.port),
            dir: Some(self.dir.clone()),
        }
    }

    /// Node i's JVM pid as started (it may have been killed since).
    pub fn node_pid(&self, node: usize) -> Option<u32> {
        u8::try_from(node)
            .ok()
            .and_then(|n| cluster::node_pid(&self.dir, n))
    }

    /// PLAINTEXT client settings.
    pub fn plaintext_client(&self) -> ClientSettings {
        ClientSettings::plaintext(self.bootstrap.clone())
    }

    /// The SASL_PLAINTEXT listener's settings for its first user, if it has one.
    pub fn sasl_client(&self) -> Option<ClientSettings> {
        self.started.sasl.clone()
    }

    /// The SSL listener's settings (`ssl.ca.location` = the throwaway CA), if it has one.
    pub fn tls_client(&self) -> Option<ClientSettings> {
        self.started.tls.clone()
    }

    #[track_caller]
    fn must(&self, what: &str, node: usize, r: Result<()>) {
        if let Err(e) = r {
            panic!(
                "{what} node {node} of the cluster in {}: {e}",
                self.dir.display()
            );
        }
    }

    /// SIGKILLs one node of the cluster (1-based).
    #[track_caller]
    pub fn kill_node(&self, node: usize) {
        let r = cluster::kill_node(&self.env, &self.target(), &node.to_string());
        self.must("kill", node, r);
    }

    /// Stops one node (SIGTERM, bounded), keeping its data.
    #[track_caller]
    pub fn stop_node(&self, node: usize) {
        let r = cluster::stop_node(
            &self.env,
            &self.target(),
            &node.to_string(),
            Duration::from_secs(30),
        );
        self.must("stop", node, r);
    }

    /// Restarts a stopped or killed node with its data; returns once the cluster lists it.
    #[track_caller]
    pub fn start_node(&self, node: usize) {
        let r = cluster::start_node(
            &self.env,
            &self.target(),
            &node.to_string(),
            None,
            None,
            Duration::from_secs(120),
        );
        self.must("start", node, r);
    }

    /// Freezes one node (SIGSTOP): its connections stay open, nothing answers.
    #[track_caller]
    pub fn pause_node(&self, node: usize) {
        let r = cluster::pause_node(&self.env, &self.target(), &node.to_string());
        self.must("pause", node, running(r));
    }

    /// Thaws a paused node (SIGCONT).
    #[track_caller]
    pub fn resume_node(&self, node: usize) {
        let r = cluster::resume_node(&self.env, &self.target(), &node.to_string());
        self.must("resume", node, running(r));
    }
}

fn running(r: Result<PauseOutcome>) -> Result<()> {
    match r? {
        PauseOutcome::Done(_) | PauseOutcome::Already(_) => Ok(()),
        PauseOutcome::NotRunning => Err(Error::failed("it is not running")),
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = cluster::stop(&self.env, &self.target(), false, Duration::from_secs(30));
    }
}

/// Creates topics (name, partitions) with replication `replication` and topic configs;
/// existing topics are fine. Waits until a metadata request shows each with all partitions
/// led. Panics if that fails (a test helper).
#[track_caller]
pub fn create_topics_with(
    bootstrap: &str,
    topics: &[(&str, i32)],
    replication: i32,
    config: &[(&str, &str)],
) {
    if let Err(e) = try_create_topics_with(bootstrap, topics, replication, config) {
        panic!("creating topics at {bootstrap}: {e}");
    }
}

/// [`create_topics_with`] returning the error.
pub fn try_create_topics_with(
    bootstrap: &str,
    topics: &[(&str, i32)],
    replication: i32,
    config: &[(&str, &str)],
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| Error::kafka("admin client", e))?;
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
    let results = futures_executor::block_on(admin.create_topics(&new, &opts))
        .map_err(|e| Error::kafka("create topics", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::failed(format!("cannot create topic {name}: {code}")))
            }
        }
    }
    // Created in the controller's metadata is not yet known to every broker: wait until a
    // metadata request shows each topic with all its partitions led.
    let deadline = Instant::now() + Duration::from_secs(30);
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
            if Instant::now() >= deadline {
                return Err(Error::failed(format!("topic {name} not ready after 30 s")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Creates topics (name, partitions) with replication 1; existing topics are fine.
#[track_caller]
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
