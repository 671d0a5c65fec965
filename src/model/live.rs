//! The model's life in production: the live model, validated reloads, and the checks a model
//! must pass before it may score anything.
//!
//! Every chunk of records carries the [`LiveModel`] that was live when its partition thread
//! tokenized it, and is scored by that same model (the batcher never mixes models in a batch,
//! each inference thread keeps a session per model it meets): a reload never mixes one model's
//! vocabulary with another's weights, and every output's `model-version` header names the
//! model that actually scored it.
//!
//! A new model is loaded and validated off the hot path — it must reproduce its own golden
//! vectors (token ids exactly, scores within [`GOLDEN_TOLERANCE`]) and give finite scores —
//! then swapped in between chunks. A model that fails is rejected with one log line and a
//! metric; the live model keeps serving.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::drift::{Drift, Reference};
use crate::model::files::ModelFiles;
use crate::model::Classifier;

/// How far a reloaded model's scores may be from its own golden scores (onnxruntime's, written
/// by the training script); tract and onnxruntime agree within ~2e-7 on the shipped model.
pub const GOLDEN_TOLERANCE: f32 = 1e-4;

/// Recent scores (and, separately, recent tweets) that drift statistics compare with the
/// training reference: PSI's noise floor for data that follow the reference is then about
/// 0.001, a hundred times below the 0.1 "stable" mark (see [`crate::model::drift`]).
pub const DRIFT_WINDOW: usize = 10_000;

/// A model that passed validation, with what the worker needs to serve and watch it.
pub struct LiveModel {
    /// Unique per load (a reload of identical files is a new id but the same version).
    pub id: u64,
    /// `model-version` header: 12 hex digits of the ONNX file's SHA-256 (`none` in pass-through).
    pub version: String,
    pub classifier: Classifier,
    /// Where it came from (a directory, or `built-in`).
    pub origin: String,
    /// Fingerprint of all the files it was loaded from, to notice changes.
    pub fingerprint: [u8; 32],
    /// Live statistics of this model's scores and inputs against its training reference.
    pub drift: Arc<Drift>,
}

static NEXT_MODEL: AtomicU64 = AtomicU64::new(1);

impl LiveModel {
    /// Loads and validates a model from its files.
    pub fn load(files: &ModelFiles, passthrough: bool) -> Result<LiveModel> {
        let classifier = if passthrough {
            Classifier::constant(files, 0.5)?
        } else {
            let c = Classifier::from_files(files)?;
            validate(&c, files)?;
            c
        };
        let version = classifier.version().to_owned();
        // Pass-through scores are constants: nothing to compare with the reference.
        let reference = if passthrough {
            None
        } else {
            reference_for(files, &version)?
        };
        Ok(LiveModel {
            id: NEXT_MODEL.fetch_add(1, Ordering::Relaxed),
            drift: Arc::new(Drift::new(reference, DRIFT_WINDOW)),
            version,
            classifier,
            origin: files.origin.clone(),
            fingerprint: fingerprint(files),
        })
    }
}

/// The model's `reference.json`, if it has one that was computed for this very model. A file
/// that does not parse rejects the model (every PSI against it would be a lie); a reference of
/// another model (a stale file beside a retrained `model.onnx`) is ignored with a warning, so
/// the drift gauges stay absent rather than wrong.
fn reference_for(files: &ModelFiles, version: &str) -> Result<Option<Reference>> {
    let Some(bytes) = files.reference.as_deref() else {
        return Ok(None);
    };
    let reference =
        Reference::from_json(bytes).map_err(|e| Error::Config(format!("{}: {e}", files.origin)))?;
    if reference.belongs_to(version) {
        Ok(Some(reference))
    } else {
        tracing::warn!(
            origin = %files.origin,
            version,
            "reference.json was computed for another model.onnx: no drift statistics for this model"
        );
        Ok(None)
    }
}

impl std::fmt::Debug for LiveModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "model {} from {}", self.version, self.origin)
    }
}

