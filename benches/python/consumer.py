"""The "30-line Python consumer" contender of the drain benchmark (benches/drain.rs): what a
user would otherwise run instead of kafka-infer.

    python consumer.py BOOTSTRAP INPUT OUTPUT GROUP [--model-dir DIR] [--wait-ms MS] [--linger-ms MS]

confluent-kafka consumer (auto commit) → the project's own preprocessing (model/preprocess.py)
→ one onnxruntime call per consumed batch (up to 256 tweets, padded to the longest, one intra-
and one inter-op thread) → {"value":[score]} with the same key to the same partition of OUTPUT
(idempotent producer, acks=all). `--wait-ms` is how long one `consume()` call waits to fill its
batch of 256 (default 100), `--linger-ms` the producer's linger (default 1); the steady-rate
benchmark runs it with 5 and 5, so that it too coalesces work at moderate rates. Records whose value is not {"value": "<text>"} are skipped
(counted on stderr at exit). Runs until SIGTERM, then flushes and exits 0.
"""

import argparse
import importlib.util
import json
import signal
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from confluent_kafka import Consumer, Producer

REPO_MODEL = Path(__file__).resolve().parent.parent.parent / "model"


def load_preprocessor(model_dir: Path):
    # The repository's preprocessing code, imported by path; its data from model_dir.
    spec = importlib.util.spec_from_file_location("preprocess", REPO_MODEL / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Preprocessor.load(model_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("bootstrap", "input", "output", "group"):
        ap.add_argument(name)
    ap.add_argument("--model-dir", type=Path, default=REPO_MODEL)
    ap.add_argument("--wait-ms", type=float, default=100.0, help="how long consume() waits for 256 records")
    ap.add_argument("--linger-ms", type=float, default=1.0, help="the producer's linger.ms")
    args = ap.parse_args()

    pre = load_preprocessor(args.model_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(args.model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])

    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": True})
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": args.linger_ms})
    consumer.subscribe([args.input])

    stop = False

    def on_sigterm(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_sigterm)
    skipped = 0
    while not stop:
        batch, ids = [], []
        for msg in consumer.consume(num_messages=256, timeout=args.wait_ms / 1000):
            if msg.error():
                continue
            try:
                text = json.loads(msg.value())["value"]
                ids.append(pre.ids(text))
            except (ValueError, TypeError, KeyError):  # not JSON, not an object, no string "value"
                skipped += 1
                continue
            batch.append(msg)
        if batch:
            tokens = np.zeros((len(ids), max(1, max(map(len, ids)))), dtype=np.int32)  # 0 = padding
            for row, seq in zip(tokens, ids):
                row[: len(seq)] = seq
            scores = session.run(["score"], {"tokens": tokens})[0][:, 0]
            for msg, score in zip(batch, scores):
                value = json.dumps({"value": [float(score)]}, separators=(",", ":"))
                while True:
                    try:
                        producer.produce(args.output, value, key=msg.key(), partition=msg.partition())
                        break
                    except BufferError:  # local queue full: serve delivery reports, retry
                        producer.poll(0.1)
        producer.poll(0)

    producer.flush(30)
    consumer.close()  # commits the offsets consumed so far
    if skipped:
        print(f"consumer.py: skipped {skipped} records that were not {{\"value\": \"<text>\"}}", file=sys.stderr)


if __name__ == "__main__":
    main()
