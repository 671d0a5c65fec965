"""The Quix Streams contender of the drain benchmark (benches/drain.rs): the same job as
consumer.py written as a user of that framework would, one onnxruntime call per event.

    python quix.py BOOTSTRAP INPUT OUTPUT GROUP [--model-dir DIR]

An Application (consumer group GROUP, earliest, Quix's default at-least-once with a commit
every 5 s) whose dataframe scores one tweet per event with the project's own preprocessing
(model/preprocess.py) and onnxruntime (one intra- and one inter-op thread) and sends
{"value":[score]} to OUTPUT with the same key. Quix chooses the output partition by hashing the
key (it has no "same partition as the input" option); its producer here uses librdkafka's
default partitioner (consistent_random, CRC32 of the key) instead of Quix's default murmur2, so
for an input written with that default (as drain.rs preloads it) into a topic with as many
partitions each output lands in its input's partition. Records whose value is not
{"value": "<text>"} (or not JSON at all) are dropped (counted on stderr at exit). Quix handles
SIGTERM itself: it stops, flushes, commits and run() returns; the process exits 0.
"""

import argparse
import importlib.util
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

# Its import chain (confluent-kafka's schema registry → authlib) warns that authlib's httpx
# support is deprecated: nothing we use; keep it off the benchmark's stderr.
with warnings.catch_warnings(record=True):
    from quixstreams import Application

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
    args = ap.parse_args()

    pre = load_preprocessor(args.model_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(args.model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])

    skipped = 0

    def on_consumer_error(exc, message, logger):
        # A record the json deserializer rejects: skip it. Anything else: Quix's default (stop).
        nonlocal skipped
        if message is None:
            logger.error("consumer error: %s", exc)
            return False
        skipped += 1
        return True

    def score(value):
        nonlocal skipped
        try:
            ids = pre.ids(value["value"])
        except (TypeError, KeyError):  # not an object, no string "value"
            skipped += 1
            return None
        tokens = np.array([ids or [0]], dtype=np.int32)  # [1, len]; an empty tweet is one pad
        return {"value": [float(session.run(["score"], {"tokens": tokens})[0][0, 0])]}

    with tempfile.TemporaryDirectory(prefix="quix-state-") as state_dir:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            producer_extra_config={"enable.idempotence": True, "acks": "all", "linger.ms": 1,
                                   "partitioner": "consistent_random"},
            state_dir=state_dir,  # unused (no stateful steps); keeps the working directory clean
            loglevel="WARNING",
            on_consumer_error=on_consumer_error,
        )
        sdf = app.dataframe(app.topic(args.input, value_deserializer="json"))
        sdf = sdf.apply(score).filter(lambda v: v is not None)
        sdf.to_topic(app.topic(args.output, value_serializer="json"))
        app.run()
    if skipped:
        print(f"quix.py: dropped {skipped} records that were not {{\"value\": \"<text>\"}}", file=sys.stderr)


if __name__ == "__main__":
    main()
