"""Train the disaster-tweet CNN, export it to ONNX and write the golden vectors.

Usage (from the repository root; `just train` does this in a venv):
    python model/train.py [--data data/disaster-tweets/train.csv] [--out model]

Rewrites, in --out: model.onnx, vocab.txt, preprocess.json, golden.jsonl, metrics.json.
Reads only train.csv; downloads nothing.
"""

import argparse
import collections
import csv
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import ENTITY_PATTERN, OOV_ID, PAD_ID, STOPWORDS, URL_PATTERN, URL_TOKEN, Preprocessor, tokens  # noqa: E402

SEED = 42
# Model hyper-parameters: chosen on the validation split (see README.md, "Choices").
HP = dict(
    max_len=121,  # the seed's sequence length: tweets are truncated here
    min_token_len=2,
    min_count=2,  # a word needs this many training occurrences to get its own id
    max_vocab=20000,
    embed_dim=32,
    kernel_widths=[1, 2, 3],
    filters=32,
    dropout=0.5,
    embed_dropout=0.3,
    epochs=12,
    batch_size=64,
    learning_rate=1e-3,
)

EDGE_CASES = [
    ("empty", ""),
    ("only_url", "http://t.co/lHYXEOHY6C"),
    ("only_https_url", "https://t.co/3JyLq8MFJ9"),
    ("only_emoji", "\U0001F525\U0001F525\U0001F631 \U0001F30A"),
    ("html_entities", "Fire &amp; smoke &gt; everything &#39;s burning &lt;3 &amp"),
    ("non_latin", "Пожар в Москве 地震 حريق في المدينة"),
    ("mixed_script", "İstanbul earthquake naïve café Ünïcödé"),
    ("mojibake", "Û_ Ûª Û÷ flood warning Û_http://t.co/xyz ÛÏWe areÛ\u009d"),
    ("url_glued_to_word", "Newshttp://t.co/abc123 and more newshttps://x.co/y"),
    ("uppercase_scheme", "HTTP://T.CO/ABC stays as words"),
    ("digits_time", "There has been an earthquake at 3:00 pm"),
    ("whitespace", "\tflood\n\nwater\r\nrising\u00a0fast\u2028now"),
    ("stopwords_only", "I am the one and only you are"),
    ("single_letters", "a b c d e f g x y z"),
    ("hashtags_mentions", "#earthquake @USGS #Prayfor_Nepal @user_123"),
    ("long_over_121", " ".join(f"fire{chr(97 + i % 26)}{chr(97 + (i // 26) % 26)} flood" for i in range(150))),
    ("entity_in_url", "http://t.co/a&amp;b fire"),
    ("ampersand_digits", "&#12345; &#x41; &#; &; &a1;"),
    ("seed_example", "There has been an earthquake at 3:00 pm"),
    ("forest_fire", "Forest fire near La Ronge Sask. Canada"),
    ("happy", "I love my new phone, what a great day"),
]


def read_train(path: Path):
    texts, labels = [], []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels.append(int(row["target"]))
    return texts, np.array(labels, dtype=np.int32)


def build_vocab(token_lists, min_count, max_vocab):
    counts = collections.Counter(t for toks in token_lists for t in toks)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return ["<pad>", "<oov>"] + words[: max_vocab - 2]


def pad(id_lists, length):
    out = np.full((len(id_lists), length), PAD_ID, dtype=np.int32)
    for i, ids in enumerate(id_lists):
        out[i, : len(ids)] = ids
    return out


def build_model(vocab_size):
    tokens_in = keras.Input(shape=(None,), dtype="int32", name="tokens")
    # 1.0 on real tokens, 0.0 on padding.
    mask = keras.ops.expand_dims(keras.ops.cast(keras.ops.not_equal(tokens_in, PAD_ID), "float32"), -1)
    # Zeroing the padding embedding makes explicit padding identical to the convolution's own
    # implicit zero padding ("same"), and masking the ReLU outputs before the max (outputs are >= 0)
    # keeps padded positions from ever winning it: the score does not depend on how far a batch
    # is padded. This is what lets the server pad each batch only to its longest tweet.
    x = layers.Embedding(vocab_size, HP["embed_dim"], name="embedding")(tokens_in)
    if HP["embed_dropout"]:
        x = layers.SpatialDropout1D(HP["embed_dropout"], seed=SEED)(x)
    x = x * mask
    pooled = []
    for k in HP["kernel_widths"]:
        c = layers.Conv1D(HP["filters"], k, padding="same", activation="relu", name=f"conv{k}")(x)
        pooled.append(layers.GlobalMaxPooling1D(name=f"maxpool{k}")(c * mask))
    h = layers.Concatenate(name="features")(pooled) if len(pooled) > 1 else pooled[0]
    h = layers.Dropout(HP["dropout"], seed=SEED)(h)
    out = layers.Dense(1, activation="sigmoid", name="score")(h)
    return keras.Model(tokens_in, out)


def count_params_flops(model, typical_len):
    params = model.count_params()
    e, f = HP["embed_dim"], HP["filters"]
    conv_macs = sum(typical_len * e * f * k for k in HP["kernel_widths"])
    dense_macs = f * len(HP["kernel_widths"])
    return params, 2 * (conv_macs + dense_macs)


