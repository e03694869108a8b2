"""The benchmark scripts run end to end on a tiny slice, so they cannot rot (no timing here)."""

import pytest

from bench import detection_quality, training_speed
from bench.data import (
    DATASETS,
    FRESH,
    GROUP_OF,
    TUNING,
    UNTUNED,
    WEATHER_SWAPPED,
    _rdataset,
    flights,
    split,
    weather,
)

# one torch thread, restored afterwards: entity_training.main sets the process's thread count
# (its --threads, default 2), which before this stayed set for every later test
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_datasets_load_with_their_documented_shapes():
    shapes = {name: {(t.x.shape, t.layout) for t in load()} for name, load in DATASETS.items()}
    assert shapes == {
        "breast_cancer": {((569, 30), "columns")},
        "digits": {((1797, 64), "vector")},
        "shuttle": {((49097, 9), "frame")},
        "credit": {((4039, 25), "frame")},  # 12 columns, categoricals one-hot for baselines
        "diamonds": {((53940, 22), "frame")},
        "wine": {((178, 13), "columns")},
        "weather": {((23007, 12), "frame")},
        "lending_club": {((9857, 119), "frame")},
        "biopsy": {((683, 9), "frame")},
        "hmda": {((2380, 13), "frame")},
        "pima": {((532, 7), "frame")},
        "creditcard": {((1319, 11), "frame")},
        "mnist": {((5000, 784), "vector")},
        "flights": {((327346, 119), "frame")},
        "segment": {((2310, 18), "frame")},
        "phishing": {((1250, 9), "frame")},
        "attrition": {((1470, 70), "frame")},
        "taxi": {((10000, 21), "frame")},
        "isl_default": {((10000, 3), "frame")},
        "caravan": {((5822, 85), "frame")},
        "spam7": {((4601, 6), "frame")},
        "olive": {((572, 8), "frame")},
        "nasscds": {((26216, 21), "frame")},
    }
    assert set(TUNING).isdisjoint(UNTUNED) and len(TUNING) + len(UNTUNED) >= 12
    assert not set(FRESH) & (set(TUNING) | set(UNTUNED))
    assert set(GROUP_OF) == set(DATASETS)
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
    for method in ("ae", "iforest", "knn", "ecod", "pyod_ae", "tutorial_ae"):
        assert f"| digits | {method} |" in out
    assert "| ae | " in out and "tuning: ae mean ROC-AUC" in out
    assert "| digits | tuning |" in out  # the false-alarm table


def test_a_time_set_trains_on_the_earliest_normal_rows_and_tests_the_later_period():
    (task,) = flights()
    data = split(task, seed=0)
    assert task.frame is not None and task.time_column == "time_hour"
    times = task.frame["time_hour"].to_numpy()
    assert data.train_rows is not None and data.test_rows is not None
    assert times[data.train_rows].max() <= times[data.test_rows].min()
    assert (~data.y_test).sum() == 20_000  # the documented cap on test normals


def test_weather_anomalies_are_late_rows_with_two_readings_of_another_late_row():
    (task,) = weather()
    assert task.frame is not None
    original = _rdataset("nycflights13", "weather").dropna(subset=list(task.columns))
    original = original.reset_index(drop=True)
    swapped = list(WEATHER_SWAPPED)
    changed = (task.frame[swapped] != original[swapped]).sum(axis=1).to_numpy()
    assert changed[~task.anomaly].max() == 0  # normal rows are the real readings
    assert changed[task.anomaly].max() == 2 and (changed[task.anomaly] >= 1).mean() > 0.95
    late = task.frame["time_hour"].rank(pct=True).to_numpy() > 0.7
    assert late[task.anomaly].all()
    assert 0.035 < task.anomaly.sum() / late.sum() < 0.045
    for column in swapped:  # every swapped value is one the column really takes late
        assert set(task.frame.loc[task.anomaly, column]) <= set(original.loc[late, column])


def test_training_speed_runs_on_a_tiny_slice(capsys):
    training_speed.main(["--workloads", "sensors", "--runs", "1", "--rows", "300", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "| sensors |" in out and "x (" in out


def test_entity_benches_run_on_a_tiny_slice(capsys, tmp_path):
    from bench import entity_quality, entity_training

    quick = ["--set", "epochs=2", "--set", "entity_epochs=2"]
    tiny = ["--entities", "3", "--rows-per-entity", "600", "--loop-sample", "1"]
    entity_training.main([*tiny, "--threads", "1", *quick])
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
