"""Shuffled negatives: the shuffle, the hinge, what training on them does to a real model, and
how fit records and refuses the option."""

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.contract.artifact import load_artifact
from pipeline.contract.features import FeatureSpec, NumericFeature
from pipeline.contract.models import build_model, default_config
from pipeline.contract.scoring import ReconstructionScorer
from tests.support.training import run_trainer
from trainer.loop import TrainStep
from trainer.negatives import NEGATIVE_MARGIN, NegativeSampling, shortfall, shuffle_columns

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_each_column_is_shuffled_on_its_own():
    torch.manual_seed(0)
    base = torch.arange(1000, dtype=torch.float32)
    values = torch.stack([base, base, -base], dim=1)
    shuffled = shuffle_columns(values)
    for j in range(3):  # every column keeps its values
        assert torch.equal(shuffled[:, j].sort().values, values[:, j].sort().values)
    assert (shuffled[:, 0] == shuffled[:, 1]).float().mean() < 0.01  # the relations are gone
    assert (shuffled[:, 0] == -shuffled[:, 2]).float().mean() < 0.01
    indices = torch.tensor([[0, 1], [1, 0], [2, 2]])
    assert torch.equal(shuffle_columns(indices)[:, 0].sort().values, torch.tensor([0, 1, 2]))
    assert torch.equal(shuffle_columns(values[:1]), values[:1])  # one row: nothing to shuffle
    assert shuffle_columns(indices[:, :0]).shape == (3, 0)  # no categorical columns


def test_the_shortfall_counts_only_negatives_under_the_margin():
    errors = torch.tensor([0.2, 1.5, 1.0, 0.6])
    assert shortfall(errors, 1.0).item() == pytest.approx((0.8 + 0.4) / 4)
    assert shortfall(errors + 1.0, 1.0).item() == 0.0


def _readings(rows: int, seed: int) -> torch.Tensor:
    """Eight readings of two quantities, four readings each: a model wide enough for eight
    columns can learn to pass anything through, relations or not."""
    g = torch.Generator().manual_seed(seed)
    quantities = torch.randn(rows, 2, generator=g)
    return quantities.repeat_interleave(4, dim=1) + 0.1 * torch.randn(rows, 8, generator=g)


def _train(negatives: NegativeSampling | None, steps: int = 400) -> ReconstructionScorer:
    torch.manual_seed(0)
    spec = FeatureSpec(features=[NumericFeature(name=f"r{j}", mean=0.0, std=1.0) for j in range(8)])
    scorer = ReconstructionScorer(spec, build_model(default_config(8, 8)))
    step = TrainStep(scorer, negatives)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=1e-3)
    rows, no_cat = _readings(2048, seed=1), torch.zeros(128, 0, dtype=torch.long)
    for i in range(steps):
        loss = step(rows[(i * 128) % 2048 :][:128], no_cat)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return scorer.eval()


def _mean_error(scorer: ReconstructionScorer, rows: torch.Tensor) -> float:
    no_cat = torch.zeros(len(rows), 0, dtype=torch.long)
    with torch.no_grad():
        x = scorer.model_input(rows, no_cat)
        return scorer.unit_errors(x, scorer.model(x), no_cat).mean().item()


def test_training_on_negatives_reconstructs_broken_relations_badly_and_normal_rows_well():
    """Trained plainly, the model passes rows whose relations are broken through almost as
    well as it would guess each column's mean (error under the margin); trained on shuffled
    negatives it reconstructs them several times worse, while normal rows stay close."""
    normal = _readings(1000, seed=2)
    torch.manual_seed(5)
    broken = shuffle_columns(normal)
    plain, contrasted = _train(None), _train(NegativeSampling())
    assert _mean_error(plain, broken) < NEGATIVE_MARGIN
    assert _mean_error(contrasted, broken) > 2 * _mean_error(plain, broken)
    assert _mean_error(contrasted, normal) < 0.3


def test_the_negatives_count_in_training_only():
    scorer = _train(None, steps=0)
    rows, no_cat = _readings(64, seed=3), torch.zeros(64, 0, dtype=torch.long)
    plain, contrasted = TrainStep(scorer), TrainStep(scorer, NegativeSampling(weight=1.0))
    with torch.no_grad():
        assert contrasted(rows, no_cat).item() > plain(rows, no_cat).item()  # train mode
        plain.eval()
        contrasted.eval()
        assert contrasted(rows, no_cat).item() == plain(rows, no_cat).item()


def test_the_cli_records_the_negatives_and_refuses_them_for_entity_models(tmp_path):
    data = tmp_path / "d.parquet"
    frame = pd.DataFrame(_readings(600, seed=4).numpy(), columns=[f"r{j}" for j in range(8)])
    frame.assign(machine=np.arange(600) % 3).to_parquet(data)
    common = ("--data", data, "--model-store", tmp_path, "--max-steps", "20", "--device", "cpu")
    on = run_trainer(*common, "--shuffled-negatives")
    assert on.returncode == 0, on.stderr
    training = load_artifact(tmp_path, "default").manifest.training
    assert training.negatives == {"weight": 0.3, "margin": NEGATIVE_MARGIN}
    off = run_trainer(*common, "--name", "off")
    assert off.returncode == 0, off.stderr
    assert load_artifact(tmp_path, "off").manifest.training.negatives == {}
    entity = run_trainer(*common, "--shuffled-negatives", "--entity-column", "machine")
    assert entity.returncode == 2
    assert "shuffled_negatives" in entity.stderr and "entity_column='machine'" in entity.stderr
