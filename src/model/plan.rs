//! Building tract plans for the model: one per sequence length, specialised so that tract runs
//! its fast kernels.
//!
//! Measured node by node (`cargo run --release --example profile_nodes`), a plan built for
//! symbolic `[B, S]` spends most of its time in paths that only exist because `S` is unknown:
//! the max over the sequence is a `Reduce<Max>` that tract evaluates one output element at a
//! time through `IxDyn` slices, and element-wise ops whose size cannot be proven large stay
//! unfused. With `S` fixed, tract fuses the element-wise chain into one pass, and the max over
//! the sequence can be written as the `MaxPool` it is (kernel = the whole sequence, NHWC), whose
//! row-span path is a contiguous, vectorized max over the channels. `B` stays symbolic: one plan
//! per `S` serves every batch size, so the plans are few (at most the tokenizer's `max_len`).
//!
//! Before that, the convolution — three shifted table lookups, added, max over the sequence —
//! becomes one op ([`super::fused`]): tract ran it as separate `Gather`s and an `Add` chain
//! that wrote and re-read `[B, S, C]` intermediates, 90 % of a batch.

use std::collections::HashMap;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::AxisOp;
use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer};

use super::fused::fuse_shifted_lookup_max;
use crate::error::{Error, Result};

pub type Plan = TypedSimplePlan;

/// The model with symbolic batch `B` and sequence `S` dims, decluttered once (constant
/// subgraphs folded); every plan is specialised from it.
pub struct BaseModel {
    model: TypedModel,
    batch: Symbol,
    seq: Symbol,
}

impl BaseModel {
    pub fn from_onnx(onnx: &[u8]) -> Result<BaseModel> {
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(Error::model)?;
        let batch = model.symbols.sym("B");
        let seq = model.symbols.sym("S");
        // A batch has at least one row and one position (`batch::pad_to_longest` guarantees
        // the position): lets tract prove tensors large enough for its fused kernels.
        for assertion in ["B >= 1", "S >= 1"] {
            model
                .symbols
                .add_assertion(assertion)
                .map_err(Error::model)?;
        }
        model
            .set_input_fact(0, i32::fact([batch.to_dim(), seq.to_dim()]).into())
            .map_err(Error::model)?;
        let model = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(Error::model)?;
        Ok(BaseModel { model, batch, seq })
    }

    /// The plan for symbolic `[B, S]`: runs any shape, slowly. Used for sequences longer than
    /// the specialised plans cover.
    /// (The fusion does not match there: with `S` symbolic, tract cannot prove the shifted ids
    /// as long as the sequence.)
    pub fn generic_plan(&self) -> Result<Arc<Plan>> {
        optimize(self.model.clone(), Rewrites::All)
    }

    /// The plan for sequences of exactly `seq_len` positions (any batch size).
    pub fn plan_for_seq(&self, seq_len: usize) -> Result<Arc<Plan>> {
        self.plan_for_shape(None, seq_len)
    }

    /// The plan for `[batch, seq_len]` inputs (`batch: None`: any batch size).
    pub fn plan_for_shape(&self, batch: Option<usize>, seq_len: usize) -> Result<Arc<Plan>> {
        self.specialised(batch, seq_len, Rewrites::All)
    }

    fn specialised(
        &self,
        batch: Option<usize>,
        seq_len: usize,
        rewrites: Rewrites,
    ) -> Result<Arc<Plan>> {
        let mut subs = HashMap::from([(self.seq.clone(), (seq_len as i64).to_dim())]);
        if let Some(b) = batch {
            subs.insert(self.batch.clone(), (b as i64).to_dim());
        }
        let model = self.model.set_symbols(&subs).map_err(Error::model)?;
        optimize(model, rewrites)
    }
}

/// Which of this module's rewrites a plan gets (tests compare plans with and without).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rewrites {
    All,
    #[cfg(test)]
    WithoutFusion,
}

fn optimize(mut model: TypedModel, rewrites: Rewrites) -> Result<Arc<Plan>> {
    if rewrites == Rewrites::All {
        fuse_shifted_lookup_max(&mut model).map_err(Error::model)?;
    }
    max_over_seq_as_maxpool(&mut model).map_err(Error::model)?;
    model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(Error::model)
}

