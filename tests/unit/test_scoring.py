import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from pipeline.exceptions import ConfigError
from pipeline.scoring import ReconstructionScorer, Scorer, resolve_device
from tests.factories import mixed_spec, numeric_spec, rng_rows, tiny_model


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
