//! What a cluster directory holds and how each node is configured: the port layout, the state
//! file (cluster.env), and the rendering of server.properties and log4j2.properties. Pure
//! functions of their inputs (unit-tested); the files are written by [`crate::cluster`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::KAFKA_VERSION;

/// The brokers' root log level (`--log-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Off,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Off => "off",
        }
    }
}

impl FromStr for LogLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<LogLevel> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "off" => LogLevel::Off,
            _ => {
                return Err(Error::usage(format!(
                    "--log-level must be trace, debug, info, warn, error or off, got '{}'",
                    s.to_ascii_lowercase()
                )))
            }
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SASL mechanism of the `SASL_PLAINTEXT` listener (`--sasl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha512,
}

impl SaslMechanism {
    /// The name in `sasl.mechanism` / `sasl.enabled.mechanisms`.
    pub fn kafka_name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// The name on the command line and in cluster.env.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "plain",
            SaslMechanism::ScramSha512 => "scram-sha-512",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = Error;
    fn from_str(s: &str) -> Result<SaslMechanism> {
        match s.to_ascii_lowercase().as_str() {
            "plain" => Ok(SaslMechanism::Plain),
            "scram-sha-512" => Ok(SaslMechanism::ScramSha512),
            _ => Err(Error::usage(format!(
                "--sasl must be plain or scram-sha-512, got '{s}'"
            ))),
        }
    }
}

/// A SASL user (`--user NAME:PASSWORD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
}

impl User {
    /// The user a SASL listener gets when no `--user` is given.
    pub fn default_user() -> User {
        User {
            name: "admin".into(),
            password: "admin-secret".into(),
        }
    }
}

impl FromStr for User {
    type Err = Error;
    /// `NAME:PASSWORD`; both of letters, digits and `._-` (the password also `@%+`), so they
    /// need no quoting in JAAS, properties or the storage tool's `--add-scram`.
    fn from_str(s: &str) -> Result<User> {
        let bad = || {
            Error::usage(format!(
                "--user wants NAME:PASSWORD (letters, digits, '._-'; the password also '@%+'), got '{s}'"
            ))
        };
        let (name, password) = s.split_once(':').ok_or_else(bad)?;
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        let pw_ok = !password.is_empty()
            && password
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@%+".contains(c));
        if !name_ok || !pw_ok {
            return Err(bad());
        }
        Ok(User {
            name: name.into(),
            password: password.into(),
        })
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.password)
    }
}

/// The client listeners beside PLAINTEXT (`start --sasl … --tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// A `SASL_PLAINTEXT` listener with this mechanism and these users.
    pub sasl: Option<(SaslMechanism, Vec<User>)>,
    /// An `SSL` listener with a throwaway CA (DIR/tls/ca.pem).
    pub tls: bool,
}

impl Security {
    pub fn is_empty(&self) -> bool {
        self.sasl.is_none() && !self.tls
    }
}

/// Which ports a cluster uses. Node i (1..N) has client port P+i-1 and controller port
/// P+N+i-1; a SASL listener takes the next N ports, then a TLS listener the N after those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub port: u16,
    pub nodes: u8,
    pub sasl: bool,
    pub tls: bool,
}

impl Layout {
    pub fn new(port: u16, nodes: u8) -> Layout {
        Layout {
            port,
            nodes,
            sasl: false,
            tls: false,
        }
    }

    fn at(&self, offset: u32) -> u16 {
        (u32::from(self.port) + offset) as u16
    }

    pub fn client_port(&self, i: u8) -> u16 {
        self.at(u32::from(i) - 1)
    }

    pub fn controller_port(&self, i: u8) -> u16 {
        self.at(u32::from(self.nodes) + u32::from(i) - 1)
    }

    pub fn sasl_port(&self, i: u8) -> Option<u16> {
        self.sasl
            .then(|| self.at(2 * u32::from(self.nodes) + u32::from(i) - 1))
    }

    pub fn tls_port(&self, i: u8) -> Option<u16> {
        let before = if self.sasl { 3 } else { 2 };
        self.tls
            .then(|| self.at(before * u32::from(self.nodes) + u32::from(i) - 1))
    }

