//! One op for the model's convolution: shifted table lookups, summed, max over the sequence.
//!
//! The lookup-form model (`model/export.py`) computes, for every row `b` and channel `c`,
//!
//! ```text
//! pooled[b, c] = max_t  Σ_d  table_d[ids[b, t + d], c]      (ids outside the row read a fill id)
//! ```
//!
//! as ONNX ops: per shift `d` a `Pad` + `Slice` of the ids and a `Gather` from a constant
//! table, an `Add` chain, and a `ReduceMax` over the sequence. tract runs that faithfully and
//! spends 90 % of a batch on it (measured node by node with `examples/profile_nodes.rs`): each
//! `Gather` writes a `[B, S, C]` tensor, the `Add` chain reads three and writes one, the max
//! reads it again — for 256 tweets padded to 28 positions, ~11 MB of intermediates written and
//! read back to produce a 98 KB `[B, C]` result. [`ShiftedLookupMax`] computes the same numbers
//! in one pass: for each position it adds the table rows in the graph's order and folds them
//! into the row's running max (one row of `C` floats, in L1), so nothing of size `[B, S, C]` is
//! ever written. What remains is waiting for table rows (3 × 6,487 × 96 floats do not stay in
//! cache); two layouts meant to help with that — the tables interleaved per id, a software
//! prefetch two positions ahead — measured slower and were dropped.
//!
//! [`fuse_shifted_lookup_max`] finds the pattern in a tract model and replaces it; a graph that
//! does not match exactly (another export, a broadcasting add, a non-constant table) is left as
//! it is — correct, only slower. Scores are bit-for-bit those of the unfused plan: the same f32
//! additions in the same order, and a max (the tests in [`super::plan`] compare the two plans
//! bit for bit).

use tract_onnx::prelude::tract_ndarray::Array3;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Gather, Pad, PadMode, Slice};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::math::Add;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

/// One term of the sum: the table (an input of the op) is read at `ids[b, t + shift]`, or at
/// `fill` where `t + shift` falls outside the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Term {
    pub shift: i64,
    pub fill: i64,
}

/// Inputs: the token ids `[B, S]` (i32 or i64), then one constant `[V, C]` f32 table per
/// term, in the order they are added. Output: `[B, 1, C]` f32, the shape of the `Reduce<Max>`
/// it replaces (tract keeps the reduced axis).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShiftedLookupMax {
    pub terms: Vec<Term>,
}

impl Op for ShiftedLookupMax {
    fn name(&self) -> StaticName {
        "ShiftedLookupMax".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(self
            .terms
            .iter()
            .map(|t| format!("shift {:+}, fill id {}", t.shift, t.fill))
            .collect())
    }

    op_as_typed_op!();
}

