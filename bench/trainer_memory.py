"""Peak memory of `python -m trainer fit` against data size: it must not grow with the data.

Generates synthetic sensor Parquet (8 numeric, 1 categorical, 1 boolean column; 500k-row
files with pyarrow's default row groups) for each size in a temporary directory, runs the
real trainer CLI in a subprocess per (size, run), and reads that child's peak RSS from
``os.wait4`` (the kernel's ru_maxrss of exactly that process). Prints the median of several
runs and the ratio to the smallest size, measured in the same run.

    .venv/bin/python -m bench.trainer_memory                      # 1M and 10M rows, 3 runs
    .venv/bin/python -m bench.trainer_memory --rows 1e6,1e7 --runs 3 --budget-mb 0 1024

``--budget-mb`` is TRAINER_MEMORY_BUDGET_MB: 0 forces streaming from Parquet every epoch (the
bounded path this benchmark is about); the default 1024 caches encoded rows in RAM while they
fit, so its peak grows with the data up to the budget, then streams.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.devstack.sampledata import normal_frame

FILE_ROWS = 500_000


@dataclass
class Run:
    rows: int
    budget_mb: int
    peak_mb: float
    wall_s: float
    mode: str


def write_dataset(root: Path, rows: int) -> Path:
    """``rows`` normal sensor rows in files of FILE_ROWS rows under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    written, part = 0, 0
    while written < rows:
        n = min(FILE_ROWS, rows - written)
        frame = normal_frame(n, seed=part, start_id=written).drop(columns=["machine_id"])
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False), root / f"{part:04d}.parquet"
        )
        written += n
        part += 1
    return root


def fit_once(data: Path, store: Path, budget_mb: int, epochs: int, batch_size: int) -> Run:
    """One trainer run in a child process; its own peak RSS from wait4."""
    cmd = [
        sys.executable, "-m", "trainer", "--log-format", "json", "fit",
        "--data", str(data), "--model-store", str(store), "--name", "bench",
        "--epochs", str(epochs), "--batch-size", str(batch_size),
        "--memory-budget-mb", str(budget_mb), "--progress", "log", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed ({proc.returncode}):\n{stderr[-3000:]}")
    mode = "stream" if '"data_mode":"stream"' in stderr.replace(" ", "") else "memory"
    return Run(0, budget_mb, usage.ru_maxrss / 1024, wall, mode)  # ru_maxrss is in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1e6,1e7", help="comma-separated dataset sizes")
    parser.add_argument("--runs", type=int, default=3, help="runs per size (median reported)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--budget-mb", type=int, nargs="+", default=[0])
    parser.add_argument("--data-dir", help="reuse/generate datasets here instead of a temp dir")
    args = parser.parse_args()
    sizes = [int(float(r)) for r in args.rows.split(",")]
    with tempfile.TemporaryDirectory(prefix="trainer-memory-") as tmp:
        base = Path(args.data_dir) if args.data_dir else Path(tmp)
        datasets = {}
        for rows in sizes:
            path = base / f"rows-{rows}"
            if not path.exists():
                print(f"writing {rows:,} rows to {path} ...", file=sys.stderr)
                write_dataset(path, rows)
            datasets[rows] = path
        results: list[Run] = []
        for budget in args.budget_mb:
            for rows in sizes:
                for i in range(args.runs):
                    run = fit_once(
                        datasets[rows], Path(tmp) / "store", budget, args.epochs, args.batch_size
                    )
                    run.rows = rows
                    results.append(run)
                    print(
                        f"  rows={rows:,} budget={budget} MB run {i + 1}: "
                        f"peak {run.peak_mb:.0f} MB, {run.wall_s:.1f} s ({run.mode})",
                        file=sys.stderr,
                    )
        print_table(results, sizes, args)


def print_table(results: list[Run], sizes: list[int], args: argparse.Namespace) -> None:
    print(
        f"\ntrainer fit, {args.epochs} epoch(s), batch {args.batch_size}, "
        f"median of {args.runs} runs, peak RSS of the trainer process\n"
    )
    print(
        "| rows | memory budget | data mode | peak RSS (MB) | min-max (MB) | vs smallest | fit s |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for budget in args.budget_mb:
        base = None
        for rows in sizes:
            runs = [r for r in results if r.rows == rows and r.budget_mb == budget]
            peak = statistics.median(r.peak_mb for r in runs)
            base = base or peak
            lo, hi = min(r.peak_mb for r in runs), max(r.peak_mb for r in runs)
            wall = statistics.median(r.wall_s for r in runs)
            print(
                f"| {rows:,} | {budget} MB | {runs[0].mode} | {peak:.0f} | {lo:.0f}-{hi:.0f} "
                f"| {peak / base:.2f}x | {wall:.0f} |"
            )


if __name__ == "__main__":
    main()
