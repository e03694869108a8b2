"""Helpers for worker integration tests: a small published model, records, a worker thread.

The model is a real (tiny, pinned-seed) autoencoder published to a real model store; its
threshold is set so a known share of the generated records alert, which keeps every test
fast while still exercising the whole path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch

from pipeline.contract.artifact import Manifest
from pipeline.contract.scoring import Scorer
from pipeline.kafka.settings import KafkaSettings
from pipeline.worker.loop import RunSummary, Worker
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.settings import WorkerSettings
from tests.support.factories import numeric_spec, publish_model, tiny_model
from tests.support.kafka import produce_json, read_all

SPEC = numeric_spec(4)
NAME = "m"


def numeric_records(n: int, start: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """Records matching SPEC (x0..x3 around their training means), ids r-000000..."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 4)) * np.array([1, 2, 3, 4]) + np.array([0, 1, 2, 3])
    return [
        {"id": f"r-{start + i:06d}", **{f"x{j}": float(values[i, j]) for j in range(4)}}
        for i in range(n)
    ]


def offline_scores(records: list[dict[str, Any]], seed: int) -> np.ndarray:
    cont = np.array([[r[f"x{j}"] for j in range(4)] for r in records], dtype=np.float32)
    cat = np.zeros((len(records), 0), dtype=np.int64)
    scorer = Scorer(SPEC, tiny_model(SPEC, seed=seed), torch.device("cpu"))
    return scorer.score(cont, cat).scores


def publish(store: Path, seed: int = 0, alert_share: float = 0.3, name: str = NAME) -> Manifest:
    """Publish the tiny model of ``seed`` with a threshold that ``alert_share`` of
    ``numeric_records`` exceed; LATEST points at it."""
    scores = offline_scores(numeric_records(2000, seed=99), seed)
    threshold = float(np.quantile(scores, 1 - alert_share))
    return publish_model(store, SPEC, name=name, threshold=threshold, seed=seed)


def settings(bootstrap: str, store: Path, source: str, **kw: Any) -> WorkerSettings:
    base: dict[str, Any] = {
        "kafka": KafkaSettings(bootstrap_servers=bootstrap),
        "model_store": str(store),
        "start_from": "earliest",  # tests produce first, then start the worker
        "model_name": NAME,
        "id_field": "id",
        "metrics_port": 0,
        "device": "cpu",
        "input_topic": source,
        "alert_topic": f"{source}-alerts",
        "dlq_topic": f"{source}-dlq",
        "group_id": f"g-{source}",
        "retry_backoff_s": 0.1,
    }
    return WorkerSettings(**(base | kw))


def produce_records(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> int:
    return produce_json(bootstrap, topic, records, key_field="id")


def events(bootstrap: str, topic: str, committed_only: bool = False) -> list[dict[str, Any]]:
    level = "read_committed" if committed_only else "read_uncommitted"
    return [msgspec.json.decode(r.value) for r in read_all(bootstrap, topic, isolation_level=level)]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class Background:
    """A Worker running ``run(**kwargs)`` in a thread; ``join`` re-raises its error."""

    def __init__(self, worker: Worker, **run_kwargs: Any) -> None:
        self.worker = worker
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, kwargs=run_kwargs, daemon=True)
        self._thread.start()

    @property
    def metrics(self) -> PipelineMetrics:
        return self.worker.metrics

    def _run(self, **kwargs: Any) -> None:
        try:
            self.summary = self.worker.run(**kwargs)
        except BaseException as exc:
            self.error = exc

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    def join(self, timeout_s: float = 60) -> RunSummary:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "worker did not stop in time"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary

    def stop(self, timeout_s: float = 60) -> RunSummary:
        self.worker.stop()
        return self.join(timeout_s)
