"""Operating the worker against the real broker: metric values after a run, the HTTP
endpoints, SIGTERM draining a subprocess worker. A SASL/SCRAM broker:
tests/integration/reliability/test_reliability_security.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import msgspec
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pipeline.devstack.localkafka import free_ports
from pipeline.worker.loop import Worker
from pipeline.worker.metrics import MetricsServer, PipelineMetrics
from tests.support.cli import run_module
from tests.support.kafka import committed_and_end, produce
from tests.support.workers import (
    NAME,
    Background,
    events,
    numeric_records,
    offline_scores,
    produce_records,
    publish,
    settings,
    wait_for,
)

pytestmark = pytest.mark.kafka


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scraped(port: int, name: str) -> float:
    """An unlabelled sample from /metrics; 0 while the server is not up yet."""
    try:
        _, body = http_get(port, "/metrics")
    except (urllib.error.URLError, ConnectionError):
        return 0.0
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return 0.0


def test_core_metrics_have_sane_values_after_a_real_run(kafka_bootstrap, make_topic, tmp_path):
    manifest = publish(tmp_path)
    source = make_topic(partitions=2)
    records = numeric_records(300)
    produce_records(kafka_bootstrap, source, records)
    produce(kafka_bootstrap, source, [(b"bad-1", b"{oops"), (b"bad-2", b'{"x0": 1.0}')])
    registry = CollectorRegistry()
    started = time.time()
    summary = Worker(
        settings(kafka_bootstrap, tmp_path, source, batch={"max_size": 64}),
        PipelineMetrics(registry),
    ).run(idle_timeout_s=1.5)

    def value(metric: str, **labels: str) -> float:
        got = registry.get_sample_value(metric, labels)
        assert got is not None, f"{metric}{labels} is not exported"
        return got

    expected_alerts = int((offline_scores(records, seed=0) > manifest.threshold.value).sum())
    batches = value("pipeline_batches_total")
    assert batches == summary.batches >= 5  # 302 records in batches of at most 64
    assert value("pipeline_records_consumed_total") == 302
    assert value("pipeline_records_scored_total") == 300
    assert value("pipeline_anomalies_total") == expected_alerts
    assert value("pipeline_records_invalid_total", reason="bad_json") == 1
    assert value("pipeline_records_invalid_total", reason="missing_field") == 1
    assert value("pipeline_batch_size_count") == batches
    assert value("pipeline_batch_size_sum") == 302
    assert value("pipeline_batch_size_bucket", le="64.0") == batches
    assert value("pipeline_inference_seconds_count") == batches
    assert 0 < value("pipeline_inference_seconds_sum") < 10
    assert value("pipeline_end_to_end_latency_seconds_count") == 302
    mean_latency = value("pipeline_end_to_end_latency_seconds_sum") / 302
    assert 0 < mean_latency < time.time() - started + 30  # from produce time to commit
    assert value("pipeline_consumer_lag", partition=f"{source}-0") == 0
    assert value("pipeline_consumer_lag", partition=f"{source}-1") == 0
    assert value("pipeline_model_info", name=NAME, version=manifest.version) == 1
    assert value("pipeline_threshold") == pytest.approx(manifest.threshold.value)
    assert value("pipeline_score_count") == 300
    assert value("pipeline_score_bucket", le="+Inf") == 300
    assert value("pipeline_commits_total") == batches
    assert value("pipeline_ready") == 1
    assert started <= value("pipeline_last_loop_timestamp_seconds") <= time.time()


def test_http_endpoints_report_metrics_liveness_and_readiness(
    kafka_bootstrap, make_topic, tmp_path
):
    publish(tmp_path)
    source = make_topic()
    produce_records(kafka_bootstrap, source, numeric_records(20))
    worker = Worker(settings(kafka_bootstrap, tmp_path, source, liveness_timeout_s=1.0))
    server = MetricsServer(
        worker.metrics.registry, "127.0.0.1", 0, worker.is_ready, worker.is_alive
    ).start()
    try:
        assert http_get(server.port, "/readyz")[0] == 503  # no partitions assigned yet
        time.sleep(1.1)
        assert http_get(server.port, "/healthz")[0] == 503  # the loop is not going round
        bg = Background(worker, idle_timeout_s=30)
        wait_for(lambda: http_get(server.port, "/readyz")[0] == 200, 30, "ready")
        assert http_get(server.port, "/healthz") == (200, "ok\n")
        wait_for(lambda: scraped(server.port, "pipeline_records_consumed_total") == 20, 30, "20")
        status, body = http_get(server.port, "/metrics")
        assert status == 200
        assert "pipeline_model_info{" in body
        assert http_get(server.port, "/nope")[0] == 404
        bg.stop()
    finally:
        server.stop()


class StreamProducer:
    """Produces numeric records at a steady rate in a thread until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2)
        try:
            while not self._stop.is_set():
                rec = numeric_records(1, start=self.sent, seed=self.sent)[0]
                producer.send(self.topic, key=rec["id"].encode(), value=msgspec.json.encode(rec))
                self.sent += 1
                time.sleep(1 / self.rate)
            producer.flush(30)
        finally:
            producer.close()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        return self.sent


