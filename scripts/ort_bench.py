"""onnxruntime side of scripts/bench-inference-vs-ort: times one batch size of the batches that
`infer_bench dump` wrote, with one intra-op and one inter-op thread, and prints one JSON line
(the same fields as `infer_bench run`)."""

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    model, batch_dir, n, seconds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    raw = np.fromfile(batch_dir / f"b{n}.i32", dtype="<i4")
    batches, at = [], 0
    for r, c in json.loads((batch_dir / f"b{n}.json").read_text())["shapes"]:
        batches.append(raw[at:at + r * c].reshape(r, c).copy())
        at += r * c
    t = time.perf_counter()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t
    name = sess.get_inputs()[0].name
    for b in batches:  # warm-up
        sess.run(None, {name: b})
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    tweets = 0
    while time.perf_counter() - t0 < seconds:
        for b in batches:
            tweets += len(sess.run(None, {name: b})[0])
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    print(json.dumps({"runtime": "onnxruntime", "batch": n, "tweets": tweets, "wall_s": round(wall, 4),
                      "cpu_s": round(cpu, 4), "load_s": round(load_s, 4)}))


if __name__ == "__main__":
    main()
