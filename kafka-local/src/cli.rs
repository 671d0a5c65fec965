//! The command line of `scripts/kafka` (the kafka-local binary): its help text, which is the
//! contract with users, and the parsing of its options. The commands themselves are in
//! main.rs on top of [`crate::cluster`].

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{valid_heap, valid_set, LogLevel, SaslMechanism, Security, User};
use crate::error::{Error, Result};
use crate::{parse_in_range, KAFKA_VERSION};

/// The help text (`scripts/kafka --help`).
pub fn usage(cache_dir: &str) -> String {
    format!(
        r#"scripts/kafka: Apache Kafka {KAFKA_VERSION} (KRaft, no ZooKeeper) on 127.0.0.1, without Docker.

The broker is Kafka's own jars from Maven Central, run with `java`: on first use they are
fetched once (about 45 MB, through Maven) into a cache that survives `cargo clean`. This
script runs the kafka-local binary (the workspace crate kafka-local/), which it builds first
if needed (cargo build --release -p kafka-local).

USAGE
  scripts/kafka start [--port P] [--nodes 1|3] [--dir DIR] [--owner PID] [--log-level LEVEL]
                      [--heap SIZE] [--set KEY=VALUE]... [--timeout SECS]
                      [--sasl plain|scram-sha-512 [--user NAME:PASSWORD]...] [--tls]
  scripts/kafka stop  [--port P] [--dir DIR] [--keep-data] [--timeout SECS]
  scripts/kafka status [--port P] [--dir DIR]
  scripts/kafka stop-node|kill-node|start-node --node I [--port P] [--dir DIR] [--timeout SECS]
  scripts/kafka pause-node|resume-node --node I [--port P] [--dir DIR]
  scripts/kafka create-topic [--port P] [--dir DIR | --bootstrap B] NAME PARTITIONS [REPLICATION] [KEY=VALUE...]
  scripts/kafka describe [--port P] [--dir DIR | --bootstrap B] [TOPIC...]
  scripts/kafka fetch
  scripts/kafka check-compose
  scripts/kafka help

COMMANDS
  start        Fetch the jars if needed, format KRaft storage (first start on DIR only; later
               starts resume with the data kept there), start every node as combined
               broker+controller, and wait until the cluster answers a metadata request listing
               all its brokers (an open port is not enough). Progress goes to stderr; the last
               line on stdout is the bootstrap address list, e.g. 127.0.0.1:9092 or
               127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094 (also written to DIR/bootstrap).
               With --sasl/--tls, a line before it per secured listener gives its protocol,
               addresses and client settings, e.g.
               SSL 127.0.0.1:9094 security.protocol=SSL ssl.ca.location=DIR/tls/ca.pem
               Fails (exit 1, nothing left running, the broker log's tail on stderr) if a port
               is taken, DIR already runs a cluster, or the cluster is not ready in time.
  stop         Stop exactly what `start` started in DIR (recorded pids, checked to still be
               those JVMs): SIGTERM, then SIGKILL after --timeout. Then delete DIR's data, logs
               and state unless --keep-data. Nothing running: a note, exit 0.
  status       One line per node: running, paused or stopped, pid, ports, log; then the brokers
               the cluster lists and its active controller. Exit 0 all nodes run, 1 some, 3
               none (a paused node counts as running).
  stop-node    SIGTERM one node (controlled shutdown), SIGKILL after --timeout.   }} for failover
  kill-node    SIGKILL one node.                                                   }} tests; data
  start-node   Start one stopped node again on its data and wait until the         }} is kept
               cluster lists it (asked through that node itself, which answers only
               once it has caught up and been unfenced).
  pause-node   SIGSTOP one node's JVM: the broker freezes instead of dying (its connections
               stay open, requests time out); status shows it paused.
  resume-node  SIGCONT a paused node: it carries on where it stopped.
  create-topic Create a topic unless it exists (then its partition count must match); waits
               until every partition has a leader. Replication defaults to the broker's
               default.replication.factor (1 on one node, 3 on three).
  describe     Cluster id, brokers, active controller, finalized features, and topics with
               their partitions' leader, replicas and in-sync replicas.
  fetch        Only download (or verify) the jar cache and build the class-data archive (see
               FILES); prints the cache's lib directory. CI runs this up front.
  check-compose  Check that docker-compose.yml runs the same Kafka version with the same broker
               settings (config/kafka/broker.properties, mounted into the container), and
               build the container's server.properties the way the apache/kafka image does
               (its KafkaDockerWrapper, from the cached jars) to prove the file is used.

