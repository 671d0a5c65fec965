//! `kafka-infer score` end to end, as a user runs it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("model");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kafka-infer"))
        .arg("score")
        .arg("--model-dir")
        .arg(model)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kafka-infer");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin).expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("wait")
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .expect("utf8 stdout")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad output line {l:?}: {e}")))
        .collect()
}

fn score_of(v: &serde_json::Value) -> f64 {
    v["value"][0]
        .as_f64()
        .unwrap_or_else(|| panic!("not a score: {v}"))
}

#[test]
fn bad_lines_get_error_lines_in_place_and_scoring_continues() {
    let input = b"{\"value\":\"There has been an earthquake at 3:00 pm\",\"id\":1}\n\
not json\n\
{\"text\":\"no value field\"}\n\
{\"value\":\"\xff\xfe broken utf8\"}\n\
{\"value\":42}\n\
{\"value\":\"I love my new phone, what a great day\"}";
    // Batch size 2 so that errors straddle batch boundaries.
    let out = lines(&run(&["--batch-size", "2"], input));
    assert_eq!(out.len(), 6, "{out:?}");
    assert!(score_of(&out[0]) > 0.5);
    for (i, needle) in [
        (1, "JSON"),
        (2, "no \"value\""),
        (3, "UTF-8"),
        (4, "not a string"),
    ] {
        assert_eq!(out[i]["line"], i as u64 + 1, "{:?}", out[i]);
        let reason = out[i]["error"].as_str().expect("error reason");
        assert!(reason.contains(needle), "line {}: {reason}", i + 1);
    }
    assert!(score_of(&out[5]) < 0.5);
}

#[test]
fn output_order_follows_input_order_across_batches() {
    let tweets = [
        "Forest fire near La Ronge Sask. Canada",
        "what a lovely sunny afternoon with friends",
        "Flood warning: residents evacuated as river bursts its banks",
        "I love my new phone, what a great day",
    ];
    let mut input = Vec::new();
    for i in 0..50 {
        writeln!(input, "{}", serde_json::json!({ "value": tweets[i % 4] })).expect("write");
    }
    let batched = lines(&run(&["--batch-size", "7"], &input));
    let single = lines(&run(&["--batch-size", "1"], &input));
    assert_eq!(batched.len(), 50);
    for (i, (a, b)) in batched.iter().zip(&single).enumerate() {
        assert!(
            (score_of(a) - score_of(b)).abs() < 1e-6,
            "line {i}: {a} vs {b}"
        );
        assert!(
            (score_of(a) - score_of(&batched[i % 4])).abs() < 1e-6,
            "line {i} out of order"
        );
    }
    assert!(score_of(&batched[0]) > 0.5 && score_of(&batched[3]) < 0.5);
}

#[test]
fn empty_input_gives_empty_output() {
    let out = run(&[], b"");
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn text_mode_scores_plain_lines_including_crlf_and_empty_ones() {
    let out = lines(&run(
        &["--text"],
        b"There has been an earthquake at 3:00 pm\r\n\nI love my new phone, what a great day\n",
    ));
    assert_eq!(out.len(), 3);
    assert!(score_of(&out[0]) > 0.5 && score_of(&out[2]) < 0.5);
    assert!(
        out[1]["value"][0].is_number(),
        "an empty tweet still gets a score"
    );
}

#[test]
fn a_missing_model_is_one_clear_error_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-infer"))
        .args(["score", "--model-dir", "/nonexistent/model"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/model"), "{err}");
}
