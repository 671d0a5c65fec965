"""The fine-tuned teacher: all-MiniLM-L6-v2 (model/teacher.py) fine-tuned with a dense sigmoid head
on each CV fold's training part, and once on all of train.csv (the shipped student's teacher).

Its outputs are what the student learns from, so they are computed once and committed:
model/teacher_scores.npz holds, per fold k, the logits of fold k's teacher on every train.csv tweet
and on every augmented variant (teacher.augment, seeded), plus the same for the all-of-train.csv
teacher; model/teacher_scores.json holds the configuration, the teacher's held-out metrics per fold,
the time per stage and the SHA-256 of the .npz. train.py reads them (checking the SHA-256);
`just train --teacher` re-runs this script first.

Honesty: fold k's teacher is trained on fold k's training part only; the student of fold k reads
only the entries of fold k's training tweets and of their variants. The held-out logits are used
only for the teacher's own CV row. test.csv is never read.

Each finished fold is cached in model/.cache (keyed by the configuration and the data), so an
interrupted run resumes where it stopped.

Use (normally through `just train --teacher`):
    python model/finetune_teacher.py [--folds 0,1] [--epochs 3] [--variants 1]
"""

import argparse
import hashlib
import html
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SEED = 42
FT = dict(
    max_wordpieces=64,
    frozen_layers=4,  # layers 0-3 (and the embeddings) stay as pre-trained: their outputs are computed once  # 99.9 % of train.csv tweets fit (see teacher_scores.json, "truncated")
    epochs=3,
    batch_size=32,
    learning_rate=5e-5,  # AdamW, linear warm-up over 10 % of the steps, then linear decay to 0
    warmup=0.1,
    weight_decay=0.01,
    dropout=0.1,
    variants=1,  # augmented copies of each tweet scored by every teacher (the transfer set)
)
URL = re.compile(r"https?://\S+", re.IGNORECASE)


def clean(text):
    """What the teacher reads: HTML entities decoded, URLs (t.co links, meaningless) as 'http'."""
    return URL.sub("http", html.unescape(text))


def batches_by_length(lengths, batch_size, rng):
    """Shuffled batches of similar lengths: shuffle, cut into pools of 50 batches, sort each pool
    by length, cut into batches, shuffle the batches."""
    idx = rng.permutation(len(lengths))
    out = []
    pool = 50 * batch_size
    for s in range(0, len(idx), pool):
        p = idx[s:s + pool]
        p = p[np.argsort([lengths[i] for i in p], kind="stable")]
        out += [p[i:i + batch_size] for i in range(0, len(p), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def pad_hidden(arrays):
    n = max(len(a) for a in arrays)
    x = np.zeros((len(arrays), n, arrays[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(arrays), n), dtype=np.float32)
    for i, a in enumerate(arrays):
        x[i, :len(a)] = a
        mask[i, :len(a)] = 1.0
    return x, mask


def frozen_bottom(m, cfg, wp, cache, log=print, batch_size=128):
    """The outputs of the frozen layers (embeddings + layers 0..frozen_layers-1, inference mode) for
    every wordpiece list: a list of [len, 384] float32 arrays. Cached in `cache` (one file)."""
    if cache.exists():
        z = np.load(cache)
        flat, ends = z["flat"], z["ends"]
        log(f"frozen layers: cached ({cache.name})")
        return np.split(flat, ends[:-1])
    import tensorflow as tf

    import teacher as T

    t0 = time.time()
    enc = T.build_encoder(m, trainable=False, layers=(0, cfg["frozen_layers"]), pool=False)
    fn = tf.function(lambda i, k: enc((i, k), training=False), input_signature=(
        tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None, None), tf.float32)))
    order = np.argsort([len(x) for x in wp], kind="stable")
    out = [None] * len(wp)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = T.pad_batch([wp[i] for i in idx])
        h = fn(tf.constant(ids), tf.constant(mask)).numpy()
        for j, i in enumerate(idx):
            out[i] = h[j, :len(wp[i])].copy()
    ends = np.cumsum([len(a) for a in out])
    np.savez(cache, flat=np.concatenate(out), ends=ends)
    log(f"frozen layers: {len(wp)} texts in {time.time() - t0:.0f} s")
    return out


class Teacher:
    """One fine-tuning run: a fresh encoder from the pinned weights plus a new head."""

    def __init__(self, m, cfg, steps, seed):
        import keras
        import tensorflow as tf

        import teacher as T

        keras.utils.set_random_seed(seed)
        self.tf = tf
        n = m.config["num_hidden_layers"]
        self.enc = T.build_encoder(m, trainable=True, dropout=cfg["dropout"], seed=seed, layers=(cfg["frozen_layers"], n))
        self.drop = keras.layers.Dropout(cfg["dropout"], seed=seed)
        self.head = keras.layers.Dense(1, name="head", kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        warm = max(1, int(cfg["warmup"] * steps))
        lr = cfg["learning_rate"]

        class Schedule(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step):
                step = tf.cast(step, tf.float32)
                up = lr * step / warm
                down = lr * tf.maximum(0.0, (steps - step) / max(1, steps - warm))
                return tf.where(step < warm, up, down)

        self.opt = keras.optimizers.AdamW(learning_rate=Schedule(), weight_decay=cfg["weight_decay"], epsilon=1e-6)
        self._logits(tf.zeros((1, 2, m.config["hidden_size"])), tf.ones((1, 2)), False)  # build the variables
        self.opt.exclude_from_weight_decay(var_names=["bias", "LayerNorm", "layer_norm"])
        self.vars = self.enc.trainable_variables + self.head.trainable_variables
        sig = (tf.TensorSpec((None, None, m.config["hidden_size"]), tf.float32), tf.TensorSpec((None, None), tf.float32))
        self.train_step = tf.function(self._train_step, input_signature=sig + (tf.TensorSpec((None,), tf.float32),))
        self.infer = tf.function(lambda i, k: self._logits(i, k, False), input_signature=sig)

    def _logits(self, ids, mask, training):
        h = self.enc((ids, mask), training=training)
        return self.head(self.drop(h, training=training))[:, 0]

    def _train_step(self, ids, mask, y):
        tf = self.tf
        with tf.GradientTape() as tape:
            logit = self._logits(ids, mask, True)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logit))
        grads = tape.gradient(loss, self.vars)
        grads, _ = tf.clip_by_global_norm(grads, 1.0)
        self.opt.apply_gradients(zip(grads, self.vars))
        return loss

    def predict(self, hidden, batch_size=128):
        order = np.argsort([len(x) for x in hidden], kind="stable")
        out = np.zeros(len(hidden), dtype=np.float32)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            x, mask = pad_hidden([hidden[i] for i in idx])
            out[idx] = self.infer(self.tf.constant(x), self.tf.constant(mask)).numpy()
        return out


