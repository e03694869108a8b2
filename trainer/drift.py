"""Numeric columns that move with time, found at fit time under a time split.

With ``--split-by`` a time column, the calibration rows are the latest of the training
period. A column whose latest rows average outside anything the fit rows held (a month, a
day counter, a software version that only goes up) will be outside the model's training range
for every record the worker ever sees. An autoencoder cannot reconstruct a value it never saw,
so that one column's error grows with time and comes to rank the records by date rather than
by how abnormal they are: on the benchmark's flights set, the `month` feature's error on the
later months was 13x its error on the training months (BENCHMARKS.md, "Detection quality").
Fit leaves such a column out of the features by default (``drop_drifting_columns``; the
manifest lists it in ``training.drifting_columns`` and the spec's ``ignored_columns``) and
says so in a warning. On the weather set with its month and day kept (the benchmark's first
version of it, a tuning set), leaving out the month raised ROC-AUC from 0.547 to 0.671 and
brought the false alarms at q = 0.99 from 65x to 1.9x of 1 - q.

The rule is deliberately blunt, the latest rows' MEAN outside the fit rows' [min, max], so it
fires only when most of the latest rows are out of range: a seasonal column (temperature,
half a year in) stays inside its range and is not named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from trainer.spec import Kind, SpecStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftedColumn:
    name: str
    fit_min: float
    fit_max: float
    latest_mean: float


def drifting_columns(
    kinds: dict[str, Kind], stats: SpecStats, split_by: str, dropped: bool
) -> list[str]:
    """Numeric columns whose latest rows average outside the fit rows' range, each warned
    about (saying whether fit leaves it out, ``dropped``, or keeps it)."""
    found = _drifted(kinds, stats)
    for d in found:
        _warn(d, split_by, dropped)
    return [d.name for d in found]


def _drifted(kinds: dict[str, Kind], stats: SpecStats) -> list[DriftedColumn]:
    out = []
    for name, latest in stats.latest.items():
        fitted = stats.moments.get(name)
        if kinds.get(name) != "numeric" or fitted is None:
            continue
        if not (latest.n.any() and fitted.n.any()):
            continue  # a column that is all null on one side: no range to compare
        lo, hi, mean = float(fitted.lo[0]), float(fitted.hi[0]), float(latest.mean[0])
        if mean < lo or mean > hi:
            out.append(DriftedColumn(name, lo, hi, mean))
    return out


def _warn(d: DriftedColumn, split_by: str, dropped: bool) -> None:
    seen = (
        f"column {d.name!r}: the latest rows (the calibration rows of the split by "
        f"{split_by!r}) average {d.latest_mean:g}, outside its range in the fit rows "
        f"[{d.fit_min:g}, {d.fit_max:g}], so every record the worker scores would be out of "
        "its training range."
    )
    advice = (
        " Left out of the features; train on a period that covers its whole cycle to use "
        "it, or keep it with --no-drop-drifting-columns."
        if dropped
        else " Kept (--no-drop-drifting-columns): its error will grow with time and come to "
        "rank the records by date."
    )
    log.warning(
        "column drifts with time",
        extra={
            "column": d.name,
            "dropped": dropped,
            "fit_min": d.fit_min,
            "fit_max": d.fit_max,
            "latest_mean": d.latest_mean,
            "detail": seen + advice,
        },
    )
