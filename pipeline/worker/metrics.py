"""Prometheus metrics of the worker and the HTTP server for /metrics, /healthz and /readyz.

All metrics live on one object that takes a registry, so tests use a fresh
``CollectorRegistry()`` and read values with ``registry.get_sample_value``. The core names
are a contract with dashboards, alert rules and benchmarks (DESIGN.md): keep them.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
_SCORE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 1024)


class PipelineMetrics:
    """Every metric the worker exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            "pipeline_records_consumed", "Records read from the input topics", registry=r
        )
        self.records_scored = Counter(
            "pipeline_records_scored", "Records scored by the model", registry=r
        )
        self.anomalies = Counter(
            "pipeline_anomalies", "Records over the threshold (alerts emitted)", registry=r
        )
        self.anomalies_by_reason = Counter(
            "pipeline_anomalies_by_reason",
            "Anomalies by reason: over_threshold, or non_finite_score (the model's score was "
            "NaN or infinite: alerted, never passed as normal)",
            ["reason"],
            registry=r,
        )
        self.records_invalid = Counter(
            "pipeline_records_invalid",
            "Records sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "pipeline_batch_size", "Records per micro-batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "pipeline_inference_seconds",
            "Model time per batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = BulkHistogram(
            "pipeline_end_to_end_latency_seconds",
            "From the record's timestamp to its batch being acknowledged",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "pipeline_consumer_lag",
            "Records behind the log end, by partition",
            ["partition"],
            registry=r,
        )
        self.model_info = Gauge(
            "pipeline_model_info",
            "The model being served (value 1)",
            ["name", "version"],
            registry=r,
        )
        self.threshold = Gauge("pipeline_threshold", "Alert threshold of the model", registry=r)
        self.score = BulkHistogram(
            "pipeline_score", "Reconstruction scores", buckets=_SCORE_BUCKETS, registry=r
        )
        self.batches = Counter("pipeline_batches", "Micro-batches processed", registry=r)
        self.batch_failures = Counter(
            "pipeline_batch_failures",
            "Batches that failed and were retried",
            ["stage"],
            registry=r,
        )
        self.commits = Counter("pipeline_commits", "Offset commits", registry=r)
        self.model_reloads = Counter(
            "pipeline_model_reloads", "Model reload attempts, by result", ["result"], registry=r
        )
        self.ready = Gauge(
            "pipeline_ready", "1 when partitions are assigned and a model loaded", registry=r
        )
        # drift and calibration against the served model's validation scores (pipeline.worker.drift)
        self.model_created = Gauge(
            "pipeline_model_created_timestamp_seconds",
            "Unix time the served model was published (model age = time() - this)",
            registry=r,
        )
        self.drift_psi = Gauge(
            "pipeline_drift_psi",
            "Population stability index of live scores against the validation quantile bins",
            registry=r,
        )
        self.drift_over_threshold = Gauge(
            "pipeline_drift_over_threshold_ratio",
            "Fraction of scores over the threshold in the drift window",
            registry=r,
        )
        self.drift_expected_over_threshold = Gauge(
            "pipeline_drift_expected_over_threshold_ratio",
            "Fraction over the threshold expected on normal data: 1 - threshold quantile",
            registry=r,
        )
        self.drift_window_records = Gauge(
            "pipeline_drift_window_records",
            "Records (decayed) the drift numbers rest on",
            registry=r,
        )
        self.last_loop = Gauge(
            "pipeline_last_loop_timestamp_seconds",
            "Unix time the worker loop last went round (liveness)",
            registry=r,
        )
        self.commits_rejected = Counter(
            "pipeline_commits_rejected",
            "Offset commits refused because the group rebalanced (batch replayed by new owner)",
            registry=r,
        )
        self.producer_rebuilds = Counter(
            "pipeline_producer_rebuilds",
            "Exactly-once producers replaced after a fence or a stalled transactional call",
            ["reason"],
            registry=r,
        )
        self.records_revoked = Counter(
            "pipeline_records_revoked",
            "Records dropped from a batch being collected when their partition was revoked",
            registry=r,
        )
        self.oom_events = Counter(
            "pipeline_oom_events",
            "Out-of-memory errors while scoring, by action (split, cpu_fallback)",
            ["action"],
            registry=r,
        )
        # Per model version, live and shadow side by side: the alert rate a candidate would
        # have is rate(anomalies{role="shadow"}) / rate(records_scored{role="shadow"}).
        self.model_scored = Counter(
            "pipeline_model_records_scored",
            "Records scored, by role (live, shadow) and model version",
            ["role", "version"],
            registry=r,
        )
        self.model_anomalies = Counter(
            "pipeline_model_anomalies",
            "Records over the threshold by role and version (shadow: alerts it would raise)",
            ["role", "version"],
            registry=r,
        )
        self.shadow_info = Gauge(
            "pipeline_shadow_model_info",
            "The shadow model being scored (value 1)",
            ["name", "version"],
            registry=r,
        )
        self.shadow_threshold = Gauge(
            "pipeline_shadow_threshold", "Threshold of the shadow model", registry=r
        )
        self.shadow_score = Histogram(
            "pipeline_shadow_score",
            "Reconstruction scores of the shadow model",
            ["version"],
            buckets=_SCORE_BUCKETS,
            registry=r,
        )
        self.shadow_invalid = Counter(
            "pipeline_shadow_records_invalid",
            "Records the shadow model's feature spec rejects, by reason",
            ["reason"],
            registry=r,
        )
        self.shadow_failures = Counter(
            "pipeline_shadow_failures",
            "Batches the shadow model failed on (the live path is unaffected)",
            registry=r,
        )
        self.announcements = Counter(
            "pipeline_announcements",
            "Records read from the announce topic, by result (offered, ignored, invalid)",
            ["result"],
            registry=r,
        )
        self.kafka_wait = Gauge(
            "pipeline_kafka_wait_seconds",
            "How long the worker loop has been waiting for Kafka (flush, commit, transaction,"
            " new producer); 0 when it is not. Long waits mean the brokers are unreachable",
            registry=r,
        )
        # per-entity versions: no label per entity, however many there are
        self.entity_records = Counter(
            "pipeline_entity_records",
            "Records of a per-entity version, by the model that scored them (entity, fallback)",
            ["model"],
            registry=r,
        )
        self.entity_models = Gauge(
            "pipeline_entity_models", "Entity models in the served version", registry=r
        )
        self.entity_resident = Gauge(
            "pipeline_entity_models_resident",
            "Entity models resident on the scoring device (bounded by PIPELINE_ENTITY_MEMORY_MB)",
            registry=r,
        )
        self.entity_capacity = Gauge(
            "pipeline_entity_models_capacity",
            "Most entity models resident at once under the memory budget",
            registry=r,
        )
        self.entity_loads = Counter(
            "pipeline_entity_model_loads", "Entity models copied in on demand", registry=r
        )
        self.entity_evictions = Counter(
            "pipeline_entity_model_evictions",
            "Entity models evicted (least recently used) to make room",
            registry=r,
        )
        self.entities_served = Gauge(
            "pipeline_entities_served",
            "Distinct entities scored by their own model since the served version loaded",
            registry=r,
        )
        self.shadow_reloads = Counter(
            "pipeline_shadow_reloads",
            "Shadow model load attempts, by result",
            ["result"],
            registry=r,
        )

    def set_model(self, name: str, version: str, threshold: float) -> None:
        """Make exactly one (name, version) series carry the value 1."""
        self.model_info.clear()
        self.model_info.labels(name=name, version=version).set(1)
        self.threshold.set(threshold)

    def set_shadow(self, name: str, version: str, threshold: float) -> None:
        self.shadow_info.clear()
        self.shadow_info.labels(name=name, version=version).set(1)
        self.shadow_threshold.set(threshold)


