"""Which rows fit the weights, which select the model, and which calibrate the threshold.

Every row of the training data goes to exactly one of three parts:

- ``FIT``: the rows the weights (and the feature statistics) are fitted on;
- ``SELECT``: the rows that choose the model: learning-rate schedule, early stopping, best
  weights. They are scored many times and the kept model is the one that does best on them,
  so their scores are optimistic;
- ``CALIBRATE``: rows used for nothing but the threshold and the score statistics of the
  manifest. Their scores are those of unseen rows, which makes the published threshold's
  false-alarm rate honest (``trainer.calibration``).

The assignment is a pure function of the row (its position and, with ``by``, one column's
value), so every pass over the data and every process agrees on it without a list of ids:

- no ``by``: contiguous blocks of rows are hashed with the seed; a block is at most 64 rows
  (``total_rows // 1000``, at least 1), so rows written next to each other mostly stay on one
  side while every part still gets many blocks;
- ``by`` an entity column (any non-temporal type): each distinct value is hashed, so all rows
  of one machine, user or account land in the same part;
- ``by`` a time column (timestamp, date or time types, or ``kind="time"``): the latest
  ``calibration_fraction`` of rows (by time) calibrate, the ``validation_fraction`` before them
  select, the earliest fit; equal times stay together. The cut points come from a sample of at
  most ``TIME_SAMPLE_ROWS`` values (``time_cuts``), so memory does not grow with the data.

Entry points: ``plan_split`` (open data -> ``RowSplit``), ``RowSplit.parts`` (a record batch
-> part per row), ``split_indices`` (an in-memory table -> row indices per part).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.contract.exceptions import DataError
from pipeline.contract.features import category_key
from trainer.data import ParquetSource, split_mask, unit_hash

FIT, SELECT, CALIBRATE = 0, 1, 2
PART_NAMES = ("fit", "select", "calibrate")
SplitKind = Literal["rows", "entity", "time"]
MAX_BLOCK_ROWS = 64
TIME_SAMPLE_ROWS = 1_000_000
_ENTITY_SALT = 0x0E17_17E5
_TIME_SALT = 0x7133_0000
Parts = npt.NDArray[np.int8]


@dataclass(frozen=True)
class SplitOptions:
    """How to split: shares of the two held-out parts, the seed and the optional column."""

    validation_fraction: float = 0.1
    calibration_fraction: float = 0.2
    seed: int = 0
    by: str | None = None
    kind: Literal["auto", "time", "entity"] = "auto"

    def __post_init__(self) -> None:
        held = self.validation_fraction + self.calibration_fraction
        if not (self.validation_fraction > 0 and self.calibration_fraction > 0 and held < 1):
            raise DataError(
                f"validation_fraction ({self.validation_fraction}) and calibration_fraction "
                f"({self.calibration_fraction}) must be > 0 and leave rows to fit (sum < 1)"
            )


@dataclass(frozen=True)
class RowSplit:
    """The agreed assignment of rows to parts; see the module docstring."""

    options: SplitOptions
    kind: SplitKind
    block_rows: int = 1
    time_cuts: tuple[float, float] | None = None  # (select starts, calibrate starts)

    @property
    def columns(self) -> list[str]:
        """Columns ``parts`` needs besides positions (read them with the features)."""
        return [self.options.by] if self.options.by else []

    def parts(self, positions: npt.NDArray[np.uint64], batch: pa.RecordBatch | None) -> Parts:
        """Part (FIT, SELECT or CALIBRATE) of each row of a batch with these global positions."""
        if self.kind == "rows":
            blocks = positions // np.uint64(self.block_rows)
            return _by_share(unit_hash(blocks, self.options.seed), self.options)
        if batch is None or self.options.by not in batch.schema.names:
            raise DataError(f"split column {self.options.by!r} is missing from a batch")
        column = batch.column(self.options.by)
        if self.kind == "entity":
            return _by_share(_entity_hash(column, self.options.seed), self.options)
        return self._by_time(column)

    def _by_time(self, column: pa.Array) -> Parts:
        assert self.time_cuts is not None
        t = time_values(column, self.options.by or "")
        select_from, calibrate_from = self.time_cuts
        out = np.full(len(t), FIT, dtype=np.int8)
        out[t >= select_from] = SELECT
        out[t >= calibrate_from] = CALIBRATE
        return out

    def describe(self) -> dict[str, object]:
        """What the manifest records about the split."""
        return {
            "kind": self.kind,
            "by": self.options.by,
            "validation_fraction": self.options.validation_fraction,
            "calibration_fraction": self.options.calibration_fraction,
            "block_rows": self.block_rows,
            "time_cuts": list(self.time_cuts) if self.time_cuts else None,
        }


def split_kind(schema: pa.Schema, options: SplitOptions) -> SplitKind:
    """rows without a column; else time for temporal Arrow types (or kind='time'), else entity."""
    if options.by is None:
        return "rows"
    if options.by not in schema.names:
        raise DataError(f"split column {options.by!r} not in the data (available: {schema.names})")
    if options.kind != "auto":
        return options.kind
    t = schema.field(options.by).type
    temporal = pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t)
    return "time" if temporal else "entity"


def plan_split(source: ParquetSource, options: SplitOptions) -> RowSplit:
    """The split of one process's data (every row); under torchrun use ``plan_from_sample``
    with the time samples of every rank (``time_sample``)."""
    kind = split_kind(source.schema, options)
    sample = time_sample(source, options.by, 0, 1) if kind == "time" else None
    return plan_from_sample(source.total_rows, options, kind, sample)


def plan_from_sample(
    total_rows: int,
    options: SplitOptions,
    kind: SplitKind,
    sample: npt.NDArray[np.float64] | None,
) -> RowSplit:
    """The split, given the kind and (for time) a sample of the time column's values."""
    if kind == "rows":
        block = max(1, min(MAX_BLOCK_ROWS, total_rows // 1000))
        return RowSplit(options, "rows", block_rows=block)
    if kind == "entity":
        return RowSplit(options, "entity")
    if sample is None or sample.size == 0:
        raise DataError(f"split column {options.by!r} has no non-null values")
    return RowSplit(options, "time", time_cuts=time_cuts(sample, options))


def time_cuts(sample: npt.NDArray[np.float64], options: SplitOptions) -> tuple[float, float]:
    """(first time that selects, first time that calibrates) from a sample of times.

    The cuts are values present in the sample, so rows at a cut time go to the later part and
    rows with equal times never straddle a boundary.
    """
    ordered = np.sort(sample)
    n = ordered.size
    cal = ordered[min(n - 1, int(np.floor(n * (1 - options.calibration_fraction))))]
    held = options.calibration_fraction + options.validation_fraction
    sel = ordered[min(n - 1, int(np.floor(n * (1 - held))))]
    return float(sel), float(cal)


def time_sample(
    source: ParquetSource, column: str | None, rank: int, world: int
) -> npt.NDArray[np.float64]:
    """Values of the time column over a shard: all of them up to ``TIME_SAMPLE_ROWS`` (per
    process), a hashed sample of that size beyond."""
    if column is None:
        return np.zeros(0)
    total = max(1, source.total_rows // world)
    fraction = min(1.0, TIME_SAMPLE_ROWS / total)
    out: list[npt.NDArray[np.float64]] = []
    for batch in source.batches([column], rank, world):
        t = time_values(batch.table.column(column), column)
        keep = ~np.isnan(t)
        if fraction < 1.0:
            keep &= split_mask(batch.positions, fraction, _TIME_SALT)
        out.append(t[keep])
    return np.concatenate(out) if out else np.zeros(0)


def time_values(column: pa.Array, name: str) -> npt.NDArray[np.float64]:
    """A time (or numeric) column as float64, NaN for nulls; a null time is fitted on."""
    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
        column = (
            pc.cast(column, pa.int64()) if not pa.types.is_date32(t) else column.cast(pa.int32())
        )
    elif pa.types.is_dictionary(t):
        raise DataError(f"split column {name!r} is categorical: it cannot be a time column")
    try:
        values = column.to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float64)
    except (pa.ArrowInvalid, TypeError, ValueError) as exc:
        raise DataError(f"split column {name!r} of type {t} is not a time column") from exc


def split_indices(
    table: pa.Table, options: SplitOptions, first_position: int = 0
) -> dict[str, npt.NDArray[np.int64]]:
    """Row indices of each part ('fit', 'select', 'calibrate') of an in-memory table.

    The same rule as ``plan_split`` over a Parquet source whose rows are this table's, at
    positions ``first_position`` onwards (per-entity training splits each entity's rows).
    """
    positions = np.arange(first_position, first_position + table.num_rows, dtype=np.uint64)
    columns = [options.by] if options.by else []
    batch = pa.RecordBatch.from_arrays(
        [table.column(c).combine_chunks() for c in columns], names=columns
    )
    kind = split_kind(table.schema, options)
    sample = None
    if kind == "time":
        t = time_values(batch.column(0), columns[0])
        sample = t[~np.isnan(t)]
    plan = plan_from_sample(table.num_rows, options, kind, sample)
    parts = plan.parts(positions, batch)
    return {name: np.flatnonzero(parts == i) for i, name in enumerate(PART_NAMES)}


def _by_share(u: npt.NDArray[np.float64], options: SplitOptions) -> Parts:
    """u in [0, 1): below the validation share selects, the next calibration share calibrates."""
    out = np.full(len(u), FIT, dtype=np.int8)
    out[u < options.validation_fraction + options.calibration_fraction] = CALIBRATE
    out[u < options.validation_fraction] = SELECT
    return out


def _entity_hash(column: pa.Array, seed: int) -> npt.NDArray[np.float64]:
    """A uniform [0, 1) value per row from its entity (null is one entity of its own)."""
    encoded = pc.dictionary_encode(column) if not pa.types.is_dictionary(column.type) else column
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    keys = [category_key(v) if v is not None else "\0null" for v in encoded.dictionary.to_pylist()]
    per_key = np.array([_text_unit(k, seed) for k in keys] or [0.0])
    idx = encoded.indices.to_numpy(zero_copy_only=False)
    nulls = np.asarray(encoded.indices.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    out = per_key[np.where(nulls, 0, idx).astype(np.int64)]
    out[nulls] = _text_unit("\0null", seed)
    return out


def _text_unit(text: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed ^ _ENTITY_SALT}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64
