"""Drift maths: bins from stored quantiles, PSI, the decayed window and its metrics."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from pipeline.contract.artifact import Manifest, WeightsInfo
from pipeline.worker.drift import DriftMonitor, ReferenceBins, psi
from pipeline.worker.metrics import PipelineMetrics
from tests.support.factories import manifest_fields, numeric_spec, tiny_model
from trainer.threshold import QUANTILE_LEVELS

LEVELS = QUANTILE_LEVELS  # the levels the trainer stores


def reference(seed: int = 0, n: int = 200_000, q: float = 0.99) -> tuple[np.ndarray, Manifest]:
    """Validation-like scores (lognormal, as reconstruction errors are) and a manifest."""
    scores = np.random.default_rng(seed).lognormal(-2.0, 0.6, n)
    quantiles = {f"{lv:g}": float(np.quantile(scores, lv)) for lv in LEVELS}
    spec = numeric_spec()
    fields = manifest_fields(spec, tiny_model(spec), threshold=float(np.quantile(scores, q)))
    fields["score_quantiles"] = quantiles
    fields["threshold"] = fields["threshold"].model_copy(update={"quantile": q})
    manifest = Manifest(
        **fields,
        version="v1",
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        weights=WeightsInfo(sha256="0" * 64),
    )
    return scores, manifest


def sample(metrics: PipelineMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, f"{name} not exported"
    return value


def live(seed: int, n: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(-2.0 + shift, 0.6 * scale, n)


def test_bins_carry_the_mass_between_adjacent_levels():
    _, manifest = reference()
    bins = ReferenceBins.from_manifest(manifest)
    assert bins.n_bins == 23  # 22 interior levels -> 22 cuts -> 23 bins
    assert bins.expected.sum() == pytest.approx(1.0)
    assert bins.expected[0] == pytest.approx(0.05)  # below the 5% quantile
    assert bins.expected[-4:] == pytest.approx([0.04, 0.005, 0.004, 0.001])
    assert bins.expected_over_threshold == pytest.approx(0.01)


def test_a_score_on_a_cut_goes_to_the_upper_bin_and_tails_are_open():
    bins = ReferenceBins.from_quantiles({"0": 0.0, "0.5": 1.0, "1": 2.0}, 1.0, 0.5)
    assert bins.cuts.tolist() == [1.0]
    assert bins.counts([-5.0, 0.5, 1.0, 99.0]).tolist() == [2.0, 2.0]


def test_tied_quantiles_collapse_into_one_cut_keeping_the_total_mass():
    bins = ReferenceBins.from_quantiles({"0.25": 0.0, "0.5": 0.0, "0.75": 3.0}, 3.0, 0.75)
    assert bins.cuts.tolist() == [0.0, 3.0]
    assert bins.expected.tolist() == pytest.approx([0.25, 0.5, 0.25])


def test_validation_distribution_is_counted_in_the_expected_proportions():
    scores, manifest = reference()
    bins = ReferenceBins.from_manifest(manifest)
    observed = bins.counts(scores) / len(scores)
    assert observed == pytest.approx(bins.expected, abs=2e-4)


def test_psi_of_identical_distributions_is_about_zero():
    _, manifest = reference()
    bins = ReferenceBins.from_manifest(manifest)
    assert psi(bins.expected * 1e6, bins.expected) == pytest.approx(0.0, abs=1e-6)
    sample = bins.counts(live(seed=7, n=50_000))  # fresh draw from the same distribution
    assert psi(sample, bins.expected) < 0.01


def test_psi_of_a_shifted_distribution_is_over_the_alert_threshold():
    _, manifest = reference()
    bins = ReferenceBins.from_manifest(manifest)
    small = psi(bins.counts(live(seed=8, n=50_000, shift=0.1)), bins.expected)
    large = psi(bins.counts(live(seed=8, n=50_000, shift=0.5)), bins.expected)
    wider = psi(bins.counts(live(seed=8, n=50_000, scale=1.5)), bins.expected)
    assert 0.01 < small < 0.1 < 0.2 < large
    assert wider > 0.2
    assert large > small


def test_psi_stays_finite_when_a_bin_is_empty():
    value = psi([0, 10, 0], [0.2, 0.6, 0.2])
    assert math.isfinite(value)
    assert value > 0.5
    with pytest.raises(ValueError, match="one shape"):
        psi([1, 2], [0.5, 0.25, 0.25])


def test_monitor_exports_psi_and_calibration_and_resets_on_a_new_model():
    _, manifest = reference()
    metrics = PipelineMetrics()
    monitor = DriftMonitor(metrics, half_life_records=5_000)
    monitor.use_model(manifest)
    assert sample(metrics, "pipeline_drift_expected_over_threshold_ratio") == pytest.approx(0.01)
    assert sample(metrics, "pipeline_model_created_timestamp_seconds") == pytest.approx(
        manifest.created_at.timestamp()
    )
    assert math.isnan(sample(metrics, "pipeline_drift_psi"))

    for i in range(20):  # 20 batches of normal traffic
        monitor.observe(manifest, live(seed=100 + i, n=1_000))
    assert sample(metrics, "pipeline_drift_psi") < 0.02
    assert sample(metrics, "pipeline_drift_over_threshold_ratio") == pytest.approx(0.01, abs=0.004)
    window = sample(metrics, "pipeline_drift_window_records")
    # 20k records with a 5k half-life: sum of 1000 * 0.5^(k/5) for k = 0..19
    assert window == pytest.approx(sum(1000 * 0.5 ** (k / 5) for k in range(20)))

    for i in range(20):  # the stream drifts upward; the decayed window follows it
        monitor.observe(manifest, live(seed=200 + i, n=1_000, shift=0.7))
    assert sample(metrics, "pipeline_drift_psi") > 0.5
    assert sample(metrics, "pipeline_drift_over_threshold_ratio") > 0.1

    newer = manifest.model_copy(update={"version": "v2"})
    monitor.observe(newer, live(seed=300, n=500))
    assert monitor.version == "v2"
    assert sample(metrics, "pipeline_drift_window_records") == pytest.approx(500)


def test_monitor_without_quantiles_exports_only_the_expected_rate():
    _, manifest = reference()
    bare = manifest.model_copy(update={"score_quantiles": {}})
    metrics = PipelineMetrics()
    monitor = DriftMonitor(metrics)
    monitor.observe(bare, [0.1, 0.2])
    assert sample(metrics, "pipeline_drift_window_records") == 0
    assert sample(metrics, "pipeline_drift_expected_over_threshold_ratio") == pytest.approx(0.01)
