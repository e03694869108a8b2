"""Numeric columns with a handful of distinct values (scores, ratings, codes) are categories."""

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from pipeline.contract.artifact import load_artifact
from pipeline.contract.features import CategoricalFeature
from pipeline.contract.scoring import Scorer
from pipeline.contract.tabular import encode_record_batch
from pipeline.devstack.sampledata import normal_frame
from trainer.data import ParquetSource
from trainer.fit import fit
from trainer.settings import load_trainer_settings
from trainer.spec import (
    LEVELS_TRACKED,
    SpecOptions,
    SpecStats,
    column_kinds,
    discrete_as_categorical,
    gather_stats,
    infer_spec,
)
from trainer.split import plan_split

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _frame(rows: int = 1500) -> pd.DataFrame:
    frame = normal_frame(rows, seed=4)
    rng = np.random.default_rng(4)
    frame["grade"] = rng.integers(1, 5, rows).astype(np.float64)  # 4 levels, stored as floats
    frame["floors"] = rng.integers(0, 11, rows)  # 11 levels: above the default 10
    frame["firmware"] = 3.0  # one level: a constant, not a category
    return frame


def _kinds(path, **opts) -> dict[str, str]:
    spec, _ = infer_spec(ParquetSource(str(path)), SpecOptions(id_column="machine_id", **opts))
    return {f.name: f.kind for f in spec.features}


def test_with_max_levels_few_levels_become_categories_and_the_rest_stay_numbers(tmp_path):
    _frame().to_parquet(tmp_path / "d.parquet", index=False)
    assert _kinds(tmp_path / "d.parquet")["grade"] == "numeric"  # off by default
    kinds = _kinds(tmp_path / "d.parquet", max_levels=10)
    assert kinds["grade"] == "categorical"
    assert kinds["floors"] == kinds["firmware"] == kinds["temperature"] == "numeric"
    assert _kinds(tmp_path / "d.parquet", max_levels=11)["floors"] == "categorical"
    forced = _kinds(tmp_path / "d.parquet", max_levels=10, numeric_columns=("grade",))
    assert forced["grade"] == "numeric"


def test_levels_are_counted_only_when_asked_and_reading_them_leaves_the_stats_alone(tmp_path):
    _frame().to_parquet(tmp_path / "d.parquet", index=False)
    source = ParquetSource(str(tmp_path / "d.parquet"))
    opts = SpecOptions(id_column="machine_id", max_levels=10)
    kinds = column_kinds(source, opts)
    assert gather_stats(source, kinds, plan_split(source, opts.split)).levels == {}
    stats = gather_stats(source, kinds, plan_split(source, opts.split), opts.max_levels)
    assert set(stats.levels["grade"] or ()) == {"1", "2", "3", "4"}
    new_kinds, new_stats = discrete_as_categorical(kinds, stats, opts)
    assert new_kinds["grade"] == "categorical" and kinds["grade"] == "numeric"
    assert "grade" in new_stats.counts and "grade" not in stats.counts


def test_levels_merge_across_shards_and_give_up_past_the_cap():
    a, b = SpecStats(), SpecStats()
    a.levels["x"] = Counter({"1": 3, "2": 1})
    b.levels["x"] = Counter({"2": 2, "5": 1})
    a.merge(b)
    assert a.levels == {"x": Counter({"1": 3, "2": 3, "5": 1})}
    c = SpecStats()
    c.levels["x"] = Counter({str(i): 1 for i in range(LEVELS_TRACKED + 1)})
    a.merge(c)
    assert a.levels == {"x": None}  # too many to be levels, for good
    a.merge(b)
    assert a.levels == {"x": None}


def test_a_fitted_level_column_scores_ints_like_floats_and_an_unseen_level_higher(tmp_path):
    """JSON sends 3 where the Parquet held 3.0: both are category "3". An unseen level scores
    higher than the seen ones, but far less than the same value as a number (why it is off
    by default)."""
    _frame().to_parquet(tmp_path / "d.parquet", index=False)
    medians = {}
    for max_levels in (10, 0):
        store = tmp_path / f"store{max_levels}"
        settings = load_trainer_settings(
            data=str(tmp_path / "d.parquet"),
            model_store=str(store),
            id_column="machine_id",
            device="cpu",
            max_levels=max_levels,
        )
        fit(settings)
        loaded = load_artifact(store, "default")
        spec = loaded.manifest.features
        grade = next(f for f in spec.features if f.name == "grade")
        assert grade.kind == ("categorical" if max_levels else "numeric")
        if isinstance(grade, CategoricalFeature):
            assert sorted(grade.categories) == ["1", "2", "3", "4"]
        scorer = Scorer(spec, loaded.model, torch.device("cpu"))

        def scores(frame: pd.DataFrame) -> np.ndarray:
            batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
            return scorer.score(*encode_record_batch(batch, spec)).scores  # noqa: B023

        test = _frame(200)
        np.testing.assert_array_equal(
            scores(test), scores(test.assign(grade=test["grade"].astype(np.int64)))
        )
        medians[max_levels] = np.median(scores(test.assign(grade=9.0))) / np.median(scores(test))
    assert medians[10] > 1.5
    assert medians[0] > 2 * medians[10]
