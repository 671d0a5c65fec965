//! Drift statistics: live scores and token counts of one model version, compared with the
//! model's training reference (`model/reference.json`, described in `model/README.md`).
//!
//! The worker calls [`Drift::observe_scores`] once per inference batch and
//! [`Drift::observe_tweets`] once per chunk, from several threads, so both take `&self`, never
//! lock and never allocate: every counter is an atomic, and the per-call work is a bucket
//! lookup per value (a binary search over ≤ 65 edges) plus one atomic swap per value and a few
//! atomic adds per call. [`Drift::snapshot`] (at scrape time) reads the atomics and does the
//! arithmetic; it may allocate.
//!
//! # The recent window: a ring, not decaying counts
//!
//! PSI compares the *recent* traffic with the reference. "Recent" is the last `window`
//! scores (and, separately, the last `window` tweets), kept in a ring of one small slot per
//! value: a byte per score (its bucket and whether it is positive), four bytes per tweet (its
//! id and OOV counts). A writer reserves a range of slots with one `fetch_add` on the ring's
//! head and `swap`s its values in; the value a swap returns is the one that leaves the window,
//! and the windowed bucket counts move by the difference. Because every value is swapped in
//! once and out once, the windowed counts always equal the ring's content once concurrent
//! writers finish (while two writers overlap a count may be off by a few, never for long).
//!
//! Decaying bucket counts (multiply by λ every tick) were the alternative. The ring won
//! because its sample size is exact — the last N values, so PSI's noise floor is known
//! (≈ (buckets − 1) / N for data that follow the reference: 0.001 at N = 10 000) — and
//! because it needs neither a lock nor compare-and-swap loops on floats. It costs 5 bytes per
//! slot (50 KB at N = 10 000). Its window is counted in values, not seconds: at low traffic it
//! reaches further back in time.
//!
//! # Buckets
//!
//! Bucket `i` holds `edges[i] <= v < edges[i+1]`; the last bucket also holds `v == edges[-1]`
//! (the rule of `reference.json`, i.e. numpy's `histogram`). Scores are `f32`; they are widened
//! to `f64` before the comparison, exactly as the training script's numpy code does, so a score
//! lands in the same bucket on both sides (`0.7_f32` is 0.69999998… and falls in `[0.6, 0.7)`
//! on both). Values outside `[edges[0], edges[-1]]` (no sigmoid output or truncated token list
//! produces one) are counted in the nearest end bucket rather than dropped, so that PSI still
//! sees them, as mass at the extreme. NaN scores are counted in `scores_total` (and the `+Inf`
//! histogram bucket) but nowhere else: they have no bucket, no sign and no place in a sum.
//!
//! The all-time score histogram of [`DriftSnapshot::score_buckets`] uses Prometheus's rule
//! instead (`le`: `v <= upper edge`, cumulative), so that it is a correct Prometheus histogram;
//! the two rules differ only for a score exactly equal to an inner edge.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Floor for both fractions in PSI, as `model/README.md` suggests, so that an empty bucket on
/// either side gives a large but finite term instead of ln(0).
pub const PSI_FLOOR: f64 = 1e-4;

/// PSI is `None` until the recent window holds this many values (or the whole window, if the
/// window is smaller). Data that follow the reference give a PSI of about
/// (buckets − 1) / n: 0.02 at 500 with the 10 score buckets, well below the 0.1 "stable"
/// mark, whereas at 100 the noise alone would reach it, and a rare reference bucket (0.8 % of
/// tweets have 26+ tokens) would too often be empty by chance.
pub const MIN_PSI_SAMPLES: usize = 500;

/// Decision threshold used without a reference (the model's: `model/README.md`).
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// Score edges used without a reference: those of the shipped `reference.json`, so that the
/// score histogram has the same buckets with or without one.
const DEFAULT_SCORE_EDGES: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Most buckets a histogram of the reference may have: a score's ring slot keeps its bucket in
/// 6 bits (the 7th says "positive"), and the per-call counters live on the stack.
pub const MAX_BUCKETS: usize = 64;

/// An empty score slot. A value is its bucket (< 64: 6 bits) | [`POSITIVE_BIT`], at most 0x7F.
const EMPTY_SCORE: u8 = 0xFF;
const POSITIVE_BIT: u8 = 0x40;
const BUCKET_MASK: u8 = 0x3F;

/// An empty tweet slot. Tweet slots pack `ids | oov << 16` with `ids <= 0xFFFE`, so never this.
const EMPTY_TWEET: u32 = u32::MAX;
const MAX_PACKED_IDS: usize = 0xFFFE;

/// Largest window: 5 bytes a slot, 80 MB at this size. A mistyped flag should not abort the
/// worker on allocation.
pub const MAX_WINDOW: usize = 1 << 24;

/// Tweets are written to the ring in blocks of this many (one `fetch_add` per block), since an
/// iterator does not say its length.
const TWEET_BLOCK: usize = 64;

/// One histogram of the reference: bucket edges and the share of the reference data in each.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    edges: Vec<f64>,
    fractions: Vec<f64>,
}