    /// How many ports from `port` on the cluster uses.
    pub fn span(&self) -> u32 {
        u32::from(self.nodes) * (2 + u32::from(self.sasl) + u32::from(self.tls))
    }

    /// The last port, if it fits below 65536.
    pub fn fits(&self) -> bool {
        u32::from(self.port) + self.span() - 1 <= 65535
    }

    fn list(&self, port: impl Fn(u8) -> Option<u16>) -> String {
        (1..=self.nodes)
            .filter_map(|i| port(i).map(|p| format!("127.0.0.1:{p}")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The PLAINTEXT bootstrap list, e.g. `127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094`.
    pub fn bootstrap(&self) -> String {
        self.list(|i| Some(self.client_port(i)))
    }

    pub fn sasl_bootstrap(&self) -> Option<String> {
        self.sasl.then(|| self.list(|i| self.sasl_port(i)))
    }

    pub fn tls_bootstrap(&self) -> Option<String> {
        self.tls.then(|| self.list(|i| self.tls_port(i)))
    }

    /// Every port with what it is for, e.g. `(9093, "node 1 controller")`.
    pub fn all_ports(&self) -> Vec<(u16, String)> {
        let mut out = Vec::new();
        for i in 1..=self.nodes {
            out.push((self.client_port(i), format!("node {i} client")));
            out.push((self.controller_port(i), format!("node {i} controller")));
            if let Some(p) = self.sasl_port(i) {
                out.push((p, format!("node {i} sasl")));
            }
            if let Some(p) = self.tls_port(i) {
                out.push((p, format!("node {i} tls")));
            }
        }
        out
    }

    /// One node's ports.
    pub fn node_ports(&self, i: u8) -> Vec<u16> {
        let mut out = vec![self.client_port(i), self.controller_port(i)];
        out.extend(self.sasl_port(i));
        out.extend(self.tls_port(i));
        out
    }
}

/// DIR/cluster.env: what `start` recorded, so later commands find the same cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub nodes: u8,
    pub port: u16,
    pub cluster_id: String,
    pub version: String,
    pub log_level: Option<LogLevel>,
    pub heap: Option<String>,
    pub sasl: Option<SaslMechanism>,
    pub tls: bool,
}

impl State {
    pub fn layout(&self) -> Layout {
        Layout {
            port: self.port,
            nodes: self.nodes,
            sasl: self.sasl.is_some(),
            tls: self.tls,
        }
    }

    /// cluster.env's text (KEY=VALUE lines; the first seven as the bash script wrote them).
    pub fn render(&self) -> String {
        let mut s = String::from("# scripts/kafka state of this cluster directory; do not edit.\n");
        s.push_str(&format!("NODES={}\n", self.nodes));
        s.push_str(&format!("PORT={}\n", self.port));
        s.push_str(&format!("CLUSTER_ID={}\n", self.cluster_id));
        s.push_str(&format!("KAFKA_VERSION={}\n", self.version));
        s.push_str(&format!(
            "LOG_LEVEL={}\n",
            self.log_level.map_or("", LogLevel::as_str)
        ));
        s.push_str(&format!("HEAP={}\n", self.heap.as_deref().unwrap_or("")));
        if let Some(m) = self.sasl {
            s.push_str(&format!("SASL={}\n", m.as_str()));
        }
        if self.tls {
            s.push_str("TLS=1\n");
        }
        s
    }

    /// Parses cluster.env; `Err` (with `path` in the message) if it is damaged.
    pub fn parse(text: &str, path: &Path) -> Result<State> {
        let (mut nodes, mut port, mut id, mut version) = (None, None, None, String::new());
        let (mut log_level, mut heap, mut sasl, mut tls) = (None, None, None, false);
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "NODES" => nodes = v.parse::<u8>().ok().filter(|n| *n == 1 || *n == 3),
                "PORT" => port = v.parse::<u16>().ok(),
                "CLUSTER_ID" => id = Some(v.to_owned()).filter(|s| !s.is_empty()),
                "KAFKA_VERSION" => version = v.to_owned(),
                "LOG_LEVEL" => log_level = v.parse().ok(),
                "HEAP" => heap = Some(v.to_owned()).filter(|s| !s.is_empty()),
                "SASL" => sasl = v.parse().ok(),
                "TLS" => tls = v == "1",
                _ => {}
            }
        }
        match (nodes, port, id) {
            (Some(nodes), Some(port), Some(cluster_id)) => Ok(State {
                nodes,
                port,
                cluster_id,
                version,
                log_level,
                heap,
                sasl,
                tls,
            }),
            _ => {
                let dir = path.parent().unwrap_or(path);
                Err(Error::failed(format!(
                    "{} is damaged; remove {} to start afresh",
                    path.display(),
                    dir.display()
                )))
            }
        }
    }
}

