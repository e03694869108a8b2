"""Per-record costs the worker used to pay, measured against what replaced them.

    .venv/bin/python -m bench.per_record_costs                   # starts a local broker
    .venv/bin/python -m bench.per_record_costs --bootstrap 127.0.0.1:9092

Each line is a before/after pair measured in the same run, interleaved, median of repeats:

- score / latency histograms: ``Histogram.observe`` per record vs ``BulkHistogram.observe_many``;
- event id: ``uuid.uuid5`` vs ``pipeline.contract.alerts.event_id``;
- producer: kafka-python ``send`` per record with 16 KiB vs 1 MiB batches (flush per 1024);
- consumer: fetching and checking 32-field JSON records with kafka-python's pure-Python
  CRC-32C vs the ``crc32c`` C extension (a child process without it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import timeit
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, Histogram

from bench.worker_throughput import broker, create_topic, fill, make_workloads
from pipeline.contract.alerts import EVENT_NAMESPACE, event_id
from pipeline.worker.metrics import BulkHistogram

BATCH = 1024


def per_record_us(fn: Callable[[], Any], records: int, repeats: int = 7) -> float:
    return 1e6 * min(timeit.repeat(fn, number=1, repeat=repeats)) / records


def histogram_pair() -> tuple[float, float]:
    buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 1024)
    per = Histogram("h", "d", buckets=buckets, registry=CollectorRegistry())
    bulk = BulkHistogram("h", "d", buckets, CollectorRegistry())
    values = np.random.default_rng(0).random(BATCH).astype(np.float32) * 3

    def loop() -> None:
        for v in values.tolist():
            per.observe(v)

    return per_record_us(loop, BATCH), per_record_us(lambda: bulk.observe_many(values), BATCH)


def event_id_pair() -> tuple[float, float]:
    def std() -> None:
        for o in range(BATCH):
            str(uuid.uuid5(EVENT_NAMESPACE, f"records/3/{o}/1764000000000"))

    def fast() -> None:
        for o in range(BATCH):
            event_id("records", 3, o, 1764000000000)

    return per_record_us(std, BATCH), per_record_us(fast, BATCH)


def producer_us(bootstrap: str, topic: str, batch_size: int, n: int = 20 * BATCH) -> float:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        batch_size=batch_size,
    )
    payload = b"x" * 400  # about one score event
    try:
        producer.send(topic, payload).get(timeout=30)
        started = time.perf_counter()
        for i in range(n):
            producer.send(topic, payload, key=b"m-%d" % (i % 1000))
            if i % BATCH == BATCH - 1:
                producer.flush()
        producer.flush()
        return 1e6 * (time.perf_counter() - started) / n
    finally:
        producer.close()


_CONSUME = """
import sys, time
if sys.argv[3] == "python":
    sys.modules["crc32c"] = None  # kafka-python falls back to its pure-Python CRC-32C
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
c = KafkaConsumer(bootstrap_servers=sys.argv[1], enable_auto_commit=False, max_poll_records=1024)
tp = TopicPartition(sys.argv[2], 0)
c.assign([tp]); c.seek_to_beginning(tp)
n = int(sys.argv[4]); got = 0; t0 = None
while got < n:
    for recs in c.poll(timeout_ms=500).values():
        if t0 is None:
            t0 = time.perf_counter(); first = len(recs)
        got += len(recs)
print((got - first) / (time.perf_counter() - t0))
c.close()
"""


def consume_rate(bootstrap: str, topic: str, crc: str, n: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _CONSUME, bootstrap, topic, crc, str(n)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--consume-records", type=int, default=30_000)
    args = p.parse_args(argv)
    rows: dict[str, list[tuple[float, float]]] = {}
    with broker(args.bootstrap) as bootstrap:
        scratch = create_topic(bootstrap, f"costs-{uuid.uuid4().hex[:8]}", partitions=1)
        json32 = create_topic(bootstrap, f"costs-json32-{uuid.uuid4().hex[:8]}", partitions=1)
        fill(bootstrap, json32, make_workloads()["json32"], args.consume_records)
        for _ in range(args.repeats):
            rows.setdefault("histogram observe, µs/record", []).append(histogram_pair())
            rows.setdefault("event id, µs/record", []).append(event_id_pair())
            rows.setdefault("producer send + flush per 1024, µs/record", []).append(
                (producer_us(bootstrap, scratch, 16_384), producer_us(bootstrap, scratch, 1 << 20))
            )
            rows.setdefault("consume 32-field JSON, records/s", []).append(
                (
                    consume_rate(bootstrap, json32, "python", args.consume_records),
                    consume_rate(bootstrap, json32, "c", args.consume_records),
                )
            )
    labels = {
        "histogram observe, µs/record": ("Histogram.observe per record", "observe_many per batch"),
        "event id, µs/record": ("uuid.uuid5", "event_id (hashlib)"),
        "producer send + flush per 1024, µs/record": ("16 KiB batches", "1 MiB batches"),
        "consume 32-field JSON, records/s": ("pure-Python CRC-32C", "crc32c C extension"),
    }
    print(f"Median of {args.repeats} interleaved repeats")
    print()
    print("| cost | before | after | before | after |")
    print("| --- | --- | --- | ---: | ---: |")
    for name, pairs in rows.items():
        before = statistics.median(b for b, _ in pairs)
        after = statistics.median(a for _, a in pairs)
        print(f"| {name} | {labels[name][0]} | {labels[name][1]} | {before:,.2f} | {after:,.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