impl EvalOp for ShiftedLookupMax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == self.terms.len() + 1,
            "ShiftedLookupMax: {} inputs for {} terms",
            inputs.len(),
            self.terms.len()
        );
        let ids = inputs[0].cast_to::<i64>()?;
        let ids = ids.to_plain_array_view::<i64>()?;
        ensure!(ids.ndim() == 2, "ShiftedLookupMax: ids must be [B, S]");
        let (rows, seq) = (ids.shape()[0], ids.shape()[1]);
        let ids: Vec<i64> = ids.iter().copied().collect();
        ensure!(inputs.len() > 1, "ShiftedLookupMax: no table");

        let mut tables = Vec::with_capacity(self.terms.len());
        let mut channels = None;
        for t in &inputs[1..] {
            ensure!(
                t.rank() == 2 && t.datum_type() == f32::datum_type(),
                "ShiftedLookupMax: tables must be [V, C] f32"
            );
            let (v, c) = (t.shape()[0], t.shape()[1]);
            ensure!(
                *channels.get_or_insert(c) == c,
                "ShiftedLookupMax: tables differ in width"
            );
            tables.push((v, t.to_plain_array_view::<f32>()?));
        }
        let channels = channels.unwrap_or(0);
        let tables: Vec<(usize, &[f32])> = tables
            .iter()
            .map(|(v, view)| {
                view.as_slice()
                    .map(|s| (*v, s))
                    .context("ShiftedLookupMax: table not contiguous")
            })
            .collect::<TractResult<_>>()?;

        // Every id resolved once to its row's offset in a table, checked (`Gather`'s convention: a
        // negative id counts from the end); the rewrite only fuses tables of one shape.
        let vocab = tables[0].0;
        ensure!(
            tables.iter().all(|(v, _)| *v == vocab),
            "ShiftedLookupMax: tables differ in rows"
        );
        let resolve = |id: i64| -> TractResult<usize> {
            let i = if id < 0 { id + vocab as i64 } else { id };
            ensure!(
                (0..vocab as i64).contains(&i),
                "ShiftedLookupMax: id {id} outside the table's {vocab} rows"
            );
            Ok(i as usize * channels)
        };
        let rows_at: Vec<usize> = ids.into_iter().map(resolve).collect::<TractResult<_>>()?;
        let terms: Vec<(i64, usize)> = self
            .terms
            .iter()
            .map(|t| Ok((t.shift, resolve(t.fill)?)))
            .collect::<TractResult<_>>()?;
        let tables: Vec<&[f32]> = tables.iter().map(|(_, t)| *t).collect();
        let mut out = vec![0f32; rows * channels];
        if rows * seq > 0 && channels > 0 {
            let job = Job {
                rows_at: &rows_at,
                seq,
                channels,
                terms: &terms,
                tables: &tables,
            };
            job.run(&mut out);
        }
        let out = Array3::from_shape_vec((rows, 1, channels), out)?;
        Ok(tvec!(out.into_tensor().into_tvalue()))
    }
}

/// One evaluation's resolved inputs.
struct Job<'a> {
    /// `[B, S]`: the offset of each id's row in a table.
    rows_at: &'a [usize],
    seq: usize,
    channels: usize,
    /// Per term: its shift and the row offset of its fill id.
    terms: &'a [(i64, usize)],
    tables: &'a [&'a [f32]],
}

impl Job<'_> {
    /// Writes `[B, C]` maxima into `out`.
    fn run(&self, out: &mut [f32]) {
        let c = self.channels;
        let seq = self.seq;
        // Per row, each term's table row offset at each position, resolved once.
        let mut at = vec![0usize; self.terms.len() * seq];
        let mut sum = vec![0f32; c];
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        for (b, best) in out.chunks_exact_mut(c).enumerate() {
            let base = b * seq;
            for (k, offsets) in at.chunks_exact_mut(seq).enumerate() {
                for (t, o) in offsets.iter_mut().enumerate() {
                    *o = self.at(k, base, t);
                }
            }
            best.fill(f32::NEG_INFINITY);
            #[cfg(target_arch = "x86_64")]
            if let [t0, t1, t2] = self.tables {
                if avx2 && c % 8 == 0 {
                    // SAFETY: AVX2 is present (checked above); every offset in `at` is a resolved
                    // row (`row × c` with `row < vocab`, and each table holds `vocab × c` floats),
                    // so `offset + c` is within each table, and `best` holds `c` floats; `c` is a
                    // multiple of 8, so every 8-float block lies inside.
                    unsafe { max_of_sum3_avx2(best, [t0, t1, t2], &at, seq) };
                    continue;
                }
            }
            // Any number of terms, added in the graph's order ((t0 + t1) + t2 for three).
            for t in 0..seq {
                sum.copy_from_slice(&self.tables[0][at[t]..][..c]);
                for (k, table) in self.tables.iter().enumerate().skip(1) {
                    let row = &table[at[k * seq + t]..][..c];
                    for (s, r) in sum.iter_mut().zip(row) {
                        *s += r;
                    }
                }
                for (m, s) in best.iter_mut().zip(&sum) {
                    *m = m.max(*s);
                }
            }
        }
    }

    /// The offset of term `k`'s table row at position `t` of the row starting at `base`.
    #[inline(always)]
    fn at(&self, k: usize, base: usize, t: usize) -> usize {
        let (shift, fill) = self.terms[k];
        let src = t as i64 + shift;
        if (0..self.seq as i64).contains(&src) {
            self.rows_at[base + src as usize]
        } else {
            fill
        }
    }
}