/// What server.properties is made of, besides the layout.
pub struct NodeConfig<'a> {
    pub layout: Layout,
    pub node: u8,
    pub node_dir: &'a Path,
    /// config/kafka/broker.properties
    pub base: &'a str,
    /// config/kafka/broker-3-nodes.properties (3 nodes only)
    pub three_nodes: Option<&'a str>,
    /// DIR/overrides.properties (`--set`)
    pub overrides: &'a str,
    pub sasl: Option<(SaslMechanism, &'a [User])>,
    /// The PEM key store of the TLS listener (key + certificate chain).
    pub tls_keystore: Option<PathBuf>,
}

/// A node's server.properties: the project's broker settings, then this node's listeners,
/// then `--set` overrides (later keys win in a properties file).
pub fn render_server_properties(c: &NodeConfig<'_>) -> String {
    let l = &c.layout;
    let i = c.node;
    let mut s = format!(
        "# Generated by scripts/kafka for node {i} of {} (Kafka {KAFKA_VERSION}); rewritten at every start.\n\n",
        l.nodes
    );
    s.push_str("# ---- config/kafka/broker.properties\n");
    push_block(&mut s, c.base);
    if let Some(three) = c.three_nodes {
        s.push_str("\n# ---- config/kafka/broker-3-nodes.properties\n");
        push_block(&mut s, three);
    }
    let voters: Vec<String> = (1..=l.nodes)
        .map(|j| format!("{j}@127.0.0.1:{}", l.controller_port(j)))
        .collect();
    let mut listeners = vec![
        format!("PLAINTEXT://127.0.0.1:{}", l.client_port(i)),
        format!("CONTROLLER://127.0.0.1:{}", l.controller_port(i)),
    ];
    let mut advertised = vec![format!("PLAINTEXT://127.0.0.1:{}", l.client_port(i))];
    let mut map = vec!["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"];
    if let Some(p) = l.sasl_port(i) {
        listeners.push(format!("SASL_PLAINTEXT://127.0.0.1:{p}"));
        advertised.push(format!("SASL_PLAINTEXT://127.0.0.1:{p}"));
        map.push("SASL_PLAINTEXT:SASL_PLAINTEXT");
    }
    if let Some(p) = l.tls_port(i) {
        listeners.push(format!("SSL://127.0.0.1:{p}"));
        advertised.push(format!("SSL://127.0.0.1:{p}"));
        map.push("SSL:SSL");
    }
    s.push_str("\n# ---- this node (loopback only)\n");
    s.push_str("process.roles=broker,controller\n");
    s.push_str(&format!("node.id={i}\n"));
    s.push_str(&format!("controller.quorum.voters={}\n", voters.join(",")));
    s.push_str(&format!("listeners={}\n", listeners.join(",")));
    s.push_str(&format!("advertised.listeners={}\n", advertised.join(",")));
    s.push_str("controller.listener.names=CONTROLLER\n");
    s.push_str("inter.broker.listener.name=PLAINTEXT\n");
    s.push_str(&format!(
        "listener.security.protocol.map={}\n",
        map.join(",")
    ));
    s.push_str(&format!("log.dirs={}/data\n", c.node_dir.display()));
    if let Some((mech, users)) = c.sasl {
        s.push_str("\n# ---- start --sasl (SASL_PLAINTEXT listener)\n");
        s.push_str(&format!(
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms={}\n",
            mech.kafka_name()
        ));
        match mech {
            SaslMechanism::Plain => {
                let creds: Vec<String> = users
                    .iter()
                    .map(|u| format!("user_{}=\"{}\"", u.name, u.password))
                    .collect();
                s.push_str(&format!(
                    "listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required {};\n",
                    creds.join(" ")
                ));
            }
            SaslMechanism::ScramSha512 => {
                s.push_str("listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n");
            }
        }
    }
    if let Some(ks) = &c.tls_keystore {
        s.push_str("\n# ---- start --tls (SSL listener; key and certificates in DIR/tls)\n");
        s.push_str("listener.name.ssl.ssl.keystore.type=PEM\n");
        s.push_str(&format!(
            "listener.name.ssl.ssl.keystore.location={}\n",
            ks.display()
        ));
        s.push_str("listener.name.ssl.ssl.client.auth=none\n");
    }
    if !c.overrides.trim().is_empty() {
        s.push_str("\n# ---- start --set\n");
        push_block(&mut s, c.overrides);
    }
    s
}

