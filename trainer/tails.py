"""Heavy-tailed numeric columns, found at fit time and compressed by a signed logarithm.

An amount, an income or a count with a long right tail puts most normal rows in a narrow
band and a few normal rows far out. Standardised as they are, those few rows' values are
many standard deviations out, the autoencoder reconstructs them worst, and their error
outranks the records that are abnormal for other reasons. Compressed to
sign(value) log(1 + |value| / scale), about linear below ``scale`` and a logarithm above it,
such a column has its far values a few standard deviations out instead, and a value far
outside them still is (log(1 + 1000) is 6.9). Odd and defined everywhere, the transform needs
no clipping for a negative value or a zero the fit rows never had. (The benchmark's trial
used asinh, the same shape; the signed log1p costs the scorer a quarter as much.)

The rule: a numeric column with at least ``MIN_DISTINCT`` distinct values in the fit rows
whose 99th percentile (or 1st) lies more than ``ratio`` interquartile ranges from its median
(a column that is nearly always one value, with an interquartile range of 0, qualifies when
its tail has enough distinct values); the scale is the median magnitude of its non-zero
values. On the benchmark's twelve tuning sets, ratio 3.5 was chosen over 5 and over the
moment skewness at 1 and 2 (which read a few outliers of diamonds' depth column ``z`` as a
tail and cost diamonds 0.017-0.037): creditcard 0.746 -> 0.795 (its expenditure and income),
weather 0.762 -> 0.772 (precipitation), no set below -0.002, mean +0.005 (BENCHMARKS.md,
"Heavy-tailed columns").

The percentiles come from a uniform sample of each numeric column's fit rows (at most
``SAMPLE_ROWS`` values, kept by random priority so that the ranks of a multi-process fit merge
their samples into one uniform sample), and so do the mean and std of the compressed values:
exact up to that many fit rows, a sample's estimate above.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from pipeline.contract.scoring import signed_log

SAMPLE_ROWS = 5_000  # per numeric column: 80 kB, so 1,000 columns sample in 80 MB
MIN_DISTINCT = 20
DEFAULT_RATIO = 3.5


@dataclass
class TailSample:
    """A uniform sample of a column's values: the ``SAMPLE_ROWS`` of lowest random priority."""

    values: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    priority: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))

    def add(self, values: npt.NDArray[np.float64], rng: np.random.Generator) -> None:
        """Offer a batch of values (NaN for missing, left out)."""
        kept = values[~np.isnan(values)]
        self._keep(kept, rng.random(kept.size))

    def merge(self, other: TailSample) -> None:
        """Fold another process's sample into this one (still uniform over both)."""
        self._keep(other.values, other.priority)

    def _keep(self, values: npt.NDArray[np.float64], priority: npt.NDArray[np.float64]) -> None:
        values = np.concatenate([self.values, values])
        priority = np.concatenate([self.priority, priority])
        if values.size > SAMPLE_ROWS:
            keep = np.argpartition(priority, SAMPLE_ROWS)[:SAMPLE_ROWS]
            values, priority = values[keep], priority[keep]
        self.values, self.priority = values, priority


def tail_scale(values: npt.NDArray[np.float64], ratio: float) -> float | None:
    """The compression scale of a heavy-tailed column (see the module docstring), None otherwise."""
    if ratio <= 0 or np.unique(values).size < MIN_DISTINCT:
        return None
    q01, q25, q50, q75, q99 = np.quantile(values, [0.01, 0.25, 0.5, 0.75, 0.99])
    reach = max(q99 - q50, q50 - q01)
    if reach <= ratio * (q75 - q25):
        return None
    magnitude = np.abs(values[values != 0])
    return float(np.median(magnitude))


def compressed(values: npt.NDArray[np.float64], scale: float) -> npt.NDArray[np.float64]:
    """The values as the scorer compresses them (``pipeline.contract.scoring.signed_log``)."""
    return signed_log(torch.from_numpy(values), 1.0 / scale).numpy()
