"""One frozen pass of all-MiniLM-L6-v2 over train.csv's tweets (issue 23), cached in model/.cache:

- the mean-pooled, L2-normalised last layer under the same cache key train.py's teacher_data uses
  (so train.py then reads it instead of encoding again);
- richer frozen features for the teacher probe: max-pooled and [CLS] last layer, mean of layer 5;
- the hidden states after layer 4 (float16, ragged), so the top two layers can be fine-tuned
  without re-running the bottom four.

Labels and folds are not read: everything here is a function of the texts and the pinned encoder.
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import teacher as T  # noqa: E402
import train  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "data/disaster-tweets/train.csv")
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / ".cache")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    import tensorflow as tf

    texts, _ = train.read_train(args.data)
    m = T.MiniLM()
    key = hashlib.sha256(json.dumps([T.PINNED, T.MAX_WORDPIECES, texts]).encode()).hexdigest()[:16]
    args.cache.mkdir(parents=True, exist_ok=True)
    out_mean = args.cache / f"teacher-tweets-{key}.npy"
    out_feats = args.cache / f"teacher-feats-{key}.npz"
    if out_mean.exists() and out_feats.exists():
        print("cached", out_mean, out_feats)
        return
    bottom = T.build_encoder(m, trainable=False, layers=(0, 4), pool=False)
    l5 = T.build_encoder(m, trainable=False, layers=(4, 5), pool=False)
    l6 = T.build_encoder(m, trainable=False, layers=(5, 6), pool=False)

    @tf.function(input_signature=(tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None, None), tf.float32)))
    def fn(ids, mask):
        h4 = bottom((ids, mask), training=False)
        h5 = l5((h4, mask), training=False)
        h6 = l6((h5, mask), training=False)
        return h4, h5, h6

    wp = m.wordpieces(texts)
    order = np.argsort([len(x) for x in wp], kind="stable")
    n, H = len(texts), m.config["hidden_size"]
    mean6, max6, cls6, mean5 = (np.zeros((n, H), np.float32) for _ in range(4))
    h4_rows = [None] * n
    t0 = time.time()
    for s in range(0, n, args.batch):
        idx = order[s:s + args.batch]
        ids, mask = T.pad_batch([wp[i] for i in idx])
        h4, h5, h6 = (a.numpy() for a in fn(tf.constant(ids), tf.constant(mask)))
        m3 = mask[:, :, None]
        cnt = np.maximum(m3.sum(1), 1e-9)
        mean6[idx] = (h6 * m3).sum(1) / cnt
        mean5[idx] = (h5 * m3).sum(1) / cnt
        max6[idx] = np.where(m3 > 0, h6, -1e9).max(1)
        cls6[idx] = h6[:, 0]
        for j, i in enumerate(idx):
            h4_rows[i] = h4[j, :len(wp[i])].astype(np.float16)
        if (s // args.batch) % 10 == 0:
            print(f"{s + len(idx)}/{n} tweets, {time.time() - t0:.0f} s", flush=True)
    # Exactly teacher.encode's output (mean-pooled, L2-normalised): train.py reads it from here.
    emb = mean6 / np.maximum(np.linalg.norm(mean6, axis=1, keepdims=True), 1e-12)
    np.save(out_mean, emb)
    lens = np.array([len(x) for x in wp], np.int32)
    np.savez(out_feats, mean6=mean6, max6=max6, cls6=cls6, mean5=mean5, lens=lens,
             h4=np.concatenate(h4_rows), ids=np.concatenate([np.asarray(x, np.int32) for x in wp]))
    print(f"encoded {n} tweets in {time.time() - t0:.0f} s -> {out_mean}, {out_feats}", flush=True)


if __name__ == "__main__":
    main()
