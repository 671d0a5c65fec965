//! A cluster directory and what runs in it: start (format, launch, wait until ready), stop,
//! one node's stop/kill/start/pause/resume, and status. The CLI's commands and the test
//! harness ([`crate::Kafka`]) both call these.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::admin;
use crate::cache::{cds_enabled, remove_matching, write_atomic, FileLock, Java};
use crate::config::{
    render_log4j, render_server_properties, Layout, LogLevel, NodeConfig, SaslMechanism, Security,
    State, User,
};
use crate::error::{show, Error, IoContext, Result};
use crate::ports::port_busy;
use crate::process::{self, proc_info, proc_start, read_pid_file, terminate};
use crate::security::{ClientSettings, TlsFiles};
use crate::watch::{new_session, start_watcher, watcher_pid};
use crate::{elapsed, utc_now, Env, KAFKA_VERSION};

/// Which cluster directory a command is about: `--dir`, else the default for `--port`.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub port: Option<u16>,
    pub dir: Option<PathBuf>,
}

/// `start`'s options (all optional; see `scripts/kafka --help`).
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub target: Target,
    /// 1 or 3.
    pub nodes: Option<u8>,
    /// Stop the cluster and delete its data when this process exits.
    pub owner: Option<u32>,
    pub log_level: Option<LogLevel>,
    /// Maximum Java heap per node, e.g. `384m`.
    pub heap: Option<String>,
    /// Extra broker properties `KEY=VALUE` for every node.
    pub sets: Vec<String>,
    /// How long to wait for readiness (default 120 s).
    pub timeout: Option<Duration>,
    /// SASL_PLAINTEXT and SSL listeners besides PLAINTEXT.
    pub security: Security,
}

/// A started (or resumed) cluster.
#[derive(Debug, Clone)]
pub struct Started {
    pub dir: PathBuf,
    pub layout: Layout,
    pub cluster_id: String,
    /// The PLAINTEXT bootstrap list (also DIR/bootstrap).
    pub bootstrap: String,
    /// Node i's JVM is `pids[i-1]`.
    pub pids: Vec<u32>,
    pub watcher: Option<u32>,
    /// Client settings of the secured listeners, if any.
    pub sasl: Option<ClientSettings>,
    pub tls: Option<ClientSettings>,
}

/// The default cluster directory for a port: `${CARGO_TARGET_DIR:-<repo>/target}/kafka/port-P`.
pub fn default_dir(env: &Env, port: Option<u16>) -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => PathBuf::from(t),
        _ => env.root.join("target"),
    };
    target
        .join("kafka")
        .join(format!("port-{}", port.unwrap_or(9092)))
}

/// DIR from `--dir` or the default for the port: absolute, normalised like `realpath -m`.
pub fn resolve_dir(env: &Env, t: &Target) -> Result<PathBuf> {
    let dir = t.dir.clone().unwrap_or_else(|| default_dir(env, t.port));
    let s = dir.to_string_lossy();
    if s.contains('\n') || s.contains('\\') {
        return Err(Error::failed(
            "--dir must not contain newlines or backslashes",
        ));
    }
    let abs = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("cannot read the current directory", e))?
            .join(dir)
    };
    let norm = realpath_m(&abs);
    if norm == Path::new("/") {
        return Err(Error::failed("--dir / is not a cluster directory"));
    }
    Ok(norm)
}

/// `realpath -m`: symlinks of the existing part resolved, `.` and `..` removed.
fn realpath_m(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => {
                out.push(n);
                if let Ok(real) = fs::canonicalize(&out) {
                    out = real;
                }
            }
        }
    }
    out
}

fn node_dir(dir: &Path, i: u8) -> PathBuf {
    dir.join(format!("node-{i}"))
}

/// Reads DIR/cluster.env; None if there is none.
pub fn load_state(dir: &Path) -> Result<Option<State>> {
    let p = dir.join("cluster.env");
    match fs::read_to_string(&p) {
        Ok(text) => State::parse(&text, &p).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", show(&p)), e)),
    }
}

