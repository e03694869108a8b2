"""Fitting the residual whitening: Ledoit-Wolf shrinkage, the eigenvalue floor, and what a
fitted model does with residuals that move together on normal rows."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from sklearn.covariance import ledoit_wolf_shrinkage

from pipeline.contract.artifact import load_artifact
from pipeline.contract.scoring import Scorer
from pipeline.contract.tabular import encode_record_batch
from tests.support.training import run_trainer
from trainer.fit import fit
from trainer.settings import load_trainer_settings
from trainer.whitening import floored_inverse_root, ledoit_wolf

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize(("rows", "units"), [(40, 10), (500, 10), (5000, 4)])
def test_the_shrinkage_is_ledoit_wolfs(rows, units):
    rng = np.random.default_rng(rows)
    r = rng.normal(size=(rows, units)) @ rng.normal(size=(units, units))
    second = r.T @ r / rows
    fourth = float(np.sum((r**2).T @ (r**2)))
    cov, shrinkage = ledoit_wolf(second, fourth, rows)
    assert shrinkage == pytest.approx(ledoit_wolf_shrinkage(r, assume_centered=True), rel=1e-9)
    mu = np.trace(second) / units
    np.testing.assert_allclose(cov, (1 - shrinkage) * second + shrinkage * mu * np.eye(units))


def test_the_inverse_root_whitens_and_raises_small_eigenvalues_to_the_floor():
    vectors, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    cov = vectors @ np.diag([2.0, 0.5, 0.001]) @ vectors.T
    root, floored = floored_inverse_root(cov, 0.03)
    assert floored == 1
    whitened = root @ cov @ root  # symmetric root: the covariance of r W
    np.testing.assert_allclose(
        vectors.T @ whitened @ vectors, np.diag([1.0, 1.0, 0.001 / 0.03]), atol=1e-9
    )


def _twin_pairs(rows: int, seed: int) -> pd.DataFrame:
    """Two pairs of readings, each pair two readings of one quantity. A 1-wide bottleneck
    holds one quantity, so the other pair's residuals move together on normal rows: the
    covariance whitening learns."""
    rng = np.random.default_rng(seed)
    first, second = rng.normal(size=rows), rng.normal(size=rows)
    noise = 0.1 * rng.normal(size=(4, rows))
    return pd.DataFrame(
        {
            "a": first + noise[0],
            "b": first + noise[1],
            "c": second + noise[2],
            "d": second + noise[3],
        }
    )


def _fit_pairs(tmp_path, whiten: bool) -> Scorer:
    data = tmp_path / "pairs.parquet"
    _twin_pairs(6000, seed=1).to_parquet(data)
    store = tmp_path / f"store-{whiten}"
    fit(
        load_trainer_settings(
            data=str(data), model_store=str(store), device="cpu", max_steps=400,
            latent_dim=1, whiten_residuals=whiten,
        )
    )  # fmt: skip
    loaded = load_artifact(store, "default")
    assert loaded.manifest.model.whitened_units == (4 if whiten else 0)
    return Scorer(loaded.manifest.features, loaded.model, torch.device("cpu"))


def _scores(scorer: Scorer, frame: pd.DataFrame) -> np.ndarray:
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    return scorer.score(*encode_record_batch(batch, scorer.spec)).scores


def test_whitening_ranks_a_broken_relation_above_a_large_normal_swing(tmp_path):
    """Rows where both quantities swing far (each pair still agreeing) against rows where
    one reading of each pair moves alone: the residuals of a swing follow the normal rows'
    covariance, those of a broken pair do not, so whitened, the broken pairs score far
    higher against the swing than unwhitened."""
    swing = _twin_pairs(400, seed=2)
    swing[["a", "b", "c", "d"]] = swing[["a", "b", "c", "d"]] + 2.5  # both pairs agree
    broken = _twin_pairs(400, seed=3)
    broken[["a", "c"]] = broken[["a", "c"]] + 1.0  # one reading of each pair moves alone
    ratios = []
    for whiten in (False, True):
        scorer = _fit_pairs(tmp_path, whiten)
        ratios.append(np.median(_scores(scorer, broken)) / np.median(_scores(scorer, swing)))
    assert ratios[1] > 3 * ratios[0], ratios


def test_the_cli_turns_whitening_on_and_refuses_it_where_it_cannot_apply(tmp_path):
    data = tmp_path / "d.parquet"
    frame = _twin_pairs(600, seed=4)
    frame.to_parquet(data)
    common = ("--data", data, "--model-store", tmp_path, "--max-steps", "20", "--device", "cpu")
    on = run_trainer(*common, "--whiten-residuals")
    assert on.returncode == 0, on.stderr
    assert "few select rows to whiten the residuals" in on.stderr  # 60 of the 400 advised
    assert load_artifact(tmp_path, "default").manifest.model.whitened_units == 4
    off = run_trainer(*common, "--no-whiten-residuals", "--name", "off")
    assert off.returncode == 0, off.stderr
    assert load_artifact(tmp_path, "off").manifest.model.whitened_units == 0
    one = tmp_path / "one.parquet"
    frame[["a"]].assign(kind=["x", "y"] * 300).to_parquet(one)
    bad = run_trainer("--data", one, "--model-store", tmp_path, "--whiten-residuals")
    assert bad.returncode == 2
    assert "whiten_residuals needs 2 to 256 continuous units" in bad.stderr
    raw = run_trainer(*common, "--whiten-residuals", "--no-normalize-errors")
    assert raw.returncode == 2
    assert "whiten_residuals needs normalised errors" in raw.stderr