OPTIONS
  --port P        first client port (default 9092). A cluster of N nodes uses ports P..P+2N-1:
                  node i (1..N) takes client port P+i-1 and controller port P+N+i-1.
                  1 node: client P, controller P+1. 3 nodes: clients P,P+1,P+2; controllers
                  P+3,P+4,P+5. All bind to 127.0.0.1 only. Any port taken: start fails.
  --nodes 1|3     one combined broker+controller (default), or three (replication factor 3,
                  min.insync.replicas 2: config/kafka/broker-3-nodes.properties).
  --dir DIR       where the cluster's data, logs, pids and state live (default
                  ${{CARGO_TARGET_DIR:-<repo>/target}}/kafka/port-P). One cluster per DIR;
                  run many clusters at once with different ports and dirs.
  --owner PID     when process PID exits, stop this cluster and delete its data (a small
                  watcher process, DIR/watcher.log). Tests pass their own pid so a crashed test
                  run never leaks brokers.
  --log-level L   root log level of the brokers: trace, debug, info (default), warn, error, off.
  --heap SIZE     maximum Java heap per node (default $KAFKA_INFER_KAFKA_HEAP or 384m).
  --set KEY=VALUE extra broker property for every node (repeatable); it overrides the
                  project's settings, and start-node reuses it.
  --timeout SECS  start/start-node: how long to wait for readiness (default 120);
                  stop/stop-node: how long to wait after SIGTERM before SIGKILL (default 30).
  --keep-data     stop: keep DIR (data, logs); a later `start --dir DIR` resumes it.
  --node I        stop-node/kill-node/start-node/pause-node/resume-node: which node, 1..N.
  --bootstrap B   create-topic/describe: talk to B instead of the cluster in DIR.
  --sasl M        start: also a SASL_PLAINTEXT listener, mechanism plain or scram-sha-512, on
                  the N ports after the controllers' (P+2N..P+3N-1). SCRAM credentials are
                  created when the storage is formatted. Client settings: DIR/client-sasl.properties.
  --user N:P      start --sasl: a user and password (repeatable; default admin:admin-secret);
                  letters, digits and ._- (the password also @%+).
  --tls           start: also an SSL listener on the next N ports, with a throwaway CA and a
                  broker certificate for 127.0.0.1/localhost (openssl) in DIR/tls; clients
                  trust DIR/tls/ca.pem (ssl.ca.location). Client settings:
                  DIR/client-ssl.properties.
                  --sasl/--user/--tls are fixed at a cluster's first start (a resume reuses
                  them); brokers and controllers talk to each other over PLAINTEXT.

FILES
  cache   $KAFKA_INFER_CACHE_DIR or ${{XDG_CACHE_HOME:-~/.cache}}/kafka-infer, here
          {cache_dir}
          (lib/: the jars, lib.sha256: their checksums, cds-*.jsa: a class-data-sharing
          archive of the broker's classes per JDK, built once by a short training broker,
          which makes every later broker start ~30% faster).
          Filled atomically under a lock (flock): concurrent starts share one download, an
          interrupted download leaves nothing behind.
  DIR     cluster.env (nodes, port, cluster id, security), bootstrap, overrides.properties,
          node-I/{{server.properties, log4j2.properties, data/, broker.log, pid}},
          watcher.pid, watcher.log; with --sasl sasl-users and client-sasl.properties, with
          --tls tls/{{ca.pem, ca.key, broker.pem}} and client-ssl.properties.
  config/kafka/broker.properties, broker-3-nodes.properties: the broker settings (shared
          with docker-compose.yml); each node's server.properties = these + its listeners.

ENVIRONMENT
  KAFKA_INFER_CACHE_DIR     jar cache root (see FILES)
  KAFKA_INFER_KAFKA_HEAP    default for --heap (384m)
  KAFKA_INFER_KAFKA_JVM_OPTS  extra JVM options for the brokers (word-split)
  KAFKA_INFER_KAFKA_CDS=0   do not build or use the class-data archive
  CARGO_TARGET_DIR          the default DIR lives under it (and the kafka-local binary)
  JAVA_HOME                 java is $JAVA_HOME/bin/java if set, else `java` on PATH (17+)
  MVN                       Maven command for the first fetch (default `mvn`)