class BulkHistogram(Collector):
    """A Prometheus histogram fed a whole batch of observations at once.

    ``prometheus_client.Histogram.observe`` takes one value under a lock; calling it per
    record cost more than scoring the record. Here a batch is binned with numpy
    (``searchsorted`` + ``bincount``) and added under one lock. Exposed exactly like a
    ``Histogram`` (``_bucket{le}``, ``_count``, ``_sum``). NaN observations are ignored.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._labels = ["+Inf" if b == math.inf else repr(b) for b in bounds]
        self._counts = np.zeros(len(bounds), dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many(np.asarray([value], dtype=np.float64))

    def observe_many(self, values: npt.ArrayLike) -> None:
        """Add every value of ``values`` (any shape) as one observation each."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        if not v.size:
            return
        # bucket i counts bounds[i-1] < v <= bounds[i]: the first bound >= v
        counts = np.bincount(np.searchsorted(self._bounds, v), minlength=len(self._bounds))
        total = float(v.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        return [
            HistogramMetricFamily(
                self.name,
                self.documentation,
                buckets=list(zip(self._labels, cumulative, strict=True)),
                sum_value=total,
            )
        ]


class MetricsServer:
    """A small threaded HTTP server: /metrics, /healthz (alive) and /readyz (ready to work)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        is_ready: Callable[[], bool],
        is_alive: Callable[[], bool] = lambda: True,
        health_note: Callable[[], str] = lambda: "",
    ) -> None:
        handler = _make_handler(registry, is_ready, is_alive, health_note)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics server listening port=%d", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _make_handler(
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    is_alive: Callable[[], bool],
    health_note: Callable[[], str],
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, note = is_alive(), health_note()
                body = ("ok" if ok else "unhealthy") + (f": {note}" if note else "") + "\n"
                self._send(200 if ok else 503, body.encode())
            elif path == "/readyz":
                ok = is_ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Silence per-request access logs; scrapes would flood the worker's log."""

    return Handler