/// Rewrites every `Reduce<Max>` over axis 1 of a rank-3 f32 tensor `[N, S, C]` with a known `S`
/// into `MaxPool` (NHWC, input `[N, 1, S, C]`, kernel `[1, S]`, no padding) — the same function:
/// the max over the `S` positions, per `(n, c)`. Returns how many nodes it rewrote; anything
/// else is left as it is (correct, only slower).
pub fn max_over_seq_as_maxpool(model: &mut TypedModel) -> TractResult<usize> {
    let mut rewritten = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(reduce) = node.op_as::<Reduce>() else {
            continue;
        };
        if reduce.reducer != Reducer::Max || reduce.axes.as_slice() != [1] {
            continue;
        }
        let fact = model.outlet_fact(node.inputs[0])?;
        if fact.rank() != 3 || fact.datum_type != f32::datum_type() {
            continue;
        }
        let (Some(seq), Some(channels)) = (fact.shape[1].as_i64(), fact.shape[2].as_i64()) else {
            continue;
        };
        let (seq, channels) = (seq as usize, channels as usize);
        let spec = PoolSpec {
            data_format: DataFormat::NHWC,
            kernel_shape: tvec![1, seq],
            padding: PaddingSpec::Valid,
            dilations: None,
            strides: None,
            input_channels: channels,
            output_channels: channels,
        };
        let name = node.name.clone();
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let x = patch.wire_node(format!("{name}.as_nhwc"), AxisOp::Add(1), &[x])?[0];
        let y = patch.wire_node(format!("{name}.maxpool"), MaxPool::new(spec, None), &[x])?[0];
        // [N, 1, 1, C] -> [N, 1, C], the Reduce's own output shape.
        let y = patch.wire_node(format!("{name}.from_nhwc"), AxisOp::Rm(1), &[y])?[0];
        patch.shunt_outside(model, id.into(), y)?;
        patch.apply(model)?;
        rewritten += 1;
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::files::ModelFiles;
    use crate::model::fused::ShiftedLookupMax;
    use tract_onnx::prelude::tract_ndarray::Array2;

    fn base() -> BaseModel {
        BaseModel::from_onnx(&ModelFiles::builtin().onnx).expect("the shipped model loads")
    }

    fn fused_nodes(plan: &Arc<Plan>) -> usize {
        plan.model()
            .nodes()
            .iter()
            .filter(|n| n.op_is::<ShiftedLookupMax>())
            .count()
    }

    fn run(plan: &Arc<Plan>, tokens: &Array2<i32>) -> Vec<f32> {
        let out = plan
            .run(tvec!(Tensor::from(tokens.clone()).into()))
            .expect("run");
        out[0]
            .to_plain_array_view::<f32>()
            .expect("f32 scores")
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn the_shipped_models_convolution_runs_as_one_fused_op() {
        // If an export change breaks the pattern, scores stay right but inference gets ~3x
        // slower: this test says so instead of a benchmark, later.
        let base = base();
        for seq in [1, 2, 17, 121] {
            assert_eq!(
                fused_nodes(&base.plan_for_seq(seq).expect("plan")),
                1,
                "S = {seq}"
            );
        }
        let unfused = base
            .specialised(None, 17, Rewrites::WithoutFusion)
            .expect("plan");
        assert_eq!(fused_nodes(&unfused), 0);
    }

    #[test]
    fn an_id_outside_the_vocabulary_is_an_error_not_a_panic() {
        let plan = base().plan_for_seq(3).expect("plan");
        let tokens = Array2::from_shape_vec((1, 3), vec![5, 1_000_000, 7]).expect("shape");
        let err = plan
            .run(tvec!(Tensor::from(tokens).into()))
            .expect_err("an id past the tables");
        assert!(format!("{err:?}").contains("outside the table"), "{err:?}");
    }

    #[test]
    fn fusion_changes_no_score_bit_for_bit() {
        let base = base();
        let vocab = 6487u64;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seq in [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 121] {
            let rows = 19;
            // Rows of random ids (padding id 0 included), each cut to a random length and
            // padded after it, as the worker pads.
            let tokens = Array2::from_shape_fn((rows, seq), |_| (next() % vocab) as i32);
            let tokens = Array2::from_shape_fn((rows, seq), |(r, t)| {
                if t < (r * 7) % (seq + 1) {
                    tokens[(r, t)]
                } else {
                    0
                }
            });
            let fused = run(&base.plan_for_seq(seq).expect("plan"), &tokens);
            let unfused = run(
                &base
                    .specialised(None, seq, Rewrites::WithoutFusion)
                    .expect("plan"),
                &tokens,
            );
            assert_eq!(fused.len(), rows);
            for (r, (a, b)) in fused.iter().zip(&unfused).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "S = {seq}, row {r}: {a} vs {b}");
            }
        }
    }
}
