//! The worker through secured listeners of Apache Kafka (kafka-local: SASL_PLAINTEXT with PLAIN
//! or SCRAM-SHA-512, and SSL with a throwaway CA), configured as a user would — with `-X`
//! librdkafka properties — and the two ways it goes wrong: a wrong password and a certificate
//! the worker does not trust are each one line naming the cause, exit code 1, at once.
//!
//! Topics are created, input produced and output read through the broker's PLAINTEXT listener;
//! only the worker goes through the secured one.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_local::{ClientSettings, Kafka, SaslMechanism, User};
use support::*;

/// A worker started with `settings` (bootstrap and `-X` properties), killed on drop.
fn secured(w: &World, settings: &ClientSettings, extra: &[&str]) -> Worker {
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-secured-worker.log", w.group));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafka-infer"));
    cmd.arg("run")
        .args(worker_args(w, settings))
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--commit-interval-ms",
            "200",
        ])
        .args(extra)
        .env("RUST_LOG", "info");
    Worker::spawn(cmd, log)
}

/// `run` arguments for this world's topics through `settings`: `--brokers` and one `-X` per
/// property.
fn worker_args(w: &World, settings: &ClientSettings) -> Vec<String> {
    let mut args: Vec<String> = [
        "--brokers",
        &settings.bootstrap,
        "--group-id",
        &w.group,
        "--input-topic",
        &w.input,
        "--output-topic",
        &w.output,
        "--dlq-topic",
        &w.dlq,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (k, v) in &settings.properties {
        args.push("-X".into());
        args.push(format!("{k}={v}"));
    }
    args
}

/// The worker scores `n` tweets through `settings`, every one exactly once, and stops cleanly;
/// librdkafka's statistics (asked for every second, for every client) never reach the log.
fn scores_every_tweet_through(w: &World, settings: &ClientSettings, n: usize) {
    w.produce(&tweets(n, 0));
    let mut worker = secured(w, settings, &["-X", "statistics.interval.ms=1000"]);
    let outs = w.read(&w.output, WAIT, Duration::from_secs(2), |o| o.len() >= n);
    assert_eq!(
        outs.len(),
        n,
        "through {}:\n{}",
        settings.line(),
        worker.log_text()
    );
    assert_eq!(duplicates(&outs), 0);
    assert_every_input_predicted(&all_inputs(n), &outs, &worker.log_text());
    // A few statistics intervals have passed since start.
    w.wait_for_commits(&ends(n), Duration::from_secs(30), &worker.log_text());
    assert_eq!(
        worker.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        worker.log_text()
    );
    let log = worker.log_text();
    assert!(
        !log.contains("Client stats"),
        "statistics in the log:\n{log}"
    );
    assert!(log.contains("stopped: consumed="), "{log}");
}

/// Runs the worker through `settings` until it exits (bounded by its 10 s start-up timeout):
/// (exit code, stderr, how long it took).
fn run_refused(w: &World, settings: &ClientSettings) -> (Option<i32>, String, Duration) {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-infer"))
        .arg("run")
        .args(worker_args(w, settings))
        .args(["--metrics-addr", "off", "--startup-timeout-ms", "10000"])
        // What a user sees by default, logs included.
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run worker");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), err, t0.elapsed())
}

/// The lines of `stderr` that are not INFO log lines: what the user is told went wrong.
fn problems(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" INFO "))
        .collect()
}

/// The worker refuses to start through `settings`: exit code 1, before its start-up timeout,
/// with one line that contains `cause` — and no statistics dump.
fn refused_with_one_line(w: &World, settings: &ClientSettings, cause: &str) -> String {
    let (code, stderr, took) = run_refused(w, settings);
    assert_eq!(code, Some(1), "{stderr}");
    let lines = problems(&stderr);
    assert_eq!(lines.len(), 1, "one line, not:\n{stderr}");
    assert!(lines[0].starts_with("kafka-infer: error: "), "{stderr}");
    assert!(lines[0].contains(cause), "{cause:?} in:\n{stderr}");
    assert!(!stderr.contains("Client stats"), "{stderr}");
    assert!(
        took < Duration::from_secs(9),
        "a refusal is final: reported at once, not after the start-up timeout ({took:?})"
    );
    lines[0].to_owned()
}

