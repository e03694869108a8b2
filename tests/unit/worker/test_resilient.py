"""OOM split / merge / CPU fallback logic, with a real model wrapped to run out of memory.

There is no GPU here, so ``OomAbove`` raises the real ``torch.cuda.OutOfMemoryError`` when a
forward pass gets more rows than it "fits"; everything else (model, scorer, arrays) is real.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from pipeline.contract.exceptions import ScoringError
from pipeline.contract.models import AnomalyModel
from pipeline.contract.scoring import Scorer
from pipeline.worker.resilient import ResilientScorer
from tests.support.factories import mixed_spec, tiny_model

CPU = torch.device("cpu")


class OomAbove(AnomalyModel):
    """A real model that raises CUDA OOM for batches larger than ``limit`` rows."""

    def __init__(self, inner: AnomalyModel, limit: int) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(int(x.shape[0]))
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory ({x.shape[0]} rows)")
        out: Tensor = self.inner(x)
        return out


class Broken(AnomalyModel):
    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


def rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    spec = mixed_spec()
    rng = np.random.default_rng(seed)
    cont = rng.normal(size=(n, spec.n_continuous)).astype(np.float32)
    cat = rng.integers(0, 2, size=(n, spec.n_categorical)).astype(np.int64)
    return cont, cat


def scorers(limit: int, **kw):
    spec = mixed_spec()
    real = tiny_model(spec, seed=3)
    flaky = OomAbove(real, limit)
    events: list[tuple[str, int]] = []
    resilient = ResilientScorer(
        Scorer(spec, flaky, CPU, top_k=2),
        lambda: Scorer(spec, real, CPU, top_k=2),
        on_oom=lambda action, n: events.append((action, n)),
        **kw,
    )
    return resilient, Scorer(spec, real, CPU, top_k=2), flaky, events


def assert_same(got, want):
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.top_index, want.top_index)
    np.testing.assert_allclose(got.top_error, want.top_error, rtol=1e-5, atol=1e-6)


def test_oom_splits_the_batch_and_keeps_every_row_in_order():
    resilient, plain, flaky, events = scorers(limit=30)
    cont, cat = rows(100)
    got = resilient.score(cont, cat)
    assert len(got) == 100
    assert_same(got, plain.score(cont, cat))
    assert [a for a, _ in events] == ["split"] * 3  # 100 -> 50 -> 25 (x2 halves of 50)
    assert max(s for s in flaky.sizes if s <= 30) == 25
    assert resilient.limit == 25


def test_the_size_that_fitted_caps_later_batches_and_grows_back():
    resilient, plain, flaky, _events = scorers(limit=30, regrow_after=2)
    resilient.score(*rows(100))
    flaky.sizes.clear()
    cont, cat = rows(100, seed=1)
    assert_same(resilient.score(cont, cat), plain.score(cont, cat))
    assert flaky.sizes == [25, 25, 25, 25]  # no failed attempt at 100 rows any more
    resilient.score(*rows(10, seed=2))
    assert resilient.limit == 50  # two clean batches: try twice as many again
    flaky.sizes.clear()
    assert_same(resilient.score(cont, cat), plain.score(cont, cat))
    assert flaky.sizes[0] == 50  # tried, failed, split back to 25
    assert resilient.limit == 25


def test_when_nothing_fits_the_batch_falls_back_to_cpu_without_loss():
    resilient, plain, _flaky, events = scorers(limit=0, min_rows=8)
    cont, cat = rows(40)
    got = resilient.score(cont, cat)
    assert_same(got, plain.score(cont, cat))
    assert ("cpu_fallback", 5) in events  # 40 -> 20 -> 10 -> 5 rows, still OOM
    assert sum(1 for a, _ in events if a == "cpu_fallback") == 1  # then the rest goes to CPU
    assert resilient.limit is None  # next batch tries the device with the whole batch again


def test_an_oom_in_the_second_half_keeps_the_first_half_scores():
    resilient, plain, _flaky, _events = scorers(limit=7, min_rows=4)
    cont, cat = rows(13)
    assert_same(resilient.score(cont, cat), plain.score(cont, cat))


def test_empty_batch_and_non_oom_errors():
    resilient, _plain, _, _ = scorers(limit=30)
    empty = resilient.score(*rows(0))
    assert len(empty) == 0
    spec = mixed_spec()
    broken = ResilientScorer(
        Scorer(spec, Broken(tiny_model(spec).config), CPU), lambda: pytest.fail("no CPU fallback")
    )
    with pytest.raises(ScoringError, match="failed on 5 rows"):
        broken.score(*rows(5))