impl Buckets {
    /// Checks what PSI relies on: finite, strictly increasing edges, one non-negative fraction
    /// per bucket, fractions summing to 1 (within the rounding of the file: 6 decimals).
    pub fn new(edges: Vec<f64>, fractions: Vec<f64>, what: &str) -> Result<Buckets> {
        let bad = |reason: String| {
            Err(Error::Config(format!(
                "bad reference.json: {what}: {reason}"
            )))
        };
        if edges.len() < 2 || edges.len() > MAX_BUCKETS + 1 {
            return bad(format!(
                "{} edges, expected 2 to {}",
                edges.len(),
                MAX_BUCKETS + 1
            ));
        }
        if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
            return bad(format!(
                "edges {edges:?} are not finite and strictly increasing"
            ));
        }
        if fractions.len() != edges.len() - 1 {
            return bad(format!(
                "{} fractions for {} buckets",
                fractions.len(),
                edges.len() - 1
            ));
        }
        if fractions.iter().any(|f| !f.is_finite() || *f < 0.0) {
            return bad(format!(
                "fractions {fractions:?} are not all finite and ≥ 0"
            ));
        }
        let sum: f64 = fractions.iter().sum();
        if (sum - 1.0).abs() > 1e-3 {
            return bad(format!("fractions sum to {sum}, not 1"));
        }
        Ok(Buckets { edges, fractions })
    }

    /// The bucket edges (one more than buckets).
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// The reference's share of values per bucket.
    pub fn fractions(&self) -> &[f64] {
        &self.fractions
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.fractions.len()
    }

    /// Always false: a valid histogram has at least one bucket (for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.fractions.is_empty()
    }

    /// The bucket of `v` under the reference rule (see the module doc); out-of-range values go
    /// to the nearest end bucket. NaN must be filtered out by the caller (it would land in 0).
    pub fn index(&self, v: f64) -> usize {
        bucket_index(&self.edges, v)
    }
}

/// `edges[i] <= v < edges[i+1]` → `i`; `v == edges[-1]` and above → the last bucket; below
/// `edges[0]` → 0. `edges` has at least 2 entries.
fn bucket_index(edges: &[f64], v: f64) -> usize {
    // The number of edges ≤ v, minus one, is the bucket; clamp both ends.
    edges
        .partition_point(|&e| e <= v)
        .saturating_sub(1)
        .min(edges.len() - 2)
}

/// The training reference of one model (parsed `reference.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Score histogram of the held-out reference data.
    pub score: Buckets,
    /// Ids-per-tweet histogram (after preprocessing and truncation).
    pub tokens_per_tweet: Buckets,
    /// Share of out-of-vocabulary ids among all ids of the reference tweets.
    pub oov_token_rate: f64,
    /// Score at or above which a tweet counts as positive.
    pub threshold: f64,
    /// SHA-256 of the `model.onnx` the statistics belong to, if the file names one.
    pub model_onnx_sha256: Option<String>,
}

/// Only the parts of `reference.json` the worker uses; serde ignores the rest (counts, means,
/// percentiles, the per-tweet OOV histogram), so that adding statistics to the file does not
/// break older workers.
#[derive(Deserialize)]
struct RawReference {
    format: u32,
    #[serde(default)]
    model_onnx_sha256: Option<String>,
    score: RawScore,
    tokens_per_tweet: RawBuckets,
    oov: RawOov,
}

#[derive(Deserialize)]
struct RawScore {
    edges: Vec<f64>,
    fractions: Vec<f64>,
    threshold: f64,
}

#[derive(Deserialize)]
struct RawBuckets {
    edges: Vec<f64>,
    fractions: Vec<f64>,
}

#[derive(Deserialize)]
struct RawOov {
    token_rate: f64,
}

impl Reference {
    /// Parses and checks `reference.json`. Any problem is an [`Error::Config`] that says what
    /// is wrong, because a reference that parses but is wrong would make every PSI a lie.
    pub fn from_json(bytes: &[u8]) -> Result<Reference> {
        let raw: RawReference = serde_json::from_slice(bytes)
            .map_err(|e| Error::Config(format!("bad reference.json: {e}")))?;
        if raw.format != 1 {
            return Err(Error::Config(format!(
                "bad reference.json: format {}, this build reads format 1",
                raw.format
            )));
        }
        if !raw.score.threshold.is_finite() {
            return Err(Error::Config(
                "bad reference.json: score.threshold is not a number".into(),
            ));
        }
        if !(0.0..=1.0).contains(&raw.oov.token_rate) {
            return Err(Error::Config(format!(
                "bad reference.json: oov.token_rate {} is not in [0, 1]",
                raw.oov.token_rate
            )));
        }
        Ok(Reference {
            score: Buckets::new(raw.score.edges, raw.score.fractions, "score")?,
            tokens_per_tweet: Buckets::new(
                raw.tokens_per_tweet.edges,
                raw.tokens_per_tweet.fractions,
                "tokens_per_tweet",
            )?,
            oov_token_rate: raw.oov.token_rate,
            threshold: raw.score.threshold,
            model_onnx_sha256: raw.model_onnx_sha256,
        })
    }

    /// Whether this reference was computed for the model whose version is `version` (the
    /// worker's model version is a prefix of the ONNX file's SHA-256). A reference without a
    /// hash matches nothing: statistics of another model would be compared as if they were
    /// this one's.
    pub fn belongs_to(&self, version: &str) -> bool {
        !version.is_empty()
            && self
                .model_onnx_sha256
                .as_deref()
                .is_some_and(|sha| sha.starts_with(version))
    }
}

