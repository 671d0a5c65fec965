"""Issue 23 experiments on the CV folds of train.py (seed 42): teacher variants and students.

Everything is fitted per fold on the fold's training part only; the held-out part is only scored.
Usage: python model/exp23.py teachers
       python model/exp23.py student '{"teacher_kind": "ens", ...hp overrides}' [max_epochs]
Appends one JSON line per result to model/.cache/exp23.jsonl.
"""

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import teacher as T  # noqa: E402
import train  # noqa: E402

DATA = HERE.parent / "data/disaster-tweets/train.csv"
CACHE = HERE / ".cache"
LOG = CACHE / "exp23.jsonl"


def log(rec):
    with LOG.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


def load():
    texts, labels = train.read_train(DATA)
    key = hashlib.sha256(json.dumps([T.PINNED, T.MAX_WORDPIECES, texts]).encode()).hexdigest()[:16]
    feats = dict(np.load(CACHE / f"teacher-feats-{key}.npz"))
    feats["emb"] = np.load(CACHE / f"teacher-tweets-{key}.npy")
    return texts, labels, feats


def l2n(a):
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def feature_set(feats, kind):
    if kind == "mean":
        return feats["emb"]
    if kind == "mean+max":
        return np.hstack([feats["emb"], l2n(feats["max6"])])
    if kind == "mean+max+cls+mean5":
        return np.hstack([feats["emb"], l2n(feats["max6"]), l2n(feats["cls6"]), l2n(feats["mean5"])])
    raise ValueError(kind)


def probe_fit(x, y, C):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, class_weight="balanced", max_iter=5000).fit(x, y)


def teacher_probs(kind, C, texts, labels, feats, tr, score_idx):
    """Fit teacher `kind` on tr; probabilities on score_idx."""
    x = np.array(texts, dtype=object)
    ps = []
    if kind in ("probe", "ens"):
        f = feature_set(feats, "mean")
        ps.append(probe_fit(f[tr], labels[tr], C).predict_proba(f[score_idx])[:, 1])
    if kind.startswith("probe:"):
        f = feature_set(feats, kind.split(":", 1)[1])
        ps.append(probe_fit(f[tr], labels[tr], C).predict_proba(f[score_idx])[:, 1])
    if kind.startswith("ens:"):
        f = feature_set(feats, kind.split(":", 1)[1])
        ps.append(probe_fit(f[tr], labels[tr], C).predict_proba(f[score_idx])[:, 1])
    if kind in ("tfidf", "ens") or kind.startswith("ens:"):
        ps.append(train.baseline_pipeline(train.BASELINE).fit(x[tr], labels[tr]).predict_proba(x[score_idx])[:, 1])
    return np.mean(ps, axis=0)


def teacher_cv(kind, C, texts, labels, feats, folds, crossfit=0):
    """Per fold: held-out metrics of the teacher fitted on the training part, and logits for every
    tweet of the training part (in-sample, or crossfit-fold out-of-fold within the training part)."""
    from sklearn.model_selection import StratifiedKFold

    per_fold, fold_logits = [], []
    for tr, te in folds:
        p_te = teacher_probs(kind, C, texts, labels, feats, tr, te)
        per_fold.append(train.binary_metrics(labels[te], p_te))
        logit = np.zeros(len(texts))
        if crossfit:
            inner = StratifiedKFold(crossfit, shuffle=True, random_state=train.SEED)
            for a, b in inner.split(np.zeros(len(tr)), labels[tr]):
                p = teacher_probs(kind, C, texts, labels, feats, tr[a], tr[b])
                logit[tr[b]] = np.log(np.clip(p, 1e-6, 1 - 1e-6) / np.clip(1 - p, 1e-6, 1))
        else:
            p = teacher_probs(kind, C, texts, labels, feats, tr, tr)
            logit[tr] = np.log(np.clip(p, 1e-6, 1 - 1e-6) / np.clip(1 - p, 1e-6, 1))
        fold_logits.append({"texts": logit, "aug": np.zeros(0)})
    return {"per_fold": per_fold, "folds": fold_logits}


def teachers(texts, labels, feats, folds):
    for kind in ["probe", "probe:mean+max", "probe:mean+max+cls+mean5", "ens", "ens:mean+max", "ens:mean+max+cls+mean5"]:
        for C in ([1.0] if kind in ("probe", "ens") else [0.3, 1.0]):
            t = time.time()
            r = teacher_cv(kind, C, texts, labels, feats, folds)
            s = train.summarize(r["per_fold"])
            log({"what": "teacher", "kind": kind, "C": C, "f1": s["mean"]["f1"], "f1_sd": s["sd"]["f1"],
                 "roc_auc": s["mean"]["roc_auc"], "seconds": round(time.time() - t, 1)})


def student(texts, labels, feats, folds, over, max_epochs):
    import keras

    hp = dict(train.HP, **train.STUDENT)
    hp.update({k: v for k, v in over.items() if k in train.HP or k in ("embed_proj",)})
    kind, C, crossfit = over.get("teacher_kind", "probe"), over.get("teacher_C", 1.0), over.get("crossfit", 0)
    t = time.time()
    teacher = teacher_cv(kind, C, texts, labels, feats, folds, crossfit)
    ts = train.summarize(teacher["per_fold"])
    m = T.MiniLM()
    all_words = sorted({w for toks in train.tokenize_all(texts, dict(train.HP, stopwords="none")) for w in toks})
    tdata = {"extra_words": (), "word_index": {w: i for i, w in enumerate(all_words)},
             "wp_vecs": T.wordpiece_vectors(m, all_words), "word_vecs": None, "variants": 0,
             "aug_emb": np.zeros((0, 384), np.float32), "aug_texts": [], "aug_toks": None}
    hp["word_vectors"] = "wordpiece"
    keras.utils.set_random_seed(train.SEED)
    r = train.cv_cnn(hp, texts, labels, folds, max_epochs, per_epoch=True, tdata=tdata,
                     teacher=teacher if train.uses_teacher(hp) else None)
    curve = []
    for ep in range(max_epochs):
        s = train.summarize([c[ep] for c in r["curves"]])
        curve.append((ep + 1, s["mean"]["f1"], s["sd"]["f1"], s["mean"]["roc_auc"]))
    best = max(curve, key=lambda c: (c[1], -c[0]))
    log({"what": "student", "over": over, "max_epochs": max_epochs, "teacher_f1": ts["mean"]["f1"],
         "teacher_f1_sd": ts["sd"]["f1"], "best_epoch": best[0], "f1": best[1], "f1_sd": best[2], "roc_auc": best[3],
         "curve": [round(c[1], 4) for c in curve], "seconds": round(time.time() - t, 1)})


def main():
    texts, labels, feats = load()
    folds = train.cv_folds(labels, train.SEED)
    if sys.argv[1] == "teachers":
        teachers(texts, labels, feats, folds)
    elif sys.argv[1] == "student":
        student(texts, labels, feats, folds, json.loads(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8)


if __name__ == "__main__":
    main()