EXAMPLES
  scripts/kafka start                                   # 127.0.0.1:9092, data in target/kafka/port-9092
  scripts/kafka create-topic incoming_tweet 3
  scripts/kafka stop
  B=$(scripts/kafka start --port 19092 --nodes 3 --dir /tmp/k3 --owner $$ --log-level warn)
  scripts/kafka kill-node --port 19092 --dir /tmp/k3 --node 1
  scripts/kafka start-node --port 19092 --dir /tmp/k3 --node 1
  scripts/kafka pause-node --port 19092 --dir /tmp/k3 --node 2     # frozen, not dead
  scripts/kafka resume-node --port 19092 --dir /tmp/k3 --node 2
  scripts/kafka start --port 19300 --dir /tmp/ks --sasl scram-sha-512 --user alice:alice-pw --tls
"#
    )
}

/// The commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Start,
    Stop,
    Status,
    StopNode,
    KillNode,
    StartNode,
    PauseNode,
    ResumeNode,
    CreateTopic,
    Describe,
    Fetch,
    CheckCompose,
    Help,
}

impl Cmd {
    pub fn parse(s: &str) -> Option<Cmd> {
        Some(match s {
            "start" => Cmd::Start,
            "stop" => Cmd::Stop,
            "status" => Cmd::Status,
            "stop-node" => Cmd::StopNode,
            "kill-node" => Cmd::KillNode,
            "start-node" => Cmd::StartNode,
            "pause-node" => Cmd::PauseNode,
            "resume-node" => Cmd::ResumeNode,
            "create-topic" => Cmd::CreateTopic,
            "describe" => Cmd::Describe,
            "fetch" => Cmd::Fetch,
            "check-compose" => Cmd::CheckCompose,
            "help" | "-h" | "--help" => Cmd::Help,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Cmd::Start => "start",
            Cmd::Stop => "stop",
            Cmd::Status => "status",
            Cmd::StopNode => "stop-node",
            Cmd::KillNode => "kill-node",
            Cmd::StartNode => "start-node",
            Cmd::PauseNode => "pause-node",
            Cmd::ResumeNode => "resume-node",
            Cmd::CreateTopic => "create-topic",
            Cmd::Describe => "describe",
            Cmd::Fetch => "fetch",
            Cmd::CheckCompose => "check-compose",
            Cmd::Help => "help",
        }
    }
}

/// The options after the command (every command accepts every option, as the bash script
/// did; each uses the ones that concern it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opts {
    pub port: Option<u16>,
    pub nodes: Option<u8>,
    pub dir: Option<PathBuf>,
    pub owner: Option<String>,
    pub log_level: Option<LogLevel>,
    pub heap: Option<String>,
    pub timeout: Option<Duration>,
    pub node: Option<String>,
    pub sets: Vec<String>,
    pub bootstrap: Option<String>,
    pub keep_data: bool,
    pub sasl: Option<SaslMechanism>,
    pub users: Vec<User>,
    pub tls: bool,
    /// `-h`/`--help` among the options.
    pub help: bool,
    /// Positional arguments.
    pub args: Vec<String>,
}

impl Opts {
    /// The security options of `start`.
    pub fn security(&self) -> Security {
        Security {
            sasl: self.sasl.map(|m| (m, self.users.clone())),
            tls: self.tls,
        }
    }
}

const VALUED: [&str; 12] = [
    "--port",
    "--nodes",
    "--dir",
    "--owner",
    "--log-level",
    "--heap",
    "--timeout",
    "--node",
    "--set",
    "--bootstrap",
    "--sasl",
    "--user",
];

