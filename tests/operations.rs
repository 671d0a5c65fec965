//! Operating the worker with Prometheus's own tools, against Apache Kafka (kafka-local) and the
//! worker binary as users run it:
//!
//! - a live `/metrics` scrape in the text format passes `promtool check metrics` (names, types,
//!   units, help texts), and the OpenMetrics answer carries the same series;
//! - a real Prometheus server, loading the shipped alert rule (with its threshold and `for:`
//!   shortened for the test), scrapes the worker and takes `KafkaInferPartitionStalled` from
//!   inactive to firing when a partition's outputs are held back, and back to inactive once they
//!   are delivered.
//!
//! Both need the Debian package `prometheus` (promtool and the server). Without it they say so
//! on stderr and pass: CI (.ci/run) installs it, so there they run.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Whether `tool` is on PATH; if not, says loudly which test is skipped.
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!(
            "SKIPPED {test}: `{tool}` is not installed (Debian/Ubuntu: apt-get install prometheus; .ci/run installs it)"
        );
    }
    found
}

/// An HTTP/1.0 GET (so never a chunked answer): (status, content type, body).
fn get(addr: &str, path: &str, accept: Option<&str>) -> Option<(u16, String, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Some((status, content_type, body.to_owned()))
}

fn free_addr() -> String {
    let port = kafka_local::free_ports(1).expect("a free port");
    format!("127.0.0.1:{port}")
}

/// Runs `promtool check metrics` on `exposition`: (success, what it said).
fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The series (name and labels, without values) of an exposition.
fn series(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect()
}

#[test]
fn promtool_finds_nothing_to_lint_in_a_live_scrape_and_openmetrics_carries_the_same_series() {
    if !have(
        "promtool",
        "promtool_finds_nothing_to_lint_in_a_live_scrape",
    ) {
        return;
    }
    let w = World::new();
    let n = 300;
    w.produce(&tweets(n, 0));
    let metrics = free_addr();
    let mut worker = w.start_worker(&["--metrics-addr", &metrics]);
    // Every family populated: outputs acknowledged (stage histograms, drift), lag measured.
    let outs = w.read(&w.output, WAIT, Duration::ZERO, |o| o.len() >= n);
    assert_eq!(outs.len(), n, "{}", worker.log_text());
    wait_until(Duration::from_secs(30), "a lag gauge", || {
        get(&metrics, "/metrics", None)
            .is_some_and(|(_, _, body)| body.contains("kafka_infer_consumer_lag{"))
    });

    for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*")] {
        let (status, content_type, text) = get(&metrics, "/metrics", accept).expect("scrape");
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{accept:?}: {content_type}"
        );
        let (ok, said) = promtool_check_metrics(&text);
        assert!(
            ok && said.trim().is_empty(),
            "promtool check metrics ({accept:?}) says:\n{said}"
        );
    }

    let om = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (status, content_type, openmetrics) = get(&metrics, "/metrics", Some(om)).expect("scrape");
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(openmetrics.ends_with("# EOF\n"));
    let (_, _, text) = get(&metrics, "/metrics", None).expect("scrape");
    assert_eq!(series(&openmetrics), series(&text), "the same series");
    for name in [
        "kafka_infer_records_predicted_total",
        "kafka_infer_healthy",
        "kafka_infer_partition_stalled_seconds{partition=\"0\"}",
        "kafka_infer_model_reloads_total{result=\"rejected\"}",
    ] {
        assert!(series(&text).contains(name), "no {name} in:\n{text}");
    }
    worker.terminate_cleanly(Duration::from_secs(30));
}