fn read_users(dir: &Path) -> Vec<User> {
    fs::read_to_string(dir.join("sasl-users"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// The pid of node I's JVM if it is running: the recorded pid, same start time, and its
/// command line is kafka.Kafka with this node's server.properties.
pub fn node_pid(dir: &Path, i: u8) -> Option<u32> {
    let nd = node_dir(dir, i);
    let (pid, start) = read_pid_file(&nd.join("pid"))?;
    let needle = format!("kafka.Kafka {}/server.properties", nd.display());
    process::proc_matches(pid, start, &needle).then_some(pid)
}

/// A node's process state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Running(u32),
    /// Frozen by `pause-node` (SIGSTOP).
    Paused(u32),
    Stopped,
}

pub fn node_state(dir: &Path, i: u8) -> NodeState {
    match node_pid(dir, i) {
        Some(pid) if proc_info(pid).is_some_and(|p| p.stopped) => NodeState::Paused(pid),
        Some(pid) => NodeState::Running(pid),
        None => NodeState::Stopped,
    }
}

/// One `start`/`stop`/node command at a time on DIR.
fn lock_dir(env: &Env, dir: &Path) -> Result<FileLock> {
    fs::create_dir_all(dir).ctx("cannot create", dir)?;
    FileLock::acquire(&dir.join(".lock"), Duration::from_secs(300), &|| {
        env.reporter.say(&format!(
            "another scripts/kafka command is working on {}; waiting (up to 5 min)",
            show(dir)
        ))
    })
}

/// Deletes what `start` created in DIR (not DIR's other contents), then DIR if empty.
pub fn remove_cluster_files(dir: &Path) {
    for i in 1..=3 {
        let _ = fs::remove_dir_all(node_dir(dir, i));
    }
    let _ = fs::remove_dir_all(dir.join("tls"));
    for f in [
        "cluster.env",
        "cluster.env.tmp",
        "bootstrap",
        "overrides.properties",
        "ready.err",
        "format.log",
        "sasl-users",
        "client-sasl.properties",
        "client-ssl.properties",
        "watcher.pid",
        "watcher.log",
        ".lock",
    ] {
        let _ = fs::remove_file(dir.join(f));
    }
    let _ = fs::remove_dir(dir);
}

/// Kafka's `Uuid.randomUuid().toString()`: 16 random bytes, URL-safe base64 without padding,
/// never starting with '-'.
pub fn new_cluster_id() -> String {
    loop {
        let mut b = [0u8; 16];
        crate::random_bytes(&mut b);
        let id = crate::base64_url(&b);
        if !id.starts_with('-') && id.len() == 22 {
            return id;
        }
    }
}

/// The security of a cluster from its state and DIR/sasl-users.
fn recorded_security(dir: &Path, st: &State) -> Security {
    Security {
        sasl: st.sasl.map(|m| (m, read_users(dir))),
        tls: st.tls,
    }
}

fn client_settings(
    dir: &Path,
    layout: &Layout,
    sec: &Security,
) -> (Option<ClientSettings>, Option<ClientSettings>) {
    let sasl = match (&sec.sasl, layout.sasl_bootstrap()) {
        (Some((mech, users)), Some(b)) => {
            let u = users.first().cloned().unwrap_or_else(User::default_user);
            Some(ClientSettings::sasl(b, *mech, &u))
        }
        _ => None,
    };
    let tls = layout
        .tls_bootstrap()
        .map(|b| ClientSettings::tls(b, &TlsFiles::new(dir).ca_cert()));
    (sasl, tls)
}

/// Everything a node launch needs.
struct Launch<'a> {
    env: &'a Env,
    java: &'a Java,
    cds: Option<PathBuf>,
    dir: &'a Path,
    layout: Layout,
    log_level: LogLevel,
    heap: Option<String>,
    security: &'a Security,
}

impl Launch<'_> {
    fn render_node(&self, i: u8) -> Result<()> {
        let nd = node_dir(self.dir, i);
        fs::create_dir_all(nd.join("data")).ctx("cannot create", &nd.join("data"))?;
        let conf = self.env.root.join("config/kafka");
        let read = |name: &str| {
            let p = conf.join(name);
            fs::read_to_string(&p).ctx("cannot read", &p)
        };
        let base = read("broker.properties")?;
        let three = if self.layout.nodes == 3 {
            Some(read("broker-3-nodes.properties")?)
        } else {
            None
        };
        let overrides =
            fs::read_to_string(self.dir.join("overrides.properties")).unwrap_or_default();
        let users: Vec<User> = self
            .security
            .sasl
            .as_ref()
            .map(|(_, u)| u.clone())
            .unwrap_or_default();
        let text = render_server_properties(&NodeConfig {
            layout: self.layout,
            node: i,
            node_dir: &nd,
            base: &base,
            three_nodes: three.as_deref(),
            overrides: &overrides,
            sasl: self
                .security
                .sasl
                .as_ref()
                .map(|(m, _)| (*m, users.as_slice())),
            tls_keystore: self
                .security
                .tls
                .then(|| TlsFiles::new(self.dir).keystore()),
        });
        write_atomic(&nd.join("server.properties"), &text)?;
        write_atomic(
            &nd.join("log4j2.properties"),
            &render_log4j(i, self.log_level),
        )
    }

    /// Starts node I's JVM in its own session; records "pid starttime" in node-I/pid.
    fn launch_node(&self, i: u8) -> Result<(u32, u64)> {
        let nd = node_dir(self.dir, i);
        let heap = self
            .heap
            .clone()
            .or_else(|| {
                std::env::var("KAFKA_INFER_KAFKA_HEAP")
                    .ok()
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "384m".to_owned());
        // Kafka's own defaults (kafka-run-class.sh) with a small heap; no hsperfdata files left
        // in /tmp by kill -9; exit on OOM instead of limping on.
        let mut args: Vec<String> = [
            "-Xms64m".to_owned(),
            format!("-Xmx{heap}"),
            "-XX:+UseG1GC".into(),
            "-XX:MaxGCPauseMillis=20".into(),
            "-XX:InitiatingHeapOccupancyPercent=35".into(),
            "-XX:+ExplicitGCInvokesConcurrent".into(),
            "-XX:MaxInlineLevel=15".into(),
            "-XX:+ExitOnOutOfMemoryError".into(),
            "-XX:-UsePerfData".into(),
            "-Djava.awt.headless=true".into(),
            format!(
                "-Dlog4j2.configurationFile={}/log4j2.properties",
                nd.display()
            ),
        ]
        .to_vec();
        if let Some(dump) = &self.env.cds_dump {
            args.push(format!("-XX:ArchiveClassesAtExit={}", dump.display()));
        } else if let Some(cds) = &self.cds {
            args.push(format!("-XX:SharedArchiveFile={}", cds.display()));
            args.push("-Xshare:auto".into());
        }
        if let Ok(extra) = std::env::var("KAFKA_INFER_KAFKA_JVM_OPTS") {
            args.extend(extra.split_whitespace().map(str::to_owned));
        }
        let log_path = nd.join("broker.log");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .ctx("cannot open", &log_path)?;
        writeln!(
            log,
            "==== {} scripts/kafka: starting node {i} (Kafka {KAFKA_VERSION})",
            utc_now()
        )
        .ctx("cannot write", &log_path)?;
        let log2 = log.try_clone().ctx("cannot reopen", &log_path)?;
        let mut cmd = Command::new(&self.java.path);
        cmd.args(&args)
            .arg("-cp")
            .arg(self.env.cache.class_path())
            .arg("kafka.Kafka")
            .arg(nd.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        new_session(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("cannot start {}", show(&self.java.path)), e))?;
        let pid = child.id();
        reap_later(child);
        let start = proc_start(pid).unwrap_or(0);
        write_atomic(&nd.join("pid"), &format!("{pid} {start}\n"))?;
        Ok((pid, start))
    }
}

/// JVMs started by this process are its children: reap them when they exit (a background
/// thread per child), so a killed node does not linger as a zombie of a long test run.
fn reap_later(mut child: Child) {
    let spawned = std::thread::Builder::new()
        .name("kafka-local-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    // Without a thread the child is reaped by init once this process exits.
    drop(spawned);
}

/// Formats the KRaft storage of the given nodes' server.properties (the storage tool, one JVM
/// per node, in parallel); SCRAM users are added to the bootstrap metadata.
fn format_nodes(
    env: &Env,
    java: &Java,
    cds: Option<&Path>,
    dir: &Path,
    cluster_id: &str,
    configs: &[PathBuf],
    scram: &[User],
) -> Result<()> {
    let log_path = dir.join("format.log");
    let log = fs::File::create(&log_path).ctx("cannot create", &log_path)?;
    let mut children = Vec::new();
    for c in configs {
        let mut cmd = Command::new(&java.path);
        cmd.args([
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-XX:-UsePerfData",
            "-Xshare:auto",
            "-Xms32m",
            "-Xmx256m",
            "-Dlog4j2.level=error",
        ]);
        if let Some(a) = cds {
            cmd.arg(format!("-XX:SharedArchiveFile={}", a.display()));
        }
        cmd.arg("-cp")
            .arg(env.cache.class_path())
            .args(["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c"])
            .arg(c);
        for u in scram {
            cmd.arg("--add-scram").arg(format!(
                "SCRAM-SHA-512=[name={},password={}]",
                u.name, u.password
            ));
        }
        let out = log.try_clone().ctx("cannot reopen", &log_path)?;
        let err = log.try_clone().ctx("cannot reopen", &log_path)?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        children.push(
            cmd.spawn()
                .map_err(|e| Error::io("cannot run the storage tool", e))?,
        );
    }
    let mut ok = true;
    for mut c in children {
        ok &= c.wait().is_ok_and(|s| s.success());
    }
    if !ok {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        eprint!("{text}");
        return Err(Error::failed("formatting the KRaft storage failed"));
    }
    let _ = fs::remove_file(&log_path);
    Ok(())
}

/// The interesting end of node I's log (stack frames left out), for failure messages.
pub fn log_tail(dir: &Path, i: u8) -> String {
    let log = node_dir(dir, i).join("broker.log");
    let Ok(text) = fs::read_to_string(&log) else {
        return String::new();
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(l.starts_with(char::is_whitespace)
                && (t.starts_with("at ") || (t.starts_with("... ") && t.ends_with(" more"))))
        })
        .collect();
    let mut out = format!(
        "---- last lines of {} (stack frames left out)\n",
        show(&log)
    );
    for l in &lines[lines.len().saturating_sub(20)..] {
        let cut: String = l.chars().take(400).collect();
        out.push_str(&cut);
        out.push('\n');
    }
    if let Some(pos) = text.find("failed to bind to ") {
        let rest = &text[pos..];
        if let Some(end) = rest.find("Address already in use") {
            out.push_str(&format!(
                "---- node {i} {}Address already in use: another process took the port (pick another --port)\n",
                &rest[..end]
            ));
        }
    }
    out
}

/// What a start that fails must undo.
struct StartCleanup<'a> {
    dir: &'a Path,
    fresh: bool,
    started: Vec<u32>,
    nodes: u8,
}