/// SHA-256 over every file of the model directory (in a fixed order, each length-prefixed).
pub fn fingerprint(files: &ModelFiles) -> [u8; 32] {
    let mut h = Sha256::new();
    let golden = files.golden.as_deref().unwrap_or("");
    for part in [
        &files.onnx[..],
        files.vocab.as_bytes(),
        &files.preprocess[..],
        golden.as_bytes(),
        files.reference.as_deref().unwrap_or(b""),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[derive(Deserialize)]
struct Golden {
    text: String,
    ids: Vec<i32>,
    score: f32,
}

/// A model may serve only if it reproduces its own golden vectors (written by the training
/// script next to it: token ids exactly, scores within [`GOLDEN_TOLERANCE`]) and every score it
/// gives is finite.
pub fn validate(classifier: &Classifier, files: &ModelFiles) -> Result<()> {
    let bad = |why: String| Error::Config(format!("model from {} rejected: {why}", files.origin));
    let golden = files
        .golden
        .as_deref()
        .ok_or_else(|| bad("no golden.jsonl to validate it against".into()))?;
    let cases: Vec<Golden> = golden
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| bad(format!("golden.jsonl line {}: {e}", i + 1)))
        })
        .collect::<Result<_>>()?;
    if cases.is_empty() {
        return Err(bad("golden.jsonl is empty".into()));
    }
    let tok = classifier.tokenizer();
    for (i, g) in cases.iter().enumerate() {
        if tok.encode(&g.text) != g.ids {
            return Err(bad(format!(
                "golden line {}: its tokenizer gives other token ids than the training preprocessing",
                i + 1
            )));
        }
    }
    let mut session = classifier.session()?;
    let ids: Vec<&[i32]> = cases.iter().map(|g| g.ids.as_slice()).collect();
    let scores = session.score_ids(&ids)?;
    for (i, (g, s)) in cases.iter().zip(&scores).enumerate() {
        if !s.is_finite() {
            return Err(bad(format!(
                "golden line {}: score {s} is not finite",
                i + 1
            )));
        }
        if (s - g.score).abs() > GOLDEN_TOLERANCE {
            return Err(bad(format!(
                "golden line {}: score {s} where its golden vectors say {}",
                i + 1,
                g.score
            )));
        }
    }
    Ok(())
}

/// The model that new records are tokenized and scored with; swapped by reloads.
pub struct Models {
    current: RwLock<Arc<LiveModel>>,
}

impl Models {
    pub fn new(initial: LiveModel) -> Arc<Models> {
        Arc::new(Models {
            current: RwLock::new(Arc::new(initial)),
        })
    }

    pub fn current(&self) -> Arc<LiveModel> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `model` the live one; returns the one it replaces.
    pub fn swap(&self, model: LiveModel) -> Arc<LiveModel> {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *cur, Arc::new(model))
    }
}

/// What a reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files did not change.
    Unchanged,
    /// A new model is live.
    Swapped { from: String, to: String },
    /// The files changed but the model was rejected; the live one keeps serving.
    Rejected(String),
}

/// Watches a model directory (polling, and on request) and swaps in validated models.
pub struct Reloader {
    dir: PathBuf,
    models: Arc<Models>,
    /// Files seen at the previous poll, not yet loaded: a change is loaded only once the files
    /// have stayed the same for a whole poll interval (a copy in progress is not a model).
    pending: Option<[u8; 32]>,
    /// The last fingerprint rejected: not retried (nor logged) until the files change again.
    rejected: Option<[u8; 32]>,
}

impl Reloader {
    pub fn new(dir: PathBuf, models: Arc<Models>) -> Reloader {
        Reloader {
            dir,
            models,
            pending: None,
            rejected: None,
        }
    }

    /// Checks the directory once. `force` (SIGHUP) loads a change at once, without waiting for
    /// the files to settle, and retries a rejected model.
    pub fn check(&mut self, force: bool) -> Reload {
        let files = match ModelFiles::read(&self.dir) {
            Ok(f) => f,
            Err(e) => return self.reject(None, format!("{e:#}")),
        };
        let fp = fingerprint(&files);
        let live = self.models.current();
        if fp == live.fingerprint {
            self.pending = None;
            return Reload::Unchanged;
        }
        if !force {
            if self.rejected == Some(fp) {
                return Reload::Unchanged;
            }
            if self.pending != Some(fp) {
                self.pending = Some(fp);
                return Reload::Unchanged;
            }
        }
        self.pending = None;
        match LiveModel::load(&files, false) {
            Ok(model) => {
                let to = model.version.clone();
                let old = self.models.swap(model);
                self.rejected = None;
                Reload::Swapped {
                    from: old.version.clone(),
                    to,
                }
            }
            Err(e) => self.reject(Some(fp), format!("{e:#}")),
        }
    }

