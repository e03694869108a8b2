"""Rows of a per-entity fit, grouped by entity: encoded once, held in memory.

Each entity model trains on its own rows, so rows must be reachable by entity; they are read
in bounded Parquet batches, encoded with the shared spec and kept as one array (the caller
checks the size against ``TRAINER_MEMORY_BUDGET_MB`` first). Each row's part (fit, select or
calibrate) is the single model's (``trainer.split.RowSplit``, with the same options), so a row
plays the same role whichever model it serves, and an entity's calibration rows are used for
its threshold only. Rows whose entity is null have no entity model; they still count for the
fallback.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.contract.entities import entity_key
from pipeline.contract.exceptions import DataError
from pipeline.contract.features import FeatureSpec, FloatArray, IndexArray
from pipeline.contract.tabular import encode_record_batch
from trainer.data import ParquetSource
from trainer.split import RowSplit

NO_ENTITY = -1


@dataclass(frozen=True)
class EntityRows:
    """Every row's encoding, its entity (index into ``keys``, -1 for null) and its part of
    the split (``trainer.split.FIT``, ``SELECT`` or ``CALIBRATE``)."""

    cont: FloatArray  # (N, C)
    cat: IndexArray  # (N, K)
    entity: npt.NDArray[np.int64]  # (N,)
    part: npt.NDArray[np.int8]  # (N,)
    keys: list[str]  # entity keys, sorted

    def __len__(self) -> int:
        return int(self.cont.shape[0])

    def counts(self, part: int | None = None) -> npt.NDArray[np.int64]:
        """Rows per entity (all, or only those of one part)."""
        mask = self.entity >= 0
        if part is not None:
            mask &= self.part == part
        return np.bincount(self.entity[mask], minlength=len(self.keys)).astype(np.int64)

    def rows_of(self, part: int) -> list[npt.NDArray[np.int64]]:
        """Row indices of each entity in one part of the split, in position order."""
        mask = (self.entity >= 0) & (self.part == part)
        idx = np.flatnonzero(mask)
        order = np.argsort(self.entity[idx], kind="stable")
        idx = idx[order]
        bounds = np.cumsum(np.bincount(self.entity[idx], minlength=len(self.keys)))
        return np.split(idx, bounds[:-1])


def read_entity_rows(
    source: ParquetSource,
    spec: FeatureSpec,
    column: str,
    *,
    split: RowSplit,
    only: Collection[str] = (),
) -> EntityRows:
    """Read and encode every row (or only the rows of the entities in ``only``)."""
    if column not in source.schema.names:
        raise DataError(f"entity column {column!r} not in {source.location!r}")
    wanted = set(only)
    conts: list[FloatArray] = []
    cats: list[IndexArray] = []
    ents: list[str | None] = []
    parts: list[npt.NDArray[np.int8]] = []
    wanted_columns = dict.fromkeys([*spec.column_names, column, *split.columns])
    for batch in source.batches(list(wanted_columns)):
        raw = [entity_key(v) for v in batch.table.column(column).to_pylist()]
        keep = np.array([not wanted or k in wanted for k in raw], dtype=bool)
        if not keep.any():
            continue
        table = batch.table if keep.all() else batch.table.filter(keep)
        try:
            cont, cat = encode_record_batch(table, spec)
        except DataError as exc:
            raise DataError(f"{exc} in {batch.path}") from exc
        conts.append(cont)
        cats.append(cat)
        ents.extend(k for k, kept in zip(raw, keep, strict=True) if kept)
        parts.append(split.parts(batch.positions[keep], table))
    if not conts:
        raise DataError(f"no rows for the requested entities in {source.location!r}")
    keys = sorted({k for k in ents if k is not None})
    lookup = {k: i for i, k in enumerate(keys)}
    entity = np.fromiter(
        (NO_ENTITY if k is None else lookup[k] for k in ents), dtype=np.int64, count=len(ents)
    )
    return EntityRows(
        cont=np.concatenate(conts),
        cat=np.concatenate(cats),
        entity=entity,
        part=np.concatenate(parts),
        keys=keys,
    )
