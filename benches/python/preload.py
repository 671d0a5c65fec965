"""Preload N tweets into a topic the way benches/drain.rs does: the `text` column of
data/disaster-tweets/test.csv, cycled; key = the record's index as a decimal string; value =
{"value": "<text>"}; librdkafka's default partitioner (CRC32 of the key).

    python preload.py BOOTSTRAP TOPIC N [--csv PATH]
"""

import argparse
import csv
import json
import time
from pathlib import Path

from confluent_kafka import Producer

REPO = Path(__file__).resolve().parent.parent.parent


def test_tweets(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def preload(bootstrap: str, topic: str, n: int, tweets: list[str]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 500000})
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    for i in range(n):
        value = json.dumps({"value": tweets[i % len(tweets)]}, ensure_ascii=False).encode()
        while True:
            try:
                p.produce(topic, value, key=str(i).encode(), on_delivery=report)
                break
            except BufferError:
                p.poll(0.1)
        if i % 10000 == 0:
            p.poll(0)
    if p.flush(120) or failed:
        raise SystemExit(f"preload: {len(failed)} failed deliveries ({failed[:1]}), {len(p)} undelivered")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("n", type=int)
    ap.add_argument("--csv", type=Path, default=REPO / "data/disaster-tweets/test.csv")
    args = ap.parse_args()
    t = time.perf_counter()
    preload(args.bootstrap, args.topic, args.n, test_tweets(args.csv))
    s = time.perf_counter() - t
    print(f"preloaded {args.n} tweets into {args.topic} in {s:.1f} s ({args.n / s:.0f}/s)")


if __name__ == "__main__":
    main()
