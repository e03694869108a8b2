"""Rows of a per-entity fit, grouped by entity: encoded once, held in memory.

Each entity model trains on its own rows, so rows must be reachable by entity; they are read
in bounded Parquet batches, encoded with the shared spec and kept as one array (the caller
checks the size against ``TRAINER_MEMORY_BUDGET_MB`` first). The split into fitting and
held-out rows is the single model's (``trainer.data.split_mask`` on row positions), so a row
is held out or not whichever model it serves. Rows whose entity is null have no entity model;
they still count for the fallback.
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
from trainer.data import ParquetSource, split_mask

NO_ENTITY = -1


@dataclass(frozen=True)
class EntityRows:
    """Every row's encoding, its entity (index into ``keys``, -1 for null) and its side of
    the split."""

    cont: FloatArray  # (N, C)
    cat: IndexArray  # (N, K)
    entity: npt.NDArray[np.int64]  # (N,)
    held_out: npt.NDArray[np.bool_]  # (N,)
    keys: list[str]  # entity keys, sorted

    def __len__(self) -> int:
        return int(self.cont.shape[0])

    def counts(self, held_out: bool | None = None) -> npt.NDArray[np.int64]:
        """Rows per entity (all, or only held-out / only fitting ones)."""
        mask = self.entity >= 0
        if held_out is not None:
            mask &= self.held_out == held_out
        return np.bincount(self.entity[mask], minlength=len(self.keys)).astype(np.int64)

    def rows_of(self, held_out: bool) -> list[npt.NDArray[np.int64]]:
        """Row indices of each entity on one side of the split, in position order."""
        mask = (self.entity >= 0) & (self.held_out == held_out)
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
    fraction: float,
    seed: int,
    only: Collection[str] = (),
) -> EntityRows:
    """Read and encode every row (or only the rows of the entities in ``only``)."""
    if column not in source.schema.names:
        raise DataError(f"entity column {column!r} not in {source.location!r}")
    wanted = set(only)
    conts: list[FloatArray] = []
    cats: list[IndexArray] = []
    ents: list[str | None] = []
    held: list[npt.NDArray[np.bool_]] = []
    for batch in source.batches([*spec.column_names, column]):
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
        held.append(split_mask(batch.positions[keep], fraction, seed))
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
        held_out=np.concatenate(held),
        keys=keys,
    )
