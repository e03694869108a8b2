"""Encoded rows of one part (fit, select or calibrate): cached in RAM when they fit, streamed
otherwise.

One process sees the rows of its shard, split into three parts by ``trainer.split``. A
``SplitRows`` yields them as encoded chunks (raw continuous block,
category indices, global positions), either from a cache filled once or by re-reading and
re-encoding Parquet every time. Both produce *the same chunks in the same order*, and an
epoch's minibatches come from the same seeded shuffle (row groups in a random order, then a
bounded shuffle buffer), so the memory budget changes speed and memory, never the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipeline.contract.exceptions import DataError
from pipeline.contract.features import FeatureSpec, FloatArray, IndexArray
from pipeline.contract.tabular import encode_record_batch
from trainer.data import ParquetSource, Span
from trainer.split import PART_NAMES, RowSplit


@dataclass(frozen=True)
class Chunk:
    """Encoded rows: (n, C) raw continuous, (n, K) category indices, (n,) positions."""

    cont: FloatArray
    cat: IndexArray
    positions: npt.NDArray[np.uint64]

    def __len__(self) -> int:
        return int(self.cont.shape[0])

    def take(self, index: npt.NDArray[np.int64] | slice) -> Chunk:
        return Chunk(self.cont[index], self.cat[index], self.positions[index])

    @staticmethod
    def concat(chunks: list[Chunk]) -> Chunk:
        if len(chunks) == 1:
            return chunks[0]
        return Chunk(
            np.concatenate([c.cont for c in chunks]),
            np.concatenate([c.cat for c in chunks]),
            np.concatenate([c.positions for c in chunks]),
        )


def bytes_per_row(spec: FeatureSpec) -> int:
    """Memory of one encoded row in a chunk."""
    return spec.n_continuous * 4 + spec.n_categorical * 8 + 8


class SplitRows:
    """The rows of one part of the split (``trainer.split``) in this process's shard."""

    def __init__(
        self,
        source: ParquetSource,
        spec: FeatureSpec,
        spans: list[Span],
        *,
        split: RowSplit,
        part: int,
        rows: int,
        cache: bool,
    ) -> None:
        self.source = source
        self.spec = spec
        self.spans = spans
        self.split = split
        self.part = part
        self.rows = rows
        self._cache: list[list[Chunk]] | None = None
        if cache:
            self._cache = [list(self._read(span)) for span in spans]

    @property
    def part_name(self) -> str:
        return PART_NAMES[self.part]

    @property
    def mode(self) -> str:
        return "memory" if self._cache is not None else "stream"

    def chunks(self) -> Iterator[Chunk]:
        """Every row, in position order."""
        return self._chunks(range(len(self.spans)))

    def epoch_batches(
        self, rng: np.random.Generator, batch_size: int, buffer_rows: int
    ) -> Iterator[Chunk]:
        """One epoch's minibatches: row groups in a random order, then a shuffle buffer."""
        order = rng.permutation(len(self.spans)).tolist()
        return shuffled_batches(self._chunks(order), rng, batch_size, buffer_rows)

    def _chunks(self, order: Iterable[int]) -> Iterator[Chunk]:
        for i in order:
            if self._cache is not None:
                yield from self._cache[i]
            else:
                yield from self._read(self.spans[i])

    def _read(self, span: Span) -> Iterator[Chunk]:
        columns = [*self.spec.column_names, *self.split.columns]
        for batch in self.source.read(span, columns):
            keep = self.split.parts(batch.positions, batch.table) == self.part
            if not keep.any():
                continue
            try:
                cont, cat = encode_record_batch(batch.table.filter(pa.array(keep)), self.spec)
            except DataError as exc:
                raise DataError(f"{exc} in {batch.path}") from exc
            yield Chunk(cont, cat, batch.positions[keep])


def shuffled_batches(
    chunks: Iterable[Chunk], rng: np.random.Generator, batch_size: int, buffer_rows: int
) -> Iterator[Chunk]:
    """Minibatches of ``batch_size`` rows (the last may be smaller) in a shuffled order.

    Rows are copied into a buffer of ``buffer_rows`` slots, allocated once. Whenever it is
    full, a random half of its slots is emitted as minibatches and refilled from the input,
    so memory is the buffer plus one minibatch and one input chunk. At the end the remaining
    rows are emitted in a random order; data that fits the buffer gets a full permutation.
    """
    capacity = max(buffer_rows, 2 * batch_size)
    buffer: _Buffer | None = None
    for chunk in chunks:
        done = 0
        while done < len(chunk):
            if buffer is None:
                buffer = _Buffer(chunk, capacity)
            done += buffer.fill(chunk, done)
            if buffer.full:
                half = (capacity // 2) // batch_size * batch_size
                slots = rng.permutation(capacity)[:half]
                for start in range(0, half, batch_size):
                    yield buffer.rows.take(slots[start : start + batch_size])
                buffer.release(slots)
    if buffer is not None:
        slots = buffer.occupied()
        slots = slots[rng.permutation(len(slots))]
        for start in range(0, len(slots), batch_size):
            yield buffer.rows.take(slots[start : start + batch_size])


class _Buffer:
    """Fixed slots for rows; ``free`` lists the slots to write next, in order."""

    def __init__(self, like: Chunk, capacity: int) -> None:
        self.rows = Chunk(
            np.empty((capacity, like.cont.shape[1]), dtype=like.cont.dtype),
            np.empty((capacity, like.cat.shape[1]), dtype=like.cat.dtype),
            np.empty(capacity, dtype=like.positions.dtype),
        )
        self.free = np.arange(capacity)
        self.next = 0  # free[next:] are still free

    @property
    def full(self) -> bool:
        return self.next == len(self.free)

    def fill(self, chunk: Chunk, offset: int) -> int:
        """Copy rows of ``chunk`` from ``offset`` into free slots; returns how many."""
        n = min(len(chunk) - offset, len(self.free) - self.next)
        slots = self.free[self.next : self.next + n]
        self.rows.cont[slots] = chunk.cont[offset : offset + n]
        self.rows.cat[slots] = chunk.cat[offset : offset + n]
        self.rows.positions[slots] = chunk.positions[offset : offset + n]
        self.next += n
        return n

    def release(self, slots: npt.NDArray[np.int64]) -> None:
        self.free, self.next = slots, 0

    def occupied(self) -> npt.NDArray[np.int64]:
        """Slots holding rows not yet emitted, in slot order."""
        mask = np.ones(len(self.rows), dtype=bool)
        mask[self.free[self.next :]] = False
        return np.flatnonzero(mask)
