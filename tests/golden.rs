//! Train/serve parity: the Rust tokenizer and tract model against golden vectors written by
//! `model/train.py` (token ids from the Python preprocessing, scores from onnxruntime at the
//! seed's full padding of 121).

use std::path::PathBuf;
use std::sync::OnceLock;

use kafka_infer::model::batch::pad_to;
use kafka_infer::Classifier;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Golden {
    kind: String,
    text: String,
    ids: Vec<i32>,
    score: f32,
}

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("model")
}

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| Classifier::load(&model_dir()).expect("model loads"))
}

fn golden() -> Vec<Golden> {
    let raw = std::fs::read_to_string(model_dir().join("golden.jsonl")).expect("golden.jsonl");
    raw.lines()
        .map(|l| serde_json::from_str(l).expect("golden line"))
        .collect()
}

#[test]
fn golden_set_covers_validation_tweets_and_edge_cases() {
    let g = golden();
    assert!(g.iter().filter(|x| x.kind == "val").count() >= 500);
    for kind in [
        "empty",
        "only_url",
        "only_emoji",
        "html_entities",
        "non_latin",
        "long_over_121",
        "mojibake",
    ] {
        assert!(g.iter().any(|x| x.kind == kind), "missing edge case {kind}");
    }
    assert!(g.iter().any(|x| x.ids.len() == 121), "no truncated case");
}

#[test]
fn token_ids_match_the_training_preprocessing_exactly() {
    let tok = classifier().tokenizer();
    let mismatches: Vec<_> = golden()
        .into_iter()
        .filter_map(|g| {
            let got = tok.encode(&g.text);
            (got != g.ids).then(|| {
                format!(
                    "{}: {:?}\n  python {:?}\n  rust   {:?}",
                    g.kind, g.text, g.ids, got
                )
            })
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn scores_match_onnxruntime_when_batches_are_padded_to_their_longest() {
    let g = golden();
    let mut session = classifier().session().expect("session");
    let mut worst = 0f32;
    for chunk in g.chunks(64) {
        let ids: Vec<&[i32]> = chunk.iter().map(|x| x.ids.as_slice()).collect();
        let scores = session.score_ids(&ids).expect("inference");
        for (x, s) in chunk.iter().zip(scores) {
            let d = (x.score - s).abs();
            assert!(
                d <= 1e-5,
                "{}: {:?} rust {s} python {} (|Δ| {d})",
                x.kind,
                x.text,
                x.score
            );
            worst = worst.max(d);
        }
    }
    eprintln!("largest |Δ| vs onnxruntime: {worst:e}");
}

#[test]
fn padding_to_longest_gives_the_same_scores_as_padding_to_121() {
    let g = golden();
    let mut session = classifier().session().expect("session");
    let pad = classifier().tokenizer().pad_id();
    // Batches of different make-up, including a single tweet (no padding at all).
    for size in [1, 7, 64, 700] {
        for chunk in g.chunks(size) {
            let ids: Vec<&[i32]> = chunk.iter().map(|x| x.ids.as_slice()).collect();
            let longest = session.score_ids(&ids).expect("padded to longest");
            let full = session
                .score_tensor(pad_to(&ids, pad, 121))
                .expect("padded to 121");
            for ((a, b), x) in longest.iter().zip(&full).zip(chunk) {
                assert!((a - b).abs() <= 1e-6, "{}: longest {a} vs 121 {b}", x.kind);
            }
        }
    }
}

#[test]
fn real_disasters_score_high_and_everyday_tweets_low() {
    let c = classifier();
    let texts = [
        "There has been an earthquake at 3:00 pm",
        "Forest fire near La Ronge Sask. Canada",
        "I love my new phone, what a great day",
    ];
    let s = c
        .session()
        .expect("session")
        .score_texts(c.tokenizer(), &texts)
        .expect("scores");
    assert!(s[0] > 0.5, "earthquake scored {}", s[0]);
    assert!(s[1] > 0.5, "forest fire scored {}", s[1]);
    assert!(s[2] < 0.5, "phone scored {}", s[2]);
}

#[test]
fn model_version_is_a_short_content_hash() {
    let v = classifier().version();
    assert_eq!(v.len(), 12);
    assert!(v.chars().all(|c| c.is_ascii_hexdigit()), "{v}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_dir().join("metrics.json")).expect("metrics"))
            .expect("json");
    let sha = metrics["onnx_sha256"]
        .as_str()
        .expect("sha in metrics.json");
    assert!(sha.starts_with(v), "{v} is not a prefix of {sha}");
}

/// One failing run must not break the runs after it. An id the model has no row for fails the
/// batch holding it; the session then scores each tweet of that batch alone, and goes on
/// scoring batches of every other size (tract's state, left mid-run by the failure, is rebuilt:
/// kept, it failed every later run of another batch size).
#[test]
fn a_batch_that_fails_is_scored_tweet_by_tweet_and_the_session_stays_usable() {
    let c = classifier();
    let tok = c.tokenizer();
    let good = [
        tok.encode("Forest fire near La Ronge Sask. Canada"),
        tok.encode("I love my new phone, what a great day"),
        tok.encode("There has been an earthquake at 3:00 pm"),
    ];
    let want = c
        .session()
        .expect("session")
        .score_ids(&good)
        .expect("scores");
    // As long as good[1], so that both run in one group of one padded length: the failed run
    // and the retries alone then use the same per-length state.
    let mut bad = good[1].clone();
    bad[0] = 1_000_000;

    let mut session = c.session().expect("session");
    let batch = [good[1].clone(), bad, good[2].clone()];
    assert!(session.score_ids(&batch).is_err(), "the batch must fail");
    let (each, alone) = session.score_isolating(&batch);
    assert!(alone);
    assert!(each[0] == Ok(want[1]) && each[2] == Ok(want[2]), "{each:?}");
    let why = each[1].as_ref().expect_err("the bad tweet fails alone");
    assert!(why.contains("inference failed"), "{why}");
    for n in [1, 2, 3] {
        let scores = session.score_ids(&good[..n]).expect("later batches run");
        assert_eq!(scores, want[..n]);
    }
}