/// A Prometheus server on a free port, stopped (and its data removed) on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Scrapes `target` (job `kafka-infer`) every second and evaluates `rules` every second.
    fn start(target: &str, rules: &str) -> Prometheus {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(support::kafka::unique("prometheus"));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        std::fs::write(dir.join("alerts.yml"), rules).expect("rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
             scrape_configs:\n  - job_name: kafka-infer\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let addr = free_addr();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child, addr, dir };
        wait_until(Duration::from_secs(60), "Prometheus ready", || {
            get(&p.addr, "/-/ready", None).is_some_and(|(s, _, _)| s == 200)
        });
        p
    }

    fn api(&self, path: &str) -> serde_json::Value {
        let (status, _, body) = get(&self.addr, path, None).expect("Prometheus API");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// The states ("pending", "firing") of the active alerts called `name`, from /api/v1/alerts.
    fn alert_states(&self, name: &str) -> Vec<(String, serde_json::Value)> {
        let v = self.api("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| {
                (
                    a["state"].as_str().unwrap_or_default().to_owned(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }

    /// The rule's own state ("inactive", "pending", "firing"), from /api/v1/rules.
    fn rule_state(&self, name: &str) -> Option<String> {
        let v = self.api("/api/v1/rules");
        v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .find(|r| r["name"] == name)
            .and_then(|r| r["state"].as_str().map(str::to_owned))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shipped alerts.yml with `alert`'s threshold and `for:` replaced (each must occur exactly
/// once in that rule, so a changed rule fails here rather than testing something else).
fn shortened_rule(alert: &str, threshold: (&str, &str), for_: (&str, &str)) -> String {
    let path = repo_root().join("config/prometheus/alerts.yml");
    let rules = std::fs::read_to_string(&path).expect("alerts.yml");
    let start = rules
        .find(&format!("- alert: {alert}\n"))
        .unwrap_or_else(|| panic!("no {alert} in alerts.yml"));
    let len = rules[start + 1..]
        .find("- alert: ")
        .map_or(rules.len() - start, |i| i + 1);
    let rule = &rules[start..start + len];
    for (from, _) in [threshold, for_] {
        assert_eq!(rule.matches(from).count(), 1, "{from:?} in:\n{rule}");
    }
    let short = rule
        .replacen(threshold.0, threshold.1, 1)
        .replacen(for_.0, for_.1, 1);
    format!("{}{short}{}", &rules[..start], &rules[start + len..])
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_stalled_partition_fires_its_alert_on_a_real_prometheus_and_resolves_once_outputs_flow() {
    if !have(
        "prometheus",
        "a_stalled_partition_fires_its_alert_on_a_real_prometheus",
    ) {
        return;
    }
    const ALERT: &str = "KafkaInferPartitionStalled";
    let w = World::new();
    let metrics = free_addr();
    // Every output waits 25 s in the producer (linger.ms) before it is even sent: the partitions
    // that get records have them in flight, unacknowledged, for 25 s — a stall, on demand.
    let mut worker =
        w.start_worker(&["--metrics-addr", &metrics, "-X", "producer.linger.ms=25000"]);
    worker
        .wait_for_log("partition assigned", WAIT)
        .expect("partitions assigned");
    // The real rule, with 120 s → 3 s and `for: 1m` → 2 s.
    let rules = shortened_rule(ALERT, ("> 120", "> 3"), ("for: 1m", "for: 2s"));
    let prom = Prometheus::start(&metrics, &rules);

    // Before: the target is scraped (in OpenMetrics, which Prometheus asks for) and the rule
    // is evaluated, inactive.
    wait_until(
        Duration::from_secs(60),
        "the worker scraped, the rule inactive",
        || {
            let up = prom.api("/api/v1/query?query=up%7Bjob%3D%22kafka-infer%22%7D");
            up["data"]["result"][0]["value"][1] == "1"
                && prom.rule_state(ALERT).as_deref() == Some("inactive")
        },
    );
    let targets = prom.api("/api/v1/targets");
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target}");
    assert_eq!(target["lastError"], "", "{target}");
    assert!(prom.alert_states(ALERT).is_empty());

    // The condition: one partition gets records whose outputs are held.
    let t0 = Instant::now();
    w.produce(&tweets(1, 0));
    wait_until(Duration::from_secs(20), "the alert firing", || {
        prom.alert_states(ALERT).iter().any(|(s, _)| s == "firing")
    });
    let firing_after = t0.elapsed();
    let states = prom.alert_states(ALERT);
    assert_eq!(states.len(), 1, "one stalled partition: {states:?}");
    assert_eq!(states[0].1["partition"], "0", "{states:?}");
    assert_eq!(states[0].1["severity"], "critical");
    let m = worker.metrics();
    assert_eq!(m.get("kafka_infer_records_consumed_total"), Some(&1.0));
    assert_eq!(
        m.get("kafka_infer_records_predicted_total"),
        Some(&0.0),
        "nothing acknowledged yet"
    );

    // It clears: once the output is delivered, the partition is no longer stalled.
    wait_until(Duration::from_secs(60), "the alert resolved", || {
        prom.alert_states(ALERT).is_empty() && prom.rule_state(ALERT).as_deref() == Some("inactive")
    });
    let resolved_after = t0.elapsed();
    let outs = w.read(&w.output, WAIT, Duration::ZERO, |o| !o.is_empty());
    assert_eq!(outs.len(), 1, "{}", worker.log_text());
    eprintln!(
        "{ALERT}: firing {:.1} s after the records arrived, resolved after {:.1} s (outputs held 25 s)",
        firing_after.as_secs_f64(),
        resolved_after.as_secs_f64()
    );
    assert!(
        resolved_after >= Duration::from_secs(20),
        "resolved before the outputs were sent"
    );
    assert!(!prom.log().contains("level=error"), "{}", prom.log());
    worker.terminate_cleanly(Duration::from_secs(30));
}
