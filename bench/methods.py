"""The detectors the benchmarks compare, each as fit-on-normal-rows then score-the-test-rows.

``ours`` goes through the public entry points only: ``trainer.fit.fit`` on a Parquet file of
the training rows, then ``trainer.evaluate.evaluate`` on a labelled Parquet file of the test
rows (shared encoder + the worker's Scorer). Nothing here re-implements the model.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.data import LABEL, Split, Task, write_parquet
from trainer import detection_metrics

OURS = ("ae", "vae", "dae")
BASELINES = ("iforest", "pyod_ae")


@dataclass(frozen=True)
class Outcome:
    method: str
    roc_auc: float
    pr_auc: float
    fit_s: float
    epochs: int | None = None


def run_method(
    method: str, task: Task, data: Split, seed: int, overrides: dict[str, Any] | None = None
) -> Outcome:
    if method in OURS:
        return run_ours(method, task, data, seed, overrides or {})
    if method == "iforest":
        return run_iforest(data, seed)
    if method == "pyod_ae":
        return run_pyod(data, seed)
    raise ValueError(f"unknown method {method!r} (known: {OURS + BASELINES})")


def run_ours(kind: str, task: Task, data: Split, seed: int, overrides: dict[str, Any]) -> Outcome:
    """Train with the trainer's defaults (plus ``overrides``) and score through evaluate."""
    logging.getLogger("trainer").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        manifest, result, fit_s = fit_and_evaluate(
            task, data, Path(tmp), model=kind, seed=seed, **overrides
        )
    return Outcome(kind, result.roc_auc, result.pr_auc, fit_s, manifest.training.epochs)


def fit_and_evaluate(
    task: Task, data: Split, root: Path, **settings: Any
) -> tuple[Any, Any, float]:
    """Write the split as Parquet under ``root``, run ``trainer fit`` on the training rows with
    ``settings`` (the trainer's defaults otherwise; CPU), and score the test rows through
    ``trainer evaluate``: (manifest, evaluation, seconds the fit took end to end)."""
    from trainer.evaluate import EvaluationRequest, evaluate
    from trainer.fit import fit
    from trainer.settings import load_trainer_settings

    train = write_parquet(root / "train.parquet", task, data.x_train, None)
    test = write_parquet(root / "test.parquet", task, data.x_test, data.y_test)
    store = str(root / "store")
    config = load_trainer_settings(
        data=str(train), model_store=store, name="bench", device="cpu", **settings
    )
    started = time.perf_counter()
    manifest = fit(config)
    fit_s = time.perf_counter() - started
    result = evaluate(
        EvaluationRequest(
            data=str(test),
            model_store=store,
            name="bench",
            version=manifest.version,
            label_column=LABEL,
            device="cpu",
        )
    )
    return manifest, result, fit_s


def run_iforest(data: Split, seed: int) -> Outcome:
    """scikit-learn's IsolationForest with its defaults."""
    from sklearn.ensemble import IsolationForest

    started = time.perf_counter()
    forest = IsolationForest(random_state=seed).fit(data.x_train)
    fit_s = time.perf_counter() - started
    return _outcome("iforest", -forest.score_samples(data.x_test), data, fit_s)


def run_pyod(data: Split, seed: int, **params: Any) -> Outcome:
    """PyOD's AutoEncoder with its defaults (``params`` override them)."""
    started = time.perf_counter()
    detector = pyod_autoencoder(seed, **params).fit(data.x_train)
    fit_s = time.perf_counter() - started
    return _outcome("pyod_ae", detector.decision_function(data.x_test), data, fit_s)


def pyod_autoencoder(seed: int, **params: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pyod.models.auto_encoder import AutoEncoder
    return AutoEncoder(random_state=seed, verbose=0, device="cpu", **params)


def _outcome(method: str, scores: npt.NDArray[Any], data: Split, fit_s: float) -> Outcome:
    s = np.asarray(scores, dtype=np.float64)
    return Outcome(
        method,
        detection_metrics.roc_auc(s, data.y_test),
        detection_metrics.average_precision(s, data.y_test),
        fit_s,
    )