def worker_env(bootstrap: str, store: Path, source: str, scores: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "PIPELINE_INPUT_TOPIC": source,
        "PIPELINE_ALERT_TOPIC": f"{source}-alerts",
        "PIPELINE_DLQ_TOPIC": f"{source}-dlq",
        "PIPELINE_SCORES_TOPIC": scores,
        "PIPELINE_GROUP_ID": f"g-{source}",
        "PIPELINE_START_FROM": "earliest",
        "PIPELINE_MODEL_STORE": str(store),
        "PIPELINE_MODEL_NAME": NAME,
        "PIPELINE_ID_FIELD": "id",
        "PIPELINE_DEVICE": "cpu",
        "PIPELINE_METRICS_HOST": "127.0.0.1",
        "PIPELINE_METRICS_PORT": str(port),
        "PIPELINE_BATCH__MAX_SIZE": "32",
        "PIPELINE_BATCH__MAX_WAIT_MS": "200",
    }


def test_sigterm_drains_commits_exactly_what_was_processed_and_restart_adds_no_duplicates(
    kafka_bootstrap, make_topic, tmp_path
):
    publish(tmp_path)
    source, scores = make_topic(partitions=3), make_topic(partitions=3)
    (port,) = free_ports(1)
    env = worker_env(kafka_bootstrap, tmp_path, source, scores, port)
    log_file = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
    )
    stream = StreamProducer(kafka_bootstrap, source, rate=400)
    try:
        wait_for(lambda: scraped(port, "pipeline_records_consumed_total") >= 200, 60, "200 scored")
        proc.send_signal(signal.SIGTERM)  # mid-stream: records keep arriving
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        total = stream.stop()
        log_file.close()
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    first_run = json.loads(out.strip().splitlines()[-1])
    logged = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()]
    assert any(entry["msg"] == "stop requested" for entry in logged)

    # what was committed is exactly what was scored (offsets 0..committed-1 per partition)
    scored: dict[int, list[int]] = defaultdict(list)
    for event in events(kafka_bootstrap, scores):
        scored[event["source"]["partition"]].append(event["source"]["offset"])
    ends = committed_and_end(kafka_bootstrap, f"g-{source}", source)
    for partition, (committed, _) in ends.items():
        assert sorted(scored[partition]) == list(range(committed or 0)), partition
    assert sum(len(v) for v in scored.values()) == first_run["consumed"] < total

    done = run_module(
        "pipeline",
        "run",
        "--idle-timeout",
        "2",
        env={**env, "PIPELINE_METRICS_PORT": "0"},
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    second_run = json.loads(done.stdout.strip().splitlines()[-1])
    assert first_run["consumed"] + second_run["consumed"] == total
    keys = [
        (e["source"]["partition"], e["source"]["offset"]) for e in events(kafka_bootstrap, scores)
    ]
    assert len(keys) == len(set(keys)) == total  # zero duplicates, nothing missing
