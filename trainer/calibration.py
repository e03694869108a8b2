"""The conformal threshold and the false-alarm rate it promises, with its uncertainty.

With n calibration scores from normal rows the model never saw (``trainer.split``), the
threshold is the k-th smallest score, k = ceil((n + 1) q). For a new normal row exchangeable
with the calibration rows, P(score > threshold) <= 1 - q whatever the score distribution, and
over draws of the calibration set the false-alarm rate is distributed Beta(n + 1 - k, k)
(Vovk; Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction", 2021). Its mean
(n + 1 - k) / (n + 1) and a 90% interval go into the manifest.

When n is too small (k > n: fewer than q / (1 - q) rows), no calibration score is high enough:
the threshold falls back to the largest score and fit warns with the number of rows needed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)
INTERVAL = 0.90  # coverage of the recorded false-alarm-rate interval


@dataclass(frozen=True)
class ConformalThreshold:
    value: float
    quantile: float
    rows: int  # n
    rank: int  # k, 1-based; n when there were too few rows
    expected_false_alarm_rate: float
    false_alarm_rate_interval: tuple[float, float]
    enough_rows: bool


def conformal_rank(n: int, quantile: float) -> int:
    """k = ceil((n + 1) q), the finite-sample rank (may exceed n)."""
    return math.ceil((n + 1) * quantile - 1e-9)


def rows_needed(quantile: float) -> int:
    """The fewest calibration rows for which ceil((n + 1) q) <= n."""
    n = max(1, math.ceil(quantile / (1 - quantile) - 1e-9))
    while conformal_rank(n, quantile) > n:
        n += 1
    return n


def conformal_threshold(
    scores: npt.NDArray[np.float32], quantile: float, warn: bool = True
) -> ConformalThreshold:
    """The threshold over calibration ``scores`` at level ``quantile`` (see module docstring);
    ``warn=False`` leaves the too-few-rows warning to the caller (many small models)."""
    n = int(scores.size)
    if n == 0:
        raise ValueError("no calibration scores")
    k = conformal_rank(n, quantile)
    enough = k <= n
    if not enough and warn:
        log.warning(
            "too few calibration rows for the quantile",
            extra={
                "calibration_rows": n,
                "quantile": quantile,
                "rows_needed": rows_needed(quantile),
                "detail": f"{n} calibration rows cannot support quantile {quantile:g}: the "
                f"threshold is the largest calibration score and the false-alarm rate is "
                f"only bounded by 1/(n+1) = {1 / (n + 1):.4g}; give at least "
                f"{rows_needed(quantile)} calibration rows (more data or a larger "
                "--calibration-fraction) or a lower quantile",
            },
        )
    k = min(k, n)
    value = float(np.partition(scores, k - 1)[k - 1])
    a, b = n + 1 - k, k  # false-alarm rate ~ Beta(a, b)
    tail = (1 - INTERVAL) / 2
    return ConformalThreshold(
        value=value,
        quantile=quantile,
        rows=n,
        rank=k,
        expected_false_alarm_rate=a / (n + 1),
        false_alarm_rate_interval=(beta_quantile(tail, a, b), beta_quantile(1 - tail, a, b)),
        enough_rows=enough,
    )


def beta_cdf(x: float, a: int, b: int) -> float:
    """P(Beta(a, b) <= x) for integer a, b >= 1, as P(Binomial(a + b - 1, x) >= a).

    Sums the a smallest binomial terms in log space, so it stays exact and cheap when a is a
    small share of n (a false-alarm rate of a few percent) and needs no special functions.
    """
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    n = a + b - 1
    j = np.arange(a, dtype=np.float64)  # terms 0 .. a-1 of the lower tail
    log_ratio = np.log((n - j[:-1]) / (j[:-1] + 1)) if a > 1 else np.zeros(0)
    log_binom = np.concatenate([[0.0], np.cumsum(log_ratio)])
    log_pmf = log_binom + j * math.log(x) + (n - j) * math.log1p(-x)
    top = float(log_pmf.max())
    lower = math.exp(top) * float(np.exp(log_pmf - top).sum())
    return max(0.0, min(1.0, 1.0 - lower))


def beta_quantile(p: float, a: int, b: int) -> float:
    """The p-quantile of Beta(a, b) (integer parameters) by bisection on ``beta_cdf``."""
    lo, hi = 0.0, 1.0
    for _ in range(64):
        mid = (lo + hi) / 2
        if beta_cdf(mid, a, b) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def rate_interval(events: int, trials: int) -> tuple[float, float]:
    """Clopper-Pearson ``INTERVAL`` interval of a rate observed as events / trials."""
    if trials <= 0:
        return (0.0, 1.0)
    tail = (1 - INTERVAL) / 2
    low = 0.0 if events == 0 else beta_quantile(tail, events, trials - events + 1)
    high = 1.0 if events == trials else beta_quantile(1 - tail, events + 1, trials - events)
    return (low, high)
