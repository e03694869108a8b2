"""The one rule that turns a score into a verdict: anomalous when over the threshold, or when
the score is not a finite number.

Why the second half: NaN compares False with everything, so ``score > threshold`` alone
commits a record whose score the model could not compute as *normal*, silently. The codec
accepts any finite float32 (up to about 3.4e38); standardised, squared and summed inside the
model such values overflow to infinity, and infinity minus infinity is NaN. A record the model
cannot score is at least as suspicious as one it scores high, so it alerts, with the reason
``non_finite_score``.

The worker's alerts (``RoutedScores.is_anomaly``, ``alerts.build_event``), ``pipeline score``
and ``trainer evaluate`` all decide with these functions; nothing else compares a score with a
threshold. Kept free of torch so the alert contract can use it without pulling the model in.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

AnomalyReason = Literal["over_threshold", "non_finite_score"]
OVER_THRESHOLD: AnomalyReason = "over_threshold"
NON_FINITE_SCORE: AnomalyReason = "non_finite_score"
REASONS: tuple[AnomalyReason, ...] = (OVER_THRESHOLD, NON_FINITE_SCORE)


def anomaly_reason(score: float, threshold: float) -> AnomalyReason | None:
    """Why one record is an anomaly, or None when it is normal."""
    if not math.isfinite(score):
        return NON_FINITE_SCORE
    return OVER_THRESHOLD if score > threshold else None


def is_anomalous(scores: npt.ArrayLike, thresholds: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Element-wise ``anomaly_reason(...) is not None`` for a batch (thresholds: one value, or
    one per row)."""
    s = np.asarray(scores)
    with np.errstate(invalid="ignore"):
        return np.asarray(~np.isfinite(s) | np.greater(s, thresholds), dtype=np.bool_)


def non_finite(scores: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Rows whose score is NaN or infinite (anomalies for the reason ``non_finite_score``)."""
    return np.asarray(~np.isfinite(np.asarray(scores)), dtype=np.bool_)