/// Parses the options after the command; [`Error::Usage`] for anything wrong.
pub fn parse_opts(argv: &[String]) -> Result<Opts> {
    let mut o = Opts::default();
    let mut raw_port = None;
    let mut raw_nodes = None;
    let mut raw_timeout = None;
    let mut raw_level = None;
    let mut i = 0;
    while i < argv.len() {
        let a = argv[i].as_str();
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") && VALUED.contains(&k) => (k, Some(v.to_owned())),
            _ => (a, None),
        };
        if VALUED.contains(&key) {
            let v = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    argv.get(i)
                        .cloned()
                        .ok_or_else(|| Error::usage(format!("{key} needs a value")))?
                }
            };
            match key {
                "--port" => raw_port = Some(v),
                "--nodes" => raw_nodes = Some(v),
                "--dir" => o.dir = Some(PathBuf::from(v)),
                "--owner" => o.owner = Some(v),
                "--log-level" => raw_level = Some(v),
                "--heap" => o.heap = Some(v),
                "--timeout" => raw_timeout = Some(v),
                "--node" => o.node = Some(v),
                "--set" => o.sets.push(v),
                "--bootstrap" => o.bootstrap = Some(v),
                "--sasl" => o.sasl = Some(v.parse()?),
                "--user" => o.users.push(v.parse()?),
                _ => {}
            }
            i += 1;
            continue;
        }
        match a {
            "--keep-data" => o.keep_data = true,
            "--tls" => o.tls = true,
            "-h" | "--help" => {
                o.help = true;
                return Ok(o);
            }
            "--" => {
                o.args.extend(argv[i + 1..].iter().cloned());
                break;
            }
            _ if a.starts_with('-') => return Err(Error::usage(format!("unknown option {a}"))),
            _ => o.args.push(a.to_owned()),
        }
        i += 1;
    }
    if let Some(p) = raw_port {
        let n = parse_in_range(&p, 1, 65535)
            .ok_or_else(|| Error::usage(format!("--port must be a port number, got '{p}'")))?;
        o.port = Some(n as u16);
    }
    if let Some(n) = raw_nodes {
        o.nodes = match n.as_str() {
            "1" => Some(1),
            "3" => Some(3),
            _ => return Err(Error::usage(format!("--nodes must be 1 or 3, got '{n}'"))),
        };
    }
    if let Some(t) = raw_timeout {
        let s = parse_in_range(&t, 1, 86400).ok_or_else(|| {
            Error::usage(format!(
                "--timeout must be a whole number of seconds > 0, got '{t}'"
            ))
        })?;
        o.timeout = Some(Duration::from_secs(u64::from(s)));
    }
    if let Some(l) = raw_level {
        o.log_level = Some(l.parse()?);
    }
    if let Some(h) = &o.heap {
        if !valid_heap(h) {
            return Err(Error::usage(format!(
                "--heap must look like 384m or 1g, got '{h}'"
            )));
        }
    }
    for s in &o.sets {
        if !valid_set(s) {
            return Err(Error::usage(format!("--set wants KEY=VALUE, got '{s}'")));
        }
    }
    if !o.users.is_empty() && o.sasl.is_none() {
        return Err(Error::usage("--user needs --sasl plain|scram-sha-512"));
    }
    Ok(o)
}

/// `create-topic`'s arguments: NAME PARTITIONS [REPLICATION] [KEY=VALUE...].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicArgs {
    pub name: String,
    pub partitions: i32,
    pub replication: Option<i32>,
    pub configs: Vec<(String, String)>,
}