def export_onnx(model, path: Path):
    """Exports the trained model as the "shifted lookup" graph that kafka-infer serves.

    The graph, its derivation and why it is the same function are in model/export.py: each
    convolution tap's `embedding @ kernel` is folded into a lookup table, the mask into the
    tables' padding rows, so serving is three table lookups, two adds and a max per position.
    model/export.py also re-exports an existing model.onnx into this form from its weights.
    """
    from export import build_model, weights_from_keras

    onnx_model = build_model(weights_from_keras(model, PAD_ID, HP["kernel_widths"]))
    path.write_bytes(onnx_model.SerializeToString())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "data/disaster-tweets/train.csv")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--golden", type=int, default=600, help="validation tweets in golden.jsonl")
    ap.add_argument("--hp", type=json.loads, default={}, help='JSON overrides of HP, e.g. \'{"filters": 64}\'')
    args = ap.parse_args()
    HP.update(args.hp)

    random.seed(SEED)
    np.random.seed(SEED)
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    t0 = time.time()

    texts, labels = read_train(args.data)
    idx = np.arange(len(texts))
    tr_idx, va_idx = train_test_split(idx, test_size=0.2, stratify=labels, random_state=SEED)

    stop = frozenset(STOPWORDS)
    tok = lambda t: tokens(t, HP["min_token_len"], stop, HP["max_len"], URL_TOKEN)  # noqa: E731
    vocab = build_vocab([tok(texts[i]) for i in tr_idx], HP["min_count"], HP["max_vocab"])
    config = {
        "max_len": HP["max_len"],
        "min_token_len": HP["min_token_len"],
        "pad_id": PAD_ID,
        "oov_id": OOV_ID,
        "lowercase": "ascii",
        "url_pattern": URL_PATTERN,
        "url_token": URL_TOKEN,
        "entity_pattern": ENTITY_PATTERN,
        "token_pattern": "[A-Za-z]+",
        "stopwords": STOPWORDS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preprocess.json").write_text(json.dumps(config, indent=1) + "\n")
    (args.out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    pre = Preprocessor.load(args.out)  # from the files, exactly as the server will

    x_tr = [pre.ids(texts[i]) for i in tr_idx]
    x_va = [pre.ids(texts[i]) for i in va_idx]
    y_tr, y_va = labels[tr_idx], labels[va_idx]
    lens = sorted(len(x) for x in x_tr)

    model = build_model(len(vocab))
    model.compile(optimizer=keras.optimizers.Adam(HP["learning_rate"]), loss="binary_crossentropy", metrics=["accuracy"])
    best = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    model.fit(
        pad(x_tr, HP["max_len"]), y_tr,
        validation_data=(pad(x_va, HP["max_len"]), y_va),
        epochs=HP["epochs"], batch_size=HP["batch_size"], shuffle=True, callbacks=[best], verbose=2,
    )
    train_seconds = time.time() - t0

    onnx_path = args.out / "model.onnx"
    export_onnx(model, onnx_path)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def ort_scores(id_lists):
        return sess.run(None, {"tokens": pad(id_lists, HP["max_len"])})[0][:, 0]

    p_va = ort_scores(x_va)
    p_keras = model.predict(pad(x_va, HP["max_len"]), batch_size=256, verbose=0)[:, 0]
    export_err = float(np.max(np.abs(p_va - p_keras)))
    assert export_err < 1e-5, f"exported graph differs from Keras by {export_err}"
    threshold = 0.5
    y_hat = (p_va >= threshold).astype(np.int32)
    typical = int(np.median([len(x) for x in x_va]))
    params, flops = count_params_flops(model, typical)
    metrics = {
        "validation_tweets": int(len(va_idx)),
        "train_tweets": int(len(tr_idx)),
        "threshold": threshold,
        "accuracy": round(float(accuracy_score(y_va, y_hat)), 4),
        "precision": round(float(precision_score(y_va, y_hat)), 4),
        "recall": round(float(recall_score(y_va, y_hat)), 4),
        "f1": round(float(f1_score(y_va, y_hat)), 4),
        "roc_auc": round(float(roc_auc_score(y_va, p_va)), 4),
        "epochs_run": len(model.history.history["loss"]),
        "best_epoch": int(np.argmin(model.history.history["val_loss"])) + 1,
        "train_seconds": round(train_seconds, 1),
        "parameters": int(params),
        "vocab_size": len(vocab),
        "median_tokens": typical,
        "p99_tokens": int(lens[int(0.99 * (len(lens) - 1))]),
        "max_tokens": int(lens[-1]),
        "flops_per_tweet_at_median": int(flops),
        "hyperparameters": HP,
        "export_max_abs_diff_vs_keras": export_err,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "onnxruntime": ort.__version__},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")

    # Golden vectors: the first --golden validation tweets (in split order) plus edge cases,
    # each with the token ids and the onnxruntime score at the seed's full padding of 121.
    golden = [("val", texts[i]) for i in va_idx[: args.golden]] + list(EDGE_CASES)
    g_ids = [pre.ids(t) for _, t in golden]
    g_scores = ort_scores(g_ids)
    with (args.out / "golden.jsonl").open("w", encoding="utf-8") as f:
        for (kind, text), ids, score in zip(golden, g_ids, g_scores):
            f.write(json.dumps({"kind": kind, "text": text, "ids": ids, "score": float(score)}, ensure_ascii=False) + "\n")

    print(json.dumps({k: v for k, v in metrics.items() if k not in ("hyperparameters",)}, indent=1))


if __name__ == "__main__":
    main()
