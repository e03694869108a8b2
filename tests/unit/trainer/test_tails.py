"""Heavy-tailed numeric columns enter the model compressed (trainer.tails)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.contract.artifact import load_artifact
from pipeline.contract.features import FeatureSpec, NumericFeature
from pipeline.contract.scoring import Scorer, SpecTransform
from pipeline.contract.tabular import encode_record_batch
from pipeline.devstack.sampledata import normal_frame
from pipeline.offline.batch_scoring import score_parquet
from trainer.data import ParquetSource
from trainer.fit import fit
from trainer.settings import load_trainer_settings
from trainer.spec import SpecOptions, SpecStats, infer_spec
from trainer.tails import SAMPLE_ROWS, TailSample, tail_scale

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _frame(rows: int = 3000, seed: int = 5) -> pd.DataFrame:
    """The sample sensors plus an amount with a long right tail that follows the load."""
    frame = normal_frame(rows, seed=seed)
    rng = np.random.default_rng(seed)
    load = (frame["temperature"] - frame["temperature"].mean()) / frame["temperature"].std()
    frame["amount"] = np.exp(3.0 + 0.5 * load + 1.2 * rng.standard_normal(rows))
    return frame


def test_a_long_tail_is_compressed_and_bell_shaped_or_discrete_columns_are_not():
    rng = np.random.default_rng(0)
    lognormal = np.exp(rng.standard_normal(5000) * 1.5)
    assert tail_scale(lognormal, 3.5) == pytest.approx(np.median(lognormal))
    assert tail_scale(rng.standard_normal(5000), 3.5) is None
    assert tail_scale(lognormal, 0) is None  # off
    counts = (
        rng.poisson(0.3, 5000).astype(np.float64) * 100
    )  # a long tail but only a few distinct values
    assert tail_scale(counts, 3.5) is None
    mostly_zero = np.where(rng.random(5000) < 0.9, 0.0, lognormal)  # interquartile range 0
    assert tail_scale(mostly_zero, 3.5) == pytest.approx(np.median(lognormal[mostly_zero != 0]))


def test_samples_stay_bounded_and_uniform_when_shards_merge():
    rng = np.random.default_rng(1)
    a, b = TailSample(), TailSample()
    a.add(np.arange(30_000, dtype=np.float64), rng)  # the low half of the values
    b.add(np.r_[np.arange(30_000, 60_000, dtype=np.float64), np.nan], rng)
    assert a.values.size == SAMPLE_ROWS and not np.isnan(b.values).any()
    merged = SpecStats()
    for part in (a, b):
        stats = SpecStats()
        stats.samples["x"] = part
        merged.merge(stats)
    values = merged.samples["x"].values
    assert values.size == SAMPLE_ROWS
    assert 0.45 < (values < 30_000).mean() < 0.55  # both shards, in proportion


def test_fit_compresses_the_tailed_column_and_records_it_in_the_spec(tmp_path):
    _frame().to_parquet(tmp_path / "d.parquet", index=False)
    source = ParquetSource(str(tmp_path / "d.parquet"))
    spec, _ = infer_spec(source, SpecOptions(id_column="machine_id"))
    features = {f.name: f for f in spec.features}
    amount = features["amount"]
    assert isinstance(amount, NumericFeature) and amount.tail_scale is not None
    assert abs(amount.mean - np.log1p(1.0)) < 1.0  # the compressed values' statistics
    tailed = [n for n, f in features.items() if getattr(f, "tail_scale", None) is not None]
    assert tailed == ["amount"]  # the sample data's sensors are bell-shaped
    off, _ = infer_spec(source, SpecOptions(id_column="machine_id", tail_ratio=0))
    assert all(getattr(f, "tail_scale", None) is None for f in off.features)
    again = FeatureSpec.model_validate_json(spec.model_dump_json())
    assert again == spec


def test_the_scorer_feeds_the_signed_log_of_the_value_and_imputes_a_missing_one():
    spec = FeatureSpec(
        features=[
            NumericFeature(name="amount", mean=1.0, std=2.0, tail_scale=10.0),
            NumericFeature(name="plain", mean=1.0, std=2.0),
        ]
    )
    transform = SpecTransform(spec)
    cont = torch.tensor([[100.0, 100.0], [float("nan"), -3.0]])
    x = transform.model_input(cont, torch.zeros((2, 0), dtype=torch.int64))
    expected = [[(np.log1p(10.0) - 1.0) / 2.0, 49.5], [0.0, -2.0]]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6)


def test_a_spike_in_a_compressed_column_is_still_flagged(tmp_path):
    """Compression pulls the normal far values in; a value far beyond all of them must still
    cross the threshold in every record (the product's own kind of anomaly)."""
    _frame().to_parquet(tmp_path / "d.parquet", index=False)
    store = tmp_path / "store"
    fit(
        load_trainer_settings(
            data=str(tmp_path / "d.parquet"),
            model_store=str(store),
            id_column="machine_id",
            device="cpu",
        )
    )
    loaded = load_artifact(store, "default")
    spec = loaded.manifest.features
    scorer = Scorer(spec, loaded.model, torch.device("cpu"))

    def scores(frame: pd.DataFrame) -> np.ndarray:
        batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
        return scorer.score(*encode_record_batch(batch, spec)).scores

    test = _frame(300, seed=6)
    threshold = loaded.manifest.threshold.value
    assert (scores(test) > threshold).mean() < 0.05
    spiked = test.assign(amount=test["amount"].max() * 1000)
    assert (scores(spiked) > threshold).all()
    test.to_parquet(tmp_path / "test.parquet", index=False)  # batch scoring compresses alike
    score_parquet(str(tmp_path / "test.parquet"), tmp_path / "out.parquet", str(store), "default")
    batch = pq.read_table(tmp_path / "out.parquet").column("score").to_numpy()
    np.testing.assert_allclose(batch, scores(test), rtol=1e-6)
