import pytest
import torch
from pydantic import ValidationError

from pipeline.contract.models import (
    DIVERSE_FROM_ROWS,
    MODEL_REGISTRY,
    EnsembleLinear,
    ModelConfig,
    build_model,
    default_config,
    default_hidden_dims,
    ensemble_recipe,
)
from pipeline.contract.scoring import _squared_error


@pytest.mark.parametrize("kind", sorted(MODEL_REGISTRY))
@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_every_model_reconstructs_with_the_right_shape(kind, norm):
    cfg = ModelConfig(
        kind=kind,
        input_dim=12,
        output_dim=12,
        hidden_dims=[16, 8],
        latent_dim=3,
        norm=norm,
        dropout=0.1,
    )
    model = build_model(cfg)
    x = torch.randn(5, 12)
    recon, extra = model.training_forward(x)
    assert recon.shape == (5, 12)
    assert extra.shape == ()
    model.eval()
    with torch.inference_mode():
        a, b = model(x), model(x)
    assert torch.equal(a, b), "eval output must be deterministic"


def test_vae_regulariser_is_positive_and_scaled_by_beta():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    base = ModelConfig(kind="vae", input_dim=6, output_dim=6, hidden_dims=[8], latent_dim=2)
    m1 = build_model(base)
    m2 = build_model(base.model_copy(update={"beta": 0.0}))
    m2.load_state_dict(m1.state_dict())
    assert float(m1.training_forward(x)[1].detach()) > 0
    assert float(m2.training_forward(x)[1].detach()) == 0
    assert m1.kl_per_record(x).shape == (64,)  # type: ignore[operator]


def test_denoising_model_corrupts_only_in_training():
    cfg = ModelConfig(
        kind="dae",
        input_dim=4,
        output_dim=4,
        hidden_dims=[4],
        latent_dim=2,
        noise="mask",
        noise_level=0.5,
    )
    model = build_model(cfg)
    torch.manual_seed(0)
    corrupted = model.corrupt(torch.ones(1000, 4))  # type: ignore[operator]
    assert 0.4 < float((corrupted == 0).float().mean()) < 0.6


def test_config_validation_names_the_problem():
    with pytest.raises(ValidationError, match="hidden_dims"):
        ModelConfig(input_dim=4, output_dim=4, hidden_dims=[0])
    with pytest.raises(ValidationError):
        ModelConfig(kind="gan", input_dim=4, output_dim=4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dim", "members", "hidden"),
    [
        (4, 1, [32, 16]),  # single models (per-entity) keep 32-wide floors
        (13, 4, [16, 8]),  # ensemble members below 64 inputs: 16 wide (BENCHMARKS.md)
        (63, 4, [16, 8]),
        (64, 4, [32, 16]),
        (32, 1, [32, 16]),
        (784, 1, [512, 256]),
        (784, 4, [128, 64]),
    ],
)
def test_default_sizes_scale_with_input(dim, members, hidden):
    widths, latent = default_hidden_dims(dim, members)
    assert widths == hidden
    assert latent <= widths[-1]


@pytest.mark.parametrize(("dim", "latent"), [(1, 1), (2, 1), (3, 2), (4, 3), (5, 4), (16, 4)])
def test_the_latent_is_narrower_than_the_input(dim, latent):
    """A bottleneck as wide as the input lets the identity through (a 3-value input had a
    latent of 4: BENCHMARKS.md "A fresh group")."""
    assert default_hidden_dims(dim, 4)[1] == latent


@pytest.mark.parametrize("dim", [12, 784])
def test_default_config_is_what_trainer_fit_builds_with_default_settings(dim, tmp_path):
    """The benchmarks time ``default_config``: it must stay the trainer's default model."""
    from pipeline.contract.features import FeatureSpec, NumericFeature
    from trainer.fit import model_config
    from trainer.settings import load_trainer_settings

    spec = FeatureSpec(features=[NumericFeature(name=f"f{j}", mean=0, std=1) for j in range(dim)])
    settings = load_trainer_settings(data="x.parquet", model_store=str(tmp_path), name="m")
    assert model_config(spec, settings) == default_config(dim)
    for rows in (300, 5000):
        assert model_config(spec, settings, rows) == default_config(dim, fit_rows=rows)