def finetune(m, cfg, wp, y, train_idx, score_sets, seed, log=print):
    """Fine-tunes on wp[train_idx] (the frozen layers' outputs per text); returns {name: logits}
    for each list of such outputs in score_sets."""
    tf_steps_per_epoch = -(-len(train_idx) // cfg["batch_size"])
    t = Teacher(m, cfg, tf_steps_per_epoch * cfg["epochs"], seed)
    rng = np.random.default_rng(seed)
    lengths = [len(wp[i]) for i in train_idx]
    for ep in range(cfg["epochs"]):
        t0, losses = time.time(), []
        for b in batches_by_length(lengths, cfg["batch_size"], rng):
            rows = train_idx[b]
            ids, mask = pad_hidden([wp[i] for i in rows])
            losses.append(float(t.train_step(ids, mask, y[rows].astype(np.float32))))
            if len(losses) % 50 == 0:
                log(f"  epoch {ep + 1} step {len(losses)}/{tf_steps_per_epoch} loss {np.mean(losses[-50:]):.4f} "
                    f"({time.time() - t0:.0f} s)")
        log(f"  epoch {ep + 1}: mean loss {np.mean(losses):.4f}, {time.time() - t0:.0f} s")
    t0 = time.time()
    out = {name: t.predict(s) for name, s in score_sets.items()}
    log(f"  scored {sum(len(s) for s in score_sets.values())} texts in {time.time() - t0:.0f} s")
    import keras

    keras.backend.clear_session()
    return out


def main():
    import train as TR  # the folds, metrics and data reading of the CV script
    import teacher as T

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE.parent / "data/disaster-tweets/train.csv")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--cache", type=Path, default=HERE / ".cache")
    ap.add_argument("--folds", default="0,1,2,3,4,all", help="which runs to do (cached ones are read)")
    ap.add_argument("--cfg", type=json.loads, default={}, help="JSON overrides of FT")
    ap.add_argument("--cv-seed", type=int, default=SEED,
                    help="seed of the fold split (train.py --cv-seed); another than 42 writes "
                         "teacher_scores-cv<seed>.npz/.json, runs 0-4 only (a check, never shipped)")
    args = ap.parse_args()
    cfg = dict(FT, **args.cfg)

    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    texts, labels = TR.read_train(args.data)
    folds = TR.cv_folds(labels, args.cv_seed)
    check = args.cv_seed != SEED  # a confirmation split: its own teachers, no shipped teacher
    m = T.MiniLM()
    m.tokenizer.enable_truncation(cfg["max_wordpieces"])
    wp = m.wordpieces([clean(t) for t in texts])
    aug_texts = T.augment(texts, cfg["variants"], SEED) if cfg["variants"] else []
    wp_aug = m.wordpieces([clean(t) for t in aug_texts]) if aug_texts else []
    m.tokenizer.no_truncation()
    full_len = [len(e.ids) for e in m.tokenizer.encode_batch([clean(t) for t in texts])]
    truncated = int(sum(n > cfg["max_wordpieces"] for n in full_len))
    data_sha = hashlib.sha256(args.data.read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([T.PINNED, cfg, SEED, data_sha] + ([args.cv_seed] if check else [])).encode()).hexdigest()[:16]
    args.cache.mkdir(parents=True, exist_ok=True)
    runs = [r for r in args.folds.split(",") if r]
    wanted = ["0", "1", "2", "3", "4"] + ([] if check else ["all"])
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"fine-tuning teacher: {cfg}; {len(texts)} tweets ({truncated} truncated), {len(aug_texts)} variants; key {key}")
    frozen_key = hashlib.sha256(json.dumps([T.PINNED, data_sha, SEED, [cfg[k] for k in ("max_wordpieces", "frozen_layers", "variants")]]).encode()).hexdigest()[:16]
    t0 = time.time()
    hidden = frozen_bottom(m, cfg, wp + wp_aug, args.cache / f"frozen-{frozen_key}.npz", log)
    seconds_frozen = time.time() - t0
    hid, hid_aug = hidden[:len(wp)], hidden[len(wp):]
    results, seconds = {}, {}
    for r in wanted:
        path = args.cache / f"finetuned-{r}-{key}.npz"
        if path.exists():
            z = np.load(path)
            results[r] = {"texts": z["texts"], "aug": z["aug"]}
            seconds[r] = float(z["seconds"])
            log(f"run {r}: cached ({seconds[r]:.0f} s when computed)")
            continue
        if r not in runs:
            continue
        tr = np.arange(len(texts)) if r == "all" else folds[int(r)][0]
        log(f"run {r}: fine-tuning on {len(tr)} tweets")
        t0 = time.time()
        sets = {"texts": hid, "aug": hid_aug} if hid_aug else {"texts": hid}
        out = finetune(m, cfg, hid, labels, tr, sets, SEED, log)
        out.setdefault("aug", np.zeros(0, np.float32))
        seconds[r] = time.time() - t0
        np.savez(path, texts=out["texts"], aug=out["aug"], seconds=seconds[r])
        results[r] = out
        if r != "all":
            te = folds[int(r)][1]
            f = TR.binary_metrics(labels[te], 1.0 / (1.0 + np.exp(-out["texts"][te].astype(np.float64))))
            log(f"run {r}: held-out F1 {f['f1']:.4f} ROC-AUC {f['roc_auc']:.4f}; {seconds[r]:.0f} s")
    if set(results) != set(wanted):
        log(f"done runs {sorted(results)}; teacher_scores not written until runs {','.join(wanted)} are done")
        return
    per_fold = []
    for k, (_, te) in enumerate(folds):
        per_fold.append(TR.binary_metrics(labels[te], 1.0 / (1.0 + np.exp(-results[str(k)]["texts"][te].astype(np.float64)))))
    arrays = {}
    for r in wanted:
        arrays[f"texts_{r}"] = results[r]["texts"].astype(np.float32)
        arrays[f"aug_{r}"] = results[r]["aug"].astype(np.float32)
    stem = TR.teacher_scores_stem(args.cv_seed)
    npz = args.out / f"{stem}.npz"
    # np.savez writes zip entries with a fixed timestamp: the same arrays give the same bytes.
    np.savez_compressed(npz, **arrays)
    import importlib.metadata as md

    summary = TR.summarize(per_fold)
    meta = {
        "what": "logits of all-MiniLM-L6-v2 fine-tuned per CV fold (runs 0-4, on the fold's training part)"
                + (f" of the --cv-seed {args.cv_seed} split, a check (no shipped teacher)" if check else
                   " and on all of train.csv (run 'all')")
                + "; texts_<run>[i] is train.csv row i, aug_<run>[i * variants + j] its j-th augmented variant "
                  "(teacher.augment, seed 42)",
        "encoder": T.SOURCE,
        "package": f"{T.PACKAGE}=={md.version(T.PACKAGE)}",
        "tokenizers": md.version("tokenizers"),
        "tensorflow": tf.__version__,
        "config": cfg,
        "seed": SEED,
        "cv_seed": args.cv_seed,
        "train_csv_sha256": data_sha,
        "tweets": len(texts),
        "truncated": truncated,
        "variants": len(aug_texts),
        "cv": {"model": "all-MiniLM-L6-v2 fine-tuned (mean-pooled + dense sigmoid head), per fold", **summary},
        "seconds": {r: round(s, 1) for r, s in seconds.items()},
        "seconds_frozen_layers": round(seconds_frozen, 1),
        "npz_sha256": hashlib.sha256(npz.read_bytes()).hexdigest(),
    }
    (args.out / f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
    log(f"teacher CV F1 {summary['mean']['f1']:.4f} ± {summary['sd']['f1']:.4f}, ROC-AUC {summary['mean']['roc_auc']:.4f}")
    log(f"wrote {npz} and {stem}.json")


if __name__ == "__main__":
    main()
