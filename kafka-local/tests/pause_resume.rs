//! A 1-node broker frozen with SIGSTOP and thawed with SIGCONT: while paused a metadata request
//! gets no answer (it times out) and `status` says paused; after resume the same request
//! succeeds. Also the `--owner` watcher, on a stand-in node process (no broker needed).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_local::{create_topics, unique, Kafka};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn status(kafka: &Kafka) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-local"))
        .args(["status", "--port", &kafka.port.to_string(), "--dir"])
        .arg(&kafka.dir)
        .stdin(Stdio::null())
        .output()
        .expect("run kafka-local status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn client(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client")
}

#[test]
fn a_paused_node_times_out_and_answers_again_after_resume() {
    let kafka = Kafka::start(1);
    let topic = unique("paused");
    create_topics(&kafka.bootstrap, &[(&topic, 1)]);
    client(&kafka.bootstrap)
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata before the pause");

    kafka.pause_node(1);
    let (code, text) = status(&kafka);
    assert_eq!(code, 0, "a paused node counts as running:\n{text}");
    assert!(text.contains("node 1  paused "), "{text}");

    // A new client: the kernel still accepts its connection, the frozen JVM never answers.
    let frozen = client(&kafka.bootstrap);
    let t0 = Instant::now();
    let r = frozen.fetch_metadata(Some(&topic), Duration::from_secs(3));
    assert!(r.is_err(), "metadata from a paused broker: {r:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        t0.elapsed()
    );

    // Resume through the binary (the library's pause and the CLI's resume are one code path).
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-local"))
        .args(["resume-node", "--node", "1", "--dir"])
        .arg(&kafka.dir)
        .output()
        .expect("run kafka-local resume-node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("resumed (SIGCONT)"));
    let md = frozen
        .fetch_metadata(Some(&topic), Duration::from_secs(30))
        .expect("metadata after resume");
    assert_eq!(md.topics()[0].partitions().len(), 1);
    let (code, text) = status(&kafka);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("node 1  running "), "{text}");
    assert!(text.contains("brokers 1@127.0.0.1:"), "{text}");
}

/// The watcher stops a cluster whose owner exited: it SIGTERMs each node whose recorded pid is
/// still that node's process, then deletes the directory. The "node" here is a shell whose
/// command line looks like a broker's.
#[test]
fn the_owner_watcher_stops_the_cluster_when_the_owner_exits() {
    let dir = std::env::temp_dir().join(unique("kafka-local-watch"));
    let node = dir.join("node-1");
    std::fs::create_dir_all(&node).expect("mkdir");
    std::fs::write(
        dir.join("cluster.env"),
        "NODES=1\nPORT=1\nCLUSTER_ID=x\nKAFKA_VERSION=4.1.2\n",
    )
    .expect("cluster.env");
    let props = format!("{}/server.properties", node.display());
    let mut fake = Command::new("/bin/sh")
        .args([
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 0.1; done",
            "kafka.Kafka",
        ])
        .arg(&props)
        .spawn()
        .expect("fake node");
    let fpid = fake.id();
    let fstart = kafka_local::process::proc_start(fpid).expect("its start");
    std::fs::write(node.join("pid"), format!("{fpid} {fstart}\n")).expect("pid");
    assert_eq!(kafka_local::cluster::node_pid(&dir, 1), Some(fpid));

    let mut owner = Command::new("sleep").arg("60").spawn().expect("owner");
    let ostart = kafka_local::process::proc_start(owner.id()).expect("owner start");
    let w = kafka_local::watch::start_watcher(&dir, owner.id(), ostart).expect("watcher");
    assert_eq!(kafka_local::watch::watcher_pid(&dir), Some(w));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        dir.join("cluster.env").exists(),
        "stopped while its owner ran"
    );

    let _ = owner.kill();
    let _ = owner.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let exited = fake.try_wait().ok().flatten();
    assert!(
        !Path::new(&dir).exists(),
        "the watcher left {} behind",
        dir.display()
    );
    let exited = exited.or_else(|| fake.wait().ok());
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(0),
        "the node got SIGTERM"
    );
}
