//! The tract-onnx model: loaded once, run from one [`Session`] per thread.
//!
//! The ONNX graph has a symbolic batch dimension and sequence dimension. tract runs a plan built
//! for symbolic `[B, S]` through slow generic paths, so [`plan`] specialises one plan per
//! sequence length `S` (the batch size stays symbolic): at most `max_len` plans, built on first
//! use (a few ms each) and shared by every session (`Arc`). The mutable run state is per
//! session, as tract intends, so inference threads never contend on a lock once a plan exists.
//! Sequences longer than `max_len` (which the tokenizer never produces) run the generic plan.

pub mod batch;
pub mod drift;
pub mod files;
pub mod fused;
pub mod live;
pub mod plan;
pub mod tokenizer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tract_onnx::prelude::tract_ndarray::Array2;
use tract_onnx::prelude::*;

use self::plan::{BaseModel, Plan};

use crate::error::{Error, Result};
use crate::model::files::ModelFiles;
use crate::model::tokenizer::Tokenizer;

type PlanState = TypedSimpleState;

/// What produces scores: the real model, or a constant (benchmark pass-through mode).
#[derive(Clone)]
enum Backend {
    Onnx(Arc<Plans>),
    Constant(f32),
}

/// The plans of one model: one per sequence length `1..=max_seq`, built when first needed, and
/// the generic one for longer sequences. Bounded: at most `max_seq + 1` plans ever exist.
struct Plans {
    base: BaseModel,
    max_seq: usize,
    /// Index `s - 1` holds the plan for sequences of `s` positions.
    by_seq: Mutex<Vec<Option<Arc<Plan>>>>,
    generic: Mutex<Option<Arc<Plan>>>,
}

impl Plans {
    fn new(base: BaseModel, max_seq: usize) -> Plans {
        Plans {
            base,
            max_seq,
            by_seq: Mutex::new(vec![None; max_seq]),
            generic: Mutex::new(None),
        }
    }

    /// The plan for `seq_len` positions (`None`: the generic plan), building it on first use.
    /// Built outside the lock: two sessions that race build it twice and keep one.
    fn get(&self, seq_len: Option<usize>) -> Result<Arc<Plan>> {
        match seq_len.filter(|&s| (1..=self.max_seq).contains(&s)) {
            Some(s) => {
                if let Some(p) = lock(&self.by_seq)[s - 1].clone() {
                    return Ok(p);
                }
                let plan = self.base.plan_for_seq(s)?;
                let mut plans = lock(&self.by_seq);
                Ok(plans[s - 1].get_or_insert(plan).clone())
            }
            None => {
                if let Some(p) = lock(&self.generic).clone() {
                    return Ok(p);
                }
                let plan = self.base.generic_plan()?;
                Ok(lock(&self.generic).get_or_insert(plan).clone())
            }
        }
    }
}

/// A poisoned lock only means another thread panicked while inserting a finished plan; the
/// vector is still valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Builds the tokenizer and prepares the model from a model directory's contents.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let tokenizer = Self::tokenizer_of(files)?;
        let version = short_hash(&files.onnx);
        keep_freed_tensor_memory();
        let plans = Plans::new(
            BaseModel::from_onnx(&files.onnx)?,
            tokenizer.max_len().max(1),
        );
        // Fail at load, not on the first tweet, if the model cannot be specialised.
        plans.get(Some(1))?;
        Ok(Classifier {
            tokenizer: Arc::new(tokenizer),
            backend: Backend::Onnx(Arc::new(plans)),
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
            Backend::Onnx(plans) => SessionState::Onnx(Box::new(OnnxSession {
                plans: plans.clone(),
                by_seq: (0..plans.max_seq).map(|_| None).collect(),
                generic: None,
            })),
            Backend::Constant(s) => SessionState::Constant(*s),
        };
        Ok(Session {
            state,
            pad_id: self.tokenizer.pad_id(),
        })
    }
}

/// tract allocates every intermediate tensor of a run and frees it when the run no longer needs
/// it. A batch of 256 tweets has several tensors of ~2 MB; with glibc's defaults those are
/// mmap'd or trimmed off the heap on free and page-faulted back in on the next run, which cost
/// more (system) time than the inference itself: 1,340 page faults per batch, 0.8 s of system
/// time for 0.6 s of user time (see the README's inference section). Keeping up to 64 MiB of
/// freed heap for reuse makes those allocations free. Process-wide and idempotent; the memory it
/// keeps is bounded by the trim threshold.
fn keep_freed_tensor_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets allocator parameters; it is called before this process
            // runs inference, and a failure (return 0) leaves the defaults in place.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
            }
        });
    }
}

fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

enum SessionState {
    Onnx(Box<OnnxSession>),
    Constant(f32),
}

/// A session's run states: one per plan it has used.
struct OnnxSession {
    plans: Arc<Plans>,
    /// The run state for each sequence length this session has seen (index `s - 1`).
    by_seq: Vec<Option<PlanState>>,
    generic: Option<PlanState>,
}

impl OnnxSession {
    /// Runs each group (as the tensor `tensor_for` builds for it) and puts the scores back in
    /// row order.
    fn run_groups(
        &mut self,
        rows: usize,
        groups: &[batch::Group],
        mut tensor_for: impl FnMut(&batch::Group) -> Array2<i32>,
    ) -> Result<Vec<f32>> {
        let mut scores = vec![f32::NAN; rows];
        for g in groups {
            for (&row, score) in g.rows.iter().zip(self.run(tensor_for(g))?) {
                scores[row] = score;
            }
        }
        Ok(scores)
    }