fn push_block(s: &mut String, block: &str) {
    s.push_str(block);
    if !block.ends_with('\n') {
        s.push('\n');
    }
}

/// A node's log4j2.properties: everything to stdout (its broker.log) at `level`; the chatty
/// state-change logger at warn unless the level asks for more (or less).
pub fn render_log4j(node: u8, level: LogLevel) -> String {
    let state_level = match level {
        LogLevel::Trace | LogLevel::Debug | LogLevel::Error | LogLevel::Off => level.as_str(),
        LogLevel::Info | LogLevel::Warn => "warn",
    };
    format!(
        "# Generated by scripts/kafka: everything to stdout (node-{node}/broker.log) at level {level}.
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = {state_level}
logger.request.name = kafka.request.logger
logger.request.level = warn
"
    )
}

/// `--heap`: digits with an optional k/m/g suffix.
pub fn valid_heap(h: &str) -> bool {
    let digits = h.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    !digits.is_empty() && h.len() - digits.len() <= 1 && digits.chars().all(|c| c.is_ascii_digit())
}

/// `--set KEY=VALUE`: a property key of `[a-zA-Z0-9._-]`, any one-line value.
pub fn valid_set(s: &str) -> bool {
    match s.split_once('=') {
        Some((k, _)) => {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && !s.contains('\n')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_one_and_three_nodes() {
        let one = Layout::new(9092, 1);
        assert_eq!((one.client_port(1), one.controller_port(1)), (9092, 9093));
        assert_eq!(one.bootstrap(), "127.0.0.1:9092");
        assert_eq!(one.span(), 2);
        let three = Layout::new(19200, 3);
        assert_eq!(
            three.bootstrap(),
            "127.0.0.1:19200,127.0.0.1:19201,127.0.0.1:19202"
        );
        assert_eq!(three.controller_port(1), 19203);
        assert_eq!(three.controller_port(3), 19205);
        assert_eq!(three.sasl_port(1), None);
        let sec = Layout {
            sasl: true,
            tls: true,
            ..three
        };
        assert_eq!(sec.sasl_port(1), Some(19206));
        assert_eq!(sec.tls_port(3), Some(19211));
        assert_eq!(sec.span(), 12);
        let tls_only = Layout { tls: true, ..one };
        assert_eq!(tls_only.tls_port(1), Some(9094));
        assert_eq!(tls_only.tls_bootstrap().as_deref(), Some("127.0.0.1:9094"));
        assert!(!Layout::new(65535, 1).fits());
        assert!(Layout::new(65534, 1).fits());
    }

    #[test]
    fn state_round_trips_and_reads_the_bash_scripts_file() {
        let bash = "# scripts/kafka state of this cluster directory; do not edit.\nNODES=3\nPORT=19200\nCLUSTER_ID=abc\nKAFKA_VERSION=4.1.2\nLOG_LEVEL=warn\nHEAP=\n";
        let st = State::parse(bash, Path::new("/d/cluster.env")).expect("parses");
        assert_eq!(st.nodes, 3);
        assert_eq!(st.log_level, Some(LogLevel::Warn));
        assert_eq!(st.heap, None);
        assert_eq!(st.render(), bash);
        let sec = State {
            sasl: Some(SaslMechanism::ScramSha512),
            tls: true,
            ..st
        };
        assert_eq!(
            State::parse(&sec.render(), Path::new("x")).expect("ok"),
            sec
        );
        let err = State::parse(
            "NODES=2\nPORT=1\nCLUSTER_ID=x\n",
            Path::new("/d/cluster.env"),
        )
        .expect_err("2 nodes");
        assert!(err.to_string().contains("is damaged; remove /d"));
    }

    #[test]
    fn server_properties_of_a_node() {
        let layout = Layout::new(19200, 3);
        let users = [User::from_str("alice:pw-1").expect("user")];
        let c = NodeConfig {
            layout: Layout {
                sasl: true,
                tls: true,
                ..layout
            },
            node: 2,
            node_dir: Path::new("/d/node-2"),
            base: "a=1\n",
            three_nodes: Some("b=2"),
            overrides: "c=3\n",
            sasl: Some((SaslMechanism::Plain, &users)),
            tls_keystore: Some(PathBuf::from("/d/tls/broker.pem")),
        };
        let p = render_server_properties(&c);
        for want in [
            "node.id=2\n",
            "controller.quorum.voters=1@127.0.0.1:19203,2@127.0.0.1:19204,3@127.0.0.1:19205\n",
            "listeners=PLAINTEXT://127.0.0.1:19201,CONTROLLER://127.0.0.1:19204,SASL_PLAINTEXT://127.0.0.1:19207,SSL://127.0.0.1:19210\n",
            "advertised.listeners=PLAINTEXT://127.0.0.1:19201,SASL_PLAINTEXT://127.0.0.1:19207,SSL://127.0.0.1:19210\n",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL\n",
            "log.dirs=/d/node-2/data\n",
            "PlainLoginModule required user_alice=\"pw-1\";\n",
            "listener.name.ssl.ssl.keystore.location=/d/tls/broker.pem\n",
            "a=1\n",
            "b=2\n",
        ] {
            assert!(p.contains(want), "missing {want:?} in\n{p}");
        }
        // --set comes last, so it wins.
        assert!(p.ends_with("# ---- start --set\nc=3\n"), "{p}");
        assert!(p.find("a=1").expect("a") < p.find("b=2").expect("b"));

        let plain = render_server_properties(&NodeConfig {
            layout: Layout::new(9092, 1),
            node: 1,
            node_dir: Path::new("/k/node-1"),
            base: "a=1\n",
            three_nodes: None,
            overrides: "",
            sasl: None,
            tls_keystore: None,
        });
        assert!(
            plain.contains("listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n")
        );
        assert!(!plain.contains("SASL") && !plain.contains("--set") && !plain.contains("3-nodes"));
    }

    #[test]
    fn log4j_levels() {
        let t = render_log4j(1, LogLevel::Info);
        assert!(
            t.contains("rootLogger.level = info\n") && t.contains("logger.state.level = warn\n")
        );
        let d = render_log4j(2, LogLevel::Debug);
        assert!(d.contains("logger.state.level = debug\n") && d.contains("node-2/broker.log"));
    }

    #[test]
    fn option_values() {
        assert!(valid_heap("384m") && valid_heap("1g") && valid_heap("1024"));
        assert!(!valid_heap("m") && !valid_heap("1gb") && !valid_heap("-1m"));
        assert!(valid_set("log.retention.ms=1000") && valid_set("a="));
        assert!(!valid_set("=1") && !valid_set("a b=1") && !valid_set("novalue"));
        assert_eq!("WARN".parse::<LogLevel>().expect("warn"), LogLevel::Warn);
        assert!("loud".parse::<LogLevel>().is_err());
        assert_eq!(
            "bob:s3cret@x".parse::<User>().expect("user"),
            User {
                name: "bob".into(),
                password: "s3cret@x".into()
            }
        );
        assert!("bob".parse::<User>().is_err());
        assert!("bob:with space".parse::<User>().is_err());
        assert!("b\"ob:x".parse::<User>().is_err());
        assert_eq!(
            "SCRAM-SHA-512".parse::<SaslMechanism>().expect("scram"),
            SaslMechanism::ScramSha512
        );
        assert!("gssapi".parse::<SaslMechanism>().is_err());
    }
}
