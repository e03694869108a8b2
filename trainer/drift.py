"""Columns that move with time, found at fit time under a time split.

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

The rules are deliberately blunt, so they fire only when most of the latest rows are out of
range: for a numeric column, the latest rows' MEAN outside the fit rows' [min, max] (a
seasonal column such as temperature, half a year in, stays inside its range and is not
named); for a categorical one, more than half of the latest rows in categories the fit rows
never had (a date or a build id read as text).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from trainer.spec import Kind, SpecStats

log = logging.getLogger(__name__)


NEW_CATEGORY_SHARE = 0.5  # drifts above this share of latest rows in categories never fitted


@dataclass(frozen=True)
class DriftedColumn:
    name: str
    evidence: str  # what the latest rows showed, for the warning
    fields: dict[str, float]


def drifting_columns(
    kinds: dict[str, Kind], stats: SpecStats, split_by: str, dropped: bool
) -> list[str]:
    """Columns whose latest rows lie outside what the fit rows held, each warned about
    (saying whether fit leaves it out, ``dropped``, or keeps it)."""
    found = [d for name in kinds if (d := _drifted(name, kinds[name], stats)) is not None]
    for d in found:
        _warn(d, split_by, dropped)
    return [d.name for d in found]


def _drifted(name: str, kind: Kind, stats: SpecStats) -> DriftedColumn | None:
    if name in stats.latest:  # numeric when gathered, even if now read as levels (max_levels)
        return _numeric_drift(name, stats)
    if kind == "categorical":
        return _category_drift(name, stats)
    return None


def _numeric_drift(name: str, stats: SpecStats) -> DriftedColumn | None:
    """The latest rows' mean outside the fit rows' [min, max]."""
    latest, fitted = stats.latest.get(name), stats.moments.get(name)
    if latest is None or fitted is None or not (latest.n.any() and fitted.n.any()):
        return None  # a column that is all null on one side: no range to compare
    lo, hi, mean = float(fitted.lo[0]), float(fitted.hi[0]), float(latest.mean[0])
    if lo <= mean <= hi:
        return None
    evidence = f"average {mean:g}, outside its range in the fit rows [{lo:g}, {hi:g}]"
    return DriftedColumn(name, evidence, {"fit_min": lo, "fit_max": hi, "latest_mean": mean})


def _category_drift(name: str, stats: SpecStats) -> DriftedColumn | None:
    """Most of the latest rows in categories the fit rows never had (a date or a build id
    read as text): all of them would fall in the unknown bucket."""
    latest, fitted = stats.latest_counts.get(name), stats.counts.get(name)
    total = sum(latest.values()) if latest else 0
    if not latest or not fitted or total == 0:
        return None
    new = sum(n for value, n in latest.items() if value not in fitted) / total
    if new <= NEW_CATEGORY_SHARE:
        return None
    evidence = f"are {new:.0%} in categories the fit rows never had"
    return DriftedColumn(name, evidence, {"new_category_share": new})


def _warn(d: DriftedColumn, split_by: str, dropped: bool) -> None:
    seen = (
        f"column {d.name!r}: the latest rows (the calibration rows of the split by "
        f"{split_by!r}) {d.evidence}, so every record the worker scores would be out of "
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
        extra={"column": d.name, "dropped": dropped, **d.fields, "detail": seen + advice},
    )