/// A broker with a SASL/PLAIN listener (user alice) and a TLS listener, for this test binary.
fn plain_and_tls() -> &'static Kafka {
    static KAFKA: std::sync::OnceLock<&'static Kafka> = std::sync::OnceLock::new();
    KAFKA.get_or_init(|| {
        let alice = User {
            name: "alice".into(),
            password: "alice-secret".into(),
        };
        let k = Kafka::builder()
            .sasl(SaslMechanism::Plain, &[alice])
            .tls()
            .start()
            .unwrap_or_else(|e| panic!("start a broker with SASL and TLS listeners: {e}"));
        Box::leak(Box::new(k))
    })
}

#[test]
fn the_worker_scores_every_tweet_through_a_sasl_plain_listener() {
    let kafka = plain_and_tls();
    let sasl = kafka.sasl_client().expect("a SASL listener");
    assert_eq!(sasl.get("sasl.mechanism"), Some("PLAIN"));
    scores_every_tweet_through(&World::on(kafka, 1), &sasl, 500);
}

#[test]
fn the_worker_scores_every_tweet_through_a_tls_listener() {
    let kafka = plain_and_tls();
    let tls = kafka.tls_client().expect("a TLS listener");
    assert_eq!(tls.get("security.protocol"), Some("SSL"));
    scores_every_tweet_through(&World::on(kafka, 1), &tls, 500);
}

#[test]
fn through_a_scram_sha_512_listener_every_tweet_is_scored_and_a_wrong_password_is_one_line() {
    let kafka: &'static Kafka = Box::leak(Box::new(
        Kafka::builder()
            .sasl(SaslMechanism::ScramSha512, &[])
            .start()
            .unwrap_or_else(|e| panic!("start a broker with a SCRAM listener: {e}")),
    ));
    let scram = kafka.sasl_client().expect("a SASL listener");
    assert_eq!(scram.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    let w = World::on(kafka, 1);
    scores_every_tweet_through(&w, &scram, 500);
    let wrong = scram.clone().with("sasl.password", "not-the-password");
    let line = refused_with_one_line(&World::on(kafka, 1), &wrong, "authentication failed");
    eprintln!("SCRAM, wrong password: {line}");
}

#[test]
fn a_wrong_password_is_one_line_saying_authentication_failed_and_exit_code_1() {
    let kafka = plain_and_tls();
    let wrong = kafka
        .sasl_client()
        .expect("a SASL listener")
        .with("sasl.password", "not-alices-password");
    let line = refused_with_one_line(&World::on(kafka, 1), &wrong, "authentication failed");
    assert!(line.contains(&wrong.bootstrap), "names the broker: {line}");
    eprintln!("PLAIN, wrong password: {line}");
}

#[test]
fn an_untrusted_broker_certificate_is_one_line_naming_the_tls_verification_failure() {
    let kafka = plain_and_tls();
    let dir = std::env::temp_dir().join(kafka_local::unique("other-ca"));
    let other =
        kafka_local::security::make_ca(&dir, "other", "not the broker's CA").expect("another CA");
    let untrusted = kafka
        .tls_client()
        .expect("a TLS listener")
        .with("ssl.ca.location", &other.to_string_lossy());
    let line = refused_with_one_line(&World::on(kafka, 1), &untrusted, "TLS handshake failed");
    let _ = std::fs::remove_dir_all(&dir);
    // librdkafka's own words for the cause, passed through.
    assert!(line.contains("certificate verify failed"), "{line}");
    eprintln!("TLS, untrusted certificate: {line}");
}
