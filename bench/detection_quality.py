"""Detection quality: ROC-AUC and PR-AUC of our models vs IsolationForest and PyOD's AE.

    python -m bench.detection_quality                    # everything, 5 seeds
    python -m bench.detection_quality --datasets digits --seeds 3 --detail
    python -m bench.detection_quality --set epochs=100   # experiment with trainer settings

Every method trains on the same normal rows and scores the same test rows (``bench.data``).
Our models use the trainer's DEFAULT settings (``--model`` is the only thing that changes)
unless ``--set`` is given; tables made with ``--set`` say so in their header.

For one-class datasets (digits, mnist: each digit in turn is normal) a seed's number is the
mean over the ten digits; "mean ± std" is over seeds. The last table averages the datasets
and checks the goal: the default model (``ae``) at or above both baselines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from bench.data import DATASETS, Task, split
from bench.methods import BASELINES, OURS, Outcome, run_method

DEFAULT_METHOD = "ae"


@dataclass(frozen=True)
class Record:
    dataset: str
    task: str
    seed: int
    outcome: Outcome
    anomaly_share: float  # of the test rows: the chance level of PR-AUC


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--set wants key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def run(
    datasets: list[str],
    seeds: list[int],
    methods: list[str],
    overrides: dict[str, Any],
    max_rows: int | None = None,
    task_limit: int | None = None,
    progress: bool = True,
) -> list[Record]:
    records: list[Record] = []
    for name in datasets:
        tasks: list[Task] = DATASETS[name]()[:task_limit]
        for task in tasks:
            for seed in seeds:
                data = split(task, seed, max_rows=max_rows)
                for method in methods:
                    outcome = run_method(method, task, data, seed, overrides)
                    share = float(data.y_test.mean())
                    records.append(Record(name, task.name, seed, outcome, share))
                    if progress:
                        print(
                            f"  {name:13s} {task.name:10s} seed {seed} {method:8s} "
                            f"roc {outcome.roc_auc:.3f} pr {outcome.pr_auc:.3f} "
                            f"fit {outcome.fit_s:.1f}s",
                            file=sys.stderr,
                        )
    return records


def per_seed(records: list[Record], metric: str) -> dict[tuple[str, str], dict[int, float]]:
    """(dataset, method) -> seed -> metric averaged over the dataset's tasks."""
    acc: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in records:
        acc[(r.dataset, r.outcome.method, r.seed)].append(getattr(r.outcome, metric))
    out: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for (dataset, method, seed), values in acc.items():
        out[(dataset, method)][seed] = statistics.fmean(values)
    return out


def _fmt(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def quality_table(records: list[Record], datasets: list[str], methods: list[str]) -> str:
    roc, pr = per_seed(records, "roc_auc"), per_seed(records, "pr_auc")
    fit = per_seed(records, "fit_s")
    lines = [
        "| dataset | method | ROC-AUC | PR-AUC | fit s (median) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in datasets:
        for m in methods:
            if (d, m) not in roc:
                continue
            lines.append(
                f"| {d} | {m} | {_fmt(list(roc[(d, m)].values()))} | "
                f"{_fmt(list(pr[(d, m)].values()))} | "
                f"{statistics.median(fit[(d, m)].values()):.2f} |"
            )
    chance = ", ".join(
        f"{d} {statistics.fmean(r.anomaly_share for r in records if r.dataset == d):.2f}"
        for d in datasets
    )
    lines.append(f"\nPR-AUC chance level (share of anomalies among the test rows): {chance}")
    return "\n".join(lines)


def detail_table(records: list[Record], methods: list[str]) -> str:
    """Mean RO-AUC per task (each digit), to find where a method falls behind."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in records:
        acc[(r.dataset, r.task, r.outcome.method)].append(r.outcome.roc_auc)
    tasks = list(dict.fromkeys((r.dataset, r.task) for r in records))
    lines = [
        "| dataset | task | " + " | ".join(methods) + " |",
        "| --- | --- |" + " --- |" * len(methods),
    ]
    for d, t in tasks:
        cells = [f"{statistics.fmean(acc[(d, t, m)]):.3f}" for m in methods if acc[(d, t, m)]]
        lines.append(f"| {d} | {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(records: list[Record], datasets: list[str], methods: list[str]) -> str:
    """Mean over datasets of each method, and the default model's margin to each baseline."""
    roc, pr = per_seed(records, "roc_auc"), per_seed(records, "pr_auc")

    def avg(table: dict[tuple[str, str], dict[int, float]], m: str) -> float:
        return statistics.fmean(statistics.fmean(table[(d, m)].values()) for d in datasets)

    present = [m for m in methods if all((d, m) in roc for d in datasets)]
    lines = [
        "| method | mean ROC-AUC over datasets | mean PR-AUC over datasets |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {m} | {avg(roc, m):.3f} | {avg(pr, m):.3f} |" for m in present]
    if DEFAULT_METHOD in present:
        for base in (b for b in BASELINES if b in present):
            worst = min(
                statistics.fmean(roc[(d, DEFAULT_METHOD)].values())
                - statistics.fmean(roc[(d, base)].values())
                for d in datasets
            )
            d_roc = avg(roc, DEFAULT_METHOD) - avg(roc, base)
            d_pr = avg(pr, DEFAULT_METHOD) - avg(pr, base)
            lines.append(
                f"\n{DEFAULT_METHOD} - {base}: mean ROC-AUC {d_roc:+.3f}, mean PR-AUC {d_pr:+.3f}, "
                f"worst dataset ROC-AUC {worst:+.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    parser.add_argument("--methods", default=",".join(OURS + BASELINES), help="comma-separated")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--tasks", type=int, default=None, help="first N tasks per dataset")
    parser.add_argument("--max-rows", type=int, default=None, help="cap rows (smoke runs)")
    parser.add_argument("--set", action="append", default=[], help="trainer setting key=value")
    parser.add_argument("--detail", action="store_true", help="also print ROC-AUC per task")
    parser.add_argument("--json", help="write every run's numbers to this file")
    parser.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    overrides = parse_overrides(args.set)
    started = time.monotonic()
    records = run(
        datasets,
        list(range(args.seeds)),
        methods,
        overrides,
        max_rows=args.max_rows,
        task_limit=args.tasks,
        progress=not args.quiet,
    )
    header = "trainer defaults" if not overrides else f"trainer settings {overrides}"
    print(f"\n## Detection quality ({header}; seeds {args.seeds})\n")
    print(quality_table(records, datasets, methods))
    if args.detail:
        print("\n" + detail_table(records, methods))
    print("\n" + summary_table(records, datasets, methods))
    print(f"\n({time.monotonic() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                [
                    {**asdict(r.outcome), "dataset": r.dataset, "task": r.task, "seed": r.seed}
                    for r in records
                ],
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
