"""Repeated measurements as median (min-max), and the verdict on a goal they support.

Why a verdict computed from the spread: a median on the right side of a goal says little when
single runs land on both sides of it (a worker/ceiling ratio of 0.73, 1.25 and 1.10 has a
median of 110% but does not show ">= 80%"). A goal is claimed ``met`` only when every run
meets it (the whole min-max range is on the goal's side), ``not met`` when no run does, and
``not shown`` when runs fall on both sides, or when there are fewer than ``MIN_RUNS`` (one
10 s run has no spread to judge by): more or quieter runs are needed before either claim.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MET, NOT_MET, NOT_SHOWN = "met", "not met", "not shown"
MIN_RUNS = 3


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("a spread needs at least one value")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, spec: str = ",.0f", scale: float = 1.0, unit: str = "") -> str:
        """``median (min-max)`` with ``spec`` applied to each (times ``scale``), e.g.
        ``54,022 (47,677-59,862)`` or ``99% (73-125%)``; one run shows its value alone."""
        m, lo, hi = (format(x * scale, spec) for x in (self.median, self.low, self.high))
        return f"{m}{unit}" if self.runs == 1 else f"{m}{unit} ({lo}-{hi}{unit})"


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """The spread of per-run ratios (run i over run i: the variants of a run are interleaved,
    so they saw the same machine load), not the ratio of two medians."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} runs against {len(denominators)}")
    return Spread.of([n / d for n, d in zip(numerators, denominators, strict=True)])


def verdict(spread: Spread, goal: float, *, higher_is_better: bool) -> str:
    """``met`` if every run meets ``goal``, ``not met`` if none does, else ``not shown``
    (also with fewer than ``MIN_RUNS`` runs)."""
    if spread.runs < MIN_RUNS:
        return NOT_SHOWN
    worst, best = (spread.low, spread.high) if higher_is_better else (spread.high, spread.low)

    def meets(x: float) -> bool:
        return x >= goal if higher_is_better else x <= goal

    if meets(worst):
        return MET
    if not meets(best):
        return NOT_MET
    return NOT_SHOWN
