"""Reading training data: Parquet file, directory or glob, local or any fsspec URL, in batches.

Memory stays bounded by the batch size: nothing here holds more than one Arrow record batch.
Rows are visited in a deterministic order (fragments sorted by path, batches in file order),
which makes the train/validation split a pure function of (row position, seed).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.exceptions import DataError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Batch:
    """One Arrow record batch and the global positions of its rows."""

    table: pa.RecordBatch
    positions: npt.NDArray[np.uint64]


class ParquetSource:
    """A Parquet dataset opened once; iterate it as many times as needed."""

    def __init__(self, location: str, batch_rows: int = 65_536) -> None:
        self.location = location
        self.batch_rows = batch_rows
        self.dataset = _open_dataset(location)
        self.fragments = sorted(self.dataset.get_fragments(), key=lambda f: f.path)
        if not self.fragments:
            raise DataError(f"no Parquet files found at {location!r}")

    @property
    def schema(self) -> pa.Schema:
        return self.dataset.schema

    @property
    def files(self) -> list[str]:
        return [f.path for f in self.fragments]

    def count_rows(self) -> int:
        return sum(f.count_rows() for f in self.fragments)

    def batches(self, columns: list[str]) -> Iterator[Batch]:
        """Record batches of the given columns, with global row positions."""
        position = 0
        for fragment in self.fragments:
            try:
                for rb in fragment.to_batches(columns=columns, batch_size=self.batch_rows):
                    n = rb.num_rows
                    yield Batch(rb, np.arange(position, position + n, dtype=np.uint64))
                    position += n
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"cannot read {fragment.path}: {exc}") from exc


def _open_dataset(location: str) -> ds.Dataset:
    """Open a file, directory or glob; URLs go through fsspec."""
    try:
        if "://" in location:
            fs, path = fsspec.core.url_to_fs(location)
            paths = sorted(fs.glob(path)) if glob.has_magic(path) else path
            return ds.dataset(paths, format="parquet", filesystem=fs)
        if glob.has_magic(location):
            paths = sorted(glob.glob(location))
            if not paths:
                raise DataError(f"no files match {location!r}")
            return ds.dataset(paths, format="parquet")
        if not Path(location).exists():
            raise DataError(f"training data not found: {location}")
        return ds.dataset(location, format="parquet")
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise DataError(f"cannot open Parquet data at {location!r}: {exc}") from exc


def split_mask(
    positions: npt.NDArray[np.uint64], fraction: float, seed: int
) -> npt.NDArray[np.bool_]:
    """True for validation rows: a hash of (position, seed) below ``fraction``.

    A pure function of the row's position, so every pass (statistics, training, threshold)
    agrees on which rows are held out, with no list of ids kept in memory.
    """
    with np.errstate(over="ignore"):
        z = positions + np.uint64(seed) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction
