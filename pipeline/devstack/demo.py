"""`python -m pipeline demo`: the whole job on a laptop, with real parts, in about a minute.

Starts the local Apache Kafka broker, generates normal sensor data, trains and publishes a
model, runs the real worker (`python -m pipeline run`) as a subprocess, streams records with
injected anomalies and a few malformed ones, prints alerts as they arrive, and ends with a
summary of what was caught and missed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
from kafka import KafkaConsumer, KafkaProducer
from rich.console import Console
from rich.table import Table

from pipeline.devstack import demo_fleet
from pipeline.devstack.fleet import fleet_stream
from pipeline.devstack.locals3 import LocalS3
from pipeline.devstack.sampledata import mixed_stream, normal_frame, to_records
from pipeline.kafka.settings import KafkaSettings
from pipeline.kafka.topics import ensure_topics

console = Console(stderr=False, highlight=False)
S3_STORE = "s3://models/demo"
MALFORMED = [b"{this is not json", b'{"temperature": "very hot"}', b"[1, 2, 3]"]


@dataclass
class DemoConfig:
    workdir: Path = Path(".demo")
    bootstrap: str | None = None
    train_rows: int = 20_000
    stream_rows: int = 5_000
    anomalies: int = 50
    rate: float = 1_000.0  # records per second
    keep_kafka: bool = False
    per_machine: bool = True  # a fleet: per-machine models, the global one as shadow
    machines: int = 20
    model_store: Literal["local", "s3"] = "local"  # s3: S3Proxy on loopback holds the models


@dataclass
class Tally:
    alerts: list[dict[str, Any]] = field(default_factory=list)
    shadow: list[dict[str, Any]] = field(default_factory=list)  # the global model's events
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def run_demo(cfg: DemoConfig) -> int:
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    broker = None
    s3 = _start_s3(cfg.workdir / "s3") if cfg.model_store == "s3" else None
    try:
        if cfg.bootstrap is None:
            broker, cfg.bootstrap = _start_kafka(cfg.workdir / "kafka")
        store: str | Path = S3_STORE if s3 is not None else cfg.workdir / "model-store"
        return _run(cfg, cfg.bootstrap, store)
    finally:
        if broker is not None and not cfg.keep_kafka:
            console.print("[dim]stopping local Kafka[/dim]")
            broker.stop()
        if s3 is not None:
            console.print("[dim]stopping local S3 (S3Proxy)[/dim]")
            s3.stop()


def _start_s3(state_dir: Path) -> LocalS3:
    """S3Proxy on loopback; its AWS variables go into this process's environment, so the
    trainer here and the worker subprocess both find the store the way a deployment does."""
    server = LocalS3(state_dir)
    with console.status("starting local S3 (S3Proxy; first run downloads its jars)..."):
        record = server.start(buckets=(S3_STORE.split("/")[2],))
    os.environ.update(record.env())
    console.print(f"local S3 ready at {record.endpoint}; model store {S3_STORE}")
    return server


def _run(cfg: DemoConfig, bootstrap: str, store: str | Path) -> int:
    run_id = uuid.uuid4().hex[:6]
    topics = {k: f"demo-{run_id}-{k}" for k in ("records", "anomalies", "dlq", "shadow")}
    seed = int(time.time()) % 1000
    if cfg.per_machine:
        data = cfg.workdir / "data" / "fleet.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        version = demo_fleet.train_fleet(console, data, store, cfg.train_rows, cfg.machines)
        stream, injected = fleet_stream(cfg.stream_rows, cfg.anomalies, cfg.machines, seed=seed)
        extra_env = demo_fleet.worker_env(topics["shadow"])
    else:
        version = _train(cfg, store)
        stream, injected = mixed_stream(cfg.stream_rows, cfg.anomalies, seed=seed)
        extra_env = {}
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    ensure_topics(kafka, list(topics.values()), partitions=3)
    port = _free_port()
    worker = _start_worker(bootstrap, store, topics, cfg.workdir, port, extra_env)
    _wait_ready(worker, port)
    tally = Tally()
    tails = [threading.Thread(target=_tail_alerts, args=(bootstrap, topics["anomalies"], tally))]
    if cfg.per_machine:
        shadow = (bootstrap, topics["shadow"], tally, tally.shadow, False)
        tails.append(threading.Thread(target=_tail_alerts, args=shadow))
    for tail in tails:
        tail.start()
    console.rule(
        f"[bold]streaming {len(stream)} records ({len(injected)} injected anomalies, "
        f"{len(MALFORMED)} malformed) at ~{cfg.rate:.0f}/s"
    )
    produced_at = time.monotonic()
    _produce(bootstrap, topics["records"], to_records(stream), cfg.rate)
    produce_s = time.monotonic() - produced_at
    summary = _stop_worker(worker, bootstrap, topics["records"])
    time.sleep(1.0)  # let the tail catch the last alerts
    tally.stop.set()
    for tail in tails:
        tail.join(timeout=10)
    _print_summary(
        cfg,
        version,
        stream_len=len(stream),
        injected=injected,
        tally=tally,
        worker=summary,
        produce_s=produce_s,
    )
    return 0


def _start_kafka(state_dir: Path) -> tuple[Any, str]:
    from pipeline.devstack.localkafka import LocalKafka

    broker = LocalKafka(state_dir)
    if broker.is_running():
        console.print(f"[green]using running local Kafka[/green] at {broker.bootstrap}")
        return None, broker.bootstrap
    with console.status("starting local Apache Kafka (first run downloads the jars)..."):
        started = time.monotonic()
        broker.start(timeout=180)
    console.print(
        f"[green]Kafka ready[/green] at {broker.bootstrap} in {time.monotonic() - started:.1f}s"
    )
    return broker, broker.bootstrap


def _train(cfg: DemoConfig, store: str | Path) -> str:
    from trainer.fit import fit
    from trainer.settings import load_trainer_settings

    data = cfg.workdir / "data" / "normal.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    normal_frame(cfg.train_rows, seed=1).to_parquet(data)
    console.print(f"generated {cfg.train_rows} normal sensor records -> {data}")
    with console.status("training the autoencoder..."):
        started = time.monotonic()
        manifest = fit(
            load_trainer_settings(
                data=str(data),
                model_store=str(store),
                name="sensors",
                id_column="machine_id",
            )
        )
    console.print(
        f"[green]published[/green] sensors/{manifest.version} in {time.monotonic() - started:.1f}s"
        f": threshold {manifest.threshold.value:.4f} (q={manifest.threshold.quantile}) "
        f"from {manifest.threshold.rows} held-out rows"
    )
    return manifest.version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(worker: subprocess.Popen[str], port: int, timeout_s: float = 120) -> None:
    """Stream only once the worker reports ready (model loaded, partitions assigned)."""
    deadline = time.monotonic() + timeout_s
    with console.status("waiting for the worker to be ready (/readyz)..."):
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError("the worker exited during start; see .demo/worker.log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        console.print(f"worker ready; metrics at http://127.0.0.1:{port}/metrics")
                        return
            except OSError:
                pass
            time.sleep(0.3)
    raise RuntimeError(f"worker not ready after {timeout_s:.0f}s; see .demo/worker.log")


def _start_worker(
    bootstrap: str,
    store: str | Path,
    topics: dict[str, str],
    workdir: Path,
    port: int,
    extra_env: dict[str, str],
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "PIPELINE_INPUT_TOPIC": topics["records"],
        "PIPELINE_ALERT_TOPIC": topics["anomalies"],
        "PIPELINE_DLQ_TOPIC": topics["dlq"],
        "PIPELINE_GROUP_ID": f"{topics['records']}-workers",
        "PIPELINE_START_FROM": "earliest",  # the sample records may be written first
        "PIPELINE_MODEL_STORE": store if isinstance(store, str) else str(store.absolute()),
        "PIPELINE_MODEL_NAME": "sensors",
        "PIPELINE_ID_FIELD": "machine_id",
        "PIPELINE_METRICS_PORT": str(port),
        "PIPELINE_METRICS_HOST": "127.0.0.1",
        "PIPELINE_LOG_FORMAT": "json",
        **extra_env,
    }
    log = (workdir / "worker.log").open("w")
    console.print(f"worker started: python -m pipeline run (log: {workdir / 'worker.log'})")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )


def _produce(bootstrap: str, topic: str, records: list[dict[str, Any]], rate: float) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    started = time.monotonic()
    bad_every = max(1, len(records) // (len(MALFORMED) + 1))
    bad = iter(MALFORMED)
    for i, rec in enumerate(records):
        producer.send(topic, key=str(rec["machine_id"]).encode(), value=msgspec.json.encode(rec))
        if i and i % bad_every == 0:
            value = next(bad, None)
            if value is not None:
                producer.send(topic, key=b"malformed", value=value)
        ahead = (i + 1) / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()
    producer.close()


def _tail_alerts(
    bootstrap: str,
    topic: str,
    tally: Tally,
    into: list[dict[str, Any]] | None = None,
    show: bool = True,
) -> None:
    """Collect the topic's events into ``into`` (the alerts by default), printing them."""
    into = tally.alerts if into is None else into
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
    )
    try:
        while not tally.stop.is_set():
            for records in consumer.poll(timeout_ms=200).values():
                for rec in records:
                    event = msgspec.json.decode(rec.value)
                    with tally.lock:
                        into.append(event)
                    if show:
                        _print_alert(event)
    finally:
        consumer.close()


def _print_alert(event: dict[str, Any]) -> None:
    tops = ", ".join(f"{t['name']} {t['share']:.0%}" for t in event["top_features"])
    latency = ""
    ts = event["source"].get("timestamp")
    if ts:
        latency = f" [dim]{_latency_ms(event):.0f} ms after produce[/dim]"
    model = event["model"]
    by = ""
    if "fallback" in model:
        by = " fallback model" if model["fallback"] else f" {model['entity']}'s model"
    console.print(
        f"[bold red]ALERT[/bold red] {event['record_id']:<10} score {event['score']:8.3f} "
        f"(threshold {event['threshold']:.3f}{by})  top: {tops}{latency}"
    )


def _latency_ms(event: dict[str, Any]) -> float:
    from datetime import datetime

    detected = datetime.fromisoformat(event["detected_at"].replace("Z", "+00:00"))
    return float(detected.timestamp() * 1000 - event["source"]["timestamp"])


def _stop_worker(worker: subprocess.Popen[str], bootstrap: str, topic: str) -> dict[str, Any]:
    """Wait until the worker has committed everything, then SIGTERM it (a clean drain)."""
    group = f"{topic}-workers"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _caught_up(bootstrap, group, topic):
        if worker.poll() is not None:
            break
        time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _caught_up(bootstrap: str, group: str, topic: str) -> bool:
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        end = consumer.end_offsets(parts)
        return bool(parts) and all((consumer.committed(tp) or 0) >= end[tp] for tp in parts)
    finally:
        consumer.close()


def _print_summary(
    cfg: DemoConfig,
    version: str,
    *,
    stream_len: int,
    injected: set[str],
    tally: Tally,
    worker: dict[str, Any],
    produce_s: float,
) -> None:
    with tally.lock:
        alerted = {a["record_id"] for a in tally.alerts}
        latencies = sorted(_latency_ms(a) for a in tally.alerts)
    caught = len(injected & alerted)
    table = Table(title=f"demo summary (model sensors/{version})", show_header=False)
    rows = [
        ("records produced", f"{stream_len + len(MALFORMED)} ({len(MALFORMED)} malformed)"),
        ("records scored by the worker", str(worker.get("scored", "?"))),
        ("dead-lettered", str(worker.get("rejected", "?"))),
        ("alerts", str(len(tally.alerts))),
        ("injected anomalies caught", f"{caught} / {len(injected)}"),
        ("injected anomalies missed", str(len(injected) - caught)),
        (
            "false alarms on normal records",
            f"{len(alerted - injected)} / {stream_len - len(injected)}",
        ),
        ("stream rate (produced)", f"{(stream_len + len(MALFORMED)) / produce_s:,.0f} records/s"),
        ("worker throughput", f"{worker.get('records_per_s', 0):,.0f} records/s while busy"),
    ]
    if latencies:
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        rows.append(("alert latency after produce", f"p50 {p50:.0f} ms, p99 {p99:.0f} ms"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if cfg.per_machine:
        with tally.lock:
            shadow = demo_fleet.shadow_alerts(tally.shadow)
        compare, lines = demo_fleet.comparison(
            injected, alerted, shadow, stream_len - len(injected)
        )
        console.print(compare)
        for k, v in lines:
            console.print(f"{k}: [bold]{v}[/bold]")
    console.print(f"work files in {cfg.workdir}/ (model store, data, worker log)")
