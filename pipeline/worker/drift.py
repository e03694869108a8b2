"""Score drift and calibration: the live score distribution against the model's validation one.

The trainer stores quantiles of the held-out scores in the manifest (``score_quantiles``,
levels such as 0, 0.05, ..., 1, 0.99, 0.995, 0.999) and the threshold with its quantile q.
Those quantiles cut the score axis into bins whose expected mass under "no drift" is known
exactly: the difference of adjacent levels (the bin between the 0.95 and the 0.99 quantiles
holds 4% of normal traffic). The monitor counts live scores in the same bins and reports

* **PSI** (population stability index), ``sum((o - e) * ln(o / e))`` over the bins: about 0
  when live traffic looks like validation, ~0.1 for a moderate shift, > 0.2 for a large one;
* the **fraction over the threshold** in the window, to compare with the expected ``1 - q``
  (calibration: a model whose threshold no longer fits floods or starves the alert topic).

The window is exponentially decayed by record count (a half-life in records), so it has a
fixed statistical weight whatever the throughput, and it is reset when another model version
starts serving: a new model has new bins. ``pipeline_drift_window_records`` says how many
records the numbers rest on; alert rules should wait until it is large enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.contract.artifact import Manifest
from pipeline.worker.metrics import PipelineMetrics

FloatArray = npt.NDArray[np.float64]
DEFAULT_HALF_LIFE_RECORDS = 20_000
PSEUDO_COUNT = 0.5  # per bin, so an empty bin gives a finite PSI term (Jeffreys-style smoothing)


@dataclass(frozen=True)
class ReferenceBins:
    """Bins cut at the validation quantiles, with the mass each held on validation data."""

    cuts: FloatArray  # (K-1,) increasing cut points; bin i is [cuts[i-1], cuts[i])
    expected: FloatArray  # (K,) expected mass per bin, > 0, sums to 1
    threshold: float
    expected_over_threshold: float  # 1 - q

    @classmethod
    def from_quantiles(
        cls, quantiles: dict[str, float], threshold: float, threshold_quantile: float
    ) -> ReferenceBins:
        """Build bins from ``{level: value}``; levels 0 and 1 are the open ends of the axis.

        Tied quantile values (a model that scores many rows identically) collapse into one
        cut, whose lower-side mass is the smallest level with that value.
        """
        points = sorted((float(level), float(value)) for level, value in quantiles.items())
        inner = [(lv, v) for lv, v in points if 0.0 < lv < 1.0]
        if not inner:
            raise ValueError(f"no quantile strictly between levels 0 and 1 in {quantiles}")
        if any(not math.isfinite(v) for _, v in inner):
            raise ValueError(f"non-finite validation quantile in {quantiles}")
        values = np.maximum.accumulate(np.array([v for _, v in inner], dtype=np.float64))
        cuts: list[float] = []
        below: list[float] = []  # validation mass below each cut
        for (level, _), value in zip(inner, values, strict=True):
            if cuts and value == cuts[-1]:
                continue
            cuts.append(float(value))
            below.append(level)
        expected = np.diff(np.array([0.0, *below, 1.0], dtype=np.float64))
        return cls(
            cuts=np.array(cuts, dtype=np.float64),
            expected=expected,
            threshold=threshold,
            expected_over_threshold=1.0 - threshold_quantile,
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ReferenceBins:
        """The manifest's validation bins; for a per-entity version those of scores relative
        to each model's own threshold (which the worker then observes), cut at 1."""
        t = manifest.threshold
        if manifest.entities is not None:
            return cls.from_quantiles(manifest.entities.relative_score_quantiles, 1.0, t.quantile)
        return cls.from_quantiles(manifest.score_quantiles, t.value, t.quantile)

    @property
    def n_bins(self) -> int:
        return len(self.expected)

    def counts(self, scores: npt.ArrayLike) -> FloatArray:
        """How many scores fall in each bin (a score equal to a cut goes to the upper bin)."""
        index = np.searchsorted(self.cuts, np.asarray(scores, dtype=np.float64), side="right")
        return np.bincount(index, minlength=self.n_bins).astype(np.float64)


def psi(counts: npt.ArrayLike, expected: npt.ArrayLike) -> float:
    """Population stability index of observed bin counts against expected bin masses.

    Each bin gets ``PSEUDO_COUNT`` extra records before normalising, so a bin nothing fell in
    costs a large but finite amount instead of infinity.
    """
    c = np.asarray(counts, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if c.shape != e.shape or not len(e):
        raise ValueError(f"counts {c.shape} and expected {e.shape} must have one shape")
    o = (c + PSEUDO_COUNT) / (c.sum() + PSEUDO_COUNT * len(c))
    return float(np.sum((o - e) * np.log(o / e)))


class DriftMonitor:
    """Decayed histogram of live scores in the model's reference bins, exported as gauges."""

    def __init__(
        self, metrics: PipelineMetrics, half_life_records: int = DEFAULT_HALF_LIFE_RECORDS
    ) -> None:
        if half_life_records <= 0:
            raise ValueError(f"half_life_records must be > 0, got {half_life_records}")
        self.metrics = metrics
        self.half_life_records = half_life_records
        self.version: str | None = None
        self.bins: ReferenceBins | None = None
        self.counts: FloatArray = np.zeros(0)
        self.over = 0.0  # decayed count of scores over the threshold

    def use_model(self, manifest: Manifest) -> None:
        """Start a fresh window against this model's validation distribution."""
        self.version = manifest.version
        self.counts = np.zeros(0)
        self.over = 0.0
        m = self.metrics
        m.model_created.set(manifest.created_at.timestamp())
        try:
            self.bins = ReferenceBins.from_manifest(manifest)
        except ValueError:
            self.bins = None  # no usable quantiles: calibration only through the counters
        m.drift_window_records.set(0)
        m.drift_psi.set(math.nan)
        m.drift_over_threshold.set(math.nan)
        m.drift_expected_over_threshold.set(1.0 - manifest.threshold.quantile)
        if self.bins is not None:
            self.counts = np.zeros(self.bins.n_bins)

    def observe(self, manifest: Manifest, scores: npt.ArrayLike) -> None:
        """Fold one batch's scores (of the model ``manifest`` describes) into the window."""
        if manifest.version != self.version:
            self.use_model(manifest)
        s = np.asarray(scores, dtype=np.float64)
        if self.bins is None or not s.size:
            return
        decay = 0.5 ** (s.size / self.half_life_records)
        self.counts = self.counts * decay + self.bins.counts(s)
        self.over = self.over * decay + float(np.count_nonzero(s > self.bins.threshold))
        total = float(self.counts.sum())
        m = self.metrics
        m.drift_window_records.set(total)
        m.drift_psi.set(psi(self.counts, self.bins.expected))
        m.drift_over_threshold.set(self.over / total)
