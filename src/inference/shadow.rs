//! Shadow scoring: a candidate model scores the same tweets as the live one, off to the side.
//!
//! After each live inference, the inference thread *offers* the batch's tweets to the shadow
//! stage: a copy of their keys, values and live scores goes into a small bounded queue, or, if
//! the queue is full, is shed and counted — shadow work never delays, reorders or alters the
//! live output. A shadow thread decodes and tokenizes each tweet with the candidate's own
//! preprocessing (its vocabulary may differ), scores it, compares with the live score
//! (agreement at the 0.5 threshold, |Δscore|), and hands the result to the sink's shadow
//! producer: same key and partition as the live output, the candidate's version in the
//! `model-version` header.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::error::{Error, Result};
use crate::model::live::LiveModel;
use crate::obs::metrics::Metrics;
use crate::pipeline::{Body, Chunk, Shadow};
use crate::wire::JsonDecoder;

/// The live score above which a tweet counts as a disaster, for agreement.
const THRESHOLD: f32 = 0.5;

/// One tweet handed to the shadow stage.
struct Item {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<(usize, usize)>,
    value: (usize, usize),
    live: Option<f32>,
    live_version: Arc<LiveModel>,
}

/// The tweets of one live batch, with their bytes in one buffer.
struct Job {
    items: Vec<Item>,
    bytes: Vec<u8>,
}

/// Where shadow results go: the sink's shadow producer (the only producing code is the sink's).
pub trait ShadowOutput: Send + Sync {
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        input_partition: i32,
        key: Option<&[u8]>,
        score: f32,
        timestamp: Option<i64>,
        candidate: &str,
        live: &str,
        source: (&str, i32, i64),
    );
}

/// The offering side, held by the inference threads.
pub struct ShadowStage {
    tx: Sender<Job>,
    metrics: Arc<Metrics>,
}

impl Shadow for ShadowStage {
    fn offer(&self, chunks: &[Chunk], scores: &[std::result::Result<f32, String>]) {
        let mut job = Job {
            items: Vec::new(),
            bytes: Vec::new(),
        };
        let mut scores = scores.iter();
        for c in chunks {
            for r in &c.records {
                if !matches!(r.body, Body::Tweet { .. }) {
                    continue;
                }
                let live = scores.next().and_then(|s| s.as_ref().ok().copied());
                let (Some(value), key) = (c.value(r), c.key(r)) else {
                    continue;
                };
                let key = key.map(|k| store(&mut job.bytes, k));
                let value = store(&mut job.bytes, value);
                job.items.push(Item {
                    topic: c.lane.topic.clone(),
                    partition: c.lane.partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key,
                    value,
                    live,
                    live_version: c.model.clone(),
                });
            }
        }
        if job.items.is_empty() {
            return;
        }
        let n = job.items.len() as u64;
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(job) {
            self.metrics.shadow_shed_total.inc_by(n);
        }
    }
}

fn store(buf: &mut Vec<u8>, data: &[u8]) -> (usize, usize) {
    let start = buf.len();
    buf.extend_from_slice(data);
    (start, buf.len())
}

/// Starts the shadow thread for `candidate`; returns the stage the inference threads offer to.
/// The thread ends when every inference thread (every `ShadowStage` clone) is gone.
pub fn start(
    candidate: LiveModel,
    output: Arc<dyn ShadowOutput>,
    metrics: Arc<Metrics>,
    queue: usize,
) -> Result<(Arc<ShadowStage>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::bounded(queue.max(1));
    let mut session = candidate.classifier.session()?;
    let m = metrics.clone();
    let handle = std::thread::Builder::new()
        .name("shadow".into())
        .spawn(move || run(rx, &candidate, &mut session, output.as_ref(), &m))
        .map_err(|e| Error::io("shadow thread", e))?;
    Ok((Arc::new(ShadowStage { tx, metrics }), handle))
}

fn run(
    rx: Receiver<Job>,
    candidate: &LiveModel,
    session: &mut crate::model::Session,
    output: &dyn ShadowOutput,
    metrics: &Metrics,
) {
    let tokenizer = candidate.classifier.tokenizer();
    let (mut decoder, mut scratch) = (JsonDecoder::new(), Vec::new());
    let (mut agree, mut compared, mut abs_diff) = (0u64, 0u64, 0.0f64);
    for job in rx {
        let mut ids: Vec<Vec<i32>> = Vec::with_capacity(job.items.len());
        let mut ok: Vec<usize> = Vec::with_capacity(job.items.len());
        for (i, item) in job.items.iter().enumerate() {
            let raw = &job.bytes[item.value.0..item.value.1];
            if let Ok(text) = decoder.decode(raw, &mut scratch) {
                ids.push(tokenizer.encode(text));
                ok.push(i);
            }
        }
        let scores = session.score_each(&ids);
        candidate
            .drift
            .observe_token_lists(ids.iter().map(Vec::as_slice), tokenizer.oov_id());
        let mut batch_scores = Vec::with_capacity(scores.len());
        for (&i, score) in ok.iter().zip(scores) {
            let Ok(score) = score else { continue };
            let item = &job.items[i];
            batch_scores.push(score);
            if let Some(live) = item.live {
                compared += 1;
                agree += u64::from((live >= THRESHOLD) == (score >= THRESHOLD));
                abs_diff += f64::from((live - score).abs());
            }
            let key = item.key.map(|(a, b)| &job.bytes[a..b]);
            output.send(
                item.partition,
                key,
                score,
                item.timestamp,
                &candidate.version,
                &item.live_version.version,
                (&item.topic, item.partition, item.offset),
            );
        }
        candidate.drift.observe_scores(&batch_scores);
        metrics
            .shadow_scored_total
            .inc_by(batch_scores.len() as u64);
        if compared > 0 {
            metrics.set_shadow_comparison(
                &candidate.version,
                agree as f64 / compared as f64,
                abs_diff / compared as f64,
            );
        }
    }
}