impl StartCleanup<'_> {
    fn undo(&self, env: &Env) {
        if !self.started.is_empty() {
            env.reporter.say(&format!(
                "start failed: stopping what it started (pids {})",
                join_ids(&self.started)
            ));
            terminate(&self.started, Duration::from_secs(10), &|m: &str| {
                env.reporter.say(m)
            });
        }
        if self.fresh {
            remove_cluster_files(self.dir);
        } else {
            for i in 1..=self.nodes {
                if node_pid(self.dir, i).is_none() {
                    let _ = fs::remove_file(node_dir(self.dir, i).join("pid"));
                }
            }
        }
    }
}

fn join_ids<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Starts a cluster (or resumes the one recorded in DIR): fetches the jars if needed, formats
/// the storage on first start, launches every node and waits until the metadata lists all
/// brokers. On failure nothing is left running (and a fresh DIR is removed).
pub fn start(env: &Env, o: &StartOptions) -> Result<Started> {
    let t0 = Instant::now();
    let dir = resolve_dir(env, &o.target)?;
    if let Some(owner) = o.owner {
        if proc_start(owner).is_none() {
            return Err(Error::failed(format!("--owner {owner}: no such process")));
        }
    }
    let java = Java::find()?;
    env.cache.ensure(&java, &env.reporter)?;
    let cds = ensure_cds(env, &java);
    let _lock = lock_dir(env, &dir)?;
    let mut cleanup = StartCleanup {
        dir: &dir,
        fresh: false,
        started: Vec::new(),
        nodes: 0,
    };
    let r = start_locked(env, o, &dir, &java, cds, &mut cleanup, t0);
    if r.is_err() {
        cleanup.undo(env);
    }
    r
}

