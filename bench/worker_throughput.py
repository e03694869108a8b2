"""Sustained worker throughput and end-to-end latency against a real Kafka broker.

    .venv/bin/python -m bench.worker_throughput            # starts its own local broker
    .venv/bin/python -m bench.worker_throughput --bootstrap 127.0.0.1:9092 --runs 5

Workloads (topics pre-filled, then consumption timed from the first record to the last):

- ``json32``: JSON objects with 32 numeric features and an id;
- ``json784``: JSON objects with a 784-value vector (``pixels``, float32 values as JSON);
- ``bin784``: the same 784 values as little-endian float32 bytes
  (``content-type: application/x-float32-le``).

Variants, interleaved within each run so machine load hits them alike:

- ``ceiling``: a bare kafka-python consume loop plus the worker's decoder, no model work;
- ``worker``: ``pipeline.worker.loop.Worker`` as deployed (batches, model, alerts, commits);
- ``worker+scores``: the same with the per-record scores topic on (json32);
- ``naive``: the same consumer and producer, but the model called once per record (run on
  a slice: it is slow).

Then, per workload, the latency run: a producer process sends at half the worker's median
throughput for ``--latency-seconds`` while the worker runs; each record's latency is the
time from its Kafka timestamp to its batch's commit (what ``pipeline_end_to_end_latency_
seconds`` observes, kept raw here to read exact percentiles), ``--latency-runs`` times.
Results: Markdown tables on stdout, every number as median (min-max) over the runs, a goals
table whose verdict claims a goal only when every run meets it (``bench.spread``), and a JSON
file (``--out``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch
from kafka import KafkaProducer
from kafka.admin import NewTopic

from bench.spread import Spread, ratios, verdict
from pipeline.contract import artifact
from pipeline.contract.alerts import build_event, encode_event, utc_now_iso
from pipeline.contract.artifact import ThresholdInfo, TrainingSummary
from pipeline.contract.features import FeatureSpec, NumericFeature, VectorFeature
from pipeline.contract.models import build_model, default_config
from pipeline.contract.scoring import Scorer
from pipeline.devstack.localkafka import LocalKafka, open_admin
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.settings import KafkaSettings
from pipeline.worker.codec import BINARY_CONTENT_TYPE, CONTENT_TYPE_HEADER, RecordDecoder
from pipeline.worker.loop import Worker
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.settings import BatchSettings, WorkerSettings
from pipeline.worker.sink import OutputSink, next_offsets

PARTITIONS = 3
MAX_WAIT_MS = 50


# ----------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    name: str
    spec: FeatureSpec
    values: list[bytes]  # distinct record values, cycled to fill the topic
    binary: bool

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return [(CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode())] if self.binary else []


def make_workloads(distinct: int = 2000, seed: int = 0) -> dict[str, Workload]:
    rng = np.random.default_rng(seed)
    tab = rng.standard_normal((distinct, 32)) * 3 + 10
    tab_spec = FeatureSpec(
        features=[NumericFeature(name=f"f{j}", mean=10.0, std=3.0) for j in range(32)],
        id_column="id",
    )
    json32 = [
        msgspec.json.encode({"id": f"t-{i}", **{f"f{j}": float(v) for j, v in enumerate(row)}})
        for i, row in enumerate(tab)
    ]
    pix = rng.random((max(1, distinct // 4), 784), dtype=np.float32)
    img_spec = FeatureSpec(
        features=[VectorFeature(name="pixels", length=784, mean=[0.5] * 784, std=[0.29] * 784)],
        id_column="id",
    )
    json784 = [
        msgspec.json.encode({"id": f"p-{i}", "pixels": row.tolist()}) for i, row in enumerate(pix)
    ]
    bin784 = [row.astype("<f4").tobytes() for row in pix]
    return {
        "json32": Workload("json32", tab_spec, json32, binary=False),
        "json784": Workload("json784", img_spec, json784, binary=False),
        "bin784": Workload("bin784", img_spec, bin784, binary=True),
    }


def publish_model(store: Path, name: str, w: Workload) -> float:
    """Publish an (untrained) model of the size the trainer would pick; threshold at the 99th
    percentile of the workload's own scores, so about 1% of records raise alerts."""
    spec = w.spec
    torch.manual_seed(0)
    model = build_model(default_config(spec.input_dim, spec.n_units)).eval()
    decoded = RecordDecoder(spec, id_field="id").decode(
        w.values, [BINARY_CONTENT_TYPE if w.binary else None] * len(w.values)
    )
    scores = Scorer(spec, model, torch.device("cpu")).score(decoded.cont, decoded.cat).scores
    threshold = float(np.quantile(scores, 0.99))
    artifact.publish(
        store,
        model,
        {
            "name": name,
            "model": model.config,
            "features": spec,
            "threshold": ThresholdInfo(value=threshold, quantile=0.99, rows=len(scores)),
            "score_quantiles": {"0.99": threshold},
            "training": TrainingSummary(rows_train=0, rows_validation=0, epochs=0, best_epoch=0),
        },
    )
    return threshold


