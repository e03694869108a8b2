"""The honest threshold: conformal rank, its promised false-alarm rate, and fit's use of it."""

import json
import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats

from pipeline.contract.artifact import load_artifact
from pipeline.contract.exceptions import ConfigError
from pipeline.contract.scoring import Scorer
from pipeline.contract.tabular import encode_record_batch
from pipeline.devstack.sampledata import anomaly_frame, normal_frame
from tests.support.training import run_trainer
from trainer.calibration import (
    beta_quantile,
    conformal_rank,
    conformal_threshold,
    rate_interval,
    rows_needed,
)
from trainer.evaluate import EvaluationRequest, evaluate
from trainer.fit import fit
from trainer.settings import load_trainer_settings
from trainer.threshold import UNIT_SCALE_FLOOR, floored_scale

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_conformal_rank_and_the_rows_a_quantile_needs():
    assert conformal_rank(99, 0.99) == 99
    assert conformal_rank(100, 0.99) == 100  # ceil(101 * 0.99) = 100
    assert conformal_rank(1000, 0.99) == 991
    assert rows_needed(0.99) == 99
    assert rows_needed(0.999) == 999
    assert rows_needed(0.95) == 19


@pytest.mark.parametrize(("a", "b"), [(1, 99), (10, 991), (51, 4950), (3, 5), (200, 19801)])
def test_beta_quantiles_match_scipy(a, b):
    for p in (0.05, 0.5, 0.95):
        assert beta_quantile(p, a, b) == pytest.approx(stats.beta.ppf(p, a, b), rel=1e-6)


def test_clopper_pearson_interval_matches_scipy():
    for events, trials in ((0, 50), (5, 100), (100, 100), (37, 5000)):
        ci = stats.binomtest(events, trials).proportion_ci(0.90, "exact")
        assert rate_interval(events, trials) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_threshold_is_the_conformal_order_statistic_with_its_promise():
    scores = np.random.default_rng(0).permutation(np.arange(1, 1001, dtype=np.float32))
    t = conformal_threshold(scores, 0.99)
    assert (t.rank, t.value, t.enough_rows) == (991, 991.0, True)
    assert t.expected_false_alarm_rate == pytest.approx(10 / 1001)
    low, high = t.false_alarm_rate_interval
    assert low == pytest.approx(stats.beta.ppf(0.05, 10, 991), rel=1e-6)
    assert high == pytest.approx(stats.beta.ppf(0.95, 10, 991), rel=1e-6)


def test_too_few_rows_warn_with_the_rows_needed_and_use_the_largest_score(caplog):
    scores = np.arange(50, dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="trainer.calibration"):
        t = conformal_threshold(scores, 0.99)
    assert (t.value, t.rank, t.enough_rows) == (49.0, 50, False)
    (record,) = [r for r in caplog.records if r.msg == "too few calibration rows for the quantile"]
    assert record.rows_needed == 99
    assert "at least 99 calibration rows" in record.detail


def _fit(tmp_path, data, **overrides):
    return fit(
        load_trainer_settings(
            data=str(data),
            model_store=str(tmp_path / "store"),
            id_column="machine_id",
            device="cpu",
            epochs=15,
            **overrides,
        )
    )


def _scores(store, frame):
    loaded = load_artifact(store, "default")
    spec = loaded.manifest.features
    cont, cat = encode_record_batch(pa.RecordBatch.from_pandas(frame, preserve_index=False), spec)
    return Scorer(spec, loaded.model, torch.device("cpu")).score(cont, cat).scores


def test_false_alarms_on_fresh_normal_rows_match_the_promise(tmp_path):
    """Threshold from rows the model was neither fitted on nor selected with: on 20,000
    fresh normal rows the false-alarm rate is what the manifest promised."""
    normal_frame(5000, seed=21).to_parquet(tmp_path / "train.parquet")
    manifest = _fit(tmp_path, tmp_path / "train.parquet", target_fpr=0.02)
    t = manifest.threshold
    assert (t.quantile, t.target_fpr) == (pytest.approx(0.98), 0.02)
    assert 900 < t.rows < 1100  # 20% of 5,000
    assert t.rows == manifest.training.rows_calibration
    assert t.expected_false_alarm_rate == pytest.approx(0.02, abs=0.001)
    fresh = _scores(tmp_path / "store", normal_frame(20_000, seed=99))
    rate = float((fresh > t.value).mean())
    low, high = t.false_alarm_rate_interval
    assert low * 0.8 < rate < high * 1.2, (rate, t)