/// The shipped model's case — three terms — with AVX2: per position, the three table rows
/// are added 8 channels at a time and folded into `best` (one row's maxima, in L1). The rows
/// of all positions are independent loads, so their cache misses overlap.
///
/// # Safety
/// The CPU has AVX2; `best.len()` is a multiple of 8; for every `k` and `t < seq`,
/// `at[k * seq + t] + best.len() <= tables[k].len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_of_sum3_avx2(best: &mut [f32], tables: [&[f32]; 3], at: &[usize], seq: usize) {
    use std::arch::x86_64::{_mm256_add_ps, _mm256_loadu_ps, _mm256_max_ps, _mm256_storeu_ps};
    let c = best.len();
    let m = best.as_mut_ptr();
    for t in 0..seq {
        let p0 = tables[0].as_ptr().add(at[t]);
        let p1 = tables[1].as_ptr().add(at[seq + t]);
        let p2 = tables[2].as_ptr().add(at[2 * seq + t]);
        for i in (0..c).step_by(8) {
            let v = _mm256_add_ps(
                _mm256_add_ps(_mm256_loadu_ps(p0.add(i)), _mm256_loadu_ps(p1.add(i))),
                _mm256_loadu_ps(p2.add(i)),
            );
            _mm256_storeu_ps(m.add(i), _mm256_max_ps(v, _mm256_loadu_ps(m.add(i))));
        }
    }
}

impl TypedOp for ShiftedLookupMax {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == self.terms.len() + 1 && inputs.len() > 1);
        ensure!(
            inputs[0].rank() == 2,
            "ShiftedLookupMax: ids must be [B, S]"
        );
        let channels = inputs[1].shape[1].clone();
        Ok(tvec!(f32::fact([
            inputs[0].shape[0].clone(),
            1.to_dim(),
            channels
        ])))
    }
}

