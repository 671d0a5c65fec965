//! The binary's conventions, without a broker: help, usage errors (exit 2), `status` of an
//! empty directory (exit 3), commands that need a cluster.

use std::process::{Command, Output, Stdio};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kafka-local"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kafka-local")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_goes_to_stdout_and_no_command_to_stderr() {
    for args in [&["--help"][..], &["help"], &["-h"], &["status", "--help"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let t = text(&out.stdout);
        assert!(t.starts_with("scripts/kafka: Apache Kafka 4.1.2"), "{t}");
        assert!(t.contains("pause-node") && t.contains("--sasl M"));
    }
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("USAGE"));
}

#[test]
fn usage_errors_exit_2_with_a_pointer_to_help() {
    for (args, msg) in [
        (&["bogus"][..], "kafka: unknown command 'bogus'"),
        (
            &["start", "--port", "x"],
            "kafka: --port must be a port number, got 'x'",
        ),
        (
            &["start", "extra"],
            "kafka: start takes no arguments (got 'extra')",
        ),
        (
            &["start", "--keep-data"],
            "kafka: start takes no --node, --bootstrap or --keep-data",
        ),
        (
            &["start", "--owner", "me"],
            "kafka: --owner must be a pid, got 'me'",
        ),
        (
            &["kill-node", "--dir", "/nonexistent"],
            "kafka: kill-node needs --node I",
        ),
        (&["pause-node"], "kafka: pause-node needs --node I"),
        (
            &["create-topic", "t"],
            "kafka: create-topic needs NAME PARTITIONS",
        ),
        (&["fetch", "x"], "kafka: fetch takes no arguments"),
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let e = text(&out.stderr);
        assert!(e.starts_with(msg), "{args:?}: {e}");
        assert!(e.ends_with("Run 'scripts/kafka --help' for the commands and options.\n"));
    }
}

#[test]
fn without_a_cluster() {
    let dir = std::env::temp_dir().join(format!("kafka-local-cli-{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    let out = run(&["status", "--dir", &d]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), format!("no cluster in {d}\n"));

    let out = run(&["stop", "--dir", &d]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stderr),
        format!("kafka: nothing to stop: no {d}\n")
    );

    let out = run(&["pause-node", "--node", "1", "--dir", &d]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("kafka: error: no cluster in {d} (no such directory)\n")
    );

    let out = run(&["describe", "--dir", &d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with(&format!("kafka: error: no running cluster in {d}")));
}