def test_quantile_and_target_fpr_are_exclusive():
    with pytest.raises(ConfigError, match="quantile or target_fpr"):
        load_trainer_settings(quantile=0.9, target_fpr=0.05)


def test_a_constant_column_is_kept_with_a_warning_and_a_change_scores_high(tmp_path, caplog):
    frame = normal_frame(1500, seed=5)
    frame["firmware"] = 3.0
    frame.to_parquet(tmp_path / "d.parquet")
    with caplog.at_level(logging.WARNING, logger="trainer.spec"):
        manifest = _fit(tmp_path, tmp_path / "d.parquet")
    assert manifest.training.constant_columns == ["firmware"]
    assert any(r.msg == "constant column kept" for r in caplog.records)
    moved = normal_frame(200, seed=6)
    moved["firmware"] = 3.0
    moved.loc[100:, "firmware"] = 3.1
    scores = _scores(tmp_path / "store", moved)
    assert (scores[:100] > manifest.threshold.value).mean() < 0.1
    assert (scores[100:] > manifest.threshold.value).all()


def test_unit_scales_only_shrink_the_noisy_units():
    """Dividing by each unit's own mean error made a unit reconstructed almost exactly (a
    rare category, a column the others predict) count hundreds of times more than the rest.
    Units at or below the floor (a multiple of the median unit's error) weigh the same."""
    mean = np.array([1e-6, 0.01, 0.5, 1.0, 1.0, 2.0, 10.0])
    scale = floored_scale(mean)
    floor = UNIT_SCALE_FLOOR * 1.0  # the median
    assert UNIT_SCALE_FLOOR > 1
    assert scale.tolist() == [floor] * 6 + [10.0]
    assert floored_scale(np.zeros(3)).min() > 0  # never divides by nothing


def test_a_fitted_model_weighs_its_well_reconstructed_units_alike(tmp_path):
    normal_frame(1500, seed=7).to_parquet(tmp_path / "d.parquet")
    _fit(tmp_path, tmp_path / "d.parquet")
    scale = load_artifact(tmp_path / "store", "default").model.unit_scale.numpy()
    assert np.isclose(scale, scale.min()).sum() >= len(scale) / 2


def test_split_by_time_from_the_command_line_and_evaluate_reports_the_promise(tmp_path):
    frame = normal_frame(3000, seed=8)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    frame["ts"] = [start + timedelta(minutes=i) for i in range(3000)]
    frame = frame.sample(frac=1.0, random_state=0)  # files need not be in time order
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    run = run_trainer(
        "--data", tmp_path / "d.parquet", "--model-store", tmp_path / "store",
        "--id-column", "machine_id", "--split-by", "ts", "--epochs", "3", "--device", "cpu",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    manifest = load_artifact(tmp_path / "store", "default").manifest
    split = manifest.training.split
    assert split["kind"] == "time" and split["by"] == "ts"
    assert "ts" not in manifest.features.column_names
    unit = pq.read_schema(tmp_path / "d.parquet").field("ts").type.unit  # cuts are in its unit
    cut = pd.Timestamp(int(split["time_cuts"][1]), unit=unit, tz="UTC")
    assert cut == start + timedelta(minutes=2400)  # the latest 20% calibrate
    assert manifest.threshold.rows == manifest.training.rows_calibration == 600

    test = pd.concat([normal_frame(400, seed=9), anomaly_frame(20)], ignore_index=True)
    test["is_anomaly"] = test["machine_id"].str.startswith("x-")
    test.to_parquet(tmp_path / "test.parquet", index=False)
    result = evaluate(
        EvaluationRequest(
            data=str(tmp_path / "test.parquet"),
            model_store=str(tmp_path / "store"),
            name="default",
            label_column="is_anomaly",
            device="cpu",
        )
    )
    summary = json.loads(json.dumps(result.summary()))
    assert summary["expected_false_alarm_rate"] == pytest.approx(
        manifest.threshold.expected_false_alarm_rate, abs=1e-6
    )
    low, high = summary["expected_false_alarm_rate_90"]
    assert low < summary["expected_false_alarm_rate"] < high
    fp = summary["confusion"]["fp"]
    assert summary["false_positive_rate_90"] == pytest.approx(
        list(rate_interval(fp, 400)), abs=1e-6
    )