/// Population stability index of live bucket counts against reference fractions:
/// `Σ (a_i − e_i) · ln(a_i / e_i)` with both fractions floored at [`PSI_FLOOR`] (as
/// `model/README.md` suggests; the floored fractions are not renormalised). Reading: < 0.1
/// stable, 0.1–0.25 moderate shift, > 0.25 large shift. `None` if there are no live counts or
/// the lengths differ.
pub fn psi(live_counts: &[u64], reference_fractions: &[f64]) -> Option<f64> {
    let n: u64 = live_counts.iter().sum();
    if n == 0 || live_counts.len() != reference_fractions.len() {
        return None;
    }
    let n = n as f64;
    Some(
        live_counts
            .iter()
            .zip(reference_fractions)
            .map(|(&c, &e)| {
                let a = (c as f64 / n).max(PSI_FLOOR);
                let e = e.max(PSI_FLOOR);
                (a - e) * (a / e).ln()
            })
            .sum(),
    )
}

/// Live statistics of one model version, compared with its reference. Shared by the worker's
/// threads (`&self` everywhere; `Send + Sync`).
pub struct Drift {
    reference: Option<Reference>,
    window: usize,
    /// The reference's score edges, or [`DEFAULT_SCORE_EDGES`].
    score_edges: Vec<f64>,
    threshold: f64,

    // All-time scores.
    /// Per bucket under the Prometheus rule (`v <= upper edge`), then one for `+Inf` (scores
    /// above the last edge, and NaN). Not cumulative: summed at snapshot time.
    score_le_counts: Box<[AtomicU64]>,
    positives_total: AtomicU64,
    /// f64 bits; added with a compare-and-swap once per call.
    score_sum_bits: AtomicU64,

    // Recent scores.
    score_ring: Box<[AtomicU8]>,
    score_head: AtomicU64,
    /// Per bucket (reference rule). i64: may dip below 0 for an instant (see the module doc).
    recent_score_counts: Box<[AtomicI64]>,
    recent_positives: AtomicI64,

    // Recent tweets.
    tweet_ring: Box<[AtomicU32]>,
    tweet_head: AtomicU64,
    /// Per tokens-per-tweet bucket; empty without a reference.
    recent_length_counts: Box<[AtomicI64]>,
    recent_tweets: AtomicI64,
    recent_ids: AtomicI64,
    recent_oov: AtomicI64,
}

/// What [`Drift::snapshot`] returns: ready for the `/metrics` exposition.
#[derive(Debug, Clone)]
pub struct DriftSnapshot {
    /// Scores observed since start (NaN included).
    pub scores_total: u64,
    /// Scores `>= threshold` since start.
    pub positives_total: u64,
    /// All-time score histogram: `(upper edge, cumulative count)`, Prometheus's `le` rule,
    /// ending with `(+Inf, scores_total)`.
    pub score_buckets: Vec<(f64, u64)>,
    /// Sum of all non-NaN scores since start.
    pub score_sum: f64,
    /// Share of positives among the recent scores; NaN while there are none.
    pub recent_positive_rate: f64,
    /// PSI of the recent scores vs the reference; `None` without a reference or with fewer
    /// than [`MIN_PSI_SAMPLES`] recent scores (or a full window, if smaller).
    pub score_psi: Option<f64>,
    /// Same for ids per tweet.
    pub token_length_psi: Option<f64>,
    /// OOV ids / all ids of the recent tweets; NaN while they have no ids.
    pub recent_oov_rate: f64,
    /// The reference's OOV rate, for the same panel.
    pub reference_oov_rate: Option<f64>,
    /// Mean ids per recent tweet; NaN while there are none.
    pub recent_mean_tokens: f64,
}

fn atomics<A: Default>(n: usize) -> Box<[A]> {
    std::iter::repeat_with(A::default).take(n).collect()
}

/// Adds per-call deltas to shared counters, skipping zeros (most buckets of a small batch).
fn add_deltas(counters: &[AtomicI64], deltas: &[i64]) {
    for (c, &d) in counters.iter().zip(deltas) {
        if d != 0 {
            c.fetch_add(d, Relaxed);
        }
    }
}

fn load_counts(counters: &[AtomicI64]) -> Vec<u64> {
    counters
        .iter()
        .map(|c| u64::try_from(c.load(Relaxed)).unwrap_or(0))
        .collect()
}

/// `num / den`, NaN when there is nothing to divide by (0 would read as a real figure).
/// Negative numerators (a counter caught mid-update) count as 0.
fn ratio(num: i64, den: i64) -> f64 {
    if den > 0 {
        num.max(0) as f64 / den as f64
    } else {
        f64::NAN
    }
}

/// A share in [0, 1] (see [`ratio`]); `f64::min` would turn NaN into 1.
fn share(num: i64, den: i64) -> f64 {
    let r = ratio(num, den);
    if r > 1.0 {
        1.0
    } else {
        r
    }
}

