"""Fit names the numeric columns that a time split shows moving out of their range."""

import json
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.contract.artifact import load_artifact
from pipeline.contract.exceptions import DataError
from pipeline.devstack.sampledata import normal_frame
from tests.support.training import run_trainer
from trainer.data import ParquetSource
from trainer.drift import drifting_columns
from trainer.fit import fit
from trainer.settings import load_trainer_settings
from trainer.spec import SpecOptions, SpecStats, _Moments, column_kinds, gather_stats
from trainer.split import SplitOptions, plan_split

pytestmark = pytest.mark.usefixtures("torch_one_thread")
ROWS = 2000


def _frame_with_time() -> pd.DataFrame:
    """Sample sensor rows a minute apart, with a counter that only goes up (``month``) and a
    cycle that repeats inside the training period (``phase``)."""
    frame = normal_frame(ROWS, seed=3)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    frame["ts"] = [start + timedelta(minutes=i) for i in range(ROWS)]
    frame["month"] = (np.arange(ROWS) // 200 + 1).astype(np.int64)
    frame["phase"] = np.sin(np.arange(ROWS) * 2 * np.pi / 300)
    frame["build"] = [f"b{i // 100}" for i in range(ROWS)]  # a new build every 100 minutes
    frame["shift"] = [("day", "night")[(i // 60) % 2] for i in range(ROWS)]  # repeats
    return frame.sample(frac=1.0, random_state=1)  # files need not be in time order


def _stats(path, by: str | None) -> tuple[dict[str, str], SpecStats]:
    source = ParquetSource(str(path))
    opts = SpecOptions(id_column="machine_id", split=SplitOptions(by=by))
    kinds = column_kinds(source, opts)
    return kinds, gather_stats(source, kinds, plan_split(source, opts.split))


def test_a_counter_and_new_builds_are_named_and_cycles_are_not(tmp_path, caplog):
    _frame_with_time().to_parquet(tmp_path / "d.parquet", index=False)
    kinds, stats = _stats(tmp_path / "d.parquet", "ts")
    assert stats.moments["month"].hi[0] == 7  # the fit rows are the earliest 70%
    assert stats.latest["month"].mean[0] == pytest.approx(9.5)  # the latest 20%: 9 and 10
    with caplog.at_level(logging.WARNING, logger="trainer.drift"):
        assert drifting_columns(kinds, stats, "ts", dropped=True) == ["month", "build"]
    (record, _) = [r for r in caplog.records if r.msg == "column drifts with time"]
    assert record.column == "month"
    assert "--no-drop-drifting-columns" in record.detail
    assert "'ts'" in record.detail and "Left out of the features" in record.detail


def test_a_categorical_column_drifts_when_most_latest_rows_are_new_categories(caplog):
    stats = SpecStats()
    stats.counts["build"] = Counter({"b1": 50, "b2": 50})
    kinds = {"build": "categorical"}
    stats.latest_counts["build"] = Counter({"b2": 50, "b3": 50})  # half new: not yet
    assert drifting_columns(kinds, stats, "ts", dropped=True) == []
    stats.latest_counts["build"] = Counter({"b2": 49, "b3": 51})
    with caplog.at_level(logging.WARNING, logger="trainer.drift"):
        assert drifting_columns(kinds, stats, "ts", dropped=True) == ["build"]
    assert "51% in categories the fit rows never had" in caplog.records[0].detail


def test_without_a_time_split_nothing_is_gathered_or_named(tmp_path):
    _frame_with_time().drop(columns=["ts"]).to_parquet(tmp_path / "d.parquet", index=False)
    kinds, stats = _stats(tmp_path / "d.parquet", None)
    assert stats.latest == {} and stats.latest_counts == {}
    assert drifting_columns(kinds, stats, "", dropped=True) == []


def test_ranges_merge_across_shards_like_the_moments():
    a, b = _Moments.empty(2), _Moments.empty(2)
    a.add(np.array([[1.0, np.nan], [3.0, 5.0]]))
    b.add(np.array([[-2.0, 7.0]]))
    a.merge(b)
    assert a.lo.tolist() == [-2.0, 5.0] and a.hi.tolist() == [3.0, 7.0]
    assert a.n.tolist() == [3.0, 2.0]


def _fit_settings(tmp_path, **overrides):
    overrides.setdefault("id_column", "machine_id")
    return load_trainer_settings(
        data=str(tmp_path / "d.parquet"),
        model_store=str(tmp_path / "store"),
        split_by="ts",
        device="cpu",
        epochs=1,
        **overrides,
    )


def test_fit_leaves_a_drifting_column_out_and_the_manifest_says_so(tmp_path):
    _frame_with_time().to_parquet(tmp_path / "d.parquet", index=False)
    fit(_fit_settings(tmp_path))
    manifest = load_artifact(tmp_path / "store", "default").manifest
    assert manifest.training.drifting_columns == ["month", "build"]
    assert not {"month", "build"} & set(manifest.features.column_names)
    assert {"month", "build"} <= set(manifest.features.ignored_columns)
    assert {"phase", "shift"} <= set(manifest.features.column_names)


def test_a_drifting_number_read_as_levels_is_still_left_out(tmp_path):
    """With --max-levels the month (7 levels in the fit rows) is read as categorical; the
    later months would all be "unknown", so it is still a drifting column."""
    _frame_with_time().to_parquet(tmp_path / "d.parquet", index=False)
    fit(_fit_settings(tmp_path, max_levels=10))
    manifest = load_artifact(tmp_path / "store", "default").manifest
    assert manifest.training.drifting_columns == ["month", "build"]
    assert "month" not in manifest.features.column_names


def test_no_drop_drifting_columns_keeps_it_with_the_warning(tmp_path):
    _frame_with_time().to_parquet(tmp_path / "d.parquet", index=False)
    run = run_trainer(
        "--data", tmp_path / "d.parquet", "--model-store", tmp_path / "store",
        "--id-column", "machine_id", "--split-by", "ts", "--epochs", "1", "--device", "cpu",
        "--no-drop-drifting-columns", "--progress", "log",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    manifest = load_artifact(tmp_path / "store", "default").manifest
    assert manifest.training.drifting_columns == ["month", "build"]
    assert "month" in manifest.features.column_names
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    (warning, _) = [line for line in lines if line.get("msg") == "column drifts with time"]
    assert warning["column"] == "month" and warning["dropped"] is False
    assert "Kept" in warning["detail"]


def test_when_every_feature_drifts_fit_refuses_and_names_them(tmp_path):
    frame = _frame_with_time()[["ts", "month", "build"]]
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    with pytest.raises(DataError, match=r"every feature column drifts .*\(month, build\)"):
        fit(_fit_settings(tmp_path, id_column=None))  # ts splits, month is all there is
