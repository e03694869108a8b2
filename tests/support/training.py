"""Helpers for trainer tests: small Parquet datasets and trainer subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.contract.artifact import Manifest
from pipeline.devstack.sampledata import normal_frame
from trainer.split import PART_NAMES, SplitOptions, split_indices


def write_sensors(path: Path, rows: int, *, files: int = 1, row_group: int | None = None) -> Path:
    """Normal sensor rows as ``files`` Parquet files under ``path`` (a directory)."""
    path.mkdir(parents=True, exist_ok=True)
    frame = normal_frame(rows, seed=7)
    for i, part in enumerate(np.array_split(np.arange(rows), files)):
        table = pa.Table.from_pandas(frame.iloc[part], preserve_index=False)
        pq.write_table(table, path / f"part-{i:03d}.parquet", row_group_size=row_group)
    return path


def part_rows(rows: int, seed: int = 0) -> dict[str, int]:
    """Rows of each part ('fit', 'select', 'calibrate') of the default split of ``rows`` rows."""
    table = pa.table({"i": np.arange(rows)})
    parts = split_indices(table, SplitOptions(seed=seed))
    return {name: len(parts[name]) for name in PART_NAMES}


def part_mask(positions: np.ndarray, total_rows: int, part: str, seed: int = 0) -> np.ndarray:
    """True for the rows at ``positions`` (of ``total_rows``) in ``part`` of the default split."""
    table = pa.table({"i": np.arange(total_rows)})
    return np.isin(positions, split_indices(table, SplitOptions(seed=seed))[part])


def trainer_env() -> dict[str, str]:
    """Environment for trainer subprocesses: single-threaded torch, no stray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINER_")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def trainer_cmd(*args: Any) -> list[str]:
    return [sys.executable, "-m", "trainer", "--log-format", "json", "fit", *map(str, args)]


def run_trainer(*args: Any, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        trainer_cmd(*args),
        capture_output=True,
        text=True,
        check=False,
        env=trainer_env(),
        timeout=timeout,
    )


def train_sensors(
    root: Path,
    rows: int,
    *,
    data_seed: int,
    epochs: int,
    seed: int,
    data_name: str = "normal",
    **settings: Any,
) -> Manifest:
    """Fit the demo's sensor model on ``rows`` normal rows written to ``root``; the model is
    published as ``sensors`` in ``root / "store"``; ``settings``: more trainer settings."""
    from trainer.fit import fit
    from trainer.settings import load_trainer_settings

    data = root / f"{data_name}.parquet"
    normal_frame(rows, seed=data_seed).to_parquet(data)
    return fit(
        load_trainer_settings(
            data=str(data),
            model_store=str(root / "store"),
            name="sensors",
            id_column="machine_id",
            epochs=epochs,
            seed=seed,
            device="cpu",
            **settings,
        )
    )
