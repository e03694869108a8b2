"""The detectors the benchmarks compare, each as fit-on-normal-rows then score-the-test-rows.

``ours`` goes through the public entry points only: ``trainer.fit.fit`` on a Parquet file of
the training rows, then ``trainer.evaluate.evaluate`` on a labelled Parquet file of the test
rows (shared encoder + the worker's Scorer). Nothing here re-implements the model.

The baselines get the numeric matrix (``Task.x``), standardised on their training rows, and
at most ``BASELINE_TRAIN_CAP`` training rows (``baseline_data``).
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
BASELINES = ("iforest", "knn", "ecod", "pyod_ae", "tutorial_ae")
BASELINE_TRAIN_CAP = 20_000  # baselines fit on at most this many training rows (random)


@dataclass(frozen=True)
class Outcome:
    method: str
    roc_auc: float
    pr_auc: float
    fit_s: float
    epochs: int | None = None
    false_alarm_rate: float | None = None  # on the test's normal rows, at the threshold
    expected_false_alarm_rate: float | None = None  # what the manifest promised
    calibration_rows: int | None = None
    threshold_quantile: float | None = None


def run_method(
    method: str, task: Task, data: Split, seed: int, overrides: dict[str, Any] | None = None
) -> Outcome:
    if method in OURS:
        return run_ours(method, task, data, seed, overrides or {})
    runners = {
        "iforest": run_iforest,
        "knn": run_knn,
        "ecod": run_ecod,
        "pyod_ae": run_pyod,
        "tutorial_ae": run_tutorial_ae,
    }
    if method not in runners:
        raise ValueError(f"unknown method {method!r} (known: {OURS + BASELINES})")
    return runners[method](baseline_data(data, seed), seed)


def baseline_data(data: Split, seed: int) -> Split:
    """What every baseline gets: at most ``BASELINE_TRAIN_CAP`` training rows (a random
    sample, so KNN and PyOD stay affordable on the large sets), every column standardised
    with the training rows' mean and std (constant columns divided by 1)."""
    train = data.x_train
    if len(train) > BASELINE_TRAIN_CAP:
        pick = np.random.default_rng(seed).choice(len(train), BASELINE_TRAIN_CAP, replace=False)
        train = train[np.sort(pick)]
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return Split((train - mean) / std, (data.x_test - mean) / std, data.y_test)


def run_ours(kind: str, task: Task, data: Split, seed: int, overrides: dict[str, Any]) -> Outcome:
    """Train with the trainer's defaults (plus ``overrides``) and score through evaluate."""
    logging.getLogger("trainer").setLevel(logging.ERROR)
    if task.time_column is not None:
        overrides = {"split_by": task.time_column, **overrides}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        manifest, result, fit_s = fit_and_evaluate(
            task, data, Path(tmp), model=kind, seed=seed, **overrides
        )
    t = manifest.threshold
    return Outcome(
        kind,
        result.roc_auc,
        result.pr_auc,
        fit_s,
        manifest.training.epochs,
        result.at_threshold.false_positive_rate,
        t.expected_false_alarm_rate,
        t.rows,
        t.quantile,
    )


def fit_and_evaluate(
    task: Task, data: Split, root: Path, **settings: Any
) -> tuple[Any, Any, float]:
    """Write the split as Parquet under ``root``, run ``trainer fit`` on the training rows with
    ``settings`` (the trainer's defaults otherwise; CPU), and score the test rows through
    ``trainer evaluate``: (manifest, evaluation, seconds the fit took end to end)."""
    from trainer.evaluate import EvaluationRequest, evaluate
    from trainer.fit import fit
    from trainer.settings import load_trainer_settings

    train = write_parquet(root / "train.parquet", task, data.x_train, None, data.train_rows)
    test = write_parquet(root / "test.parquet", task, data.x_test, data.y_test, data.test_rows)
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


def run_knn(data: Split, seed: int) -> Outcome:
    """PyOD's KNN with its defaults (k=5, distance to the 5th neighbour)."""
    from pyod.models.knn import KNN

    started = time.perf_counter()
    detector = KNN().fit(data.x_train)
    fit_s = time.perf_counter() - started
    return _outcome("knn", detector.decision_function(data.x_test), data, fit_s)


def run_ecod(data: Split, seed: int) -> Outcome:
    """PyOD's ECOD (parameter-free, empirical tail probabilities per column)."""
    from pyod.models.ecod import ECOD

    started = time.perf_counter()
    detector = ECOD().fit(data.x_train)
    fit_s = time.perf_counter() - started
    return _outcome("ecod", detector.decision_function(data.x_test), data, fit_s)


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


def run_tutorial_ae(data: Split, seed: int, epochs: int = 50, batch: int = 64) -> Outcome:
    """The classic tutorial autoencoder: standardised input (``baseline_data``), a
    D -> D/2 -> D/4 -> D/2 -> D ReLU funnel, MSE, Adam 1e-3, 50 epochs of batch 64 over every
    training row, no validation; the score is the row's mean squared error."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    d = data.x_train.shape[1]
    h1, h2 = max(4, d // 2), max(2, d // 4)
    model = nn.Sequential(
        nn.Linear(d, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
        nn.Linear(h2, h1), nn.ReLU(), nn.Linear(h1, d),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(data.x_train.astype(np.float32))
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            rows = x[order[i : i + batch]]
            loss = (model(rows) - rows).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    fit_s = time.perf_counter() - started
    with torch.inference_mode():
        test = torch.from_numpy(data.x_test.astype(np.float32))
        scores = (model(test) - test).pow(2).mean(dim=1).numpy()
    return _outcome("tutorial_ae", scores, data, fit_s)


def _outcome(method: str, scores: npt.NDArray[Any], data: Split, fit_s: float) -> Outcome:
    s = np.asarray(scores, dtype=np.float64)
    return Outcome(
        method,
        detection_metrics.roc_auc(s, data.y_test),
        detection_metrics.average_precision(s, data.y_test),
        fit_s,
    )
