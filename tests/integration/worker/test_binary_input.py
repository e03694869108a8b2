"""The float32 binary fast path through the real worker: JSON scores, bad ones dead-lettered."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from pipeline.contract.deadletter import parse_dead_letter
from pipeline.worker.codec import BINARY_CONTENT_TYPE, CONTENT_TYPE_HEADER
from pipeline.worker.loop import Worker
from pipeline.worker.metrics import PipelineMetrics
from tests.support.factories import numeric_spec, publish_model
from tests.support.kafka import produce, read_all
from tests.support.workers import settings as worker_settings


def test_binary_and_json_records_score_the_same(kafka_bootstrap, make_topic, tmp_path):
    publish_model(tmp_path, numeric_spec(4), name="num", threshold=0.8)
    rows = (np.random.default_rng(3).standard_normal((200, 4)) * 2).astype("<f4")
    source, scores = make_topic(partitions=2), make_topic()
    produce(
        kafka_bootstrap,
        source,
        [
            (f"j-{i}".encode(), msgspec.json.encode({f"x{j}": float(v) for j, v in enumerate(r)}))
            for i, r in enumerate(rows)
        ],
    )
    binary = [(f"b-{i}".encode(), r.tobytes()) for i, r in enumerate(rows)]
    binary.append((b"short", b"\x00" * 12))
    produce(
        kafka_bootstrap,
        source,
        binary,
        headers=[(CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode())],
    )
    metrics = PipelineMetrics()
    settings = worker_settings(
        kafka_bootstrap, tmp_path, source, model_name="num", scores_topic=scores
    )
    Worker(settings, metrics).run(idle_timeout_s=2)
    events = {
        e["key"]: e
        for e in (msgspec.json.decode(r.value) for r in read_all(kafka_bootstrap, scores))
    }
    assert len(events) == 400
    for i in range(200):
        assert events[f"b-{i}"]["score"] == pytest.approx(events[f"j-{i}"]["score"], rel=1e-6)
        assert events[f"b-{i}"]["record_id"] == f"b-{i}"  # binary: the key is the id
    dead = read_all(kafka_bootstrap, f"{source}-dlq")
    assert [parse_dead_letter(r.headers).reason for r in dead] == ["wrong_length"]
    assert (
        dead[0].key == b"short"
        and (CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode()) in dead[0].headers
    )
    assert (
        metrics.registry.get_sample_value(
            "pipeline_records_invalid_total", {"reason": "wrong_length"}
        )
        == 1
    )


def test_shadow_events_of_binary_records_carry_their_keys_as_ids(
    kafka_bootstrap, make_topic, tmp_path
):
    """A binary record's id is its Kafka key, for the shadow model's events as for the live
    model's: the shadow's decoder must be given the keys too."""
    publish_model(tmp_path, numeric_spec(4), name="num", threshold=0.8)
    publish_model(tmp_path, numeric_spec(4), name="candidate", threshold=0.8, seed=1)
    rows = np.random.default_rng(4).standard_normal((40, 4)).astype("<f4")
    source, scores, shadow = make_topic(), make_topic(), make_topic()
    produce(
        kafka_bootstrap,
        source,
        [(f"b-{i}".encode(), r.tobytes()) for i, r in enumerate(rows)],
        headers=[(CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode())],
    )
    settings = worker_settings(
        kafka_bootstrap,
        tmp_path,
        source,
        model_name="num",
        scores_topic=scores,
        shadow_model_name="candidate",
        shadow_topic=shadow,
    )
    Worker(settings).run(idle_timeout_s=2)
    for topic in (scores, shadow):
        ids = {msgspec.json.decode(r.value)["record_id"] for r in read_all(kafka_bootstrap, topic)}
        assert ids == {f"b-{i}" for i in range(40)}, topic
