"""Arrow record batches to the raw arrays of the feature spec (continuous block, indices)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from pipeline.features import FeatureSpec, FloatArray, IndexArray
from pipeline.tabular import encode_record_batch
from trainer.data import ParquetSource, split_mask


@dataclass(frozen=True)
class EncodedRows:
    """Rows of one split as tensors on the CPU."""

    cont: torch.Tensor  # (N, C) float32 raw
    cat: torch.Tensor  # (N, K) int64

    def __len__(self) -> int:
        return int(self.cont.shape[0])


def encode_batch(rb: pa.RecordBatch, spec: FeatureSpec) -> tuple[FloatArray, IndexArray]:
    """Encode one Arrow batch with the shared encoder (see ``pipeline.tabular``)."""
    return encode_record_batch(rb, spec)


def iter_encoded(
    source: ParquetSource, spec: FeatureSpec, fraction: float, seed: int, validation: bool
) -> Iterator[tuple[FloatArray, IndexArray]]:
    """Encoded arrays of the training (or validation) rows, batch by batch."""
    for batch in source.batches(spec.column_names):
        mask = split_mask(batch.positions, fraction, seed)
        keep = mask if validation else ~mask
        if keep.any():
            yield encode_batch(batch.table.filter(pa.array(keep)), spec)


def load_split(
    source: ParquetSource, spec: FeatureSpec, fraction: float, seed: int, validation: bool
) -> EncodedRows:
    """Materialise one split in memory (the caller checks it fits the memory budget)."""
    conts: list[FloatArray] = []
    cats: list[IndexArray] = []
    for cont, cat in iter_encoded(source, spec, fraction, seed, validation):
        conts.append(cont)
        cats.append(cat)
    if not conts:
        return EncodedRows(
            torch.empty(0, spec.n_continuous), torch.empty(0, spec.n_categorical, dtype=torch.long)
        )
    return EncodedRows(
        torch.from_numpy(np.concatenate(conts)), torch.from_numpy(np.concatenate(cats))
    )