fn start_locked(
    env: &Env,
    o: &StartOptions,
    dir: &Path,
    java: &Java,
    cds: Option<PathBuf>,
    cleanup: &mut StartCleanup<'_>,
    t0: Instant,
) -> Result<Started> {
    let say = |m: &str| env.reporter.say(m);
    let write_overrides = || -> Result<()> {
        if !o.sets.is_empty() {
            let p = dir.join("overrides.properties");
            fs::write(&p, o.sets.join("\n") + "\n").ctx("cannot write", &p)?;
        }
        Ok(())
    };
    let (state, security) = if let Some(st) = load_state(dir)? {
        // Resume the cluster recorded in DIR: same nodes, ports and listeners; its data stays.
        cleanup.nodes = st.nodes;
        let d = show(dir);
        if let Some(p) = o.target.port.filter(|p| *p != st.port) {
            return Err(Error::failed(format!(
                "{d} holds a cluster on port {}, not {p}; use --port {}, another --dir, or 'scripts/kafka stop --dir {d}' to delete it",
                st.port, st.port
            )));
        }
        if let Some(n) = o.nodes.filter(|n| *n != st.nodes) {
            return Err(Error::failed(format!(
                "{d} holds a {}-node cluster, not {n}; use another --dir, or 'scripts/kafka stop --dir {d}' to delete it",
                st.nodes
            )));
        }
        if st.version != KAFKA_VERSION {
            return Err(Error::failed(format!(
                "{d} was made by Kafka {}, this script runs {KAFKA_VERSION}; delete it with 'scripts/kafka stop --dir {d}'",
                st.version
            )));
        }
        let recorded = recorded_security(dir, &st);
        if !o.security.is_empty() && o.security != recorded {
            return Err(Error::failed(format!(
                "{d} holds a cluster started with other security options (they are fixed at its first start: SCRAM users live in its metadata); start it without --sasl/--user/--tls to resume it, or delete it with 'scripts/kafka stop --dir {d}'"
            )));
        }
        let running: Vec<String> = (1..=st.nodes)
            .filter_map(|i| node_pid(dir, i).map(|p| format!("node {i} pid {p}")))
            .collect();
        if !running.is_empty() {
            return Err(Error::failed(format!(
                "a cluster is already running in {d} ({}); stop it first: scripts/kafka stop --port {} --dir {d}",
                running.join(" "),
                st.port
            )));
        }
        write_overrides()?;
        say(&format!(
            "resuming the {}-node cluster in {d} (its data is kept)",
            st.nodes
        ));
        let st = State {
            log_level: o.log_level.or(st.log_level).or(Some(LogLevel::Info)),
            heap: o.heap.clone().or(st.heap.clone()),
            ..st
        };
        (st, recorded)
    } else {
        if node_dir(dir, 1).exists() {
            return Err(Error::failed(format!(
                "{0}/node-1 exists but {0}/cluster.env does not: not a scripts/kafka cluster directory; remove it or use another --dir",
                show(dir)
            )));
        }
        cleanup.fresh = true;
        let mut security = o.security.clone();
        if let Some((_, users)) = &mut security.sasl {
            if users.is_empty() {
                users.push(User::default_user());
            }
        }
        let st = State {
            nodes: o.nodes.unwrap_or(1),
            port: o.target.port.unwrap_or(9092),
            cluster_id: new_cluster_id(),
            version: KAFKA_VERSION.to_owned(),
            log_level: Some(o.log_level.unwrap_or(LogLevel::Info)),
            heap: o.heap.clone(),
            sasl: security.sasl.as_ref().map(|(m, _)| *m),
            tls: security.tls,
        };
        cleanup.nodes = st.nodes;
        write_overrides()?;
        (st, security)
    };
    let layout = state.layout();
    let last = u32::from(layout.port) + layout.span() - 1;
    if !layout.fits() {
        return Err(Error::failed(format!(
            "ports {}..{last} do not fit below 65536",
            layout.port
        )));
    }
    // Every port free? (The broker would fail to bind and exit anyway; this says which.)
    let busy: Vec<String> = layout
        .all_ports()
        .into_iter()
        .filter(|(p, _)| port_busy(*p))
        .map(|(p, what)| format!("{p} ({what})"))
        .collect();
    if !busy.is_empty() {
        return Err(Error::failed(format!(
            "port(s) already in use on this machine: {}. A {}-node cluster on --port {} needs ports {}..{last}; pick another --port",
            busy.join(" "),
            layout.nodes,
            layout.port,
            layout.port
        )));
    }

    write_atomic(&dir.join("cluster.env"), &state.render())?;
    if let Some((_, users)) = &security.sasl {
        let p = dir.join("sasl-users");
        let text: String = users.iter().map(|u| format!("{u}\n")).collect();
        write_atomic(&p, &text)?;
    }
    if security.tls {
        TlsFiles::new(dir).ensure()?;
    }
    let launch = Launch {
        env,
        java,
        cds: cds.clone(),
        dir,
        layout,
        log_level: state.log_level.unwrap_or(LogLevel::Info),
        heap: state.heap.clone(),
        security: &security,
    };
    let mut unformatted = Vec::new();
    for i in 1..=layout.nodes {
        launch.render_node(i)?;
        let nd = node_dir(dir, i);
        if !nd.join("data/meta.properties").is_file() {
            unformatted.push(nd.join("server.properties"));
        }
    }
    if !unformatted.is_empty() {
        let ft = Instant::now();
        let scram: Vec<User> = match &security.sasl {
            Some((SaslMechanism::ScramSha512, users)) => users.clone(),
            _ => Vec::new(),
        };
        format_nodes(
            env,
            java,
            cds.as_deref(),
            dir,
            &state.cluster_id,
            &unformatted,
            &scram,
        )?;
        say(&format!(
            "formatted {} node(s) with cluster id {} in {}",
            unformatted.len(),
            state.cluster_id,
            elapsed(ft)
        ));
    }

    let bootstrap = layout.bootstrap();
    say(&format!(
        "starting Kafka {KAFKA_VERSION}: {} node(s) on {bootstrap} in {}",
        layout.nodes,
        show(dir)
    ));
    let mut watch = Vec::new();
    for i in 1..=layout.nodes {
        let (pid, start) = launch.launch_node(i)?;
        cleanup.started.push(pid);
        watch.push((pid, start));
    }
    let mut watcher = None;
    if let Some(owner) = o.owner {
        let ostart = proc_start(owner)
            .ok_or_else(|| Error::failed(format!("--owner {owner} exited during start")))?;
        let w = start_watcher(dir, owner, ostart)?;
        cleanup.started.push(w);
        watcher = Some(w);
    }
    let timeout = o.timeout.unwrap_or(Duration::from_secs(120));
    if let Err(why) = admin::wait_ready(&bootstrap, layout.nodes as usize, None, &watch, timeout) {
        if let Some(sig) = process::interrupted() {
            return Err(Error::Interrupted(sig));
        }
        let mut details = format!("kafka-admin: {why}\n");
        for i in 1..=layout.nodes {
            details.push_str(&log_tail(dir, i));
        }
        return Err(Error::NotReady {
            message: format!(
                "the cluster did not become ready (see above; logs in {}/node-*/broker.log)",
                show(dir)
            ),
            details: details.trim_end().to_owned(),
        });
    }
    write_atomic(&dir.join("bootstrap"), &format!("{bootstrap}\n"))?;
    let (sasl, tls) = client_settings(dir, &layout, &security);
    if let Some(s) = &sasl {
        write_atomic(&dir.join("client-sasl.properties"), &s.properties_file())?;
    }
    if let Some(s) = &tls {
        write_atomic(&dir.join("client-ssl.properties"), &s.properties_file())?;
    }
    cleanup.started.clear();

    say(&format!(
        "ready in {}: Apache Kafka {KAFKA_VERSION}, {} node(s), cluster id {}",
        elapsed(t0),
        layout.nodes,
        state.cluster_id
    ));
    for i in 1..=layout.nodes {
        say(&format!(
            "  node {i}  pid {}  client 127.0.0.1:{}  controller 127.0.0.1:{}  log {}/broker.log",
            watch[usize::from(i) - 1].0,
            layout.client_port(i),
            layout.controller_port(i),
            show(&node_dir(dir, i))
        ));
    }
    if let (Some(s), Some((mech, users))) = (&sasl, &security.sasl) {
        say(&format!(
            "  SASL_PLAINTEXT ({}) on {}, user(s) {}; client settings: {}/client-sasl.properties",
            mech.kafka_name(),
            s.bootstrap,
            users
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            show(dir)
        ));
    }
    if let Some(s) = &tls {
        say(&format!(
            "  SSL on {}, CA certificate {}; client settings: {}/client-ssl.properties",
            s.bootstrap,
            show(&TlsFiles::new(dir).ca_cert()),
            show(dir)
        ));
    }
    if let Some(owner) = o.owner {
        say(&format!(
            "  stops by itself when pid {owner} exits (watcher pid {})",
            watcher_pid(dir).map_or(String::new(), |p| p.to_string())
        ));
    }
    say(&format!(
        "  stop with: scripts/kafka stop --port {} --dir {}",
        layout.port,
        show(dir)
    ));
    Ok(Started {
        dir: dir.to_path_buf(),
        layout,
        cluster_id: state.cluster_id.clone(),
        bootstrap,
        pids: watch.iter().map(|(p, _)| *p).collect(),
        watcher,
        sasl,
        tls,
    })
}

