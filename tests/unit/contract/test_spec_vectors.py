"""Vector columns: centred per element, one shared scale (see trainer.spec._feature)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.contract.scoring import Scorer
from pipeline.contract.tabular import encode_record_batch
from tests.support.factories import tiny_model
from trainer.data import ParquetSource
from trainer.spec import SpecOptions, infer_spec
from trainer.split import SplitOptions


def _vectors(tmp_path, values):
    flat = pa.array(values.astype(np.float32).ravel())
    table = pa.table({"pixels": pa.FixedSizeListArray.from_arrays(flat, values.shape[1])})
    pq.write_table(table, tmp_path / "v.parquet")
    return ParquetSource(str(tmp_path / "v.parquet"))


def test_one_scale_for_the_whole_vector_and_a_mean_per_element(tmp_path):
    rng = np.random.default_rng(0)
    values = np.zeros((400, 3))
    values[:, 0] = rng.normal(5.0, 10.0, 400)  # a busy pixel
    values[:, 1] = rng.normal(0.0, 2.0, 400)
    values[7, 2] = 1.0  # a border pixel lit once: near-constant
    opts = SpecOptions(split=SplitOptions(validation_fraction=0.005, calibration_fraction=0.005))
    spec, _ = infer_spec(_vectors(tmp_path, values), opts)
    (feature,) = spec.features
    assert feature.kind == "vector"
    assert len(set(feature.std)) == 1
    train = values  # nearly every row is a training row at fraction 0.01
    rms = np.sqrt(np.mean(train.std(axis=0) ** 2))
    assert feature.std[0] == pytest.approx(rms, rel=0.05)
    assert feature.mean[0] == pytest.approx(values[:, 0].mean(), rel=0.05)
    assert feature.mean[1] == pytest.approx(values[:, 1].mean(), abs=0.3)


def test_a_stray_value_in_a_near_constant_element_does_not_dominate_the_score(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 1.0, (300, 4))
    values[:, 3] = 0.0
    values[0, 3] = 0.5  # the only non-zero value: the element's own std is ~0.03
    spec, _ = infer_spec(
        _vectors(tmp_path, values),
        SpecOptions(split=SplitOptions(validation_fraction=0.005, calibration_fraction=0.005)),
    )
    scorer = Scorer(spec, tiny_model(spec), torch.device("cpu"), top_k=0)
    probe = np.zeros((2, 4))
    probe[1, 3] = 1.0  # a stroke where training rows were blank
    cont, cat = encode_record_batch(
        pa.record_batch({"pixels": pa.FixedSizeListArray.from_arrays(pa.array(probe.ravel()), 4)}),
        spec,
    )
    scores = scorer.score(cont, cat).scores
    # one unit of raw difference moves the score by about one shared-scale unit, not by
    # (1 / 0.03)^2 / 4 ~ 280 as per-element scaling would
    assert scores[1] - scores[0] < 5.0
