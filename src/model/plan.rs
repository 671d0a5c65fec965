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

use std::collections::HashMap;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::AxisOp;
use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer};

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
    pub fn generic_plan(&self) -> Result<Arc<Plan>> {
        self.model
            .clone()
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(Error::model)
    }

    /// The plan for sequences of exactly `seq_len` positions (any batch size).
    pub fn plan_for_seq(&self, seq_len: usize) -> Result<Arc<Plan>> {
        self.plan_for_shape(None, seq_len)
    }

    /// The plan for `[batch, seq_len]` inputs (`batch: None`: any batch size).
    pub fn plan_for_shape(&self, batch: Option<usize>, seq_len: usize) -> Result<Arc<Plan>> {
        let mut subs = HashMap::from([(self.seq.clone(), (seq_len as i64).to_dim())]);
        if let Some(b) = batch {
            subs.insert(self.batch.clone(), (b as i64).to_dim());
        }
        let mut model = self.model.set_symbols(&subs).map_err(Error::model)?;
        max_over_seq_as_maxpool(&mut model).map_err(Error::model)?;
        model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(Error::model)
    }
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
