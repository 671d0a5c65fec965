"""Write the CNN as the ONNX graph that kafka-infer serves: the "lookup" form.

The trained network is Embedding -> Conv1D("same", widths <= 3) x n -> ReLU -> x mask ->
GlobalMaxPool -> Dense(1, sigmoid). Every convolution is a sum over the sequence shifted by a
few positions (-1, 0, +1 for widths <= 3) of `embedding[token] @ kernel_tap`; the embedding is a
lookup table, so each shift's `embedding @ kernel_block` is itself a lookup table of shape
[vocab, filters]. The graph therefore computes, for shifts d:

    h[b, t] = sum_d table_d[tokens[b, t + d]]          (tokens shifted in with padding)
    score   = sigmoid(relu(max_t h[b, t]) @ dense_w + dense_b)

with three facts folded into the tables, so that no mask op is needed:
  * table_d[pad] = 0 for d != 0: a padded neighbour contributes nothing, as the zeroed padding
    embedding (x * mask) and the convolution's own zero padding do;
  * table_0 carries the convolution bias;
  * table_0[pad] = PAD_PENALTY (-1e30) in every column: a padded position never wins the max.
    The trained graph multiplies ReLU outputs by the mask before the max, i.e. padded positions
    count as 0; relu(max_t h) == max_t relu(h), and 0 is what relu gives any padded position
    here, so the score is the same, also for an all-padding row (relu(-1e30) = 0).

The tables are not stored: the file holds the trained weights (embedding [vocab, E], one kernel
block [E, filters] per shift, biases, dense layer) and the graph computes each table with a
MatMul of two initializers. Both onnxruntime and tract fold those constant subgraphs once when
they load the model, so serving does lookups and adds only, and the file stays as small as the
weights.

Use:
    python model/export.py [--model model/model.onnx]      # re-export model.onnx in place
    python model/export.py --check                          # only compare, write nothing

Re-export reads the weights from an existing model.onnx (either the older "concat + MatMul"
form that tf2onnx wrote, or this form) and writes this form with the same weights; it checks
the new graph against the old one with onnxruntime on model/golden.jsonl (full padding and
padding to the longest of each batch) and updates `onnx_sha256` in metrics.json. train.py calls
`build_model` for fresh exports. Nothing here depends on today's dimensions.
"""

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FORM = "shifted-lookup-v1"
OPSET = 13
# Added to every column of table_0's padding row; see the module docstring.
PAD_PENALTY = -1e30


@dataclass
class Weights:
    """The trained function, independent of graph form."""

    embedding: np.ndarray  # [vocab, E], padding row zero
    shifts: list  # sorted ints: the sequence offsets the convolutions read
    kernel_blocks: list  # one [E, F_total] float32 block per shift
    bias: np.ndarray  # [F_total]
    dense_w: np.ndarray  # [F_total, 1]
    dense_b: np.ndarray  # [1]
    pad_id: int

    def check(self):
        v, e = self.embedding.shape
        f = self.bias.shape[0]
        assert len(self.shifts) == len(self.kernel_blocks) >= 1, "one kernel block per shift"
        assert all(b.shape == (e, f) for b in self.kernel_blocks), "kernel blocks must be [E, F]"
        assert self.dense_w.shape == (f, 1) and self.dense_b.shape == (1,), "dense layer must be [F, 1] + [1]"
        assert 0 <= self.pad_id < v, "pad id outside the vocabulary"
        assert not self.embedding[self.pad_id].any(), "the padding embedding row must be zero"


def _shape(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.INT32 if name == "tokens" else TensorProto.FLOAT, dims)


