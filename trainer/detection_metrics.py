"""Ranking and threshold metrics of anomaly scores against binary labels, in numpy.

Higher score = more anomalous; ``labels`` is True for an anomaly. The definitions follow the
usual ones (and scikit-learn's, which the tests compare against):

- ROC-AUC: area under (false positive rate, true positive rate), trapezoidal, with tied
  scores handled as one operating point (a tie counts half, as in the Mann-Whitney U).
- PR-AUC: average precision, sum over distinct thresholds of (R_n - R_{n-1}) * P_n. No
  interpolation, so it is not optimistic; its chance level is the share of anomalies.
- At a threshold: a row is flagged when ``score > threshold`` or its score is not finite,
  exactly as the worker decides (``pipeline.contract.verdict``).
- A score that is not finite (the model overflowed) ranks above every finite one: the worker
  alerts on it, so for the curves it is the most anomalous row (such rows tie).

Kept here (not scikit-learn) so the trainer has no heavy runtime dependency for three
formulas; scikit-learn stays a dev/bench dependency that checks them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from pipeline.contract.exceptions import DataError
from pipeline.contract.verdict import is_anomalous

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Curve:
    """Points of a curve in plotting order, and the score threshold of each point."""

    x: FloatArray
    y: FloatArray
    thresholds: FloatArray


@dataclass(frozen=True)
class ThresholdMetrics:
    """Confusion counts and rates of the rows flagged at a threshold."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    precision: float
    recall: float
    f1: float
    false_positive_rate: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _check(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, BoolArray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length")
    return s, y.astype(bool)


def _ranking_values(s: FloatArray) -> FloatArray:
    """Scores to sort by: non-finite ones replaced by one value above every finite score
    (so they tie with each other and outrank the rest, as alerts do)."""
    finite = np.isfinite(s)
    if finite.all():
        return s
    top = float(s[finite].max()) if finite.any() else 0.0
    above = np.nextafter(top, np.inf) if top < np.finfo(np.float64).max else top
    return np.where(finite, s, above)


def _cumulative_counts(
    scores: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(true positives, false positives, threshold) at each distinct score, highest first."""
    s, y = _check(scores, labels)
    s = _ranking_values(s)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            f"ranking metrics need both classes: {n_pos} anomalous and {n_neg} normal rows"
        )
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # the last index of each run of equal scores: one operating point per distinct value
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[ends].astype(np.float64)
    fps = (ends + 1 - tps).astype(np.float64)
    return tps, fps, s[ends]


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> Curve:
    """False positive rate (x) vs true positive rate (y), starting at (0, 0)."""
    tps, fps, thresholds = _cumulative_counts(scores, labels)
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return Curve(fpr, tpr, np.r_[np.inf, thresholds])


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve (0.5 = chance, 1 = every anomaly above every normal row)."""
    curve = roc_curve(scores, labels)
    return float(np.sum(np.diff(curve.x) * (curve.y[1:] + curve.y[:-1]) / 2))


def precision_recall_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> Curve:
    """Recall (x) vs precision (y), from the highest threshold down; starts at recall 0."""
    tps, fps, thresholds = _cumulative_counts(scores, labels)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return Curve(np.r_[0.0, recall], np.r_[1.0, precision], np.r_[np.inf, thresholds])


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """PR-AUC as average precision: sum of (R_n - R_{n-1}) * P_n over distinct thresholds."""
    curve = precision_recall_curve(scores, labels)
    return float(np.sum(np.diff(curve.x) * curve.y[1:]))


def at_threshold(
    scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float
) -> ThresholdMetrics:
    """Counts and rates of flagging rows as the worker does (``score > threshold``, or a score
    that is not finite); an empty ratio counts as 0."""
    s, y = _check(scores, labels)
    flagged = is_anomalous(s, threshold)
    tp = int((flagged & y).sum())
    fp = int((flagged & ~y).sum())
    fn = int((~flagged & y).sum())
    tn = int((~flagged & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ThresholdMetrics(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        precision=precision,
        recall=recall,
        f1=f1,
        false_positive_rate=fp / (fp + tn) if fp + tn else 0.0,
    )