pub fn parse_topic_args(args: &[String]) -> Result<TopicArgs> {
    if args.len() < 2 {
        return Err(Error::usage(
            "create-topic needs NAME PARTITIONS [REPLICATION] [KEY=VALUE...]",
        ));
    }
    let partitions = args[1]
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::usage(format!("PARTITIONS must be a number, got '{}'", args[1])))?;
    let mut replication = None;
    let mut configs = Vec::new();
    for a in &args[2..] {
        match a.find('=') {
            Some(eq) if eq > 0 => configs.push((a[..eq].to_owned(), a[eq + 1..].to_owned())),
            _ if replication.is_none()
                && configs.is_empty()
                && !a.is_empty()
                && a.chars().all(|c| c.is_ascii_digit()) =>
            {
                replication = Some(a.parse::<i32>().map_err(|_| {
                    Error::usage(format!("REPLICATION must be a small number, got '{a}'"))
                })?);
            }
            _ => {
                return Err(Error::usage(format!(
                    "unexpected argument '{a}' (REPLICATION comes before KEY=VALUE configs)"
                )))
            }
        }
    }
    Ok(TopicArgs {
        name: args[0].clone(),
        partitions,
        replication,
        configs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn usage_err(s: &str) -> String {
        match parse_opts(&argv(s)) {
            Err(Error::Usage(m)) => m,
            other => panic!("{s}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn options_in_both_forms() {
        let o = parse_opts(&argv(
            "--port 19092 --nodes=3 --dir /tmp/k --owner 42 --log-level WARN --heap 1g \
             --set a=1 --set=b=2 --timeout 5 --keep-data x -- --not-an-option",
        ))
        .expect("parses");
        assert_eq!(o.port, Some(19092));
        assert_eq!(o.nodes, Some(3));
        assert_eq!(o.dir, Some(PathBuf::from("/tmp/k")));
        assert_eq!(o.owner.as_deref(), Some("42"));
        assert_eq!(o.log_level, Some(LogLevel::Warn));
        assert_eq!(o.heap.as_deref(), Some("1g"));
        assert_eq!(o.sets, ["a=1", "b=2"]);
        assert_eq!(o.timeout, Some(Duration::from_secs(5)));
        assert!(o.keep_data);
        assert_eq!(o.args, ["x", "--not-an-option"]);
    }

    #[test]
    fn the_bash_scripts_usage_errors() {
        assert_eq!(
            usage_err("--port x"),
            "--port must be a port number, got 'x'"
        );
        assert_eq!(
            usage_err("--port 0"),
            "--port must be a port number, got '0'"
        );
        assert_eq!(usage_err("--nodes 2"), "--nodes must be 1 or 3, got '2'");
        assert_eq!(
            usage_err("--timeout 0"),
            "--timeout must be a whole number of seconds > 0, got '0'"
        );
        assert_eq!(
            usage_err("--log-level LOUD"),
            "--log-level must be trace, debug, info, warn, error or off, got 'loud'"
        );
        assert_eq!(
            usage_err("--heap 1gb"),
            "--heap must look like 384m or 1g, got '1gb'"
        );
        assert_eq!(
            usage_err("--set novalue"),
            "--set wants KEY=VALUE, got 'novalue'"
        );
        assert_eq!(usage_err("--port"), "--port needs a value");
        assert_eq!(usage_err("--bogus"), "unknown option --bogus");
        // Leading zeros are fine, as in the bash script (10#N).
        assert_eq!(
            parse_opts(&argv("--port 09092")).expect("ok").port,
            Some(9092)
        );
    }

    #[test]
    fn help_wins_over_bad_values() {
        assert!(parse_opts(&argv("--port x --help")).expect("help").help);
    }

    #[test]
    fn security_options() {
        let o = parse_opts(&argv(
            "--sasl scram-sha-512 --user alice:pw1 --user bob:pw2 --tls",
        ))
        .expect("parses");
        let s = o.security();
        let (m, users) = s.sasl.expect("sasl");
        assert_eq!(m, SaslMechanism::ScramSha512);
        assert_eq!(users.len(), 2);
        assert!(s.tls);
        assert_eq!(
            usage_err("--user alice:pw"),
            "--user needs --sasl plain|scram-sha-512"
        );
        assert!(usage_err("--sasl kerberos").contains("plain or scram-sha-512"));
        assert!(usage_err("--sasl plain --user alice").contains("NAME:PASSWORD"));
    }

    #[test]
    fn topic_arguments() {
        let t = parse_topic_args(&argv("t 3 1 retention.ms=1000 a=b=c")).expect("parses");
        assert_eq!(
            t,
            TopicArgs {
                name: "t".into(),
                partitions: 3,
                replication: Some(1),
                configs: vec![
                    ("retention.ms".into(), "1000".into()),
                    ("a".into(), "b=c".into())
                ],
            }
        );
        assert_eq!(
            parse_topic_args(&argv("t 1")).expect("ok").replication,
            None
        );
        assert!(parse_topic_args(&argv("t")).is_err());
        assert!(parse_topic_args(&argv("t x")).is_err());
        assert!(parse_topic_args(&argv("t 3 a=1 2")).is_err());
    }

    #[test]
    fn help_text_names_every_command() {
        let u = usage("/c");
        for c in [
            "start",
            "stop",
            "status",
            "stop-node",
            "kill-node",
            "start-node",
            "pause-node",
            "resume-node",
            "create-topic",
            "describe",
            "fetch",
            "check-compose",
        ] {
            assert!(Cmd::parse(c).is_some(), "{c}");
            assert!(
                u.contains(&format!("scripts/kafka {c}"))
                    || u.contains(&format!("|{c}"))
                    || u.contains(&format!("{c}|")),
                "{c} not in the usage"
            );
        }
        assert!(u.contains("${CARGO_TARGET_DIR:-<repo>/target}/kafka/port-P"));
        assert!(u.contains("--sasl M") && u.contains("--tls "));
    }
}