def create_topic(
    bootstrap: str, name: str, partitions: int = PARTITIONS, config: dict[str, str] | None = None
) -> str:
    with open_admin(bootstrap) as admin:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
        admin.wait_for_topics([name], timeout_ms=30_000)
    return name


def fill(bootstrap: str, topic: str, w: Workload, n: int) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        batch_size=1 << 20,
        max_request_size=1 << 24,
    )
    try:
        headers = w.headers
        for i in range(n):
            producer.send(topic, w.values[i % len(w.values)], key=b"%d" % i, headers=headers)
        producer.flush(timeout=120)
    finally:
        producer.close()


# ------------------------------------------------------------------ variants
def _rate(counts: list[tuple[float, int]], n: int) -> float:
    """Records per second from the first observed count to the last record."""
    (t0, c0), (t1, c1) = counts[0], counts[-1]
    if c1 < n or t1 <= t0:
        raise RuntimeError(f"consumed {c1} of {n} records")
    return (c1 - c0) / (t1 - t0)


def run_ceiling(kafka: KafkaSettings, topic: str, w: Workload, n: int) -> float:
    """Consume + decode only: the most a Python worker on kafka-python could reach."""
    consumer = make_consumer(kafka, f"ceil-{uuid.uuid4().hex}", max_poll_records=1024)
    decoder = RecordDecoder(w.spec, id_field="id")
    consumer.subscribe([topic])
    counts: list[tuple[float, int]] = []
    got = 0
    try:
        while got < n:
            polled = consumer.poll(timeout_ms=200, max_records=1024)
            records = [r for recs in polled.values() for r in recs]
            if not records:
                continue
            if not counts:
                counts.append((time.perf_counter(), 0))  # clock starts at the first records
            decoder.decode(
                [r.value for r in records],
                [BINARY_CONTENT_TYPE if w.binary else None] * len(records),
            )
            got += len(records)
            counts.append((time.perf_counter(), got))
    finally:
        consumer.close(autocommit=False)
    return _rate(counts, n)


def worker_settings(kafka: KafkaSettings, store: Path, topic: str, **kw: Any) -> WorkerSettings:
    kw.setdefault("batch", BatchSettings(max_size=1024, max_wait_ms=MAX_WAIT_MS))
    return WorkerSettings(
        kafka=kafka,
        input_topic=topic,
        alert_topic=f"{topic}-alerts",
        dlq_topic=f"{topic}-dlq",
        group_id=f"worker-{uuid.uuid4().hex}",
        start_from="earliest",  # the backlog is produced before the worker starts
        model_store=str(store),
        model_name=topic.split("-", maxsplit=1)[0],
        id_field="id",
        metrics_port=0,
        reload_interval_s=0,
        **kw,
    )