    /// Runs the plan for this tensor's sequence length (built on first use).
    fn run(&mut self, tokens: Array2<i32>) -> Result<Vec<f32>> {
        let (rows, seq_len) = tokens.dim();
        let slot = match self.by_seq.get_mut(seq_len.wrapping_sub(1)) {
            Some(slot) => slot,
            None => &mut self.generic,
        };
        if slot.is_none() {
            let specialised = (seq_len <= self.plans.max_seq).then_some(seq_len);
            let plan = self.plans.get(specialised)?;
            *slot = Some(PlanState::new(&plan).map_err(Error::model)?);
        }
        let state = slot
            .as_mut()
            .ok_or_else(|| Error::Model("no plan state".into()))?;
        let out = match state.run(tvec!(Tensor::from(tokens).into())) {
            Ok(out) => out,
            Err(e) => {
                // A run that fails midway leaves tract's state inside its turn, with the batch
                // size it resolved: every later run of another batch size would then fail
                // ("Clashing resolution for expression"), and one bad tweet would take down
                // every batch after it. The state is rebuilt on next use.
                *slot = None;
                return Err(Error::model(e));
            }
        };
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

/// One thread's inference state.
pub struct Session {
    state: SessionState,
    pad_id: i32,
}

/// What one more model run costs, in padded positions, when a batch is split into groups of
/// similar length ([`batch::group_by_length`]). Measured with `examples/profile_nodes.rs`: a run
/// has ~15 µs of fixed work (node dispatch, allocations, the pool geometry); a padded position
/// cost ~0.1 µs before the convolution was fused ([`plan`]), ~0.055 µs since. (Batch-256
/// throughput with 128, 320 and 640 here was within this machine's ±40 % noise.)
const RUN_COST_IN_POSITIONS: usize = 256;

impl Session {
    /// Scores token-id sequences. One score per sequence, in order. Sequences of very different
    /// lengths run in separate groups, each padded to its own longest (a score does not depend
    /// on padding), so one long tweet does not pad the whole batch.
    pub fn score_ids<S: AsRef<[i32]>>(&mut self, seqs: &[S]) -> Result<Vec<f32>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let pad_id = self.pad_id;
        match &mut self.state {
            SessionState::Constant(s) => Ok(vec![*s; seqs.len()]),
            SessionState::Onnx(session) => {
                let lengths: Vec<usize> = seqs.iter().map(|s| s.as_ref().len()).collect();
                let groups = batch::group_by_length(&lengths, RUN_COST_IN_POSITIONS);
                session.run_groups(seqs.len(), &groups, |g| {
                    let rows: Vec<&[i32]> = g.rows.iter().map(|&r| seqs[r].as_ref()).collect();
                    batch::pad_to(&rows, pad_id, g.len)
                })
            }
        }
    }

    /// Scores an already padded `[batch, seq]` tensor of token ids. Trailing padding is not
    /// significant: rows run in groups of similar unpadded length, as in [`Self::score_ids`].
    pub fn score_tensor(&mut self, tokens: Array2<i32>) -> Result<Vec<f32>> {
        let (rows, cols) = tokens.dim();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let pad_id = self.pad_id;
        match &mut self.state {
            SessionState::Constant(s) => Ok(vec![*s; rows]),
            SessionState::Onnx(session) => {
                let lengths: Vec<usize> = tokens
                    .rows()
                    .into_iter()
                    .map(|r| match r.as_slice() {
                        Some(r) => batch::unpadded_len(r, pad_id),
                        None => batch::unpadded_len(&r.to_vec(), pad_id),
                    })
                    .collect();
                let groups = batch::group_by_length(&lengths, RUN_COST_IN_POSITIONS);
                if let [whole] = &groups[..] {
                    if whole.len == cols {
                        return session.run(tokens);
                    }
                }
                session.run_groups(rows, &groups, |g| {
                    // The model needs one position: a group of empty rows gets one pad column.
                    Array2::from_shape_fn((g.rows.len(), g.len), |(i, j)| {
                        tokens.get((g.rows[i], j)).copied().unwrap_or(pad_id)
                    })
                })
            }
        }
    }

    /// Scores a batch, isolating failures: if the batched run fails (or yields a non-finite
    /// score), each sequence is retried alone so that one bad record cannot take its whole batch
    /// down. One result per sequence, in order; `Err` holds the reason.
    pub fn score_each<S: AsRef<[i32]>>(&mut self, seqs: &[S]) -> Vec<Result<f32, String>> {
        self.score_isolating(seqs).0
    }

    /// [`Session::score_each`], also saying whether the batched run failed and each sequence
    /// was scored alone (what `kafka_infer_tweets_rescored_alone_total` counts).
    pub fn score_isolating<S: AsRef<[i32]>>(
        &mut self,
        seqs: &[S],
    ) -> (Vec<Result<f32, String>>, bool) {
        if let Ok(scores) = self.score_ids(seqs) {
            if scores.iter().all(|s| s.is_finite()) {
                return (scores.into_iter().map(Ok).collect(), false);
            }
        }
        let alone = seqs
            .iter()
            .map(|s| match self.score_ids(&[s.as_ref()]) {
                Ok(v) => match v.first() {
                    Some(x) if x.is_finite() => Ok(*x),
                    Some(x) => Err(format!("inference produced a non-finite score ({x})")),
                    None => Err("inference produced no score".into()),
                },
                Err(e) => Err(format!("inference failed: {e}")),
            })
            .collect();
        (alone, true)
    }

    /// Tokenizes and scores texts in one batch.
    pub fn score_texts(&mut self, tokenizer: &Tokenizer, texts: &[&str]) -> Result<Vec<f32>> {
        let ids: Vec<Vec<i32>> = texts.iter().map(|t| tokenizer.encode(t)).collect();
        self.score_ids(&ids)
    }
}