def build_model(w: Weights, producer="kafka-infer model/export.py") -> onnx.ModelProto:
    """The lookup-form graph for `w` (see the module docstring)."""
    w.check()
    vocab, _ = w.embedding.shape
    f = w.bias.shape[0]
    shifts = sorted(w.shifts)
    blocks = dict(zip(w.shifts, w.kernel_blocks))
    if 0 not in blocks:  # the bias and the padding penalty live in table_0
        blocks[0] = np.zeros_like(w.kernel_blocks[0])
        shifts = sorted(blocks)

    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(f32(w.embedding), "embedding"),
        numpy_helper.from_array(np.array(w.pad_id, dtype=np.int32), "pad_id"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(f32(w.dense_w), "dense_w"),
        numpy_helper.from_array(f32(w.dense_b), "dense_b"),
    ]
    # Row offset added to table_0: the bias on real tokens, PAD_PENALTY on the padding row.
    offset = np.broadcast_to(f32(w.bias), (vocab, f)).copy()
    offset[w.pad_id] = PAD_PENALTY
    # Stored as bias [1, F] + penalty column [vocab, 1], so the file does not hold a vocab x F
    # matrix: offset = bias + penalty.
    penalty = np.zeros((vocab, 1), dtype=np.float32)
    penalty[w.pad_id] = PAD_PENALTY
    inits += [
        numpy_helper.from_array(f32(w.bias).reshape(1, f), "conv_bias"),
        numpy_helper.from_array(penalty, "pad_penalty"),
    ]
    nodes = []
    terms = []
    for d in shifts:
        tag = {-1: "prev", 0: "this", 1: "next"}.get(d, f"shift{d:+d}".replace("+", "p").replace("-", "m"))
        inits.append(numpy_helper.from_array(f32(blocks[d]), f"kernel_{tag}"))
        table = f"table_{tag}"
        nodes.append(helper.make_node("MatMul", ["embedding", f"kernel_{tag}"], [f"{table}_raw"], name=f"{table}_matmul"))
        if d == 0:
            nodes.append(helper.make_node("Add", ["conv_bias", "pad_penalty"], ["table_offset"], name="table_offset"))
            nodes.append(helper.make_node("Add", [f"{table}_raw", "table_offset"], [table], name=table))
        else:
            # The padding embedding is zero, so table_d[pad] is already 0.
            nodes.append(helper.make_node("Identity", [f"{table}_raw"], [table], name=table))
        # tokens shifted by d along the sequence, padding shifted in: ids[:, t + d].
        ids = "tokens"
        if d != 0:
            k = abs(d)
            pads = [0, k, 0, 0] if d < 0 else [0, 0, 0, k]
            inits.append(numpy_helper.from_array(np.array(pads, dtype=np.int64), f"pads_{tag}"))
            nodes.append(helper.make_node("Pad", ["tokens", f"pads_{tag}", "pad_id"], [f"padded_{tag}"], mode="constant", name=f"pad_{tag}"))
            # d < 0: keep [0, S) of the left-padded ids; d > 0: keep [k, S + k) of the right-padded.
            if d < 0:
                inits.append(numpy_helper.from_array(np.array([-k], dtype=np.int64), f"end_{tag}"))
                slice_in = [f"padded_{tag}", "zero", f"end_{tag}", "axis_1"]
            else:
                inits.append(numpy_helper.from_array(np.array([k], dtype=np.int64), f"start_{tag}"))
                inits.append(numpy_helper.from_array(np.array([np.iinfo(np.int64).max], dtype=np.int64), f"end_{tag}"))
                slice_in = [f"padded_{tag}", f"start_{tag}", f"end_{tag}", "axis_1"]
            ids = f"ids_{tag}"
            nodes.append(helper.make_node("Slice", slice_in, [ids], name=f"slice_{tag}"))
        nodes.append(helper.make_node("Gather", [table, ids], [f"lookup_{tag}"], axis=0, name=f"lookup_{tag}"))
        terms.append(f"lookup_{tag}")
    acc = terms[0]
    for i, t in enumerate(terms[1:]):
        out = "conv" if i == len(terms) - 2 else f"conv_partial{i}"
        nodes.append(helper.make_node("Add", [acc, t], [out], name=out))
        acc = out
    if acc != "conv":
        nodes.append(helper.make_node("Identity", [acc], ["conv"], name="conv"))
    nodes += [
        helper.make_node("ReduceMax", ["conv"], ["pooled"], axes=[1], keepdims=0, name="maxpool"),
        helper.make_node("Relu", ["pooled"], ["features"], name="relu"),
        helper.make_node("MatMul", ["features", "dense_w"], ["logit_raw"], name="dense"),
        helper.make_node("Add", ["logit_raw", "dense_b"], ["logit"], name="dense_bias"),
        helper.make_node("Sigmoid", ["logit"], ["score"], name="score"),
    ]
    graph = helper.make_graph(
        nodes,
        "disaster_tweet_cnn",
        [_shape("tokens", ["batch", "seq"])],
        [_shape("score", ["batch", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
    model.ir_version = 8
    helper.set_model_props(model, {"kafka_infer.form": FORM, "kafka_infer.shifts": ",".join(map(str, shifts))})
    onnx.checker.check_model(model, full_check=True)
    return model


def weights_from_keras(model, pad_id, kernel_widths):
    """The trained weights of train.py's Keras model (layers embedding, conv{k}, score).

    A model initialised from pre-trained word vectors has instead a wide frozen embedding
    ("embedding_pre", [vocab, 384]) followed by a linear projection without bias ("embed_proj",
    [384, E]); the two are one linear map per token, so they are folded here into one
    [vocab, E] embedding (emb_pre @ proj, in float64) and the exported graph is the same as for
    a plain embedding of width E."""
    names = {layer.name for layer in model.layers}
    if "embed_proj" in names:
        pre = model.get_layer("embedding_pre").get_weights()[0].astype(np.float64)
        proj = model.get_layer("embed_proj").get_weights()[0].astype(np.float64)
        emb = (pre @ proj).astype(np.float32)
    else:
        emb = model.get_layer("embedding").get_weights()[0].astype(np.float32).copy()
    # The trained graph multiplies embeddings by the padding mask; a zero row does the same.
    emb[pad_id] = 0.0
    kernels = [model.get_layer(f"conv{k}").get_weights() for k in kernel_widths]
    # TF "same" padding puts (k-1)//2 zeros on the left: tap j of width k reads x[t + j - (k-1)//2].
    shifts = sorted({j - (k - 1) // 2 for k in kernel_widths for j in range(k)})
    e = emb.shape[1]
    f = kernels[0][0].shape[2]
    blocks = [np.zeros((e, f * len(kernel_widths)), dtype=np.float32) for _ in shifts]
    for c, (k, (kern, _)) in enumerate(zip(kernel_widths, kernels)):
        for j in range(k):
            blocks[shifts.index(j - (k - 1) // 2)][:, c * f:(c + 1) * f] = kern[j]
    bias = np.concatenate([b for _, b in kernels]).astype(np.float32)
    dense_w, dense_b = model.get_layer("score").get_weights()
    return Weights(emb, shifts, blocks, bias, dense_w.astype(np.float32), dense_b.astype(np.float32), pad_id)


def weights_from_onnx(model: onnx.ModelProto) -> Weights:
    """Reads the weights back from either form of model.onnx."""
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("kafka_infer.form") == FORM:
        shifts = [int(s) for s in props["kafka_infer.shifts"].split(",")]
        tags = [{-1: "prev", 0: "this", 1: "next"}.get(d, f"shift{d:+d}".replace("+", "p").replace("-", "m")) for d in shifts]
        return Weights(
            inits["embedding"], shifts, [inits[f"kernel_{t}"] for t in tags], inits["conv_bias"].reshape(-1),
            inits["dense_w"], inits["dense_b"], int(inits["pad_id"]),
        )
    return _weights_from_concat_form(g, inits)


def _weights_from_concat_form(g, inits) -> Weights:
    """The tf2onnx export of train.py before this module: Gather(embedding) -> Pad/Slice shifts ->
    Concat -> MatMul [nE -> F] + bias -> Relu -> x mask -> ReduceMax -> MatMul + Add -> Sigmoid."""
    producers = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    tokens = g.input[0].name

    def const(name):
        if name in inits:
            return inits[name]
        n = producers.get(name)
        if n is not None and n.op_type == "Constant":
            return numpy_helper.to_array(n.attribute[0].t)
        raise ValueError(f"{name} is not a constant")

    (gather,) = [n for n in g.node if n.op_type == "Gather" and n.input[1] == tokens]
    emb = const(gather.input[0]).astype(np.float32)
    (concat,) = [n for n in g.node if n.op_type == "Concat"]
    shifts = []
    for part in concat.input:
        if part == gather.output[0]:
            shifts.append(0)
            continue
        sl = producers[part]
        pad = producers[sl.input[0]]
        assert sl.op_type == "Slice" and pad.op_type == "Pad" and pad.input[0] == gather.output[0], f"unexpected concat input {part}"
        pads = const(pad.input[1])
        rank = len(pads) // 2
        starts, ends = const(sl.input[1]), const(sl.input[2])
        axes = const(sl.input[3]) if len(sl.input) > 3 else np.arange(len(starts))
        assert list(axes) == list(range(rank)), "expected a slice over every axis"
        pad_before = int(pads[1])
        start = int(starts[1])
        shifts.append(start - pad_before)
        # Only the sequence axis may be padded or shifted.
        assert not any(pads[a] or pads[a + rank] for a in (0, 2)), "padding outside the sequence axis"
    (mm,) = [n for n in consumers[concat.output[0]] if n.op_type == "MatMul"]
    w = const(mm.input[1]).astype(np.float32)
    (add,) = consumers[mm.output[0]]
    bias = const(add.input[1]).astype(np.float32).reshape(-1)
    e = emb.shape[1]
    assert w.shape[0] == e * len(shifts), "MatMul rows must be one embedding per shift"
    blocks = [w[i * e:(i + 1) * e] for i in range(len(shifts))]
    (reduce,) = [n for n in g.node if n.op_type == "ReduceMax"]
    (dense,) = [n for n in consumers[reduce.output[0]] if n.op_type == "MatMul"]
    (dense_add,) = consumers[dense.output[0]]
    (eq,) = [n for n in g.node if n.op_type in ("Equal", "NotEqual") and tokens in n.input]
    pad_id = int(const([i for i in eq.input if i != tokens][0]))
    order = np.argsort(shifts)
    return Weights(
        emb, [shifts[i] for i in order], [blocks[i] for i in order], bias,
        const(dense.input[1]).astype(np.float32), const(dense_add.input[1]).astype(np.float32).reshape(-1), pad_id,
    )


def _golden_ids(model_dir: Path):
    with (model_dir / "golden.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["ids"] for line in f]


def _pad(id_lists, length, pad_id):
    out = np.full((len(id_lists), length), pad_id, dtype=np.int32)
    for i, ids in enumerate(id_lists):
        out[i, : min(len(ids), length)] = ids[:length]
    return out


def compare(old: bytes, new: bytes, id_lists, pad_id, max_len=121):
    """Largest |score difference| between two models on `id_lists`, padded to max_len and to the
    longest of each batch of 64, with onnxruntime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    a = ort.InferenceSession(old, opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(new, opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    full = _pad(id_lists, max_len, pad_id)
    ref = a.run(None, {"tokens": full})[0]
    worst = max(worst, float(np.max(np.abs(ref - b.run(None, {"tokens": full})[0]))))
    for i in range(0, len(id_lists), 64):
        chunk = id_lists[i:i + 64]
        batch = _pad(chunk, max(1, max(len(x) for x in chunk)), pad_id)
        worst = max(worst, float(np.max(np.abs(ref[i:i + 64] - b.run(None, {"tokens": batch})[0]))))
    return worst


def main():
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=here / "model.onnx", help="read the weights from, and rewrite, this file")
    ap.add_argument("--check", action="store_true", help="compare only; write nothing")
    ap.add_argument("--tolerance", type=float, default=1e-6)
    args = ap.parse_args()

    old = args.model.read_bytes()
    weights = weights_from_onnx(onnx.load_from_string(old))
    new = build_model(weights).SerializeToString()
    ids = _golden_ids(args.model.parent)
    worst = compare(old, new, ids, weights.pad_id)
    print(f"shifts {weights.shifts}, vocab {weights.embedding.shape[0]}, embed {weights.embedding.shape[1]}, "
          f"features {weights.bias.shape[0]}: max |score difference| {worst:.3g} on {len(ids)} golden inputs")
    if worst > args.tolerance:
        sys.exit(f"export.py: the re-exported graph differs by {worst} > {args.tolerance}; nothing written")
    if args.check:
        return
    if new == old:
        print("model.onnx is already in this form with these weights; unchanged")
        return
    args.model.write_bytes(new)
    metrics = args.model.parent / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        m["onnx_sha256"] = hashlib.sha256(new).hexdigest()
        metrics.write_text(json.dumps(m, indent=1) + "\n")
    print(f"wrote {args.model} ({len(new)} bytes)")


if __name__ == "__main__":
    main()
