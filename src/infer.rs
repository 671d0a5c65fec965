//! Inference threads: each takes the next closed batch when it is idle, runs the model once on
//! all the batch's tweets (padded to the longest), and hands the scored chunks to the output,
//! which produces them in their partitions' order. Each thread owns its model state.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::metrics::{Metrics, Stage};
use crate::model::Session;
use crate::pipeline::{Batch, Output, Scored};

/// Runs until the batch channel is closed. `idle` counts threads waiting for a batch (the
/// batcher closes a batch early while one is).
pub fn run(
    mut session: Session,
    batches: Receiver<Batch>,
    output: Arc<dyn Output>,
    idle: &AtomicUsize,
    metrics: &Metrics,
) {
    loop {
        idle.fetch_add(1, Ordering::AcqRel);
        let next = batches.recv();
        idle.fetch_sub(1, Ordering::AcqRel);
        let Ok(batch) = next else { return };
        let t0 = Instant::now();
        let ids = batch.tweet_ids();
        let mut results = if ids.is_empty() {
            Vec::new()
        } else {
            session.score_each(&ids)
        }
        .into_iter();
        drop(ids);
        if batch.records > 0 {
            metrics.record(Stage::Inference, t0.elapsed());
        }
        for chunk in batch.chunks {
            let scores = results.by_ref().take(chunk.tweets).collect();
            output.emit(Scored { chunk, scores });
        }
    }
}