def test_an_ensemble_is_one_batched_forward_of_independent_members():
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=6, output_dim=6, hidden_dims=[8, 4], latent_dim=2, members=3)
    model = build_model(cfg).eval()
    x = torch.randn(5, 6)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (3, 5, 6)
    assert not torch.allclose(out[0], out[1])  # members start from different weights
    first = next(m for m in model.modules() if isinstance(m, EnsembleLinear))
    assert isinstance(first, EnsembleLinear)
    with torch.inference_mode():  # member 1 alone is an ordinary MLP with its own weights
        h = torch.relu(x @ first.weight[1] + first.bias[1])
    assert torch.allclose(h, torch.relu(first(x.expand(3, -1, -1)))[1], atol=1e-6)


def test_ensembles_refuse_the_vae_and_batch_norm():
    with pytest.raises(ValidationError, match="members=2 needs kind ae or dae"):
        ModelConfig(kind="vae", input_dim=4, output_dim=4, members=2)
    with pytest.raises(ValidationError, match="members=2"):
        ModelConfig(input_dim=4, output_dim=4, members=2, norm="batch")


def test_error_units_give_the_model_a_saved_unit_scale():
    model = build_model(ModelConfig(input_dim=4, output_dim=4, error_units=4))
    assert torch.equal(model.unit_scale, torch.ones(4))
    assert "unit_scale" in model.state_dict()
    assert "unit_scale" not in build_model(ModelConfig(input_dim=4, output_dim=4)).state_dict()


def test_fast_tanh_is_tanh_in_value_and_gradient():
    from pipeline.contract.models import fast_tanh

    x = torch.cat([torch.linspace(-60, 60, 2001), torch.randn(1000)]).requires_grad_()
    y = fast_tanh(x)
    assert torch.allclose(y, torch.tanh(x), atol=1e-6)
    (grad,) = torch.autograd.grad(y.sum(), x)
    (expected,) = torch.autograd.grad(torch.tanh(x).sum(), x)
    assert torch.allclose(grad, expected, atol=1e-6)
    with torch.inference_mode():  # the in-place path scoring takes
        assert torch.allclose(fast_tanh(x.detach()), torch.tanh(x.detach()), atol=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0, 2.0])
def test_an_ensembles_error_is_the_error_of_its_mean_plus_weighted_spread(weight):
    """mean_m (r_m - x)^2 = (mean_m r_m - x)^2 + var_m r_m: weight 1 is the members' mean
    error (the score of ensembles from before the weight existed), 0 the mean's error."""
    torch.manual_seed(0)
    recon, x = torch.randn(4, 6, 3), torch.randn(6, 3)
    of_mean = (recon.mean(dim=0) - x).pow(2)
    spread = recon.var(dim=0, unbiased=False)
    got = _squared_error(recon, x, weight)
    torch.testing.assert_close(got, of_mean + weight * spread)
    if weight == 1.0:
        torch.testing.assert_close(got, (recon - x).pow(2).mean(dim=0))
    torch.testing.assert_close(_squared_error(recon[0], x, weight), (recon[0] - x).pow(2))


def test_the_default_ensemble_is_diverse_from_a_thousand_fit_rows():
    assert ensemble_recipe(999) == (0.0, 1.0)  # a few hundred rows: independent members
    assert ensemble_recipe(DIVERSE_FROM_ROWS) == ensemble_recipe(None) == (0.75, 0.0)
    assert default_config(8, fit_rows=10_000).diversity == 0.75
    assert default_config(8, members=1, fit_rows=10_000).diversity == 0.0


def test_diversity_and_spread_weight_are_recorded_and_checked():
    cfg = ModelConfig(input_dim=4, output_dim=4, members=4, diversity=0.75, spread_weight=0.25)
    assert ModelConfig.model_validate_json(cfg.model_dump_json()) == cfg
    old = ModelConfig.model_validate({"input_dim": 4, "output_dim": 4, "members": 4})
    assert (old.diversity, old.spread_weight) == (0.0, 1.0)  # manifests from before: unchanged
    with pytest.raises(ValidationError, match="diversity"):
        ModelConfig(input_dim=4, output_dim=4, diversity=1.5)
