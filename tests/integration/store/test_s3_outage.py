"""A worker keeps serving its model while the object store is down, and reloads once it is back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from pipeline.devstack.locals3 import LocalS3
from pipeline.kafka.settings import KafkaSettings
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.served import ServedModels
from pipeline.worker.settings import WorkerSettings
from tests.integration.store.conftest import BUCKET, use_server
from tests.support.factories import publish_model


def test_worker_keeps_its_model_while_the_store_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = LocalS3(tmp_path / "s3")  # its own server: this test stops it
    record = server.start(buckets=(BUCKET,))
    try:
        use_server(monkeypatch, record)
        url = f"s3://{BUCKET}/outage"
        first = publish_model(url, seed=0)  # type: ignore[arg-type]
        settings = WorkerSettings(
            kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),  # never contacted here
            model_store=url,
            model_name="m",
            reload_interval_s=0.05,
            metrics_port=0,
            device="cpu",
        )
        metrics = PipelineMetrics()
        served = ServedModels(settings, metrics, torch.device("cpu"))
        assert served.model.version == first.version

        server.stop()
        for _ in range(3):
            time.sleep(0.1)
            served.maybe_reload()  # LATEST unreadable: logged, nothing raised, nothing refused
        assert served.model.version == first.version
        x = torch.zeros(2, served.model.artifact.manifest.model.input_dim)
        with torch.inference_mode():
            assert torch.isfinite(served.model.artifact.model(x)).all()

        server.start(port=int(record.endpoint.rsplit(":", 1)[1]), buckets=(BUCKET,))
        second = publish_model(url, seed=1)  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while served.model.version != second.version and time.monotonic() < deadline:
            time.sleep(0.1)
            served.maybe_reload()
        assert served.model.version == second.version
        refused = metrics.registry.get_sample_value(
            "pipeline_model_reloads_total", {"result": "refused"}
        )
        assert not refused
    finally:
        server.stop()