/// Stops exactly what `start` started in DIR (recorded pids, checked to still be those JVMs):
/// SIGTERM, then SIGKILL after `timeout`; then deletes DIR's data, logs and state unless
/// `keep_data`. Nothing running is not an error.
pub fn stop(env: &Env, t: &Target, keep_data: bool, timeout: Duration) -> Result<()> {
    let say = |m: &str| env.reporter.say(m);
    let dir = resolve_dir(env, t)?;
    let d = show(&dir);
    if !dir.is_dir() {
        say(&format!("nothing to stop: no {d}"));
        return Ok(());
    }
    let _lock = lock_dir(env, &dir)?;
    let Some(st) = load_state(&dir)? else {
        say(&format!("nothing to stop: no cluster in {d}"));
        if !node_dir(&dir, 1).exists() {
            let _ = fs::remove_file(dir.join(".lock"));
        }
        let _ = fs::remove_dir(&dir);
        return Ok(());
    };
    if let Some(p) = t.port.filter(|p| *p != st.port) {
        return Err(Error::failed(format!(
            "{d} holds the cluster on port {}, not {p}",
            st.port
        )));
    }
    if let Some(w) = watcher_pid(&dir) {
        process::signal(w, libc::SIGTERM);
    }
    let _ = fs::remove_file(dir.join("watcher.pid"));
    let pids: Vec<u32> = (1..=st.nodes).filter_map(|i| node_pid(&dir, i)).collect();
    if pids.is_empty() {
        say(&format!("nothing running in {d}"));
    } else {
        let t0 = Instant::now();
        say(&format!(
            "stopping {}-node cluster on port {} (pids {}) in {d}",
            st.nodes,
            st.port,
            join_ids(&pids)
        ));
        terminate(&pids, timeout, &say);
        say(&format!("stopped in {}", elapsed(t0)));
    }
    for i in 1..=st.nodes {
        let _ = fs::remove_file(node_dir(&dir, i).join("pid"));
    }
    let _ = fs::remove_file(dir.join("bootstrap"));
    if keep_data {
        say(&format!(
            "kept the data and logs in {d} (scripts/kafka start --dir {d} resumes it)"
        ));
    } else {
        remove_cluster_files(&dir);
        say(&format!("deleted the cluster's data and logs in {d}"));
    }
    Ok(())
}

