"""`trainer evaluate` on real Parquet with a really trained model; numbers against sklearn."""

import base64
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm

from pipeline.contract.exceptions import DataError
from pipeline.devstack.sampledata import mixed_stream
from tests.conftest import one_torch_thread
from tests.support.training import train_sensors
from trainer.cli import cli
from trainer.evaluate import EvaluationRequest, anomaly_labels, evaluate

REPORT_FILES = {"scores.png", "roc.png", "pr.png", "loss.png", "report.html", "metrics.json"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A model trained on normal sensor rows, and labelled rows with injected anomalies."""
    root = tmp_path_factory.mktemp("evaluate")
    with one_torch_thread():  # module-scoped: torch_one_thread is not set up yet
        train_sensors(root, 1500, data_seed=3, epochs=8, seed=1, data_name="train")
    frame, injected = mixed_stream(600, 60, seed=5)
    bad = frame["machine_id"].isin(injected)
    frame["label"] = bad.astype(int)
    frame["flag"] = bad
    frame["status"] = np.where(bad, "fault", "ok")
    frame.to_parquet(root / "labelled.parquet")
    frame.assign(label=0).to_parquet(root / "one_class.parquet")
    return root


def _request(root, **kw):
    fields = {
        "data": str(root / "labelled.parquet"),
        "model_store": str(root / "store"),
        "name": "sensors",
        "label_column": "label",
        "device": "cpu",
    }
    return EvaluationRequest(**{**fields, **kw})


def _invoke(root, *args):
    base = ["evaluate", "--model-store", str(root / "store"), "--name", "sensors"]
    return CliRunner().invoke(cli, [*base, "--device", "cpu", *args])


def test_metrics_agree_with_scikit_learn_on_the_same_scores(store):
    result = evaluate(_request(store))
    assert result.labels.sum() == 60 and result.labels.size == 660
    assert result.roc_auc == pytest.approx(skm.roc_auc_score(result.labels, result.scores))
    assert result.pr_auc == pytest.approx(skm.average_precision_score(result.labels, result.scores))
    assert result.roc_auc > 0.9  # the trained model does separate the injected anomalies
    flagged = result.scores > result.manifest.threshold.value
    assert result.at_threshold.recall == pytest.approx(skm.recall_score(result.labels, flagged))


def test_cli_prints_metrics_and_writes_a_self_contained_report(store, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "evaluate",
            "--data",
            str(store / "labelled.parquet"),
            "--label-column",
            "label",
            "--model-store",
            str(store / "store"),
            "--name",
            "sensors",
            "--device",
            "cpu",
            "--report",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    # the same model scores the same rows the same way in-process: check the printed numbers
    ref = evaluate(_request(store))
    y, s = ref.labels, ref.scores
    flagged = s > printed["threshold"]
    assert printed["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-6)
    assert printed["pr_auc"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-6)
    assert printed["precision"] == pytest.approx(skm.precision_score(y, flagged), abs=1e-6)
    assert printed["recall"] == pytest.approx(skm.recall_score(y, flagged), abs=1e-6)
    assert printed["f1"] == pytest.approx(skm.f1_score(y, flagged), abs=1e-6)
    assert (printed["anomalies"], printed["normals"]) == (60, 600)

    report = tmp_path / "report"
    assert {p.name for p in report.iterdir()} == REPORT_FILES
    assert json.loads((report / "metrics.json").read_text())["roc_auc"] == printed["roc_auc"]
    page = (report / "report.html").read_text()
    for name in ("scores", "roc", "pr", "loss"):
        png = (report / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
        assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert ".png" not in page.replace("data:image/png", "")  # nothing links outside the page
    assert printed["report"] == str(report / "report.html")


def test_anomaly_value_names_the_anomalous_labels(store):
    by_int = _invoke(store, "--data", str(store / "labelled.parquet"), "--label-column", "label")
    by_text = _invoke(
        store,
        "--data",
        str(store / "labelled.parquet"),
        "--label-column",
        "status",
        "--anomaly-value",
        "fault",
    )
    by_bool = _invoke(store, "--data", str(store / "labelled.parquet"), "--label-column", "flag")
    assert by_int.exit_code == by_text.exit_code == by_bool.exit_code == 0, by_text.output
    rocs = {json.loads(r.stdout)["roc_auc"] for r in (by_int, by_text, by_bool)}
    assert len(rocs) == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--label-column", "nope"], 3, "label column 'nope' not in"),
        (["--label-column", "status"], 3, "--anomaly-value"),
        (["--label-column", "temperature"], 3, "is an input feature"),
        (["--label-column", "label", "--name", "ghost"], 4, "no published model 'ghost'"),
        (["--label-column", "label", "--version", "20200101T000000Z-aaaaaa"], 4, "missing"),
        ([], 3, "no label column"),
    ],
)
def test_bad_input_fails_with_a_clear_message_and_exit_code(store, args, code, message):
    result = _invoke(store, "--data", str(store / "labelled.parquet"), *args)
    assert result.exit_code == code, result.output
    assert message in result.output


def test_one_class_and_missing_files_are_data_errors(store):
    one = _invoke(store, "--data", str(store / "one_class.parquet"), "--label-column", "label")
    assert one.exit_code == 3
    assert "0 anomalous and 660 normal" in one.output
    gone = _invoke(store, "--data", str(store / "nope.parquet"), "--label-column", "label")
    assert gone.exit_code == 3
    assert "nope.parquet" in gone.output


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (pa.array([True, False]), [True, False]),
        (pa.array([1, 0]), [True, False]),
        (pa.array([1.0, 0.0]), [True, False]),
        (pa.array(["TRUE", "false"]), [True, False]),
        (pa.array(["1", "0"]), [True, False]),
    ],
)
def test_default_label_convention(values, expected):
    assert anomaly_labels(values, "y").tolist() == expected


def test_anomaly_values_and_label_errors():
    assert anomaly_labels(pa.array([7, 3, 7]), "digit", ["7"]).tolist() == [True, False, True]
    assert anomaly_labels(pa.array(["a", "b"]), "k", ["b", "c"]).tolist() == [False, True]
    with pytest.raises(DataError, match=r"values \['2'\]"):
        anomaly_labels(pa.array([0, 1, 2]), "y")
    with pytest.raises(DataError, match="1 null values"):
        anomaly_labels(pa.array([0, None]), "y")
