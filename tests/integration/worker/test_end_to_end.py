"""The whole path once with real parts: Parquet -> trainer -> model store -> Kafka -> worker."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import jsonschema
import msgspec
import pyarrow as pa
import pytest
import torch

from pipeline.contract.artifact import load_artifact
from pipeline.contract.deadletter import parse_dead_letter
from pipeline.contract.scoring import Scorer
from pipeline.contract.tabular import encode_record_batch
from pipeline.devstack.sampledata import mixed_stream, to_records
from pipeline.worker.loop import Worker
from pipeline.worker.metrics import PipelineMetrics
from tests.support.cli import run_module, run_module_until
from tests.support.kafka import committed_and_end, fully_committed, produce, produce_json, read_all
from tests.support.training import train_sensors
from tests.support.workers import settings as worker_settings

pytestmark = pytest.mark.kafka
SCHEMA = json.loads(
    (
        Path(__file__).parents[3] / "pipeline" / "contract" / "schemas" / "alert.schema.json"
    ).read_text()
)


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    # 25 epochs (the trainer's default cap): the injected anomalies of both tests score
    # >= 2.5x the threshold over training seeds 0-2 (60 epochs took twice as long)
    train_sensors(root, 6000, data_seed=5, epochs=25, seed=0)
    return root / "store"


def test_worker_alerts_exactly_the_records_over_the_threshold(
    kafka_bootstrap, make_topic, model_store
):
    source, alerts, dlq = make_topic(partitions=3), make_topic(), make_topic()
    stream, injected = mixed_stream(800, 25, seed=21)
    produce_json(kafka_bootstrap, source, to_records(stream), key_field="machine_id")
    produce(kafka_bootstrap, source, [(b"bad-1", b"{oops"), (b"bad-2", b'{"temperature": "hot"}')])

    # what the published model says offline about every produced record
    artifact = load_artifact(model_store, "sensors")
    spec = artifact.manifest.features
    cont, cat = encode_record_batch(pa.RecordBatch.from_pandas(stream, preserve_index=False), spec)
    offline = Scorer(spec, artifact.model, torch.device("cpu")).score(cont, cat).scores
    expected = set(stream["machine_id"][offline > artifact.manifest.threshold.value])

    settings = worker_settings(
        kafka_bootstrap,
        model_store,
        source,
        model_name="sensors",
        id_field="machine_id",
        alert_topic=alerts,
        dlq_topic=dlq,
    )
    metrics = PipelineMetrics()
    summary = Worker(settings, metrics).run(idle_timeout_s=3)

    assert summary.consumed == len(stream) + 2
    events = [msgspec.json.decode(r.value) for r in read_all(kafka_bootstrap, alerts)]
    for event in events:
        jsonschema.validate(event, SCHEMA)
    alerted = {e["record_id"] for e in events}
    assert alerted == expected
    assert injected <= alerted
    assert len(events) == len(alerted)  # one alert per record
    assert all(e["model"]["version"] == artifact.version for e in events)

    dead = [parse_dead_letter(r.headers) for r in read_all(kafka_bootstrap, dlq)]
    assert sorted(d.reason for d in dead) == ["bad_json", "wrong_type"]
    assert {d.topic for d in dead} == {source}

    for partition, (committed, end) in committed_and_end(
        kafka_bootstrap, settings.group_id, source
    ).items():
        assert committed == end, f"partition {partition} not fully committed"
    reg = metrics.registry
    assert reg.get_sample_value("pipeline_records_consumed_total") == len(stream) + 2
    assert reg.get_sample_value("pipeline_anomalies_total") == len(expected)
    assert reg.get_sample_value("pipeline_records_invalid_total", {"reason": "bad_json"}) == 1


def test_cli_run_reads_settings_from_env_and_exits_cleanly(
    kafka_bootstrap, make_topic, model_store, tmp_path
):
    source, alerts = make_topic(partitions=2), make_topic()
    stream, injected = mixed_stream(200, 5, seed=3)
    produce_json(kafka_bootstrap, source, to_records(stream), key_field="machine_id")
    env = {
        **os.environ,
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PIPELINE_INPUT_TOPIC": source,
        "PIPELINE_ALERT_TOPIC": alerts,
        "PIPELINE_DLQ_TOPIC": f"{source}-dlq",
        "PIPELINE_GROUP_ID": f"cli-{source}",
        "PIPELINE_START_FROM": "earliest",
        "PIPELINE_MODEL_STORE": str(model_store),
        "PIPELINE_MODEL_NAME": "sensors",
        "PIPELINE_ID_FIELD": "machine_id",
        "PIPELINE_METRICS_PORT": "0",
        "PIPELINE_BATCH__MAX_SIZE": "64",
    }
    # stopped (SIGTERM: drain, commit, summary) once every record is committed, not after
    # 3 s without records
    done = run_module_until(
        *("pipeline", "run", "--idle-timeout", "3"),
        done=partial(fully_committed, kafka_bootstrap, f"cli-{source}", source),
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["consumed"] == 205
    assert summary["batches"] >= 4  # 205 records in batches of at most 64
    alerted = {msgspec.json.decode(r.value)["record_id"] for r in read_all(kafka_bootstrap, alerts)}
    assert injected <= alerted


def test_cli_run_fails_at_start_naming_a_bad_setting(tmp_path):
    env = {**os.environ, "PIPELINE_BATCH__MAX_SIZE": "zero"}
    done = run_module("pipeline", "run", env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "PIPELINE_BATCH__MAX_SIZE" in done.stderr