/// A cluster directory opened for a one-node command (locked while it lives).
struct NodeCmd {
    dir: PathBuf,
    state: State,
    node: u8,
    _lock: FileLock,
}

fn open_node(env: &Env, t: &Target, node: &str) -> Result<NodeCmd> {
    let dir = resolve_dir(env, t)?;
    let d = show(&dir);
    if !dir.is_dir() {
        return Err(Error::failed(format!(
            "no cluster in {d} (no such directory)"
        )));
    }
    let st = load_state(&dir)?
        .ok_or_else(|| Error::failed(format!("no cluster in {d} (no cluster.env)")))?;
    if let Some(p) = t.port.filter(|p| *p != st.port) {
        return Err(Error::failed(format!(
            "{d} holds the cluster on port {}, not {p}",
            st.port
        )));
    }
    let n = crate::parse_in_range(node, 1, u32::from(st.nodes)).ok_or_else(|| {
        Error::failed(format!(
            "--node must be 1..{} for this cluster, got '{node}'",
            st.nodes
        ))
    })? as u8;
    let lock = lock_dir(env, &dir)?;
    Ok(NodeCmd {
        dir,
        state: st,
        node: n,
        _lock: lock,
    })
}

/// SIGTERM one node (controlled shutdown), SIGKILL after `timeout`; its data is kept.
pub fn stop_node(env: &Env, t: &Target, node: &str, timeout: Duration) -> Result<()> {
    let c = open_node(env, t, node)?;
    let n = c.node;
    let Some(p) = node_pid(&c.dir, n) else {
        env.reporter.say(&format!("node {n} is not running"));
        return Ok(());
    };
    let t0 = Instant::now();
    if terminate(&[p], timeout, &|m: &str| env.reporter.say(m)) {
        env.reporter
            .say(&format!("node {n} (pid {p}) stopped in {}", elapsed(t0)));
    } else {
        env.reporter.say(&format!(
            "node {n} (pid {p}) needed SIGKILL after {}s",
            timeout.as_secs()
        ));
    }
    let _ = fs::remove_file(node_dir(&c.dir, n).join("pid"));
    Ok(())
}

/// SIGKILL one node; its data is kept.
pub fn kill_node(env: &Env, t: &Target, node: &str) -> Result<()> {
    let c = open_node(env, t, node)?;
    let n = c.node;
    let Some(p) = node_pid(&c.dir, n) else {
        env.reporter.say(&format!("node {n} is not running"));
        return Ok(());
    };
    if let Some(s) = proc_start(p) {
        process::signal(p, libc::SIGKILL);
        if !process::wait_gone(p, s, Duration::from_secs(10)) {
            return Err(Error::failed(format!(
                "node {n} (pid {p}) survived SIGKILL for 10 s"
            )));
        }
    }
    let _ = fs::remove_file(node_dir(&c.dir, n).join("pid"));
    env.reporter
        .say(&format!("node {n} (pid {p}) killed (SIGKILL)"));
    Ok(())
}

/// What pause-node/resume-node found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseOutcome {
    /// Signalled this pid.
    Done(u32),
    /// It already was paused (pause) or running (resume).
    Already(u32),
    NotRunning,
}

/// SIGSTOP one node's JVM: it freezes (connections stay open, nothing answers) rather than
/// dies. Waits until the kernel reports it stopped.
pub fn pause_node(env: &Env, t: &Target, node: &str) -> Result<PauseOutcome> {
    let c = open_node(env, t, node)?;
    let n = c.node;
    match node_state(&c.dir, n) {
        NodeState::Stopped => {
            env.reporter.say(&format!("node {n} is not running"));
            Ok(PauseOutcome::NotRunning)
        }
        NodeState::Paused(p) => {
            env.reporter
                .say(&format!("node {n} (pid {p}) is already paused"));
            Ok(PauseOutcome::Already(p))
        }
        NodeState::Running(p) => {
            process::signal(p, libc::SIGSTOP);
            wait_state(&c.dir, n, NodeState::Paused(p), "stop (SIGSTOP)")?;
            env.reporter
                .say(&format!("node {n} (pid {p}) paused (SIGSTOP)"));
            Ok(PauseOutcome::Done(p))
        }
    }
}

/// SIGCONT a paused node.
pub fn resume_node(env: &Env, t: &Target, node: &str) -> Result<PauseOutcome> {
    let c = open_node(env, t, node)?;
    let n = c.node;
    match node_state(&c.dir, n) {
        NodeState::Stopped => {
            env.reporter.say(&format!("node {n} is not running"));
            Ok(PauseOutcome::NotRunning)
        }
        NodeState::Running(p) => {
            env.reporter
                .say(&format!("node {n} (pid {p}) is not paused"));
            Ok(PauseOutcome::Already(p))
        }
        NodeState::Paused(p) => {
            process::signal(p, libc::SIGCONT);
            wait_state(&c.dir, n, NodeState::Running(p), "continue (SIGCONT)")?;
            env.reporter
                .say(&format!("node {n} (pid {p}) resumed (SIGCONT)"));
            Ok(PauseOutcome::Done(p))
        }
    }
}

