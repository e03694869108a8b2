"""Per-entity versions in a running worker (real broker, real store): routing by field or key,
the fallback, alerts naming the model, the resident budget, parity with batch scoring and
evaluate, hot reload and refused versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.contract.artifact import load_artifact, set_latest
from pipeline.contract.entity_scoring import open_entity_scorer
from pipeline.offline.batch_scoring import score_parquet
from pipeline.worker.loop import Worker
from tests.support.entities import publish_entity_set
from tests.support.kafka import produce
from tests.support.workers import (
    NAME,
    SPEC,
    Background,
    events,
    numeric_records,
    produce_records,
    publish,
    settings,
    wait_for,
)

pytestmark = pytest.mark.kafka

MACHINES = [f"m{i}" for i in range(12)]


def fleet_records(n: int, start: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """numeric_records with a machine field: known machines, one unknown, some without."""
    out = numeric_records(n, start=start, seed=seed)
    for i, rec in enumerate(out):
        if i % 10 == 7:
            rec["machine"] = "stranger"
        elif i % 10 != 9:  # every tenth record names no machine
            rec["machine"] = MACHINES[(i * 7 + start) % len(MACHINES)]
    return out


def publish_fleet(store: Path, seed: int = 0) -> Any:
    """Entity models for MACHINES, thresholds so that about a quarter of records alert."""
    manifest = publish_entity_set(store, SPEC, MACHINES, name=NAME, seed=seed)
    loaded = load_artifact(store, NAME, manifest.version)
    expected = expected_scores(loaded, fleet_records(800, seed=99))
    thresholds = [float(np.quantile(expected.scores.scores, 0.75))] * (len(MACHINES) + 1)
    shutil.rmtree(store / NAME / manifest.version)
    return publish_entity_set(store, SPEC, MACHINES, name=NAME, seed=seed, thresholds=thresholds)


def expected_scores(loaded: Any, records: list[dict[str, Any]]) -> Any:
    cont = np.array([[r[f"x{j}"] for j in range(4)] for r in records], dtype=np.float32)
    scorer = open_entity_scorer(SPEC, loaded.entities, torch.device("cpu"))
    return scorer.score(
        cont, np.zeros((len(records), 0), np.int64), [r.get("machine") for r in records]
    )


def test_records_are_scored_by_their_machines_models_in_one_call(
    kafka_bootstrap, make_topic, tmp_path
):
    store = tmp_path / "store"
    manifest = publish_fleet(store)
    loaded = load_artifact(store, NAME)
    source = make_topic(partitions=2)
    scores_topic = f"{source}-scores"
    s = settings(kafka_bootstrap, store, source, scores_topic=scores_topic, entity_memory_mb=0.002)
    # room for a handful of models: evictions on every batch
    records = fleet_records(600)
    produce_records(kafka_bootstrap, source, records)
    worker = Worker(s)
    summary = worker.run(idle_timeout_s=3)
    assert summary.scored == 600
    expected = expected_scores(loaded, records)
    by_id = {e["record_id"]: e for e in events(kafka_bootstrap, scores_topic)}
    assert len(by_id) == 600
    names = loaded.entities.index.entities
    for i, rec in enumerate(records):
        event = by_id[rec["id"]]
        slot = int(expected.slots[i])
        assert event["score"] == pytest.approx(float(expected.scores.scores[i]), rel=1e-6)
        assert event["threshold"] == expected.thresholds[i]
        assert event["model"] == {
            "name": NAME,
            "version": manifest.version,
            "entity": names[slot],
            "fallback": slot == 0,
        }
        assert event["is_anomaly"] == bool(expected.scores.scores[i] > expected.thresholds[i])
    alerts = events(kafka_bootstrap, s.alert_topic)
    assert {a["record_id"] for a in alerts} == {e for e, v in by_id.items() if v["is_anomaly"]}

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return worker.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    fallback = sum(r.get("machine") not in MACHINES for r in records)
    assert value("pipeline_entity_records_total", {"model": "fallback"}) == fallback
    assert value("pipeline_entity_records_total", {"model": "entity"}) == 600 - fallback
    assert value("pipeline_entity_models") == len(MACHINES)
    assert value("pipeline_entities_served") == len(MACHINES)
    capacity = value("pipeline_entity_models_capacity")
    assert 1 <= capacity < len(MACHINES)
    assert value("pipeline_entity_models_resident") <= capacity
    assert value("pipeline_entity_model_evictions_total") > 0
    assert value("pipeline_entity_model_loads_total") > len(MACHINES)


def test_the_kafka_key_can_name_the_entity(kafka_bootstrap, make_topic, tmp_path):
    store = tmp_path / "store"
    publish_fleet(store)
    source = make_topic()
    scores_topic = f"{source}-scores"
    s = settings(kafka_bootstrap, store, source, scores_topic=scores_topic, entity_from="key")
    records = numeric_records(60)
    produce(
        kafka_bootstrap,
        source,
        [(MACHINES[i % 3].encode(), json.dumps(r).encode()) for i, r in enumerate(records)],
    )
    Worker(s).run(idle_timeout_s=3)
    entities = {e["record_id"]: e["model"]["entity"] for e in events(kafka_bootstrap, scores_topic)}
    assert entities == {r["id"]: MACHINES[i % 3] for i, r in enumerate(records)}


def test_worker_batch_scoring_and_evaluate_agree_on_entity_models(
    kafka_bootstrap, make_topic, tmp_path
):
    from trainer.evaluate import EvaluationRequest, evaluate

    store = tmp_path / "store"
    publish_fleet(store)
    source = make_topic(partitions=3)
    scores_topic = f"{source}-scores"
    s = settings(kafka_bootstrap, store, source, scores_topic=scores_topic)
    records = fleet_records(300, seed=4)
    produce_records(kafka_bootstrap, source, records)
    Worker(s).run(idle_timeout_s=3)
    streamed = {e["record_id"]: e for e in events(kafka_bootstrap, scores_topic)}

    frame = pd.DataFrame(records).assign(label=[i % 5 == 0 for i in range(300)])
    frame["machine"] = frame["machine"].astype(object).where(frame["machine"].notna(), None)
    frame.to_parquet(tmp_path / "rows.parquet")
    out = tmp_path / "scored.parquet"
    score_parquet(str(tmp_path / "rows.parquet"), out, str(store), NAME, device="cpu")
    batch = pq.read_table(out).to_pydict()
    result = evaluate(
        EvaluationRequest(
            data=str(tmp_path / "rows.parquet"),
            model_store=str(store),
            name=NAME,
            label_column="label",
            device="cpu",
        )
    )
    for i, rec in enumerate(records):
        event = streamed[rec["id"]]
        assert batch["score"][i] == event["score"]
        assert batch["threshold"][i] == event["threshold"]
        assert batch["is_anomaly"][i] == event["is_anomaly"]
        assert batch["entity_model"][i] == event["model"]["entity"]
        assert result.scores[i] == event["score"] / event["threshold"]
    assert result.fallback_rows == sum(r.get("machine") not in MACHINES for r in records)


def test_entity_versions_reload_and_a_broken_one_is_refused(kafka_bootstrap, make_topic, tmp_path):
    store = tmp_path / "store"
    v1 = publish(store, seed=0, alert_share=0.5).version  # a single model first
    source = make_topic(partitions=2)
    s = settings(kafka_bootstrap, store, source, reload_interval_s=0.2)
    bg = Background(Worker(s), idle_timeout_s=30)
    produce_records(kafka_bootstrap, source, fleet_records(100))
    wait_for(lambda: bg.value("pipeline_records_consumed_total") >= 100, 30, "first records")

    v2 = publish_fleet(store).version  # the same columns: swapped in
    wait_for(lambda: bg.value("pipeline_model_info", {"name": NAME, "version": v2}) == 1, 10, "v2")
    staging = tmp_path / "staging"
    broken = publish_fleet(staging, seed=5).version
    index = staging / NAME / broken / "entities.json"
    raw = json.loads(index.read_text())
    raw["thresholds"] = [1e9] * len(raw["thresholds"])  # would silence every alert
    index.write_text(json.dumps(raw))
    shutil.copytree(staging / NAME / broken, store / NAME / broken)
    set_latest(store, NAME, broken)
    wait_for(
        lambda: bg.value("pipeline_model_reloads_total", {"result": "refused"}) >= 1, 10, "refusal"
    )
    produce_records(kafka_bootstrap, source, fleet_records(100, start=100))
    wait_for(lambda: bg.value("pipeline_records_consumed_total") >= 200, 30, "more records")
    bg.stop()
    models = {e["record_id"]: e["model"] for e in events(kafka_bootstrap, s.alert_topic)}
    later = [m for rid, m in models.items() if rid >= "r-000100"]
    assert later and all(m["version"] == v2 and "fallback" in m for m in later)
    assert {m["version"] for rid, m in models.items() if rid < "r-000100"} <= {v1, v2}
    assert bg.value("pipeline_model_info", {"name": NAME, "version": broken}) == 0
