import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from pydantic import ValidationError

from pipeline.contract import artifact
from pipeline.contract.artifact import load_artifact
from pipeline.contract.exceptions import ConfigError
from pipeline.contract.features import FeatureSpec, NumericFeature
from pipeline.contract.models import ModelConfig, VariationalAutoEncoder, build_model
from pipeline.contract.scoring import ReconstructionScorer, Scorer, resolve_device
from tests.support.factories import manifest_fields, mixed_spec, numeric_spec, rng_rows, tiny_model


def test_all_numeric_score_is_plain_mse_of_standardised_values():
    spec = numeric_spec(4)
    model = tiny_model(spec)
    cont = rng_rows(16, 4)
    result = Scorer(spec, model, torch.device("cpu"), top_k=2).score(
        cont, np.zeros((16, 0), np.int64)
    )
    mean, std = spec.continuous_mean_std()
    z = torch.from_numpy((cont - mean) / std)
    with torch.inference_mode():
        expected = ((model(z) - z) ** 2).mean(dim=1).numpy()
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5)
    assert result.top_index.shape == (16, 2)
    assert (result.top_error[:, 0] >= result.top_error[:, 1]).all()


def test_categorical_error_is_cross_entropy_and_nan_is_imputed_as_mean():
    spec = mixed_spec()
    model = tiny_model(spec)
    module = ReconstructionScorer(spec, model).eval()
    cont = torch.tensor([[10.0, float("nan"), 0.0, 1.0, 2.0]])  # amount at its mean
    cat = torch.tensor([[1]])
    x = module.model_input(cont, cat)
    assert x.shape == (1, spec.input_dim)
    assert float(x[0, 0]) == 0.0 and float(x[0, 1]) == 0.0  # standardised mean / imputed NaN
    assert x[0, 5:].tolist() == [0.0, 1.0, 0.0]
    with torch.inference_mode():
        errors = module(cont, cat)
        recon = model(x)
    assert errors.shape == (1, spec.n_units)
    ce = F.cross_entropy(recon[:, 5:8], cat[:, 0])
    assert float(errors[0, -1]) == pytest.approx(float(ce), rel=1e-6)


def test_empty_batch_scores_to_empty_arrays():
    spec = numeric_spec(3)
    out = Scorer(spec, tiny_model(spec), torch.device("cpu")).score(
        np.zeros((0, 3), np.float32), np.zeros((0, 0), np.int64)
    )
    assert len(out) == 0
    assert out.top_index.shape == (0, 3)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda"}
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_host_staging_reuses_its_buffers_and_copies_contents():
    from pipeline.contract.scoring import HostStaging

    staging = HostStaging(pin=False)
    for n in (8, 3, 8, 5):
        rows = rng_rows(n, 4, seed=n)
        staged = staging.stage("cont", rows)
        np.testing.assert_array_equal(staged.numpy(), rows)
    assert staging.allocations == 1
    staging.stage("cont", rng_rows(20, 4))
    assert staging.allocations == 2  # grown once for the larger batch


def test_scores_are_identical_across_repeated_batches_of_different_sizes():
    spec = mixed_spec()
    scorer = Scorer(spec, tiny_model(spec), torch.device("cpu"))
    cont = np.abs(rng_rows(64, spec.n_continuous))
    cat = np.random.default_rng(1).integers(0, 3, size=(64, 1))
    whole = scorer.score(cont, cat).scores
    parts = np.concatenate(
        [scorer.score(cont[i : i + 10], cat[i : i + 10]).scores for i in range(0, 64, 10)]
    )
    np.testing.assert_allclose(parts, whole, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_equal_cpu_scores():
    mixed = mixed_spec()  # with its amount heavy-tailed: compressed on the device too
    tailed = NumericFeature(name="amount", mean=2.0, std=1.0, tail_scale=5.0)
    spec = FeatureSpec(features=[tailed, *mixed.features[1:]], id_column=mixed.id_column)
    model = tiny_model(spec)
    cont = rng_rows(4096, spec.n_continuous)
    cat = np.random.default_rng(2).integers(0, 3, size=(4096, 1))
    cpu = Scorer(spec, model, torch.device("cpu"), top_k=3).score(cont, cat)
    gpu_scorer = Scorer(spec, tiny_model(spec), torch.device("cuda"), top_k=3)
    for n in (4096, 100, 4096):  # buffer reuse across sizes
        gpu = gpu_scorer.score(cont[:n], cat[:n])
        np.testing.assert_allclose(gpu.scores, cpu.scores[:n], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(gpu.top_index[:, 0], cpu.top_index[:, 0])


def _vae(spec, score):
    torch.manual_seed(0)
    cfg = ModelConfig(
        kind="vae",
        input_dim=spec.input_dim,
        output_dim=spec.input_dim,
        hidden_dims=[8],
        latent_dim=2,
        beta=0.5,
        score=score,
    )
    return build_model(cfg).eval()


def test_elbo_score_adds_the_weighted_kl_and_keeps_unit_errors_reconstruction_only():
    spec = mixed_spec()
    cont = rng_rows(8, spec.n_continuous)
    cat = np.array([[1], [2], [0], [1], [1], [2], [0], [1]], np.int64)
    recon = Scorer(spec, _vae(spec, "reconstruction"), torch.device("cpu"), top_k=2)
    elbo = Scorer(spec, _vae(spec, "elbo"), torch.device("cpu"), top_k=2)
    a, b = recon.score(cont, cat), elbo.score(cont, cat)
    with torch.inference_mode():
        x = elbo.module.model_input(torch.from_numpy(cont), torch.from_numpy(cat))
        vae = elbo.module.model
        assert isinstance(vae, VariationalAutoEncoder)
        kl = vae.kl_per_record(x).numpy()
    np.testing.assert_allclose(b.scores, a.scores + 0.5 * kl / spec.input_dim, rtol=1e-5)
    np.testing.assert_array_equal(a.top_index, b.top_index)
    np.testing.assert_allclose(a.top_error, b.top_error)


def test_elbo_score_survives_publish_and_load(tmp_path):
    spec = numeric_spec()
    model = _vae(spec, "elbo")
    artifact.publish(tmp_path, model, manifest_fields(spec, model))
    loaded = load_artifact(tmp_path, "m")
    assert loaded.model.config.score == "elbo"
    cont = rng_rows(5, spec.n_continuous)
    cat = np.zeros((5, 0), np.int64)
    np.testing.assert_allclose(
        Scorer(spec, loaded.model, torch.device("cpu")).score(cont, cat).scores,
        Scorer(spec, model, torch.device("cpu")).score(cont, cat).scores,
        rtol=1e-6,
    )


def test_elbo_is_only_for_the_vae():
    with pytest.raises(ValidationError, match="score='elbo' needs kind='vae'"):
        ModelConfig(kind="ae", input_dim=3, output_dim=3, score="elbo")
