"""Batch scoring (`python -m pipeline score`) against the worker: same rows, same scores."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.contract.exceptions import DataError
from pipeline.devstack.sampledata import mixed_stream, normal_frame, to_records
from pipeline.offline.batch_scoring import score_parquet
from pipeline.worker.loop import Worker
from tests.support.cli import run_module
from tests.support.kafka import produce_json, read_all
from tests.support.training import train_sensors
from tests.support.workers import settings as worker_settings


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    # whitened residuals (the default only from 100 select rows a unit): both paths use them
    manifest = train_sensors(root, 2000, data_seed=8, epochs=8, seed=0, whiten_residuals=True)
    assert manifest.model.whitened_units == manifest.features.n_continuous
    return root / "store"


def test_batch_scores_equal_the_workers_scores_for_the_same_records(
    kafka_bootstrap, make_topic, store, tmp_path
):
    stream, _ = mixed_stream(400, 20, seed=4)
    stream.loc[::9, "pressure"] = np.nan  # imputation on both paths
    source, alerts, scores_topic = make_topic(partitions=2), make_topic(), make_topic()
    produce_json(kafka_bootstrap, source, to_records(stream), key_field="machine_id")
    settings = worker_settings(
        kafka_bootstrap,
        store,
        source,
        model_name="sensors",
        id_field="machine_id",
        alert_topic=alerts,
        scores_topic=scores_topic,
        top_k=4,
    )
    Worker(settings).run(idle_timeout_s=2)
    streamed = {
        e["record_id"]: e
        for e in (msgspec.json.decode(r.value) for r in read_all(kafka_bootstrap, scores_topic))
    }
    assert len(streamed) == len(stream)

    stream.to_parquet(tmp_path / "in.parquet")
    summary = score_parquet(
        str(tmp_path / "in.parquet"), tmp_path / "out.parquet", str(store), "sensors",
        device="cpu", top_k=4, batch_rows=97,
    )  # fmt: skip
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert summary.rows == len(out) == len(stream)
    assert [r["machine_id"] for r in out] == stream["machine_id"].tolist()  # input order
    for row in out:
        event = streamed[row["machine_id"]]
        assert row["score"] == pytest.approx(event["score"], rel=1e-6)
        assert row["is_anomaly"] == event["is_anomaly"]
        assert [f["name"] for f in row["top_features"]] == [
            f["name"] for f in event["top_features"]
        ]
        for mine, theirs in zip(row["top_features"], event["top_features"], strict=True):
            assert mine["error"] == pytest.approx(theirs["error"], rel=1e-6)
            assert mine["share"] == pytest.approx(theirs["share"], rel=1e-6)
    assert summary.anomalies == sum(e["is_anomaly"] for e in streamed.values())


def test_cli_prints_the_alert_count_and_rate_and_handles_bad_input(store, tmp_path):
    stream, injected = mixed_stream(300, 10, seed=6)
    stream.to_parquet(tmp_path / "in.parquet")
    args = ["pipeline", "score", "--model-store", str(store)]
    done = run_module(
        *args, "--name", "sensors", "--data", str(tmp_path / "in.parquet"),
         "--out", str(tmp_path / "out.parquet"), "--json", "--batch-rows", "64",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    table = pq.read_table(tmp_path / "out.parquet")
    assert info["rows"] == table.num_rows == 310
    assert info["anomalies"] == sum(table.column("is_anomaly").to_pylist())
    assert info["alert_rate"] == pytest.approx(info["anomalies"] / 310, abs=1e-6)
    flagged = set(table.filter(table.column("is_anomaly")).column("machine_id").to_pylist())
    assert len(injected & flagged) >= 5  # a briefly trained model still finds most

    human = run_module(
        *args, "--name", "sensors", "--data", str(tmp_path / "in.parquet"),
         "--out", str(tmp_path / "out2.parquet"),
    )  # fmt: skip
    assert human.returncode == 0 and f"alerts: {info['anomalies']} (" in human.stdout

    pq.write_table(pa.table({"temperature": [1.0]}), tmp_path / "bad.parquet")
    bad = run_module(
        *args, "--name", "sensors", "--data", str(tmp_path / "bad.parquet"),
         "--out", str(tmp_path / "never.parquet"),
    )  # fmt: skip
    assert bad.returncode == 2 and "machine_id" in bad.stderr
    assert not (tmp_path / "never.parquet").exists()


def test_empty_input_writes_an_empty_file_with_the_output_schema(store, tmp_path):
    frame = normal_frame(5, seed=1).iloc[:0]
    frame.to_parquet(tmp_path / "empty.parquet")
    summary = score_parquet(str(tmp_path / "empty.parquet"), tmp_path / "o.parquet", str(store),
                            "sensors", device="cpu")  # fmt: skip
    table = pq.read_table(tmp_path / "o.parquet")
    assert summary.rows == 0 and summary.alert_rate == 0.0
    assert table.column_names == ["machine_id", "score", "is_anomaly", "top_features"]
    with pytest.raises(DataError, match="cannot read Parquet"):
        score_parquet(str(tmp_path / "nope.parquet"), tmp_path / "x.parquet", str(store), "sensors")
