//! loadgen against the real worker on Apache Kafka (started by kafka-local): every tweet
//! sent comes back exactly once, and the latency files are written.
//!
//! Needs the worker binary next to loadgen's: `cargo test --release --workspace` (or
//! `cargo build --release -p kafka-infer` before `cargo test --release -p loadgen`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_local::{create_topics, unique, Kafka};

/// The worker child process; stopped with SIGTERM (it drains and exits), killed if it does
/// not exit in time.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(bin: &Path, args: &[&str], log: PathBuf) -> Worker {
        let out = File::create(&log).expect("create the worker log");
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Worker { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then up to 20 s for a clean exit, then SIGKILL.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn every_tweet_comes_back_once_and_latency_files_are_written() {
    let loadgen = Path::new(env!("CARGO_BIN_EXE_loadgen"));
    let worker_bin = loadgen.with_file_name("kafka-infer");
    assert!(
        worker_bin.is_file(),
        "worker binary {} is missing: build the workspace first \
         (cargo build --release --workspace, or run cargo test --release --workspace)",
        worker_bin.display()
    );

    let broker = Kafka::start(1);
    let bootstrap = broker.bootstrap.clone();
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("g"));
    create_topics(&bootstrap, &[(&input, 3), (&output, 3), (&dlq, 1)]);
    let dir = tempfile::tempdir().expect("temp dir");

    let mut worker = Worker::start(
        &worker_bin,
        &[
            "run",
            "--brokers",
            &bootstrap,
            "--group-id",
            &group,
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--dlq-topic",
            &dlq,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        dir.path().join("worker.log"),
    );

    let hgrm = dir.path().join("run.hgrm");
    let plot = dir.path().join("run.svg");
    let started = Instant::now();
    let run = Command::new(loadgen)
        .args([
            "--brokers",
            &bootstrap,
            "--input-topic",
            &input,
            "--output-topic",
            &output,
        ])
        .args(["--rate", "300", "--duration", "3s", "--grace", "10s"])
        // The worker joins its group while loadgen probes; allow a slow start. A 1 s warm-up,
        // left out of the report; the worker's own CPU per tweet (--pid).
        .args(["--wait-ready", "60s", "--json", "--run-id", "itest"])
        .args(["--warmup", "1s", "--pid", &worker.pid().to_string()])
        .arg("--hgrm")
        .arg(&hgrm)
        .arg("--plot")
        .arg(&plot)
        .arg("--out-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let context = || {
        format!(
            "loadgen took {:?}\n--- loadgen stdout\n{stdout}\n--- loadgen stderr\n{stderr}\n--- worker log\n{}",
            started.elapsed(),
            worker.log_text()
        )
    };
    assert!(
        run.status.success(),
        "loadgen failed: {}\n{}",
        run.status,
        context()
    );

    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e})\n{}", context()));
    let r = &report["runs"][0];
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    let sent = n("sent");
    assert_eq!(sent, 900, "300/s for 3 s\n{}", context());
    assert_eq!(n("lost"), 0, "lost\n{}", context());
    assert_eq!(n("duplicates"), 0, "duplicates\n{}", context());
    assert_eq!(n("predicted"), sent, "predicted\n{}", context());
    assert_eq!(
        r["latency_ms"]["count"].as_u64(),
        Some(sent),
        "histogram count\n{}",
        context()
    );
    assert!(r["latency_ms"]["max"].as_f64().unwrap_or(0.0) > 0.0);
    // The worker's cost of this run: its CPU time per tweet, in total and per thread role (the
    // partition threads decode every tweet, the inference threads score them).
    let p = &r["process"];
    assert_eq!(
        p["pid"].as_u64(),
        Some(u64::from(worker.pid())),
        "{}",
        context()
    );
    let cpu = p["cpu_us_per_tweet"].as_f64().unwrap_or(0.0);
    assert!(cpu > 0.0, "CPU per tweet {cpu}\n{}", context());
    let roles: Vec<&str> = p["roles"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["role"].as_str()).collect())
        .unwrap_or_default();
    for role in ["partition", "inference", "rdk:broker"] {
        assert!(
            roles.contains(&role),
            "no {role} threads in {roles:?}\n{}",
            context()
        );
    }

    let hgrm_text = std::fs::read_to_string(&hgrm).expect("the .hgrm file was written");
    assert!(hgrm_text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(
        hgrm_text.contains(&format!("Total count    = {sent:>12}]")),
        "{hgrm_text}"
    );
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    assert!(svg.contains("<svg") && svg.contains("300/s"));

    worker.stop();
}
