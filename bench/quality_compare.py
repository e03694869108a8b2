"""A trial of ``bench.detection_quality`` beside an earlier run of it, set by set.

Choosing a default is one run of the tuning group with the default (saved with ``--json``)
and one run per trial (``--set key=value --compare saved.json``): the changes per set and
per group are then printed by the benchmark itself, with the same averaging as its tables
(tasks per seed, then seeds), instead of being assembled by hand from two outputs.
"""

from __future__ import annotations

import statistics

from bench.quality_records import load_records, mean_by_dataset

Means = dict[tuple[str, str], float]  # (dataset, method) -> mean over seeds


def load_means(path: str) -> tuple[Means, Means]:
    """(ROC-AUC, PR-AUC) per (dataset, method) of a file ``--json`` wrote."""
    records = load_records(path)
    return mean_by_dataset(records, "roc_auc"), mean_by_dataset(records, "pr_auc")


def comparison_table(
    now: tuple[Means, Means],
    before: tuple[Means, Means],
    groups: dict[str, list[str]],
    methods: list[str],
    label: str,
) -> str:
    """Per set and method both runs have: ROC-AUC now, before and the change (and PR-AUC's
    change); then per group and method, the change of the mean over those sets."""
    lines = [
        f"## Against {label}\n",
        "| dataset | method | ROC-AUC | before | change | PR-AUC change |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for d in (d for ds in groups.values() for d in ds):
        for m in methods:
            if (d, m) in now[0] and (d, m) in before[0]:
                roc, old = now[0][(d, m)], before[0][(d, m)]
                pr_change = now[1][(d, m)] - before[1][(d, m)]
                lines.append(
                    f"| {d} | {m} | {roc:.3f} | {old:.3f} | {roc - old:+.3f} | {pr_change:+.3f} |"
                )
    lines.append("")
    for g, ds in groups.items():
        if ds:
            lines += [_group_line(g, m, ds, now[0], before[0]) for m in methods]
    return "\n".join(lines)


def _group_line(group: str, method: str, datasets: list[str], now: Means, before: Means) -> str:
    both = [d for d in datasets if (d, method) in now and (d, method) in before]
    if not both:
        return f"{group}, {method}: no set in both runs"
    new = statistics.fmean(now[(d, method)] for d in both)
    old = statistics.fmean(before[(d, method)] for d in both)
    change = f"{old:.3f} -> {new:.3f} ({new - old:+.3f})"
    return f"{group}, {method}: mean ROC-AUC {change} over {len(both)} sets"