impl Drift {
    /// Statistics compared with `reference` (or none: then the histogram uses the shipped
    /// score edges, the threshold is [`DEFAULT_THRESHOLD`] and every PSI is `None`). `window`
    /// is the number of recent scores, and separately of recent tweets, that PSI and the
    /// `recent_*` figures look at (clamped to 1..=[`MAX_WINDOW`]; 10 000 is a good value).
    pub fn new(reference: Option<Reference>, window: usize) -> Drift {
        let window = window.clamp(1, MAX_WINDOW);
        let (score_edges, threshold, length_buckets) = match &reference {
            Some(r) => (r.score.edges.clone(), r.threshold, r.tokens_per_tweet.len()),
            None => (DEFAULT_SCORE_EDGES.to_vec(), DEFAULT_THRESHOLD, 0),
        };
        let score_buckets = score_edges.len() - 1;
        let score_ring: Box<[AtomicU8]> = (0..window).map(|_| AtomicU8::new(EMPTY_SCORE)).collect();
        let tweet_ring: Box<[AtomicU32]> =
            (0..window).map(|_| AtomicU32::new(EMPTY_TWEET)).collect();
        Drift {
            reference,
            window,
            score_edges,
            threshold,
            score_le_counts: atomics(score_buckets + 1),
            positives_total: AtomicU64::new(0),
            score_sum_bits: AtomicU64::new(0.0_f64.to_bits()),
            score_ring,
            score_head: AtomicU64::new(0),
            recent_score_counts: atomics(score_buckets),
            recent_positives: AtomicI64::new(0),
            tweet_ring,
            tweet_head: AtomicU64::new(0),
            recent_length_counts: atomics(length_buckets),
            recent_tweets: AtomicI64::new(0),
            recent_ids: AtomicI64::new(0),
            recent_oov: AtomicI64::new(0),
        }
    }

    /// The reference this compares with.
    pub fn reference(&self) -> Option<&Reference> {
        self.reference.as_ref()
    }

    /// The window size (values per ring).
    pub fn window(&self) -> usize {
        self.window
    }

    /// Records one inference batch's scores. Lock-free, no allocation.
    pub fn observe_scores(&self, scores: &[f32]) {
        if scores.is_empty() {
            return;
        }
        let nb = self.score_edges.len() - 1;

        // All-time histogram, positives and sum.
        let mut le = [0u64; MAX_BUCKETS + 1];
        let mut positives = 0u64;
        let mut sum = 0.0f64;
        let mut valid = 0usize;
        for &s in scores {
            let v = f64::from(s);
            if v.is_nan() {
                le[nb] += 1;
                continue;
            }
            valid += 1;
            sum += v;
            positives += u64::from(v >= self.threshold);
            le[self.le_index(v)] += 1;
        }
        for (c, &d) in self.score_le_counts.iter().zip(&le[..=nb]) {
            if d != 0 {
                c.fetch_add(d, Relaxed);
            }
        }
        self.positives_total.fetch_add(positives, Relaxed);
        if sum != 0.0 {
            let mut cur = self.score_sum_bits.load(Relaxed);
            loop {
                let new = (f64::from_bits(cur) + sum).to_bits();
                match self
                    .score_sum_bits
                    .compare_exchange_weak(cur, new, Relaxed, Relaxed)
                {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            }
        }

        // Recent window: only the last `window` valid scores of the batch can stay in it.
        let keep = valid.min(self.window);
        if keep == 0 {
            return;
        }
        let start = self.score_head.fetch_add(keep as u64, Relaxed);
        let mut deltas = [0i64; MAX_BUCKETS];
        let mut positives_delta = 0i64;
        let tail = scores
            .iter()
            .map(|&s| f64::from(s))
            .filter(|v| !v.is_nan())
            .skip(valid - keep);
        for (k, v) in tail.enumerate() {
            let bucket = bucket_index(&self.score_edges, v);
            let positive = v >= self.threshold;
            // bucket < MAX_BUCKETS = 64 (checked when the reference was parsed).
            let slot_value = bucket as u8 | if positive { POSITIVE_BIT } else { 0 };
            deltas[bucket] += 1;
            positives_delta += i64::from(positive);
            let old = self.score_ring[self.slot(start, k)].swap(slot_value, Relaxed);
            if old != EMPTY_SCORE {
                deltas[usize::from(old & BUCKET_MASK)] -= 1;
                positives_delta -= i64::from(old & POSITIVE_BIT != 0);
            }
        }
        add_deltas(&self.recent_score_counts, &deltas[..nb]);
        if positives_delta != 0 {
            self.recent_positives.fetch_add(positives_delta, Relaxed);
        }
    }

    /// Records tweets given as their token ids (padding excluded): their lengths and how many
    /// of their ids are `oov_id`.
    pub fn observe_token_lists<'a>(&self, lists: impl Iterator<Item = &'a [i32]>, oov_id: i32) {
        self.observe_tweets(lists.map(|t| (t.len(), t.iter().filter(|&&id| id == oov_id).count())));
    }

