"""A real Prometheus scrapes a real worker on a real broker; the rules and the dashboard's
queries are evaluated against its live metrics.

The model is published with validation quantiles far below what it scores on the test
stream, so the live traffic looks drifted and over-alerting, and 5% of the records are
malformed. The alerting rules are loaded with ``for: 0s`` (same expressions, no waiting) so
the alerts a production Prometheus would raise after minutes show up within seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import yaml
from kafka import KafkaProducer

from pipeline.contract import artifact
from pipeline.contract.artifact import Manifest
from pipeline.devstack.localkafka import free_ports
from pipeline.devstack.localprom import LocalPrometheus
from pipeline.kafka.settings import KafkaSettings
from pipeline.worker.loop import Worker
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.settings import BatchSettings, WorkerSettings
from tests.support.factories import manifest_fields, numeric_spec, tiny_model
from tests.support.kafka import create_topic
from tests.support.promql import (
    RULES,
    exported_names,
    grafana_to_promql,
    recorded_names,
    referenced_names,
    rule_exprs,
)
from tests.support.tools import require_tool

pytestmark = pytest.mark.kafka
DASHBOARD = (
    Path(__file__).parents[3] / "deploy" / "grafana" / "dashboards" / "anomaly-pipeline.json"
)
PRODUCE_FOR_S = 90.0  # upper bound; the fixture stops the producer when the tests are done
EXPECT_FIRING = {"PipelineAnomalyRateHigh", "PipelineScoreDrift", "PipelineDeadLetterRate"}


@dataclass
class LiveRun:
    prom: LocalPrometheus
    worker: Worker
    thread: threading.Thread
    metrics: PipelineMetrics
    manifest: Manifest
    produced: Callable[[], int]


def published_model(store: Path) -> Manifest:
    """A tiny model whose stored validation scores sit far below its scores on the stream."""
    spec = numeric_spec()
    model = tiny_model(spec)
    fields = manifest_fields(spec, model, name="m", threshold=1e-3)
    levels = [round(0.05 * i, 2) for i in range(1, 20)] + [0.99, 0.995, 0.999]
    fields["score_quantiles"] = {f"{lv:g}": 1e-3 * lv for lv in levels}
    return artifact.publish(store, model, fields)


def rules_without_waiting(target: Path) -> Path:
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


def produce_until(stop: threading.Event, bootstrap: str, topic: str, count: list[int]) -> None:
    """~1000 records/s for at most PRODUCE_FOR_S: 95% valid rows, 5% broken JSON."""
    rng = np.random.default_rng(0)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    deadline = time.monotonic() + PRODUCE_FOR_S
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            rows = rng.normal(size=(100, 4)) * [1, 2, 3, 4] + [0, 1, 2, 3]
            for i, row in enumerate(rows):
                value = (
                    b"{oops"
                    if i % 20 == 0
                    else msgspec.json.encode({f"x{j}": float(v) for j, v in enumerate(row)})
                )
                producer.send(topic, value)
            producer.flush(timeout=30)
            count[0] += len(rows)
            stop.wait(0.1)
    finally:
        producer.close(timeout=10)


@pytest.fixture(scope="module")
def live(kafka_bootstrap, kafka_admin, tmp_path_factory) -> Iterator[LiveRun]:
    require_tool("prometheus")
    root = tmp_path_factory.mktemp("observability")
    manifest = published_model(root / "store")
    source = create_topic(kafka_admin, 2)
    alerts, dlq = create_topic(kafka_admin, 1), create_topic(kafka_admin, 1)
    (port,) = free_ports(1)
    settings = WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        input_topic=source,
        alert_topic=alerts,
        dlq_topic=dlq,
        group_id=f"g-{source}",
        start_from="earliest",
        model_store=str(root / "store"),
        model_name="m",
        device="cpu",
        metrics_port=port,
        metrics_host="127.0.0.1",
        batch=BatchSettings(max_size=256, max_wait_ms=20),
    )
    metrics = PipelineMetrics()
    worker = Worker(settings, metrics)
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    stop_producing = threading.Event()
    produced = [0]
    producer = threading.Thread(
        target=produce_until,
        args=(stop_producing, kafka_bootstrap, source, produced),
        name="producer",
        daemon=True,
    )
    prom = LocalPrometheus(
        root / "prometheus",
        {"anomaly-worker": [f"127.0.0.1:{port}"]},
        rule_files=[rules_without_waiting(root / "rules.yml")],
        interval_s=1.0,
    )
    with prom:
        thread.start()
        producer.start()
        try:
            yield LiveRun(prom, worker, thread, metrics, manifest, lambda: produced[0])
        finally:
            stop_producing.set()
            producer.join(timeout=30)
            worker.stop()
            thread.join(timeout=60)
            kafka_admin.delete_topics([source, alerts, dlq], raise_errors=False)


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


def firing(prom: LocalPrometheus) -> set[str]:
    return {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}


def test_rules_fire_on_the_live_worker_metrics(live: LiveRun):
    wait_for("the expected alerts", lambda: firing(live.prom) >= EXPECT_FIRING)
    now = firing(live.prom)
    assert "PipelineWorkerDown" not in now
    assert "PipelineWorkersAbsent" not in now
    assert "PipelineModelStale" not in now  # published seconds ago
    by_name = {a["labels"]["alertname"]: a for a in live.prom.alerts()}
    assert by_name["PipelineDeadLetterRate"]["labels"]["reason"] == "bad_json"
    for rule in live.prom.rules():  # every expression evaluates without error on real data
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_drift_metrics_come_from_the_run(live: LiveRun):
    rows = wait_for(
        "drift window over 2000 records",
        lambda: live.prom.query("pipeline_drift_window_records > 2000"),
    )
    assert len(rows) == 1
    reg = live.metrics.registry
    psi = reg.get_sample_value("pipeline_drift_psi")
    over = reg.get_sample_value("pipeline_drift_over_threshold_ratio")
    assert psi is not None and psi > 2  # every live score lies above all stored quantiles
    assert over is not None and over > 0.9
    assert reg.get_sample_value("pipeline_drift_expected_over_threshold_ratio") == pytest.approx(
        0.01
    )
    assert reg.get_sample_value("pipeline_model_created_timestamp_seconds") == pytest.approx(
        live.manifest.created_at.timestamp()
    )
    (scraped,) = live.prom.query("pipeline_drift_psi")
    assert float(scraped["value"][1]) > 2


def test_dashboard_queries_return_data_and_name_exported_metrics(live: LiveRun):
    wait_for("records scored", lambda: live.prom.query("pipeline_records_scored_total > 2000"))
    time.sleep(2)  # a few more scrapes so every rate() has two samples
    exported = exported_names(live.metrics.registry) | recorded_names()
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [grafana_to_promql(t["expr"]) for p in panels for t in p["targets"]]
    assert referenced_names(exprs) <= exported
    assert referenced_names(rule_exprs()) <= exported
    empty = [
        p["title"]
        for p in panels
        if not any(live.prom.query(grafana_to_promql(t["expr"])) for t in p["targets"])
    ]
    assert not empty, f"panels with no data from a live worker: {empty}"


def test_worker_down_fires_when_the_worker_stops(live: LiveRun):
    assert live.produced() > 0
    live.worker.stop()
    live.thread.join(timeout=60)
    assert not live.thread.is_alive()
    wait_for("PipelineWorkerDown", lambda: "PipelineWorkerDown" in firing(live.prom))
