"""Reading training data: Parquet file, directory or glob, local or any fsspec URL, in batches.

Memory stays bounded by the read batch size (and Parquet's row-group size): nothing here holds
more than a few Arrow record batches. Rows have a global *position*: files sorted by path, row
groups in file order, rows in row-group order. The fit/select/calibrate split
(``trainer.split``) is a pure function of the position (and optionally one column), so every
pass (statistics, training, threshold) and every process agrees on which rows are held out,
whatever the number of processes.

Sharding (multi-process training): the positions 0..N are cut into ``world`` contiguous
ranges of (almost) equal length; a process reads only the row groups that overlap its range,
so each rank reads its own shard of rows.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.contract.exceptions import DataError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_READAHEAD_BATCHES = 2  # decoded batches pyarrow may hold ahead of the consumer


@dataclass(frozen=True)
class Batch:
    """One Arrow record batch, the global positions of its rows and the file it came from."""

    table: pa.RecordBatch
    positions: npt.NDArray[np.uint64]
    path: str


@dataclass(frozen=True)
class Piece:
    """One Parquet row group: the unit of reading, sharding and shuffling."""

    fragment: Any  # pyarrow ParquetFileFragment restricted to this row group
    path: str
    start: int  # global position of its first row
    rows: int


@dataclass(frozen=True)
class Span:
    """Rows [lo, hi) of a piece (piece-local indices) that one process reads."""

    piece: Piece
    lo: int
    hi: int

    @property
    def rows(self) -> int:
        return self.hi - self.lo


class ParquetSource:
    """A Parquet dataset opened once (every file's footer read and checked); iterate it as
    many times as needed."""

    def __init__(self, location: str, batch_rows: int = 65_536) -> None:
        self.location = location
        self.batch_rows = batch_rows
        self.dataset = _open_dataset(location)
        self.fragments = sorted(self.dataset.get_fragments(), key=lambda f: f.path)
        if not self.fragments:
            raise DataError(f"no Parquet files found at {location!r}")
        self.schemas: list[tuple[str, pa.Schema]] = []
        self.pieces: list[Piece] = []
        start = 0
        for fragment in self.fragments:
            schema, pieces = _scan_file(fragment, start)
            self.schemas.append((fragment.path, schema))
            self.pieces.extend(pieces)
            start += sum(p.rows for p in pieces)
        self.total_rows = start

    @property
    def schema(self) -> pa.Schema:
        """Every column of any file, in first-seen order, with the type it has there first."""
        fields: dict[str, pa.Field] = {}
        for _, schema in self.schemas:
            for f in schema:
                fields.setdefault(f.name, f)
        return pa.schema(list(fields.values()))

    @property
    def files(self) -> list[str]:
        return [f.path for f in self.fragments]

    def count_rows(self) -> int:
        return self.total_rows

    def shard(self, rank: int = 0, world: int = 1) -> list[Span]:
        """The spans of rank ``rank`` of ``world``: a contiguous range of positions."""
        lo = self.total_rows * rank // world
        hi = self.total_rows * (rank + 1) // world
        spans = []
        for p in self.pieces:
            a, b = max(lo, p.start), min(hi, p.start + p.rows)
            if a < b:
                spans.append(Span(p, a - p.start, b - p.start))
        return spans

    def read(self, span: Span, columns: list[str]) -> Iterator[Batch]:
        """Record batches of ``columns`` for the rows of one span, with global positions."""
        piece = span.piece
        offset = 0
        try:
            for rb in piece.fragment.to_batches(
                columns=columns,
                batch_size=self.batch_rows,
                batch_readahead=_READAHEAD_BATCHES,
                fragment_readahead=1,
            ):
                a, b = offset, offset + rb.num_rows
                offset = b
                if b <= span.lo:
                    continue
                if a >= span.hi:
                    break
                s0, s1 = max(span.lo - a, 0), min(span.hi - a, rb.num_rows)
                start = piece.start + a + s0
                yield Batch(
                    rb.slice(s0, s1 - s0),
                    np.arange(start, start + s1 - s0, dtype=np.uint64),
                    piece.path,
                )
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise DataError(f"cannot read {piece.path}: {exc}") from exc

    def batches(self, columns: list[str], rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Record batches of the given columns over a shard (default: all rows), in order."""
        for span in self.shard(rank, world):
            yield from self.read(span, columns)


def _scan_file(fragment: Any, start: int) -> tuple[pa.Schema, list[Piece]]:
    """A file's schema and its row groups as pieces; an unreadable file is named."""
    try:
        schema = fragment.physical_schema
        groups = fragment.split_by_row_group()
        pieces = []
        for rg in groups:
            rows = int(rg.row_groups[0].num_rows)
            if rows:
                pieces.append(Piece(rg, fragment.path, start, rows))
                start += rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {fragment.path}: {exc}") from exc
    return schema, pieces


def _open_dataset(location: str) -> ds.Dataset:
    """Open a file, directory or glob; URLs go through fsspec."""
    try:
        if "://" in location:
            fs, path = fsspec.core.url_to_fs(location)
            if glob.has_magic(path):
                paths = sorted(fs.glob(path))
                if not paths:
                    raise DataError(f"no files match {location!r}")
                return ds.dataset(paths, format="parquet", filesystem=fs)
            if not fs.exists(path):
                raise DataError(f"training data not found: {location}")
            return ds.dataset(path, format="parquet", filesystem=fs)
        if glob.has_magic(location):
            paths = sorted(glob.glob(location))
            if not paths:
                raise DataError(f"no files match {location!r}")
            return ds.dataset(paths, format="parquet")
        if not Path(location).exists():
            raise DataError(f"training data not found: {location}")
        return ds.dataset(location, format="parquet")
    except ImportError as exc:
        raise DataError(f"cannot open {location!r}: filesystem package missing: {exc}") from exc
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise DataError(f"cannot open Parquet data at {location!r}: {exc}") from exc


def split_mask(
    positions: npt.NDArray[np.uint64], fraction: float, seed: int
) -> npt.NDArray[np.bool_]:
    """True for a hashed share ``fraction`` of the rows at these positions (a sample).

    A pure function of the row's position, so every pass and every process agrees on it with
    no list of ids kept in memory. The training split itself is ``trainer.split``.
    """
    return unit_hash(positions, seed) < fraction


def unit_hash(keys: npt.NDArray[np.uint64], seed: int) -> npt.NDArray[np.float64]:
    """A uniform [0, 1) value per key (splitmix64 of key and seed)."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64(seed % 2**64) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
