from dataclasses import dataclass, field

import msgspec
import numpy as np
import pytest
import torch

from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.processing import BatchProcessor, Topics
from pipeline.worker.serving import open_model
from tests.support.factories import numeric_spec, publish_model


@dataclass
class Rec:
    offset: int
    value: bytes
    topic: str = "in"
    partition: int = 0
    timestamp: int = 1_700_000_000_000
    key: bytes = b"k"
    headers: list = field(default_factory=list)


class ListSink:
    def __init__(self):
        self.sent = []

    def send(self, topic, value, key=None, headers=None):
        self.sent.append((topic, msgspec.json.decode(value) if topic != "dlq" else value))


@pytest.fixture
def model(tmp_path):
    publish_model(tmp_path, numeric_spec(4), name="m", threshold=0.5)
    return open_model(
        str(tmp_path), "m", None, torch.device("cpu"), id_field=None, top_k=2, max_record_bytes=1000
    )


def batch(n=300):
    rows = np.random.default_rng(0).standard_normal((n, 4)) * 3
    return [
        Rec(i, msgspec.json.encode({f"x{j}": v for j, v in enumerate(r)}))
        for i, r in enumerate(rows.tolist())
    ]


def test_score_histogram_counts_every_scored_record(model):
    metrics = PipelineMetrics()
    processor = BatchProcessor(Topics("alerts", "dlq"), metrics)
    result = processor.process(batch(50), model, ListSink())
    assert metrics.registry.get_sample_value("pipeline_score_count") == 0  # not committed yet
    processor.observe(result)
    assert metrics.registry.get_sample_value("pipeline_score_count") == 50


def test_next_offsets_are_one_past_the_last_record_of_each_partition():
    from kafka.structs import TopicPartition

    from pipeline.worker.sink import next_offsets

    records = [Rec(o, b"", partition=p) for p, o in [(0, 5), (1, 9), (0, 7), (0, 6), (1, 3)]]
    offsets = next_offsets(records)
    assert {tp: om.offset for tp, om in offsets.items()} == {
        TopicPartition("in", 0): 8,
        TopicPartition("in", 1): 10,
    }


def test_a_record_whose_score_is_not_finite_alerts_with_its_reason(tmp_path):
    """Valid but extreme values (the codec takes any finite float32) overflow a layer-norm
    model into a NaN score; NaN > threshold is False, so without the rule the record would be
    committed as normal."""
    publish_model(tmp_path, numeric_spec(4), name="m", threshold=0.5, norm="layer")
    layer = open_model(
        str(tmp_path), "m", None, torch.device("cpu"), id_field=None, top_k=2, max_record_bytes=1000
    )
    extreme = Rec(0, msgspec.json.encode({"x0": 3e38, "x1": 0.0, "x2": 0.0, "x3": 0.0}))
    usual = Rec(1, msgspec.json.encode({"x0": 0.0, "x1": 1.0, "x2": 2.0, "x3": 3.0}))
    sink = ListSink()
    metrics = PipelineMetrics()
    processor = BatchProcessor(Topics("alerts", "dlq", "scores"), metrics)
    result = processor.process([extreme, usual], layer, sink)
    alerts = [e for t, e in sink.sent if t == "alerts"]
    assert [a["source"]["offset"] for a in alerts] == [0]
    assert alerts[0]["is_anomaly"] and alerts[0]["type"] == "anomaly"
    assert alerts[0]["reason"] == "non_finite_score"
    assert alerts[0]["score"] is None  # JSON has no NaN: the reason says why
    assert result.anomalies == 1
    processor.observe(result)
    value = metrics.registry.get_sample_value
    assert value("pipeline_anomalies_total") == 1
    assert value("pipeline_anomalies_by_reason_total", {"reason": "non_finite_score"}) == 1
    assert value("pipeline_score_count") == 1  # the NaN is not in the score histogram
    assert (value("pipeline_score_sum") or 0.0) < 1e6
