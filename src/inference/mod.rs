//! Inference threads: each gathers its next batch from the source channel when it is idle (see
//! [`crate::batching`]), runs the model once on all the batch's tweets (in groups of similar
//! length, each padded to its longest), and hands the scored chunks to the output, which
//! produces them in their partitions' order. Each thread owns its model state: one session per
//! model it meets (the batch says which model tokenized it; after a reload, the previous
//! model's session serves what is still in flight).

pub mod shadow;

use std::sync::Arc;
use std::time::Instant;

use crate::batching::{BatchQueue, Turn};
use crate::model::live::LiveModel;
use crate::model::Session;
use crate::obs::metrics::{Metrics, Stage};
use crate::pipeline::{Output, Scored, Shadow};

/// Runs until the source channel is closed and drained. `first` is the session of the model
/// live at start (built by the caller, so a model problem fails start-up).
pub fn run(
    first: (Arc<LiveModel>, Session),
    queue: &BatchQueue,
    output: Arc<dyn Output>,
    shadow: Option<Arc<dyn Shadow>>,
    metrics: &Metrics,
) {
    // A handful at most: the live model and, right after a reload, the previous one.
    let mut sessions: Vec<(Arc<LiveModel>, Session)> = vec![first];
    let mut turn = Turn::default();
    while let Some(batch) = queue.next(&mut turn, metrics) {
        let Some(model) = batch.chunks.first().map(|c| c.model.clone()) else {
            continue;
        };
        let t0 = Instant::now();
        let ids = batch.tweet_ids();
        let results = if ids.is_empty() {
            Vec::new()
        } else {
            match session_for(&mut sessions, &model) {
                Ok(session) => {
                    let (results, alone) = session.score_isolating(&ids);
                    if alone {
                        metrics.tweets_rescored_alone_total.inc_by(ids.len() as u64);
                    }
                    results
                }
                Err(e) => {
                    let why = format!("no model session: {e}");
                    ids.iter().map(|_| Err(why.clone())).collect()
                }
            }
        };
        if batch.records > 0 {
            metrics.record(Stage::Inference, t0.elapsed());
        }
        observe_drift(&model, &ids, &results);
        drop(ids);
        if let Some(s) = &shadow {
            s.offer(&batch.chunks, &results);
        }
        let mut results = results.into_iter();
        for chunk in batch.chunks {
            let scores = results.by_ref().take(chunk.tweets).collect();
            output.emit(Scored { chunk, scores });
        }
        // Acknowledgements of earlier batches have arrived meanwhile: serving them here saves
        // the wake-up of a thread that would wait for them.
        output.serve_deliveries();
    }
}

/// Feeds the model's drift statistics (lock-free; a scan over ~10 ids per tweet).
fn observe_drift(model: &LiveModel, ids: &[&[i32]], results: &[Result<f32, String>]) {
    let oov = model.classifier.tokenizer().oov_id();
    model.drift.observe_token_lists(ids.iter().copied(), oov);
    let scores: Vec<f32> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    model.drift.observe_scores(&scores);
}

/// This thread's session for `model`, created on first use; sessions of models that are
/// neither this one nor among the two most recent are dropped.
fn session_for<'a>(
    sessions: &'a mut Vec<(Arc<LiveModel>, Session)>,
    model: &Arc<LiveModel>,
) -> crate::error::Result<&'a mut Session> {
    let i = match sessions.iter().position(|(m, _)| m.id == model.id) {
        Some(i) => i,
        None => {
            let s = model.classifier.session()?;
            sessions.push((model.clone(), s));
            if sessions.len() > 2 {
                sessions.remove(0);
            }
            sessions.len() - 1
        }
    };
    Ok(&mut sessions[i].1)
}
