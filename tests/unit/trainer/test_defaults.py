"""Defaults that follow the data: the step budget, the ensemble and error normalisation."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.contract.artifact import load_artifact
from pipeline.contract.scoring import ReconstructionScorer, Scorer
from pipeline.contract.tabular import encode_record_batch
from pipeline.devstack.sampledata import normal_frame
from tests.support.training import part_mask, run_trainer
from trainer.budget import MAX_PASSES, auto_batch, plan_budget
from trainer.data import ParquetSource
from trainer.fit import fit
from trainer.settings import load_trainer_settings
from trainer.threshold import floored_scale

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize(
    ("rows", "batch"), [(100, 32), (350, 32), (4_000, 64), (10_000, 128), (500_000, 256)]
)
def test_batch_size_follows_the_rows(rows, batch):
    assert auto_batch(rows) == batch


def test_the_budget_is_in_steps_capped_in_passes_and_explicit_settings_win():
    s = load_trainer_settings()
    small = plan_budget(250, s)  # 8 steps an epoch: 3,000 steps would be 375 passes
    assert (small.batch_size, small.epochs, small.patience) == (32, MAX_PASSES, 5)
    large = plan_budget(200_000, s)  # 782 steps an epoch at batch 256
    assert (large.batch_size, large.epochs) == (256, 4)
    assert plan_budget(200_000, s, world=2).epochs == 8  # each rank takes half the rows
    given = plan_budget(250, load_trainer_settings(epochs=7, batch_size=10, patience=2))
    assert (given.batch_size, given.epochs, given.patience) == (10, 7, 2)


def test_default_fit_records_its_choices_and_scores_with_normalised_ensemble_errors(tmp_path):
    data = tmp_path / "d.parquet"
    normal_frame(2000, seed=3).to_parquet(data)
    manifest = fit(
        load_trainer_settings(
            data=str(data), model_store=str(tmp_path), id_column="machine_id", device="cpu",
            max_steps=200,
        )
    )  # fmt: skip
    model_cfg, training = manifest.model, manifest.training
    assert model_cfg.members == 4
    assert (model_cfg.diversity, model_cfg.spread_weight) == (0.75, 0.0)
    assert model_cfg.error_units == manifest.features.n_units
    assert training.budget == {"batch_size": 32, "epochs": 5, "patience": 5, "max_steps": 200}
    assert training.learning_rate == 1e-3

    # unit_scale is each unit's mean raw error over the select rows, computed here apart,
    # floored at a multiple of the median unit's
    loaded = load_artifact(tmp_path, "default")
    spec = loaded.manifest.features
    source = ParquetSource(str(data))
    batch = next(source.batches(spec.column_names))
    cont, cat = encode_record_batch(batch.table, spec)
    select = part_mask(batch.positions, source.total_rows, "select")
    raw = ReconstructionScorer(spec, loaded.model).eval()
    with torch.inference_mode():
        c, k = torch.from_numpy(cont), torch.from_numpy(cat)
        x = raw.model_input(c, k)
        # the score's errors: the members' mean reconstruction's, without their spread
        errors = raw.unit_errors(x, loaded.model(x), k, spread_weight=0.0).numpy()
    np.testing.assert_allclose(
        loaded.model.unit_scale.numpy(), floored_scale(errors[select].mean(axis=0)), rtol=1e-4
    )
    # the worker's scorer divides by it: score = mean over units of error / scale
    scores = Scorer(spec, loaded.model, torch.device("cpu")).score(cont, cat).scores
    expected = (errors / loaded.model.unit_scale.numpy()).mean(axis=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-4)


def test_without_normalisation_or_ensemble_the_model_is_one_plain_autoencoder(tmp_path):
    data = tmp_path / "d.parquet"
    pa_table = pa.Table.from_pandas(normal_frame(600, seed=4), preserve_index=False)
    pq.write_table(pa_table, data)
    manifest = fit(
        load_trainer_settings(
            data=str(data), model_store=str(tmp_path), id_column="machine_id", device="cpu",
            members=1, normalize_errors=False, max_steps=50,
        )
    )  # fmt: skip
    assert (manifest.model.members, manifest.model.error_units) == (1, 0)
    assert (manifest.model.diversity, manifest.model.spread_weight) == (0.0, 1.0)
    assert "unit_scale" not in load_artifact(tmp_path, "default").model.state_dict()


def test_an_ensemble_on_a_few_hundred_rows_keeps_independent_members(tmp_path):
    data = tmp_path / "d.parquet"
    normal_frame(600, seed=4).to_parquet(data)  # ~420 fit rows
    manifest = fit(
        load_trainer_settings(
            data=str(data), model_store=str(tmp_path), id_column="machine_id", device="cpu",
            max_steps=50,
        )
    )  # fmt: skip
    assert manifest.model.members == 4
    assert (manifest.model.diversity, manifest.model.spread_weight) == (0.0, 1.0)
    explicit = fit(
        load_trainer_settings(
            data=str(data), model_store=str(tmp_path / "x"), id_column="machine_id",
            device="cpu", max_steps=50, diversity=0.5, spread_weight=0.25,
        )
    )  # fmt: skip
    assert (explicit.model.diversity, explicit.model.spread_weight) == (0.5, 0.25)


def _member_spread(tmp_path, diversity: float) -> float:
    """Mean variance of the members' reconstructions of records unlike the training rows."""
    data = tmp_path / "d.parquet"
    normal_frame(2000, seed=3).to_parquet(data)
    store = tmp_path / f"store{diversity}"
    fit(
        load_trainer_settings(
            data=str(data), model_store=str(store), id_column="machine_id", device="cpu",
            max_steps=300, diversity=diversity,
        )
    )  # fmt: skip
    loaded = load_artifact(store, "default")
    spec = loaded.manifest.features
    far = normal_frame(300, seed=9)
    far["temperature"] = far["temperature"] * 3  # off the rows the members were fitted on
    cont, cat = encode_record_batch(pa.RecordBatch.from_pandas(far, preserve_index=False), spec)
    scorer = ReconstructionScorer(spec, loaded.model).eval()
    with torch.inference_mode():
        x = scorer.model_input(torch.from_numpy(cont), torch.from_numpy(cat))
        return float(loaded.model(x).var(dim=0).mean())


def test_diversity_pushes_the_members_apart_off_the_training_rows(tmp_path):
    """Negative correlation learning: with diversity the members' loss rewards disagreeing
    where the rows leave them free, so off those rows they disagree more than independently
    trained members do (the spread is then not scored: the mean's error is)."""
    assert _member_spread(tmp_path, 0.75) > 1.5 * _member_spread(tmp_path, 0.0)  # 2.3 here


def test_the_cli_sets_the_ensemble_recipe_and_refuses_a_diversity_over_one(tmp_path):
    data = tmp_path / "d.parquet"
    normal_frame(600, seed=4).to_parquet(data)
    common = ("--data", data, "--model-store", tmp_path, "--id-column", "machine_id")
    bad = run_trainer(*common, "--diversity", "1.5")
    assert bad.returncode == 2 and "diversity" in bad.stderr
    run = run_trainer(
        *common, "--diversity", "0.5", "--spread-weight", "0.25", "--max-steps", "20",
        "--device", "cpu",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    model = load_artifact(tmp_path, "default").manifest.model
    assert (model.diversity, model.spread_weight) == (0.5, 0.25)
