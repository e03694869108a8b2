"""The benchmark scripts run end to end on a tiny slice, so they cannot rot (no timing here)."""

from bench import detection_quality, training_speed
from bench.data import DATASETS, split


def test_datasets_load_with_their_documented_shapes():
    shapes = {name: {(t.x.shape, t.layout) for t in load()} for name, load in DATASETS.items()}
    assert shapes == {
        "breast_cancer": {((569, 30), "columns")},
        "digits": {((1797, 64), "vector")},
        "mnist": {((5000, 784), "vector")},
    }
    task = DATASETS["digits"]()[3]
    data = split(task, seed=0)
    normal_rows = {row.tobytes() for row in task.x[~task.anomaly]}
    assert all(row.tobytes() in normal_rows for row in data.x_train)  # trains on normal only
    assert data.y_test.sum() == task.anomaly.sum()  # every anomaly is tested
    assert len(data.x_train) + (~data.y_test).sum() == (~task.anomaly).sum()


def test_detection_quality_runs_on_a_tiny_slice(capsys):
    detection_quality.main(
        [
            "--datasets",
            "breast_cancer,digits",
            "--tasks",
            "1",
            "--seeds",
            "1",
            "--max-rows",
            "80",
            "--set",
            "epochs=2",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    for method in ("ae", "vae", "dae", "iforest", "pyod_ae"):
        assert f"| digits | {method} |" in out
    assert "ae - pyod_ae: mean ROC-AUC" in out


def test_training_speed_runs_on_a_tiny_slice(capsys):
    training_speed.main(["--workloads", "sensors", "--runs", "1", "--rows", "300", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "| sensors |" in out and "x (" in out


def test_entity_benches_run_on_a_tiny_slice(capsys, tmp_path):
    from bench import entity_quality, entity_training

    quick = ["--set", "epochs=2", "--set", "entity_epochs=2"]
    entity_training.main(
        ["--entities", "3", "--rows-per-entity", "600", "--loop-sample", "1", *quick]
    )
    assert "batched (one stacked model)" in capsys.readouterr().out
    entity_quality.main(
        [
            "--datasets",
            "fleet-20",
            "--seeds",
            "1",
            "--rows",
            "600",
            "--out",
            str(tmp_path / "q.json"),
            *quick,
        ]
    )
    out = capsys.readouterr().out
    for method in entity_quality.METHODS:
        assert f"| fleet-20 | {method} |" in out
