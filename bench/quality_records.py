"""One run of ``bench.detection_quality`` as records: how they average, and the JSON file
``--json`` writes and ``--compare`` reads back (one place, so a saved run averages exactly
like the tables of the run that made it)."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from bench.methods import Outcome


@dataclass(frozen=True)
class Record:
    dataset: str
    task: str
    seed: int
    outcome: Outcome
    anomaly_share: float  # of the test rows: the chance level of PR-AUC


def per_seed(records: list[Record], metric: str) -> dict[tuple[str, str], dict[int, float]]:
    """(dataset, method) -> seed -> metric averaged over the dataset's tasks."""
    acc: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in records:
        acc[(r.dataset, r.outcome.method, r.seed)].append(getattr(r.outcome, metric))
    out: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for (dataset, method, seed), values in acc.items():
        out[(dataset, method)][seed] = statistics.fmean(values)
    return out


def mean_by_dataset(records: list[Record], metric: str) -> dict[tuple[str, str], float]:
    """(dataset, method) -> metric averaged over tasks per seed, then over seeds."""
    return {k: statistics.fmean(v.values()) for k, v in per_seed(records, metric).items()}


def save_records(records: list[Record], path: str) -> None:
    rows = [
        {
            **asdict(r.outcome),
            "dataset": r.dataset,
            "task": r.task,
            "seed": r.seed,
            "anomaly_share": r.anomaly_share,
        }
        for r in records
    ]
    Path(path).write_text(json.dumps(rows, indent=1))


def load_records(path: str) -> list[Record]:
    """The records ``save_records`` wrote; anything else is refused, naming the file."""
    names = {f.name for f in fields(Outcome)}
    try:
        return [
            Record(
                row["dataset"],
                row["task"],
                int(row["seed"]),
                Outcome(**{k: v for k, v in row.items() if k in names}),
                float(row.get("anomaly_share", math.nan)),
            )
            for row in json.loads(Path(path).read_text())
        ]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise SystemExit(f"{path}: not a --json file of this benchmark ({exc!r})") from exc
