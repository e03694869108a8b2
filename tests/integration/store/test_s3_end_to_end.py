"""Trainer and worker as separate processes with the model store on the S3 server only."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import msgspec
import pytest

from pipeline.contract import store
from pipeline.devstack.locals3 import S3Record
from pipeline.devstack.sampledata import mixed_stream, normal_frame, to_records
from tests.support.cli import run_module, run_module_until
from tests.support.kafka import fully_committed, produce_json, read_all

pytestmark = pytest.mark.kafka


def test_trainer_publishes_to_s3_and_a_worker_process_scores_with_it(
    kafka_bootstrap: str, make_topic, s3_store: str, local_s3: S3Record, tmp_path: Path
) -> None:
    data = tmp_path / "normal.parquet"
    normal_frame(3000, seed=5).to_parquet(data)
    env = {**os.environ, **local_s3.env(), "OMP_NUM_THREADS": "1"}
    fitted = run_module(
        "trainer", "fit", "--data", str(data), "--model-store", s3_store, "--name", "sensors",
        "--id-column", "machine_id", "--epochs", "20", "--device", "cpu",
        env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr
    version = fitted.stdout.strip().splitlines()[-1]
    assert [v.version for v in store.list_versions(s3_store, "sensors")] == [version]
    assert not list(tmp_path.glob("**/manifest.json"))  # nothing published to a local dir

    source, alerts = make_topic(partitions=2), make_topic()
    stream, injected = mixed_stream(300, 8, seed=3)
    produce_json(kafka_bootstrap, source, to_records(stream), key_field="machine_id")
    env |= {
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PIPELINE_INPUT_TOPIC": source,
        "PIPELINE_ALERT_TOPIC": alerts,
        "PIPELINE_DLQ_TOPIC": f"{source}-dlq",
        "PIPELINE_GROUP_ID": f"s3-{source}",
        "PIPELINE_START_FROM": "earliest",  # the records were produced before the worker
        "PIPELINE_MODEL_STORE": s3_store,
        "PIPELINE_MODEL_NAME": "sensors",
        "PIPELINE_ID_FIELD": "machine_id",
        "PIPELINE_METRICS_PORT": "0",
    }
    # stopped (SIGTERM: drain, commit, summary) once every record is committed, not after
    # 3 s without records
    scored = run_module_until(
        *("pipeline", "run", "--idle-timeout", "3"),
        done=partial(fully_committed, kafka_bootstrap, f"s3-{source}", source),
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout.strip().splitlines()[-1])["consumed"] == len(stream)
    events = [msgspec.json.decode(r.value) for r in read_all(kafka_bootstrap, alerts)]
    assert injected <= {e["record_id"] for e in events}
    assert {e["model"]["version"] for e in events} == {version}
    assert local_s3.credential not in scored.stderr + fitted.stderr