class _Monitor(threading.Thread):
    """Watches the worker's consumed counter; stops the worker after ``n`` records."""

    def __init__(self, worker: Worker, n: int | None, poll_s: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.worker, self.n, self.poll_s = worker, n, poll_s
        self.counts: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        counter = self.worker.metrics.records_consumed
        last = 0
        while not self.done.is_set():
            c = int(counter._value.get())
            if c != last and self.counts:
                self.counts.append((time.perf_counter(), c))
                last = c
            if self.n is not None and c >= self.n:
                self.worker.stop()
                return
            time.sleep(self.poll_s)


def _stamp_first_batch(worker: Worker, monitor: _Monitor) -> None:
    """Start the clock when the worker starts processing its first batch (as the ceiling
    loop does after its first poll), so even a one-batch run has a duration."""
    process = worker.processor.process

    def stamped(*args: Any, **kwargs: Any) -> Any:
        if not monitor.counts:
            monitor.counts.append((time.perf_counter(), 0))
        return process(*args, **kwargs)

    worker.processor.process = stamped  # type: ignore[method-assign]


def run_worker(settings: WorkerSettings, n: int) -> float:
    worker = Worker(settings, PipelineMetrics())
    monitor = _Monitor(worker, n)
    _stamp_first_batch(worker, monitor)
    monitor.start()
    try:
        worker.run(idle_timeout_s=30)
    finally:
        monitor.done.set()
        monitor.join()
    return _rate(monitor.counts, n)


def run_naive(kafka: KafkaSettings, store: Path, topic: str, w: Workload, n: int) -> float:
    """The same consumer, producer and commits as the worker, but one model call per record."""
    loaded = artifact.load_artifact(store, topic.split("-", maxsplit=1)[0])
    spec = loaded.manifest.features
    decoder = RecordDecoder(spec, id_field="id")
    scorer = Scorer(spec, loaded.model, torch.device("cpu"))
    threshold = loaded.manifest.threshold.value
    consumer = make_consumer(kafka, f"naive-{uuid.uuid4().hex}", max_poll_records=1024)
    sink = OutputSink(lambda: make_producer(kafka), "at-least-once")
    consumer.subscribe([topic])
    counts: list[tuple[float, int]] = []
    got = 0
    ctype = BINARY_CONTENT_TYPE if w.binary else None
    try:
        while got < n:
            polled = consumer.poll(timeout_ms=200, max_records=min(1024, n - got))
            records = [r for recs in polled.values() for r in recs]
            if records and not counts:
                counts.append((time.perf_counter(), 0))  # clock starts at the first records
            for rec in records:
                d = decoder.decode([rec.value], [ctype])
                s = scorer.score(d.cont, d.cat)
                score = float(s.scores[0])
                if score > threshold:
                    event = build_event(
                        source=(rec.topic, rec.partition, rec.offset, rec.timestamp),
                        key=rec.key,
                        record_id=d.record_ids[0],
                        score=score,
                        threshold=threshold,
                        model=(loaded.manifest.name, loaded.manifest.version),
                        top_features=[],
                        total_error=score,
                        detected_at=utc_now_iso(),
                    )
                    sink.send(f"{topic}-alerts", encode_event(event), key=rec.key)
            if records:
                sink.commit(consumer, next_offsets(records))
                got += len(records)
                counts.append((time.perf_counter(), got))
    finally:
        consumer.close(autocommit=False)
        sink.close()
    return _rate(counts, n)


# ------------------------------------------------------------------- latency
def _paced_producer(
    bootstrap: str, topic: str, values: list[bytes], headers: list[tuple[str, bytes]],
    rate: float, seconds: float, ready: Any, go: Any,
) -> None:  # fmt: skip
    """Child process: send ``values`` cyclically at ``rate`` records/s for ``seconds``, from
    when ``go`` is set (the worker has its partitions)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, batch_size=1 << 20)
    producer.partitions_for(topic)
    ready.set()
    go.wait(120)
    started = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        ahead = started + i / rate - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)
        producer.send(topic, values[i % len(values)], key=b"%d" % i, headers=headers)
    producer.flush(timeout=60)
    producer.close()


class _RawLatency:
    """Stands in for the worker's latency histogram and keeps every observation."""

    def __init__(self) -> None:
        self.samples: list[np.ndarray[Any, Any]] = []

    def observe_many(self, values: Any) -> None:
        self.samples.append(np.array(values, dtype=np.float64))

    def observe(self, value: float) -> None:
        self.observe_many([value])


def run_latency(
    kafka: KafkaSettings,
    store: Path,
    w: Workload,
    rate: float,
    seconds: float,
    timestamps: str = "LogAppendTime",
) -> dict[str, float]:
    """Latency under a paced load. With ``LogAppendTime`` a record's timestamp is when the
    broker appended it, so the producer's own queueing (a Python producer on the same busy
    cores) is not charged to the worker; ``CreateTime`` measures from the producer's send."""
    topic = create_topic(
        kafka.bootstrap_servers,
        f"{w.name}-lat-{uuid.uuid4().hex[:8]}",
        config={"message.timestamp.type": timestamps},
    )
    worker = Worker(worker_settings(kafka, store, topic), PipelineMetrics())
    raw = _RawLatency()
    worker.metrics.end_to_end_latency = raw  # type: ignore[assignment]
    n = int(rate * seconds)
    monitor = _Monitor(worker, n)
    _stamp_first_batch(worker, monitor)
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(
        target=_paced_producer,
        args=(kafka.bootstrap_servers, topic, w.values, w.headers, rate, seconds, ready, go),
    )
    proc.start()
    ready.wait(120)
    monitor.start()

    def start_when_ready() -> None:
        while not worker.is_ready() and not monitor.done.is_set():
            time.sleep(0.01)
        time.sleep(0.5)  # let the first fetch settle: measure the steady state
        go.set()

    threading.Thread(target=start_when_ready, daemon=True).start()
    try:
        worker.run(idle_timeout_s=15)
    finally:
        monitor.done.set()
        go.set()
        proc.join(60)
    lat = np.concatenate(raw.samples) if raw.samples else np.zeros(0)
    warm = lat[int(0.1 * len(lat)) :]  # drop the first 10%: group join, first fetches
    # a rebalance on a loaded host can end the run a few records short (the new owner replays
    # them after the worker stopped): the rate is over what was consumed, not a crash
    (t0, c0), (t1, c1) = (monitor.counts[0], monitor.counts[-1]) if monitor.counts else [(0, 0)] * 2
    achieved = (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
    return {
        "target_rate": round(rate, 1),
        "achieved_rate": round(achieved, 1),
        "records": len(lat),
        "p50_ms": round(1000 * float(np.quantile(warm, 0.5)), 1),
        "p99_ms": round(1000 * float(np.quantile(warm, 0.99)), 1),
        "max_ms": round(1000 * float(warm.max()), 1),
    }


# ---------------------------------------------------------------------- main
@dataclass
class Sizes:
    json32: int = 100_000
    json784: int = 15_000
    bin784: int = 60_000
    naive: int = 2_000

    def of(self, name: str) -> int:
        return int(getattr(self, name))


@dataclass
class Results:
    rates: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    latency: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # one per run
    env: dict[str, Any] = field(default_factory=dict)

    def add(self, workload: str, variant: str, rate: float) -> None:
        self.rates.setdefault(workload, {}).setdefault(variant, []).append(rate)

    def median(self, workload: str, variant: str) -> float:
        return statistics.median(self.rates[workload][variant])


def run_variant(
    variant: str, kafka: KafkaSettings, store: Path, topic: str, w: Workload, n: int, naive: int
) -> float:
    if variant == "ceiling":
        return run_ceiling(kafka, topic, w, n)
    if variant == "worker":
        return run_worker(worker_settings(kafka, store, topic), n)
    if variant == "worker+scores":
        return run_worker(worker_settings(kafka, store, topic, scores_topic=f"{topic}-scores"), n)
    if variant == "naive":
        return run_naive(kafka, store, topic, w, min(n, naive))
    raise ValueError(variant)


@contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        local = LocalKafka(Path(tmp), heap="1g")
        local.start(timeout=180)
        try:
            yield local.bootstrap
        finally:
            local.stop()


def run_bench(
    bootstrap: str,
    sizes: Sizes,
    runs: int,
    latency_s: float,
    workloads: list[str],
    fractions: tuple[float, ...] = (0.5,),
    timestamps: str = "LogAppendTime",
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    latency_runs: int = 1,
) -> Results:
    results = Results(env=_environment())
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    all_w = make_workloads()
    chosen = {k: all_w[k] for k in workloads}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        store = Path(tmp)
        topics = {}
        for name, w in chosen.items():
            publish_model(store, name, w)
            topics[name] = create_topic(bootstrap, f"{name}-{uuid.uuid4().hex[:8]}")
            log(f"filling {topics[name]} with {sizes.of(name)} records")
            fill(bootstrap, topics[name], w, sizes.of(name))
        for run in range(runs):
            for name, w in chosen.items():
                n, topic = sizes.of(name), topics[name]
                variants = ["ceiling", "worker", "naive"]
                if name == "json32":
                    variants.insert(2, "worker+scores")
                for variant in variants if run % 2 == 0 else variants[::-1]:
                    rate = run_variant(variant, kafka, store, topic, w, n, sizes.naive)
                    results.add(name, variant, rate)
                    log(f"run {run + 1}/{runs} {name:8s} {variant:14s} {rate:10.0f} rec/s")
        for run in range(latency_runs if latency_s > 0 else 0):
            for fraction in fractions:
                for name, w in chosen.items():
                    rate = results.median(name, "worker") * fraction
                    lat = run_latency(kafka, store, w, rate, latency_s, timestamps)
                    results.latency.setdefault(f"{name} at {fraction:.0%}", []).append(lat)
                    log(f"latency run {run + 1}/{latency_runs} {name} at {fraction:.0%}: {lat}")
    results.env["loadavg_end"] = os.getloadavg()
    results.env["timestamps"] = timestamps
    return results


def _environment() -> dict[str, Any]:
    import kafka

    try:
        import crc32c  # noqa: F401

        crc = "C (crc32c)"
    except ImportError:
        crc = "pure Python"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "kafka_python": kafka.__version__,
        "crc32c": crc,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "device": "cpu",
    }


def markdown(results: Results, sizes: Sizes, runs: int) -> str:
    """Every number as median (min-max) over the runs, then the goals with a verdict that
    claims only what the whole min-max range supports (``bench.spread``)."""
    lines = [
        f"Throughput, records/s, median (min-max) of {runs} runs (batch max 1024, max wait "
        f"{MAX_WAIT_MS} ms); ratios are per run (variants of a run interleaved), median (min-max)",
        "",
        "| workload | records | ceiling | worker | worker / ceiling "
        "| worker+scores | naive | worker / naive | ceiling / naive |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rates in results.rates.items():
        cell = {v: Spread.of(r).fmt() for v, r in rates.items()}
        lines.append(
            f"| {name} | {sizes.of(name):,} | {cell['ceiling']} | {cell['worker']} "
            f"| {_ratio(rates, 'worker', 'ceiling').fmt('.0f', 100, '%')} "
            f"| {cell.get('worker+scores', '-')} "
            f"| {cell['naive']} | {_ratio(rates, 'worker', 'naive').fmt('.1f', unit='x')} "
            f"| {_ratio(rates, 'ceiling', 'naive').fmt('.1f', unit='x')} |"
        )
    if results.latency:
        lat_runs = max(len(v) for v in results.latency.values())
        lines += [
            "",
            "End-to-end latency at a fraction of the worker's median throughput (record "
            f"timestamp, {results.env.get('timestamps', '?')}, to the commit of its batch), "
            f"median (min-max) of {lat_runs} runs",
            "",
            "| workload at load | target rec/s | achieved rec/s | p50 ms | p99 ms | max ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, lats in results.latency.items():
            col = {k: Spread.of([lat[k] for lat in lats]) for k in lats[0]}
            lines.append(
                f"| {name} | {col['target_rate'].fmt()} | {col['achieved_rate'].fmt()} "
                f"| {col['p50_ms'].fmt('.1f')} | {col['p99_ms'].fmt('.1f')} "
                f"| {col['max_ms'].fmt('.1f')} |"
            )
    lines += ["", *goal_table(results)]
    env = results.env
    lines += [
        "",
        f"Machine: {env['cpus']} CPUs, load average {_fmt_load(env['loadavg_start'])} at start, "
        f"{_fmt_load(env.get('loadavg_end'))} at end; Python {env['python']}, torch "
        f"{env['torch']} ({env['torch_threads']} threads), kafka-python {env['kafka_python']}, "
        f"CRC-32C {env['crc32c']}.",
    ]
    return "\n".join(lines)


def _ratio(rates: dict[str, list[float]], top: str, bottom: str) -> Spread:
    return ratios(rates[top], rates[bottom])


LATENCY_GOAL_MS = MAX_WAIT_MS + 50


def goal_table(results: Results) -> list[str]:
    """The goals, each with its measured spread and the verdict that spread supports."""
    rows = [
        "| goal | workload | measured, median (min-max) | verdict |",
        "| --- | --- | ---: | --- |",
    ]
    for name, rates in results.rates.items():
        for label, bottom, goal, fmt in (
            ("worker >= 80% of the ceiling", "ceiling", 0.8, (".0f", 100, "%")),
            ("worker >= 10x naive", "naive", 10.0, (".1f", 1.0, "x")),
        ):
            spread = _ratio(rates, "worker", bottom)
            verdict_ = verdict(spread, goal, higher_is_better=True)
            rows.append(f"| {label} | {name} | {spread.fmt(*fmt)} | {verdict_} |")
    for name, lats in results.latency.items():
        if name.endswith("at 50%"):
            p99 = Spread.of([lat["p99_ms"] for lat in lats])
            verdict_ = verdict(p99, LATENCY_GOAL_MS, higher_is_better=False)
            label = f"p99 <= {LATENCY_GOAL_MS} ms at 50% of max"
            rows.append(
                f"| {label} | {name[: -len(' at 50%')]} | {p99.fmt('.1f')} ms | {verdict_} |"
            )
    return rows


def _fmt_load(load: Any) -> str:
    return "/".join(f"{x:.1f}" for x in load) if load else "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", help="use this broker instead of starting a local one")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json32", type=int, default=Sizes.json32, help="records in json32")
    p.add_argument("--json784", type=int, default=Sizes.json784)
    p.add_argument("--bin784", type=int, default=Sizes.bin784)
    p.add_argument("--naive", type=int, default=Sizes.naive, help="records for the naive loop")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="0 skips latency")
    p.add_argument(
        "--latency-runs", type=int, default=3, help="latency runs per workload and fraction"
    )
    p.add_argument("--workloads", default="json32,json784,bin784")
    p.add_argument(
        "--timestamps",
        choices=["LogAppendTime", "CreateTime"],
        default="LogAppendTime",
        help="latency from the broker's append (default) or the producer's send",
    )
    p.add_argument(
        "--latency-fractions",
        default="0.5",
        help="latency runs at these shares of max, e.g. 0.25,0.5",
    )
    p.add_argument("--out", type=Path, default=Path("bench-worker-throughput.json"))
    args = p.parse_args(argv)
    sizes = Sizes(args.json32, args.json784, args.bin784, args.naive)
    torch.set_grad_enabled(False)
    with broker(args.bootstrap) as bootstrap:
        results = run_bench(
            bootstrap,
            sizes,
            args.runs,
            args.latency_seconds,
            args.workloads.split(","),
            tuple(float(f) for f in args.latency_fractions.split(",")),
            args.timestamps,
            latency_runs=args.latency_runs,
        )
    print(markdown(results, sizes, args.runs))
    args.out.write_text(
        json.dumps(
            {"rates": results.rates, "latency": results.latency, "env": results.env}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
