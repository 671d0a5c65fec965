//! The tract-onnx model: loaded and optimized once, run from one [`Session`] per thread.
//!
//! The ONNX graph has a symbolic batch dimension `B` and sequence dimension `S`, so one
//! optimized plan serves every batch shape. A plan is immutable and shared (`Arc`); the mutable
//! run state is per thread, as tract intends, so inference threads never contend on a lock.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tract_onnx::prelude::tract_ndarray::Array2;
use tract_onnx::prelude::*;

use crate::batch;
use crate::error::{Error, Result};
use crate::model_files::ModelFiles;
use crate::preprocess::Tokenizer;

type Plan = TypedSimplePlan;
type PlanState = TypedSimpleState;

/// What produces scores: the real model, or a constant (benchmark pass-through mode).
#[derive(Clone)]
enum Backend {
    Onnx(Arc<Plan>),
    Constant(f32),
}

/// Tokenizer + model, loaded from a model directory (`model.onnx`, `vocab.txt`,
/// `preprocess.json`). Cheap to clone and share; call [`Classifier::session`] on each thread
/// that runs inference.
#[derive(Clone)]
pub struct Classifier {
    tokenizer: Arc<Tokenizer>,
    backend: Backend,
    version: String,
}

impl Classifier {
    /// Loads and optimizes the model in `model_dir`.
    pub fn load(model_dir: &Path) -> Result<Self> {
        Self::from_files(&ModelFiles::read(model_dir)?)
    }

    /// Builds the tokenizer and optimizes the model from a model directory's contents.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let tokenizer = Self::tokenizer_of(files)?;
        let version = short_hash(&files.onnx);
        let plan = optimize(&files.onnx)?;
        Ok(Classifier {
            tokenizer: Arc::new(tokenizer),
            backend: Backend::Onnx(plan),
            version,
        })
    }

    fn tokenizer_of(files: &ModelFiles) -> Result<Tokenizer> {
        Tokenizer::from_bytes(&files.preprocess, &files.vocab, &files.preprocess_path)
    }

    /// A classifier that tokenizes for real but scores every tweet `score` without running a
    /// model. **Benchmark mode only**: it measures the worker's own overhead.
    pub fn constant(files: &ModelFiles, score: f32) -> Result<Self> {
        Ok(Classifier {
            tokenizer: Arc::new(Self::tokenizer_of(files)?),
            backend: Backend::Constant(score),
            version: "none".into(),
        })
    }

    /// Model version stamped on outputs: the first 12 hex digits of the ONNX file's SHA-256
    /// (`"none"` in constant mode).
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// A run state for the calling thread.
    pub fn session(&self) -> Result<Session> {
        let state = match &self.backend {
            Backend::Onnx(plan) => {
                SessionState::Onnx(Box::new(PlanState::new(plan).map_err(Error::model)?))
            }
            Backend::Constant(s) => SessionState::Constant(*s),
        };
        Ok(Session {
            state,
            pad_id: self.tokenizer.pad_id(),
        })
    }
}

fn optimize(onnx: &[u8]) -> Result<Arc<Plan>> {
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &onnx[..])
        .map_err(Error::model)?;
    let batch = model.symbols.sym("B");
    let seq = model.symbols.sym("S");
    model
        .set_input_fact(0, i32::fact([batch.to_dim(), seq.to_dim()]).into())
        .map_err(Error::model)?;
    model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(Error::model)
}

fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

enum SessionState {
    Onnx(Box<PlanState>),
    Constant(f32),
}

/// One thread's inference state.
pub struct Session {
    state: SessionState,
    pad_id: i32,
}

impl Session {
    /// Scores token-id sequences, padding the batch to its longest sequence. One score per
    /// sequence, in order.
    pub fn score_ids<S: AsRef<[i32]>>(&mut self, seqs: &[S]) -> Result<Vec<f32>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        self.score_tensor(batch::pad_to_longest(seqs, self.pad_id))
    }

    /// Scores an already padded `[batch, seq]` tensor of token ids.
    pub fn score_tensor(&mut self, tokens: Array2<i32>) -> Result<Vec<f32>> {
        let rows = tokens.nrows();
        match &mut self.state {
            SessionState::Constant(s) => Ok(vec![*s; rows]),
            SessionState::Onnx(state) => {
                let out = state
                    .run(tvec!(Tensor::from(tokens).into()))
                    .map_err(Error::model)?;
                let scores = out
                    .first()
                    .ok_or_else(|| Error::Model("model produced no output".into()))?
                    .to_plain_array_view::<f32>()
                    .map_err(Error::model)?
                    .iter()
                    .copied()
                    .collect::<Vec<f32>>();
                if scores.len() != rows {
                    return Err(Error::Model(format!(
                        "model returned {} scores for {rows} inputs",
                        scores.len()
                    )));
                }
                Ok(scores)
            }
        }
    }

    /// Scores a batch, isolating failures: if the batched run fails (or yields a non-finite
    /// score), each sequence is retried alone so that one bad record cannot take its whole batch
    /// down. One result per sequence, in order; `Err` holds the reason.
    pub fn score_each<S: AsRef<[i32]>>(&mut self, seqs: &[S]) -> Vec<Result<f32, String>> {
        if let Ok(scores) = self.score_ids(seqs) {
            if scores.iter().all(|s| s.is_finite()) {
                return scores.into_iter().map(Ok).collect();
            }
        }
        seqs.iter()
            .map(|s| match self.score_ids(&[s.as_ref()]) {
                Ok(v) => match v.first() {
                    Some(x) if x.is_finite() => Ok(*x),
                    Some(x) => Err(format!("inference produced a non-finite score ({x})")),
                    None => Err("inference produced no score".into()),
                },
                Err(e) => Err(format!("inference failed: {e}")),
            })
            .collect()
    }

    /// Tokenizes and scores texts in one batch.
    pub fn score_texts(&mut self, tokenizer: &Tokenizer, texts: &[&str]) -> Result<Vec<f32>> {
        let ids: Vec<Vec<i32>> = texts.iter().map(|t| tokenizer.encode(t)).collect();
        self.score_ids(&ids)
    }
}
