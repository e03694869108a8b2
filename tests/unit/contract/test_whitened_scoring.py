"""Whitened residuals in the scorer: what the worker, `pipeline score` and `trainer evaluate`
compute from a model whose config has ``whitened_units``."""

import pytest
import torch
from pydantic import ValidationError

from pipeline.contract.exceptions import ConfigError
from pipeline.contract.features import FeatureSpec, NumericFeature
from pipeline.contract.models import ModelConfig, build_model
from pipeline.contract.scoring import ReconstructionScorer

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _spec(c: int) -> FeatureSpec:
    return FeatureSpec(features=[NumericFeature(name=f"f{j}", mean=0, std=1) for j in range(c)])


def _scorers(members: int, spread_weight: float) -> tuple[ReconstructionScorer, ...]:
    """(plain, whitening) scorers of one model's weights, in eval mode."""
    config = ModelConfig(
        input_dim=3, output_dim=3, hidden_dims=[8], latent_dim=2, members=members,
        spread_weight=spread_weight, error_units=3,
    )  # fmt: skip
    torch.manual_seed(0)
    plain = build_model(config)
    whitening = build_model(config.model_copy(update={"whitened_units": 3}))
    whitening.load_state_dict(plain.state_dict() | {"residual_whitening": torch.eye(3)})
    return tuple(ReconstructionScorer(_spec(3), m).eval() for m in (plain, whitening))


@pytest.mark.parametrize(("members", "spread_weight"), [(1, 1.0), (4, 0.0), (4, 0.5), (4, 1.0)])
def test_an_identity_whitening_scores_each_units_own_error(members, spread_weight):
    plain, whitening = _scorers(members, spread_weight)
    cont, cat = torch.randn(16, 3), torch.zeros(16, 0, dtype=torch.long)
    with torch.inference_mode():
        a, b = plain.score_terms(cont, cat), whitening.score_terms(cont, cat)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_the_residual_row_is_multiplied_by_the_whitening_before_squaring():
    _, scorer = _scorers(4, 0.5)
    mixing = torch.tensor([[1.0, -0.5, 0.0], [0.0, 2.0, 0.0], [0.3, 0.0, 1.0]])
    scorer.model.residual_whitening.copy_(mixing)
    scorer.model.unit_scale.copy_(torch.tensor([1.0, 2.0, 4.0]))
    x = torch.randn(8, 3)
    with torch.inference_mode():
        errors, scores = scorer.score_terms(x, torch.zeros(8, 0, dtype=torch.long))
        recon = scorer.model(x)  # (M, B, C)
    mean = recon.mean(dim=0)
    expected = ((mean - x) @ mixing).pow(2) + 0.5 * recon.var(dim=0, unbiased=False)
    torch.testing.assert_close(errors, expected / torch.tensor([1.0, 2.0, 4.0]))
    torch.testing.assert_close(scores, errors.mean(dim=1))


def test_a_model_whitening_other_units_than_the_spec_has_is_refused():
    model = build_model(ModelConfig(input_dim=3, output_dim=3, error_units=3, whitened_units=3))
    with pytest.raises(ConfigError, match="whitens 3 continuous units but the feature spec has 4"):
        ReconstructionScorer(_spec(4), model)


def test_whitening_needs_normalised_errors_and_old_configs_do_not_whiten():
    with pytest.raises(ValidationError, match="whitened_units=3 needs normalised errors"):
        ModelConfig(input_dim=3, output_dim=3, whitened_units=3)
    assert ModelConfig(input_dim=3, output_dim=3).whitened_units == 0
    assert not hasattr(build_model(ModelConfig(input_dim=3, output_dim=3)), "residual_whitening")