    /// Records one chunk of tweets: per tweet, the number of ids its token list has (after
    /// preprocessing and truncation, as the model sees it; padding excluded) and how many of
    /// them are the out-of-vocabulary id. Lock-free, no allocation. Counts above 65 534 are
    /// clamped (the model truncates at 121).
    pub fn observe_tweets(&self, token_counts: impl Iterator<Item = (usize, usize)>) {
        let mut token_counts = token_counts;
        let mut deltas = [0i64; MAX_BUCKETS];
        let (mut tweets, mut ids_delta, mut oov_delta) = (0i64, 0i64, 0i64);
        let mut block = [0u32; TWEET_BLOCK];
        loop {
            let mut n = 0;
            for (ids, oov) in token_counts.by_ref().take(TWEET_BLOCK) {
                let ids = ids.min(MAX_PACKED_IDS);
                let oov = oov.min(ids);
                // Both ≤ 0xFFFE: the packed value fits and is never EMPTY_TWEET.
                block[n] = (ids | (oov << 16)) as u32;
                n += 1;
            }
            if n == 0 {
                break;
            }
            let start = self.tweet_head.fetch_add(n as u64, Relaxed);
            for (k, &packed) in block[..n].iter().enumerate() {
                let old = self.tweet_ring[self.slot(start, k)].swap(packed, Relaxed);
                self.tweet_delta(packed, 1, &mut deltas, &mut ids_delta, &mut oov_delta);
                tweets += 1;
                if old != EMPTY_TWEET {
                    self.tweet_delta(old, -1, &mut deltas, &mut ids_delta, &mut oov_delta);
                    tweets -= 1;
                }
            }
            if n < TWEET_BLOCK {
                break;
            }
        }
        add_deltas(&self.recent_length_counts, &deltas);
        for (c, d) in [
            (&self.recent_tweets, tweets),
            (&self.recent_ids, ids_delta),
            (&self.recent_oov, oov_delta),
        ] {
            if d != 0 {
                c.fetch_add(d, Relaxed);
            }
        }
    }

    fn tweet_delta(
        &self,
        packed: u32,
        sign: i64,
        buckets: &mut [i64],
        ids: &mut i64,
        oov: &mut i64,
    ) {
        let n_ids = packed & 0xFFFF;
        *ids += sign * i64::from(n_ids);
        *oov += sign * i64::from(packed >> 16);
        if let Some(r) = &self.reference {
            buckets[r.tokens_per_tweet.index(f64::from(n_ids))] += sign;
        }
    }

    /// The ring slot of the `k`-th value of a range reserved at `start`.
    fn slot(&self, start: u64, k: usize) -> usize {
        // < window, which is a usize.
        ((start + k as u64) % self.window as u64) as usize
    }

    /// The Prometheus-rule bucket of a non-NaN score: the first upper edge `>= v`, or the
    /// `+Inf` bucket. Derived from the reference-rule bucket: the two differ only when `v` is
    /// exactly a bucket's lower edge, which is the previous bucket's upper edge.
    fn le_index(&self, v: f64) -> usize {
        let edges = &self.score_edges;
        let nb = edges.len() - 1;
        if v > edges[nb] {
            return nb;
        }
        let i = bucket_index(edges, v);
        if i > 0 && v == edges[i] {
            i - 1
        } else {
            i
        }
    }

    fn psi_min_samples(&self) -> u64 {
        MIN_PSI_SAMPLES.min(self.window) as u64
    }

