//! The per-sequence-length plans and the length grouping give the scores the model gives: at
//! any padding, for any grouping of a batch.

use std::path::PathBuf;

use kafka_infer::model::batch::pad_to;
use kafka_infer::model::plan::BaseModel;
use kafka_infer::Classifier;
use serde::Deserialize;
use tract_onnx::prelude::tract_ndarray::Array2;
use tract_onnx::prelude::*;

#[derive(Deserialize)]
struct Golden {
    ids: Vec<i32>,
    score: f32,
}

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("model")
}

fn golden() -> Vec<Golden> {
    std::fs::read_to_string(model_dir().join("golden.jsonl"))
        .expect("golden.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("golden line"))
        .collect()
}

fn run(plan: &Arc<TypedSimplePlan>, tokens: Array2<i32>) -> Vec<f32> {
    let out = plan.run(tvec!(Tensor::from(tokens).into())).expect("run");
    out[0]
        .to_plain_array_view::<f32>()
        .expect("f32")
        .iter()
        .copied()
        .collect()
}

#[test]
fn plans_for_different_lengths_agree_with_the_generic_plan_and_onnxruntime() {
    let base = BaseModel::from_onnx(&std::fs::read(model_dir().join("model.onnx")).expect("onnx"))
        .expect("model");
    let generic = base.generic_plan().expect("generic plan");
    let g = golden();
    for chunk in g.chunks(100) {
        let ids: Vec<&[i32]> = chunk.iter().map(|x| x.ids.as_slice()).collect();
        let longest = ids.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let at_longest = run(
            &base.plan_for_seq(longest).expect("plan"),
            pad_to(&ids, 0, longest),
        );
        // Longer than the tokenizer ever emits: the same scores.
        let at_150 = run(&base.plan_for_seq(150).expect("plan"), pad_to(&ids, 0, 150));
        let generic = run(&generic, pad_to(&ids, 0, longest));
        for (i, x) in chunk.iter().enumerate() {
            assert!((at_longest[i] - x.score).abs() <= 1e-5, "vs onnxruntime");
            assert!(
                (at_longest[i] - at_150[i]).abs() <= 1e-6,
                "padding changed a score"
            );
            assert!(
                (at_longest[i] - generic[i]).abs() <= 1e-6,
                "generic plan differs"
            );
        }
    }
}

#[test]
fn grouping_a_batch_by_length_changes_no_score() {
    let clf = Classifier::load(&model_dir()).expect("model");
    let mut session = clf.session().expect("session");
    let g = golden();
    // Every golden input, long and short mixed, in one batch: several groups.
    let ids: Vec<&[i32]> = g.iter().map(|x| x.ids.as_slice()).collect();
    let together = session.score_ids(&ids).expect("batch");
    let padded = session
        .score_tensor(pad_to(&ids, 0, 200))
        .expect("padded batch");
    for (i, x) in ids.iter().enumerate() {
        let alone = session.score_ids(&[*x]).expect("one")[0];
        assert!(
            (together[i] - alone).abs() <= 1e-6,
            "row {i}: {} vs {alone}",
            together[i]
        );
        assert!(
            (padded[i] - alone).abs() <= 1e-6,
            "row {i}: {} vs {alone}",
            padded[i]
        );
    }
}

#[test]
fn empty_rows_and_tensors_without_positions_score_like_an_empty_tweet() {
    let clf = Classifier::load(&model_dir()).expect("model");
    let mut session = clf.session().expect("session");
    let empty = session.score_ids(&[Vec::<i32>::new()]).expect("empty")[0];
    let no_columns = session
        .score_tensor(Array2::zeros((3, 0)))
        .expect("no columns");
    assert_eq!(no_columns, vec![empty; 3]);
    let mixed = session
        .score_tensor(Array2::from_shape_vec((2, 3), vec![0, 0, 0, 5, 0, 0]).expect("shape"))
        .expect("mixed");
    assert_eq!(mixed[0], empty);
    assert!(session
        .score_tensor(Array2::zeros((0, 4)))
        .expect("none")
        .is_empty());
}
