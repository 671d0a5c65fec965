"""Drain benchmark of the Python contenders alone, measured as benches/drain.rs measures the
Rust worker, with every output checked: preload N tweets into a fresh input topic (as drain.rs
does), then for each contender start a reader of a fresh output topic, start the contender
(`python consumer.py|quix.py BOOTSTRAP INPUT OUTPUT GROUP`), time first→last output as the
reader sees them, take the contender's user+sys CPU from /proc/<pid>/stat and its peak RSS,
SIGTERM it (it must exit 0), and check that every input key came out exactly once, as
{"value":[x]}, in its input's partition, with x within 1e-5 of `kafka-infer score` on the same
text.

    python drain.py BOOTSTRAP [--tweets N] [--only rust,consumer,quix] [--rust-bin PATH]

`rust` (the kafka-infer worker, `--rust-bin`, started as drain.rs starts it) is there as a
reference on the same broker and topic; the Python figures are the point.

BOOTSTRAP: a running broker, e.g. `scripts/kafka start --port 19600 --dir /tmp/k-py`.
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import preload  # noqa: E402

CONTENDERS = {
    "rust": ("kafka-infer, real model (reference)", None),
    "consumer": ("Python confluent-kafka + onnxruntime, 256-record batches", HERE / "consumer.py"),
    "quix": ("Python Quix Streams + onnxruntime, one call per event", HERE / "quix.py"),
}
TICKS = os.sysconf("SC_CLK_TCK")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(args, name, partitions):
    subprocess.run([str(args.kafka_script), "create-topic", "--bootstrap", args.bootstrap, name, str(partitions)],
                   check=True, stdout=subprocess.DEVNULL)


def cpu_seconds(pid):
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICKS  # fields 14 and 15: utime, stime


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def assigned_reader(bootstrap, topic, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("drain-reader"),
                  "enable.auto.commit": False, "enable.partition.eof": False})
    c.assign([TopicPartition(topic, p, -2) for p in range(partitions)])  # -2: beginning
    for p in range(partitions):
        c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
    return c


def read_all(bootstrap, topic, partitions, n, deadline_s):
    """All records of a topic: [(key, partition, value)], at most n, within deadline_s."""
    c = assigned_reader(bootstrap, topic, partitions)
    out, deadline = [], time.monotonic() + deadline_s
    while len(out) < n and time.monotonic() < deadline:
        for m in c.consume(num_messages=1000, timeout=0.1):
            if not m.error():
                out.append((m.key(), m.partition(), m.value()))
    c.close()
    return out


def rust_scores(rust_bin, model_dir, tweets):
    lines = "".join(json.dumps({"value": t}) + "\n" for t in tweets)
    r = subprocess.run([rust_bin, "score", "--model-dir", str(model_dir)], input=lines.encode(),
                       capture_output=True, check=True)
    scores = [json.loads(line)["value"][0] for line in r.stdout.decode().splitlines()]
    assert len(scores) == len(tweets), (len(scores), len(tweets))
    return scores


def check(outputs, n, input_partition, expected, ntweets):
    seen, bad_format, bad_partition, worst, mismatched = set(), 0, 0, 0.0, 0
    dup = 0
    for key, part, value in outputs:
        i = int(key)
        if i in seen:
            dup += 1
        seen.add(i)
        v = json.loads(value)
        if not (isinstance(v, dict) and list(v) == ["value"] and isinstance(v["value"], list)
                and len(v["value"]) == 1 and isinstance(v["value"][0], float) and math.isfinite(v["value"][0])):
            bad_format += 1
            continue
        if part != input_partition[i]:
            bad_partition += 1
        d = abs(v["value"][0] - expected[i % ntweets])
        worst = max(worst, d)
        mismatched += d > 1e-5
    missing = n - len(seen & set(range(n)))
    return {"missing": missing, "duplicates": dup, "bad_format": bad_format, "other_partition": bad_partition,
            "score_mismatch_gt_1e-5": mismatched, "max_abs_diff": worst}


def run_contender(args, label, script, input_topic):
    output, group = unique("drain-out"), unique("drain")
    create_topic(args, output, args.partitions)
    reader = assigned_reader(args.bootstrap, output, args.partitions)
    warm = time.monotonic() + 0.5
    while time.monotonic() < warm:
        assert not reader.consume(num_messages=1, timeout=0.05), "output topic not empty"
    if script is None:  # the Rust worker, started as drain.rs starts it
        dlq = unique("drain-dlq")
        create_topic(args, dlq, 1)
        cmd = [args.rust_bin, "run", "--brokers", args.bootstrap, "--group-id", group, "--input-topic", input_topic,
               "--output-topic", output, "--dlq-topic", dlq, "--metrics-addr", "off"]  # its built-in model
        env = dict(os.environ, RUST_LOG="warn")
    else:
        cmd = [sys.executable, str(script), args.bootstrap, input_topic, output, group, "--model-dir", str(args.model_dir)]
        env = None
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env)
    started = time.monotonic()
    outputs, first, last = [], None, None
    deadline = started + args.timeout
    while len(outputs) < args.tweets and time.monotonic() < deadline and child.poll() is None:
        batch = reader.consume(num_messages=1000, timeout=0.1)
        now = time.monotonic()
        for m in batch:
            if m.error():
                continue
            if first is None:
                first = now
            last = now
            outputs.append((m.key(), m.partition(), m.value()))
    cpu, rss = cpu_seconds(child.pid), peak_rss_mib(child.pid)
    child.send_signal(signal.SIGTERM)
    rc = child.wait(timeout=60)
    # Anything produced after the n-th output (duplicates) still counts for the check.
    tail = time.monotonic() + 1.0
    while time.monotonic() < tail:
        outputs += [(m.key(), m.partition(), m.value()) for m in reader.consume(num_messages=1000, timeout=0.1)
                    if not m.error()]
    reader.close()
    got = min(len(outputs), args.tweets)
    secs = (last - first) if first is not None else 0.0
    return {"label": label, "outputs": got, "secs": secs, "rate": (got - 1) / max(secs, 1e-9),
            "startup_s": (first - started) if first is not None else None,
            "cpu_s": cpu, "us_per_tweet": cpu * 1e6 / max(got, 1), "rss_mib": rss, "exit": rc,
            "all_outputs": outputs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bootstrap")
    ap.add_argument("--tweets", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--only", default=",".join(CONTENDERS))
    ap.add_argument("--model-dir", type=Path, default=REPO / "model")
    ap.add_argument("--rust-bin", default=str(REPO / "target/release/kafka-infer"))
    ap.add_argument("--kafka-script", type=Path, default=REPO / "scripts/kafka")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per contender")
    args = ap.parse_args()

    tweets = preload.test_tweets(REPO / "data/disaster-tweets/test.csv")
    expected = rust_scores(args.rust_bin, args.model_dir, tweets)
    input_topic = unique("drain-in")
    create_topic(args, input_topic, args.partitions)
    t = time.perf_counter()
    preload.preload(args.bootstrap, input_topic, args.tweets, tweets)
    print(f"preloaded {args.tweets} tweets into {args.partitions} partitions in {time.perf_counter() - t:.1f} s",
          flush=True)
    input_partition = {int(k): p for k, p, _ in read_all(args.bootstrap, input_topic, args.partitions,
                                                         args.tweets, 120)}
    assert len(input_partition) == args.tweets

    rows = []
    for name in args.only.split(","):
        label, script = CONTENDERS[name]
        r = run_contender(args, label, script, input_topic)
        r["check"] = check(r.pop("all_outputs"), args.tweets, input_partition, expected, len(tweets))
        print(f"{label}: {r['outputs']} outputs, first→last {r['secs']:.2f} s, {r['rate']:.0f} tweets/s, "
              f"CPU {r['us_per_tweet']:.1f} µs/tweet ({r['cpu_s']:.2f} s), peak RSS {r['rss_mib']:.0f} MiB, "
              f"first output {r['startup_s']:.2f} s after start, exit {r['exit']}\n  check: {r['check']}",
              flush=True)
        rows.append(r)
    print("\n| contender | outputs | first→last (s) | tweets/s | CPU µs/tweet | peak RSS (MiB) |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['outputs']} | {r['secs']:.2f} | {r['rate']:.0f} | {r['us_per_tweet']:.1f} | {r['rss_mib']:.0f} |")
    ok = all(r["exit"] == 0 and r["outputs"] == args.tweets and not any(
        v for k, v in r["check"].items() if k != "max_abs_diff") for r in rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