    /// The statistics now (for `/metrics` at scrape time). The counters are read one by one
    /// while writers may be running, so figures can be a call apart; the cumulative histogram
    /// and `scores_total` come from the same reads and always agree.
    pub fn snapshot(&self) -> DriftSnapshot {
        let mut cumulative = 0u64;
        let uppers = self.score_edges[1..].iter().copied().chain([f64::INFINITY]);
        let score_buckets: Vec<(f64, u64)> = uppers
            .zip(self.score_le_counts.iter())
            .map(|(upper, c)| {
                cumulative += c.load(Relaxed);
                (upper, cumulative)
            })
            .collect();

        let recent_scores = load_counts(&self.recent_score_counts);
        let n_scores: u64 = recent_scores.iter().sum();
        let recent_positives = self.recent_positives.load(Relaxed);
        let recent_positive_rate = share(recent_positives, n_scores as i64);

        let recent_lengths = load_counts(&self.recent_length_counts);
        let n_lengths: u64 = recent_lengths.iter().sum();
        let tweets = self.recent_tweets.load(Relaxed);
        let ids = self.recent_ids.load(Relaxed);
        let oov = self.recent_oov.load(Relaxed);

        let enough = |n: u64| n >= self.psi_min_samples();
        let reference = self.reference.as_ref();
        DriftSnapshot {
            scores_total: cumulative,
            positives_total: self.positives_total.load(Relaxed),
            score_buckets,
            score_sum: f64::from_bits(self.score_sum_bits.load(Relaxed)),
            recent_positive_rate,
            score_psi: reference
                .filter(|_| enough(n_scores))
                .and_then(|r| psi(&recent_scores, r.score.fractions())),
            token_length_psi: reference
                .filter(|_| enough(n_lengths))
                .and_then(|r| psi(&recent_lengths, r.tokens_per_tweet.fractions())),
            recent_oov_rate: share(oov, ids),
            reference_oov_rate: reference.map(|r| r.oov_token_rate),
            recent_mean_tokens: ratio(ids, tweets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE_JSON: &[u8] =
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/model/reference.json"));

    fn reference() -> Reference {
        Reference::from_json(REFERENCE_JSON).expect("the shipped reference.json parses")
    }

    /// xorshift64*: deterministic samples without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next_f64(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
        /// A value drawn from the reference histogram: a bucket by its fraction, then uniform
        /// inside it.
        fn sample(&mut self, b: &Buckets) -> f64 {
            let mut u = self.next_f64() * b.fractions().iter().sum::<f64>();
            let mut i = 0;
            while i + 1 < b.len() && u >= b.fractions()[i] {
                u -= b.fractions()[i];
                i += 1;
            }
            let (lo, hi) = (b.edges()[i], b.edges()[i + 1]);
            lo + (hi - lo) * self.next_f64()
        }
    }

    #[test]
    fn parses_the_shipped_reference() {
        let r = reference();
        assert_eq!(r.score.len(), 10);
        assert_eq!(r.score.edges()[0], 0.0);
        assert_eq!(r.score.edges()[10], 1.0);
        assert_eq!(r.score.fractions()[0], 0.164981);
        assert_eq!(r.tokens_per_tweet.len(), 12);
        assert_eq!(r.tokens_per_tweet.edges()[12], 122.0);
        assert_eq!(r.tokens_per_tweet.fractions()[0], 0.0);
        assert_eq!(r.oov_token_rate, 0.145422);
        assert_eq!(r.threshold, 0.5);
        assert!(r.belongs_to("b944a2a58ab3"));
        assert!(!r.belongs_to("0123456789ab"));
        assert!(!r.belongs_to(""));
    }

    #[test]
    fn malformed_references_are_config_errors_that_say_why() {
        let shipped: serde_json::Value = serde_json::from_slice(REFERENCE_JSON).unwrap();
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = shipped.clone();
            f(&mut v);
            serde_json::to_vec(&v).unwrap()
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "bad reference.json: expected"),
            (b"{}".to_vec(), "missing field"),
            (edit(&|v| v["format"] = 2.into()), "format 2"),
            (
                edit(&|v| v["score"]["fractions"] = serde_json::json!([0.5, 0.5])),
                "2 fractions for 10 buckets",
            ),
            (
                edit(&|v| v["score"]["edges"][3] = 0.1.into()),
                "strictly increasing",
            ),
            (edit(&|v| v["score"]["fractions"][0] = (-0.1).into()), "≥ 0"),
            (edit(&|v| v["score"]["fractions"][0] = 0.9.into()), "not 1"),
            (
                edit(&|v| v["tokens_per_tweet"]["edges"] = serde_json::json!([0])),
                "tokens_per_tweet: 1 edges",
            ),
            (
                edit(&|v| v["oov"]["token_rate"] = 1.5.into()),
                "token_rate 1.5",
            ),
            (
                edit(&|v| v["score"]["threshold"] = "high".into()),
                "invalid type",
            ),
            (
                edit(&|v| {
                    let edges: Vec<f64> = (0..=100).map(f64::from).collect();
                    let fractions = vec![0.01; 100];
                    v["tokens_per_tweet"]["edges"] = serde_json::json!(edges);
                    v["tokens_per_tweet"]["fractions"] = serde_json::json!(fractions);
                }),
                "101 edges, expected 2 to 65",
            ),
        ];
        for (bytes, want) in cases {
            match Reference::from_json(&bytes) {
                Err(Error::Config(msg)) => assert!(msg.contains(want), "{msg:?} lacks {want:?}"),
                other => panic!("expected a Config error with {want:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn bucket_edges_follow_the_reference_rule() {
        let r = reference();
        let s = &r.score;
        for (v, want) in [
            (0.0, 0),
            (0.0999, 0),
            (0.1, 1), // an edge belongs to the bucket above it
            (0.5, 5),
            (0.95, 9),
            (1.0, 9), // … except the last edge, in the last bucket
            (1.5, 9), // outside: nearest end bucket
            (-0.5, 0),
            (f64::NEG_INFINITY, 0),
            (f64::INFINITY, 9),
        ] {
            assert_eq!(s.index(v), want, "score {v}");
        }
        // f32 scores are widened as numpy widens them: 0.7_f32 < 0.7 and 0.1_f32 > 0.1.
        assert_eq!(s.index(f64::from(0.7_f32)), 6);
        assert_eq!(s.index(f64::from(0.1_f32)), 1);
        let t = &r.tokens_per_tweet;
        for (ids, want) in [
            (0, 0),
            (1, 1),
            (3, 1),
            (4, 2),
            (25, 10),
            (26, 11),
            (121, 11),
            (122, 11),
            (500, 11),
        ] {
            assert_eq!(t.index(f64::from(ids)), want, "{ids} ids");
        }
    }

    #[test]
    fn the_all_time_histogram_is_cumulative_with_the_prometheus_rule() {
        let d = Drift::new(Some(reference()), 100);
        d.observe_scores(&[0.1, 1.0, 1.5, -0.2, f32::NAN, 0.5, 0.55]);
        let s = d.snapshot();
        assert_eq!(s.scores_total, 7);
        assert_eq!(s.score_buckets.len(), 11);
        let le = |edge: f64| {
            s.score_buckets
                .iter()
                .find(|(e, _)| (*e - edge).abs() < 1e-9)
                .map(|&(_, c)| c)
                .unwrap()
        };
        // 0.1_f32 is 0.10000000149…, above the edge 0.1: in le=0.2 (0.5 and 1.0 are exact).
        assert_eq!(le(0.1), 1, "-0.2 only");
        assert_eq!(le(0.2), 2);
        assert_eq!(le(0.5), 3, "0.5 is in le=0.5");
        assert_eq!(le(0.6), 4);
        assert_eq!(le(1.0), 5, "1.0 is in le=1.0, 1.5 is not");
        assert_eq!(
            s.score_buckets[10],
            (f64::INFINITY, 7),
            "+Inf has 1.5 and NaN"
        );
        assert_eq!(s.positives_total, 4, "1.0, 1.5, 0.5, 0.55");
        let sum = [0.1_f32, 1.0, 1.5, -0.2, 0.5, 0.55]
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>();
        assert!((s.score_sum - sum).abs() < 1e-12);
        // NaN is not in the window: 6 recent scores, 4 positive.
        assert!((s.recent_positive_rate - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn le_index_matches_the_prometheus_rule_on_edges() {
        let d = Drift::new(None, 10);
        for (v, want) in [
            (0.0, 0),
            (0.1, 0),
            (0.1000001, 1),
            (0.2, 1),
            (0.9999, 9),
            (1.0, 9),
            (1.0001, 10),
            (-3.0, 0),
        ] {
            assert_eq!(d.le_index(v), want, "{v}");
        }
    }

    #[test]
    fn token_lists_count_their_lengths_and_oov_ids() {
        let d = Drift::new(None, 100);
        let lists: [&[i32]; 3] = [&[5, 1, 7], &[1], &[9, 9, 9, 9]];
        d.observe_token_lists(lists.into_iter(), 1);
        let s = d.snapshot();
        assert_eq!(s.recent_oov_rate, 2.0 / 8.0);
        assert_eq!(s.recent_mean_tokens, 8.0 / 3.0);
    }

    #[test]
    fn an_empty_drift_has_zero_counts_nan_rates_and_no_psi() {
        let d = Drift::new(Some(reference()), 10_000);
        let s = d.snapshot();
        assert_eq!(s.scores_total, 0);
        assert_eq!(s.positives_total, 0);
        assert_eq!(s.score_buckets.len(), 11);
        assert!(s.score_buckets.iter().all(|&(_, c)| c == 0));
        assert_eq!(s.score_buckets.last().map(|b| b.0), Some(f64::INFINITY));
        assert_eq!(s.score_sum, 0.0);
        assert!(s.recent_positive_rate.is_nan());
        assert!(s.recent_oov_rate.is_nan());
        assert!(s.recent_mean_tokens.is_nan());
        assert_eq!(s.score_psi, None);
        assert_eq!(s.token_length_psi, None);
        assert_eq!(s.reference_oov_rate, Some(0.145422));

        let none = Drift::new(None, 0).snapshot();
        assert_eq!(
            none.score_buckets.len(),
            11,
            "default edges without a reference"
        );
        assert_eq!(none.reference_oov_rate, None);
    }

    #[test]
    fn psi_is_near_zero_when_live_data_follow_the_reference() {
        let r = reference();
        let d = Drift::new(Some(r.clone()), 10_000);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..40 {
            let scores: Vec<f32> = (0..250).map(|_| rng.sample(&r.score) as f32).collect();
            d.observe_scores(&scores);
            let lengths: Vec<usize> = (0..250)
                .map(|_| rng.sample(&r.tokens_per_tweet) as usize)
                .collect();
            d.observe_tweets(lengths.iter().map(|&n| (n, 0)));
        }
        let s = d.snapshot();
        let (score_psi, length_psi) = (s.score_psi.unwrap(), s.token_length_psi.unwrap());
        assert!(score_psi < 0.01, "score PSI {score_psi}");
        assert!(length_psi < 0.01, "length PSI {length_psi}");
        assert!(
            (s.recent_positive_rate - 0.4128).abs() < 0.02,
            "{}",
            s.recent_positive_rate
        );

        // At the minimum sample size the noise stays well below the 0.1 "stable" mark.
        for seed in 1..=20u64 {
            let d = Drift::new(Some(r.clone()), 10_000);
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let scores: Vec<f32> = (0..MIN_PSI_SAMPLES)
                .map(|_| rng.sample(&r.score) as f32)
                .collect();
            d.observe_scores(&scores);
            let lengths: Vec<usize> = (0..MIN_PSI_SAMPLES)
                .map(|_| rng.sample(&r.tokens_per_tweet) as usize)
                .collect();
            d.observe_tweets(lengths.iter().map(|&n| (n, 0)));
            let s = d.snapshot();
            assert!(
                s.score_psi.unwrap() < 0.06,
                "seed {seed}: {:?}",
                s.score_psi
            );
            assert!(
                s.token_length_psi.unwrap() < 0.1,
                "seed {seed}: {:?}",
                s.token_length_psi
            );
        }
    }

    #[test]
    fn psi_is_none_below_the_minimum_sample_size() {
        let d = Drift::new(Some(reference()), 10_000);
        d.observe_scores(&vec![0.3; MIN_PSI_SAMPLES - 1]);
        assert_eq!(d.snapshot().score_psi, None);
        d.observe_scores(&[0.3]);
        assert!(d.snapshot().score_psi.is_some());
        // A window smaller than the minimum: PSI once the window is full.
        let small = Drift::new(Some(reference()), 50);
        small.observe_scores(&[0.3; 49]);
        assert_eq!(small.snapshot().score_psi, None);
        small.observe_scores(&[0.3]);
        assert!(small.snapshot().score_psi.is_some());
        // No reference, no PSI.
        let none = Drift::new(None, 10);
        none.observe_scores(&[0.3; 10]);
        none.observe_tweets([(5, 1); 10].into_iter());
        let s = none.snapshot();
        assert_eq!((s.score_psi, s.token_length_psi), (None, None));
        assert_eq!(s.recent_mean_tokens, 5.0);
    }

    #[test]
    fn psi_is_large_for_a_shifted_distribution() {
        let r = reference();
        let d = Drift::new(Some(r), 10_000);
        let mut rng = Rng(7);
        // Mostly confident positives (a stream of disaster reports), and short tweets.
        let scores: Vec<f32> = (0..5_000)
            .map(|_| (0.8 + 0.2 * rng.next_f64()) as f32)
            .collect();
        d.observe_scores(&scores);
        d.observe_tweets((0..5_000).map(|i| (2 + i % 5, 1)));
        let s = d.snapshot();
        assert!(s.score_psi.unwrap() > 0.25, "{:?}", s.score_psi);
        assert!(
            s.token_length_psi.unwrap() > 0.25,
            "{:?}",
            s.token_length_psi
        );
        assert_eq!(s.recent_positive_rate, 1.0);
    }

    #[test]
    fn psi_floors_empty_buckets() {
        // An empty live bucket against 10 % reference, and a live bucket the reference never saw.
        let p = psi(&[0, 50, 50], &[0.1, 0.9, 0.0]).unwrap();
        let want = (1e-4 - 0.1) * (1e-4_f64 / 0.1).ln()
            + (0.5 - 0.9) * (0.5_f64 / 0.9).ln()
            + (0.5 - 1e-4) * (0.5_f64 / 1e-4).ln();
        assert!((p - want).abs() < 1e-12, "{p} vs {want}");
        assert!(p.is_finite());
        assert_eq!(psi(&[0, 0], &[0.5, 0.5]), None);
        assert_eq!(psi(&[1], &[0.5, 0.5]), None);
        assert!(psi(&[25, 75], &[0.25, 0.75]).unwrap().abs() < 1e-15);
    }

    #[test]
    fn the_window_keeps_only_the_most_recent_values() {
        let d = Drift::new(Some(reference()), 4);
        d.observe_scores(&[0.05; 4]);
        assert_eq!(d.snapshot().recent_positive_rate, 0.0);
        d.observe_scores(&[0.95, 0.95]);
        assert_eq!(load_counts(&d.recent_score_counts)[0], 2);
        assert_eq!(load_counts(&d.recent_score_counts)[9], 2);
        assert_eq!(d.snapshot().recent_positive_rate, 0.5);
        // A batch longer than the window replaces all of it.
        d.observe_scores(&[0.05, 0.05, 0.05, 0.75, 0.75, 0.75, 0.75]);
        assert_eq!(d.snapshot().recent_positive_rate, 1.0);
        assert_eq!(load_counts(&d.recent_score_counts).iter().sum::<u64>(), 4);
        assert_eq!(d.snapshot().scores_total, 13);

        d.observe_tweets([(10, 5), (10, 5)].into_iter());
        d.observe_tweets((0..10).map(|_| (20, 0)));
        let s = d.snapshot();
        assert_eq!(s.recent_mean_tokens, 20.0);
        assert_eq!(s.recent_oov_rate, 0.0);
        assert_eq!(load_counts(&d.recent_length_counts).iter().sum::<u64>(), 4);
        // Tweets without ids: a mean of 0 tokens and no OOV rate (no ids to divide by).
        d.observe_tweets([(0, 0); 4].into_iter());
        let s = d.snapshot();
        assert_eq!(s.recent_mean_tokens, 0.0);
        assert!(s.recent_oov_rate.is_nan());
        // Nonsense counts are clamped, not trusted: more OOV ids than ids, a huge list.
        d.observe_tweets([(3, 9), (1_000_000, 0)].into_iter());
        let s = d.snapshot();
        assert!(s.recent_oov_rate <= 1.0);
        assert_eq!(load_counts(&d.recent_length_counts)[11], 1);
    }

    #[test]
    fn concurrent_observers_leave_consistent_counts() {
        let d = Drift::new(Some(reference()), 10_000);
        // Each batch reserves 50 contiguous slots: 25 negatives then 25 positives, so any
        // window of 10 000 (200 whole batches) is exactly half positive.
        let batch: Vec<f32> = (0..50).map(|i| if i < 25 { 0.25 } else { 0.75 }).collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (d, batch) = (&d, &batch);
                s.spawn(move || {
                    for i in 0..1_000 {
                        d.observe_scores(batch);
                        // Chunks of 100 tweets (crossing the 64-tweet blocks), 10 ids, 2 OOV.
                        d.observe_tweets((0..100).map(|_| (10, 2)));
                        if i % 100 == 0 && t == 0 {
                            let s = d.snapshot();
                            assert!(
                                s.recent_positive_rate.is_nan() || s.recent_positive_rate <= 1.0
                            );
                        }
                    }
                });
            }
        });
        let s = d.snapshot();
        assert_eq!(s.scores_total, 200_000);
        assert_eq!(s.positives_total, 100_000);
        assert!((s.score_sum - 100_000.0).abs() < 1e-6);
        assert_eq!(
            load_counts(&d.recent_score_counts).iter().sum::<u64>(),
            10_000
        );
        assert_eq!(s.recent_positive_rate, 0.5);
        assert_eq!(d.recent_tweets.load(Relaxed), 10_000);
        assert_eq!(
            load_counts(&d.recent_length_counts).iter().sum::<u64>(),
            10_000
        );
        assert_eq!(s.recent_mean_tokens, 10.0);
        assert_eq!(s.recent_oov_rate, 0.2);
    }
}