/// Replaces every `Reduce<Max>` over axis 1 of a left-leaning `Add` chain of constant-table
/// `Gather`s of shifted copies of one `[B, S]` id tensor by a [`ShiftedLookupMax`]. Returns how
/// many it replaced.
pub fn fuse_shifted_lookup_max(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in model.eval_order()? {
        let Some(found) = matches(model, id)? else {
            continue;
        };
        let name = model.node(id).name.clone();
        let mut patch = TypedModelPatch::default();
        let mut inputs = tvec![patch.tap_model(model, found.ids)?];
        for table in &found.tables {
            inputs.push(patch.tap_model(model, *table)?);
        }
        let op = ShiftedLookupMax { terms: found.terms };
        let y = patch.wire_node(format!("{name}.fused"), op, &inputs)?[0];
        patch.shunt_outside(model, id.into(), y)?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}

struct Found {
    ids: OutletId,
    tables: Vec<OutletId>,
    terms: Vec<Term>,
}

/// The pattern rooted at the `Reduce<Max>` node `id`, if it is one.
fn matches(model: &TypedModel, id: usize) -> TractResult<Option<Found>> {
    let node = model.node(id);
    let Some(reduce) = node.op_as::<Reduce>() else {
        return Ok(None);
    };
    if reduce.reducer != Reducer::Max || reduce.axes.as_slice() != [1] {
        return Ok(None);
    }
    let summed = model.outlet_fact(node.inputs[0])?;
    if summed.rank() != 3 || summed.datum_type != f32::datum_type() {
        return Ok(None);
    }
    // The Add chain, left-leaning: ((g0 + g1) + g2) + ... — its leaves in addition order.
    let mut leaves = Vec::new();
    let mut at = node.inputs[0];
    loop {
        let n = model.node(at.node);
        match n.op_as::<TypedBinOp>() {
            Some(bin) if bin.0.is::<Add>() && bin.1.is_none() => {
                for input in &n.inputs {
                    if model.outlet_fact(*input)?.shape != summed.shape {
                        return Ok(None); // a broadcasting add: not this pattern
                    }
                }
                leaves.push(n.inputs[1]);
                at = n.inputs[0];
            }
            _ => {
                leaves.push(at);
                break;
            }
        }
    }
    leaves.reverse();
    let (mut tables, mut terms) = (Vec::new(), Vec::new());
    let mut source: Option<OutletId> = None;
    for leaf in leaves {
        let n = model.node(leaf.node);
        let Some(gather) = n.op_as::<Gather>() else {
            return Ok(None);
        };
        let table = model.outlet_fact(n.inputs[0])?;
        if gather.axis != 0
            || gather.output_type.is_some()
            || table.konst.is_none()
            || table.rank() != 2
            || table.datum_type != f32::datum_type()
        {
            return Ok(None);
        }
        let Some((ids, term)) = shifted_ids(model, n.inputs[1])? else {
            return Ok(None);
        };
        if *source.get_or_insert(ids) != ids {
            return Ok(None);
        }
        if let Some(first) = tables.first() {
            if model.outlet_fact(*first)?.shape != table.shape {
                return Ok(None);
            }
        }
        tables.push(n.inputs[0]);
        terms.push(term);
    }
    let Some(ids) = source else {
        return Ok(None);
    };
    // The sum runs over the ids' own positions: same length, same rows.
    let ids_fact = model.outlet_fact(ids)?;
    if ids_fact.rank() != 2
        || !ids_fact.datum_type.is_integer()
        || ids_fact.shape[0] != summed.shape[0]
        || ids_fact.shape[1] != summed.shape[1]
    {
        return Ok(None);
    }
    Ok(Some(Found { ids, tables, terms }))
}

/// Walks `Cast` → `Slice` (axis 1) → `Pad` (axis 1, constant) back from a `Gather`'s indices
/// to the id tensor they shift; `None` for anything else.
fn shifted_ids(model: &TypedModel, mut at: OutletId) -> TractResult<Option<(OutletId, Term)>> {
    let mut term = Term { shift: 0, fill: 0 };
    let mut sliced = false;
    let mut padded = false;
    loop {
        let n = model.node(at.node);
        if let Some(cast) = n.op_as::<Cast>() {
            let from = model.outlet_fact(n.inputs[0])?.datum_type;
            if !(cast.to == i64::datum_type() && from.is_integer()) {
                return Ok(None);
            }
        } else if let Some(slice) = n.op_as::<Slice>() {
            let (Ok(start), Ok(_)) = (slice.start.to_i64(), slice.end.to_i64()) else {
                return Ok(None);
            };
            if slice.axis != 1 || sliced || padded {
                return Ok(None);
            }
            sliced = true;
            term.shift += start;
        } else if let Some(pad) = n.op_as::<Pad>() {
            let PadMode::Constant(value) = &pad.mode else {
                return Ok(None);
            };
            let fill = value.cast_to_scalar::<i64>()?;
            if padded || pad.pads.len() != 2 || pad.pads[0] != (0, 0) {
                return Ok(None);
            }
            padded = true;
            term.shift -= pad.pads[1].0 as i64;
            term.fill = fill;
        } else {
            // The id tensor itself: the chain must have kept its shape (checked by the caller
            // through the Gather's output matching the sum's shape).
            return Ok(Some((at, term)));
        }
        at = n.inputs[0];
    }
}