fn wait_state(dir: &Path, n: u8, want: NodeState, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = node_state(dir, n);
        if now == want {
            return Ok(());
        }
        if now == NodeState::Stopped {
            return Err(Error::failed(format!("node {n} exited")));
        }
        if Instant::now() >= deadline {
            return Err(Error::failed(format!(
                "node {n} did not {what} within 10 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts one stopped node again on its data and waits until the cluster lists it (asked
/// through that node itself, which answers only once it has caught up and been unfenced).
pub fn start_node(
    env: &Env,
    t: &Target,
    node: &str,
    log_level: Option<LogLevel>,
    heap: Option<String>,
    timeout: Duration,
) -> Result<()> {
    let java = Java::find()?;
    env.cache.ensure(&java, &env.reporter)?;
    let cds = ensure_cds(env, &java);
    let c = open_node(env, t, node)?;
    let n = c.node;
    let dir = &c.dir;
    let layout = c.state.layout();
    let t0 = Instant::now();
    let security = recorded_security(dir, &c.state);
    let (pid, start, launched) = match node_state(dir, n) {
        NodeState::Paused(p) => {
            return Err(Error::failed(format!(
                "node {n} (pid {p}) is paused; resume it: scripts/kafka resume-node --port {} --dir {} --node {n}",
                layout.port,
                show(dir)
            )))
        }
        NodeState::Running(p) => {
            env.reporter
                .say(&format!("node {n} is already running (pid {p})"));
            (p, proc_start(p).unwrap_or(0), false)
        }
        NodeState::Stopped => {
            let nd = node_dir(dir, n);
            if !nd.join("data/meta.properties").is_file() {
                return Err(Error::failed(format!(
                    "node {n} has no formatted data in {}",
                    show(&nd)
                )));
            }
            let busy: Vec<String> = layout
                .node_ports(n)
                .into_iter()
                .filter(|p| port_busy(*p))
                .map(|p| p.to_string())
                .collect();
            if !busy.is_empty() {
                return Err(Error::failed(format!(
                    "node {n}'s port(s) {} are in use",
                    busy.join(" ")
                )));
            }
            let launch = Launch {
                env,
                java: &java,
                cds,
                dir,
                layout,
                log_level: log_level.or(c.state.log_level).unwrap_or(LogLevel::Info),
                heap: heap.or(c.state.heap.clone()),
                security: &security,
            };
            launch.render_node(n)?;
            let (p, s) = launch.launch_node(n)?;
            (p, s, true)
        }
    };
    let bootstrap = format!("127.0.0.1:{}", layout.client_port(n));
    if let Err(why) = admin::wait_ready(&bootstrap, 1, Some(i32::from(n)), &[(pid, start)], timeout)
    {
        if launched {
            terminate(&[pid], Duration::from_secs(10), &|m: &str| {
                env.reporter.say(m)
            });
            let _ = fs::remove_file(node_dir(dir, n).join("pid"));
        }
        if let Some(sig) = process::interrupted() {
            return Err(Error::Interrupted(sig));
        }
        return Err(Error::NotReady {
            message: format!("node {n} did not rejoin the cluster"),
            details: format!("kafka-admin: {why}\n{}", log_tail(dir, n))
                .trim_end()
                .to_owned(),
        });
    }
    env.reporter.say(&format!(
        "node {n} (pid {pid}) is back in the cluster after {}",
        elapsed(t0)
    ));
    Ok(())
}

/// What `status` found.
#[derive(Debug, Clone)]
pub struct Status {
    /// The lines `status` prints.
    pub lines: Vec<String>,
    /// 0 all nodes run, 1 some, 3 none (or no cluster). A paused node counts as running.
    pub code: i32,
}

/// One line per node (running, paused or stopped, pid, ports, log), the secured listeners,
/// the watcher, then the brokers the cluster lists and its active controller.
pub fn status(env: &Env, t: &Target) -> Result<Status> {
    let dir = resolve_dir(env, t)?;
    let Some(st) = load_state(&dir)? else {
        return Ok(Status {
            lines: vec![format!("no cluster in {}", show(&dir))],
            code: 3,
        });
    };
    if let Some(p) = t.port.filter(|p| *p != st.port) {
        return Err(Error::failed(format!(
            "{} holds the cluster on port {}, not {p}",
            show(&dir),
            st.port
        )));
    }
    let layout = st.layout();
    let mut lines = vec![format!(
        "cluster {}: Kafka {}, {} node(s), dir {}",
        st.cluster_id,
        st.version,
        st.nodes,
        show(&dir)
    )];
    let (mut up, mut live) = (0, Vec::new());
    for i in 1..=st.nodes {
        let (word, pid) = match node_state(&dir, i) {
            NodeState::Running(p) => {
                up += 1;
                live.push(format!("127.0.0.1:{}", layout.client_port(i)));
                ("running", p.to_string())
            }
            NodeState::Paused(p) => {
                up += 1;
                ("paused ", p.to_string())
            }
            NodeState::Stopped => ("stopped", "-".to_owned()),
        };
        lines.push(format!(
            "node {i}  {word}  pid {pid:<7} client 127.0.0.1:{}  controller 127.0.0.1:{}  log {}/broker.log",
            layout.client_port(i),
            layout.controller_port(i),
            show(&node_dir(&dir, i))
        ));
    }
    let security = recorded_security(&dir, &st);
    let (sasl, tls) = client_settings(&dir, &layout, &security);
    if let (Some(s), Some(m)) = (&sasl, st.sasl) {
        lines.push(format!(
            "listener SASL_PLAINTEXT ({}) {}",
            m.kafka_name(),
            s.bootstrap
        ));
    }
    if let Some(s) = &tls {
        lines.push(format!(
            "listener SSL {} (CA certificate {})",
            s.bootstrap,
            show(&TlsFiles::new(&dir).ca_cert())
        ));
    }
    if let Some(w) = watcher_pid(&dir) {
        lines.push(format!(
            "watcher pid {w} (stops the cluster when its owner exits)"
        ));
    }
    if up > 0 {
        if live.is_empty() {
            lines.push("metadata: no answer (every running node is paused)".into());
        } else {
            match admin::describe(&live.join(","), &[], Duration::from_secs(10)) {
                Ok(d) => {
                    lines.push(d.brokers_line());
                    lines.push(d.controller_line());
                }
                Err(_) => lines.push("metadata: no answer within 10 s".into()),
            }
        }
    }
    let code = if up == st.nodes {
        0
    } else if up > 0 {
        1
    } else {
        3
    };
    Ok(Status { lines, code })
}

/// The bootstrap list of the cluster running in the target DIR (DIR/bootstrap).
pub fn cluster_bootstrap(env: &Env, t: &Target) -> Result<String> {
    let dir = resolve_dir(env, t)?;
    let p = dir.join("bootstrap");
    match fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err(Error::failed(format!(
            "no running cluster in {} (no {}); pass --port/--dir of a started cluster, or --bootstrap",
            show(&dir),
            show(&p)
        ))),
    }
}

// ---- class-data sharing: a faster broker start ---------------------------------------------
// A JVM start loads ~10k classes from the jars; a dynamic CDS archive of them (what the
// apache/kafka image does with kafka.jsa) cut a broker start from ~22 s to ~15 s on a busy
// 2-core machine. It is built once per JDK (the JVM rejects an archive of another build or class
// path), by one training broker under the cache lock, and used by every broker after that.
// Without it (build failed: retried after a day; KAFKA_INFER_KAFKA_CDS=0) brokers start the
// same, only slower.

/// The class-data archive, built first if this JDK has none yet (None when disabled, failed
/// within the last day, or while building it).
pub fn ensure_cds(env: &Env, java: &Java) -> Option<PathBuf> {
    if !cds_enabled() || env.cds_dump.is_some() {
        return None;
    }
    let archive = env.cache.cds_archive_path(java);
    if archive.is_file() {
        return Some(archive);
    }
    let failed = PathBuf::from(format!("{}.failed", archive.display()));
    let failed_recently = || {
        fs::metadata(&failed)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(24 * 3600))
    };
    if failed_recently() {
        return None;
    }
    let lock = env.cache.lock(Duration::from_secs(300), &|| {
        env.reporter
            .say("another process is building the class-data archive; waiting (up to 5 min)")
    });
    let Ok(_lock) = lock else {
        return None;
    };
    if archive.is_file() {
        return Some(archive);
    }
    if failed_recently() {
        return None;
    }
    let _ = fs::remove_file(&failed);
    let t0 = Instant::now();
    remove_matching(&env.cache.dir, ".cds.tmp.");
    let tmp = env
        .cache
        .dir
        .join(format!(".cds.tmp.{}", crate::random_suffix()));
    if fs::create_dir_all(&tmp).is_err() {
        return None;
    }
    env.reporter
        .say("building the class-data archive for faster broker starts (once per JDK; 20-30 s)");
    let dump = tmp.join("kafka.jsa");
    let sub = Env {
        root: env.root.clone(),
        cache: env.cache.clone(),
        reporter: crate::Reporter::quiet(),
        cds_dump: Some(dump.clone()),
    };
    let cluster = Target {
        port: None,
        dir: Some(tmp.join("cluster")),
    };
    let result = (|| -> Result<()> {
        let port = crate::ports::random_free_ports(2)?;
        let started = start(
            &sub,
            &StartOptions {
                target: Target {
                    port: Some(port),
                    ..cluster.clone()
                },
                log_level: Some(LogLevel::Warn),
                timeout: Some(Duration::from_secs(120)),
                ..StartOptions::default()
            },
        )?;
        admin::create_topic(
            &started.bootstrap,
            "cds-training",
            3,
            None,
            &[],
            Duration::from_secs(60),
        )?;
        stop(&sub, &cluster, false, Duration::from_secs(60))?;
        if fs::metadata(&dump).map_or(0, |m| m.len()) == 0 {
            return Err(Error::failed("the training broker wrote no archive"));
        }
        Ok(())
    })();
    let _ = stop(&sub, &cluster, false, Duration::from_secs(20));
    let out = match result {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&dump, fs::Permissions::from_mode(0o644));
            match fs::rename(&dump, &archive) {
                Ok(()) => {
                    env.reporter.say(&format!(
                        "class-data archive built in {}: {}",
                        elapsed(t0),
                        show(&archive)
                    ));
                    Some(archive)
                }
                Err(_) => None,
            }
        }
        Err(e) => {
            env.reporter.say(&format!(
                "could not build the class-data archive (brokers start without it); details: {}",
                show(&failed)
            ));
            let _ = fs::write(&failed, format!("{e}\n"));
            None
        }
    };
    let _ = fs::remove_dir_all(&tmp);
    out
}