    fn reject(&mut self, fp: Option<[u8; 32]>, why: String) -> Reload {
        if fp.is_some() && self.rejected == fp {
            return Reload::Unchanged;
        }
        self.rejected = fp;
        Reload::Rejected(why)
    }
}

/// Runs a [`Reloader`] on its own thread: every `poll` (if not zero) and whenever `hup` is
/// set (SIGHUP). `on_reload` sees every swap and rejection (for logs and metrics).
pub fn spawn_reloader(
    mut reloader: Reloader,
    poll: Duration,
    hup: Arc<AtomicBool>,
    stop: impl Fn() -> bool + Send + 'static,
    on_reload: impl Fn(&Reload) + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("model-reload".into())
        .spawn(move || {
            let mut last = Instant::now();
            while !stop() {
                std::thread::sleep(Duration::from_millis(100));
                let forced = hup.swap(false, Ordering::AcqRel);
                let due = !poll.is_zero() && last.elapsed() >= poll;
                if !(forced || due) {
                    continue;
                }
                last = Instant::now();
                let outcome = reloader.check(forced);
                if outcome != Reload::Unchanged {
                    on_reload(&outcome);
                }
            }
        })
        .map_err(|e| Error::io("model-reload thread", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &ModelFiles, name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ki-models-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("model.onnx"), &files.onnx).expect("write");
        std::fs::write(dir.join("vocab.txt"), files.vocab.as_bytes()).expect("write");
        std::fs::write(dir.join("preprocess.json"), &files.preprocess).expect("write");
        if let Some(g) = &files.golden {
            std::fs::write(dir.join("golden.jsonl"), g.as_bytes()).expect("write");
        }
        dir
    }

    #[test]
    fn the_built_in_model_passes_its_own_golden_vectors() {
        let m = LiveModel::load(&ModelFiles::builtin(), false).expect("valid");
        assert_eq!(m.version.len(), 12);
    }

    #[test]
    fn a_model_whose_golden_scores_do_not_match_is_rejected() {
        let mut files = ModelFiles::builtin();
        let golden =
            files
                .golden
                .as_deref()
                .expect("golden")
                .replacen("\"score\": 0.", "\"score\": 1.", 1);
        files.golden = Some(golden.into());
        let err = LiveModel::load(&files, false).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("golden line 1: score")),
            "{err:?}"
        );
    }

    #[test]
    fn a_model_without_golden_vectors_is_rejected() {
        let mut files = ModelFiles::builtin();
        files.golden = None;
        assert!(LiveModel::load(&files, false).is_err());
    }

    #[test]
    fn a_change_is_loaded_once_the_files_have_settled_and_a_bad_one_is_rejected_once() {
        let good = ModelFiles::builtin();
        let dir = dir_with(&good, "reload");
        let models = Models::new(LiveModel::load(&good, false).expect("valid"));
        let mut r = Reloader::new(dir.clone(), models.clone());
        assert_eq!(r.check(false), Reload::Unchanged, "same files");
        // A broken model: truncated ONNX.
        std::fs::write(dir.join("model.onnx"), &good.onnx[..1000]).expect("write");
        assert_eq!(
            r.check(false),
            Reload::Unchanged,
            "first sight: wait to settle"
        );
        assert!(matches!(r.check(false), Reload::Rejected(_)));
        assert_eq!(
            r.check(false),
            Reload::Unchanged,
            "rejected once, not again"
        );
        assert_eq!(models.current().version, good_version(&good));
        // Back to the good files: the live model's fingerprint, nothing to do.
        std::fs::write(dir.join("model.onnx"), &good.onnx).expect("write");
        assert_eq!(r.check(false), Reload::Unchanged);
        // A forced check of different (valid) files swaps at once: same weights, but the
        // golden file differs (an extra blank line), so the fingerprint does.
        let g = format!("{}\n", good.golden.as_deref().unwrap_or_default());
        std::fs::write(dir.join("golden.jsonl"), g).expect("write");
        assert!(matches!(r.check(true), Reload::Swapped { .. }));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn good_version(files: &ModelFiles) -> String {
        Classifier::from_files(files)
            .expect("model")
            .version()
            .to_owned()
    }
}
