"""Stacked entity weights: a read-only view of the file, and the resident subset (LRU).

A version with 100,000 entities may hold more weights than a worker should keep on its
device. ``StackedWeights`` maps the safetensors file read-only (after its checksum was
checked) and copies out the rows of any slots, parsing only the header: nothing is
unpickled and nothing but the requested rows is read. ``EntityBank`` keeps at most
``capacity`` models on the scoring device, in one pool tensor per layer; a model is copied in
the first time a batch needs it, and when the pool is full the least recently used one
makes room. The fallback (slot 0) sits in pool row 0 and is never evicted.
"""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pipeline.contract.exceptions import ArtifactInvalid
from pipeline.contract.models import ModelConfig
from pipeline.contract.stacked import Layer, layer_dims, params_per_model, tensor_names

SlotArray = npt.NDArray[np.int64]
BYTES_PER_WEIGHT = 4  # float32


class StackedWeights:
    """The stacked tensors of a weights file, each an (N, ...) read-only memory map."""

    def __init__(self, path: Path, config: ModelConfig, n_slots: int) -> None:
        self.path = path
        self.config = config
        self.n_slots = n_slots
        header, data_start = _read_header(path)
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        self.tensors: list[np.ndarray[Any, Any]] = []
        expected = _expected_shapes(config, n_slots)
        if sorted(header) != sorted(expected):
            raise ArtifactInvalid(
                f"{path}: tensors {sorted(header)} do not match the manifest's model "
                f"({sorted(expected)})"
            )
        for name in tensor_names(config):
            info = header[name]
            if info.get("dtype") != "F32" or tuple(info.get("shape", ())) != expected[name]:
                raise ArtifactInvalid(
                    f"{path}: tensor {name} is {info.get('dtype')} {info.get('shape')}, "
                    f"expected F32 {list(expected[name])}"
                )
            begin, end = (data_start + int(o) for o in info["data_offsets"])
            if end > raw.shape[0] or end - begin != 4 * int(np.prod(expected[name])):
                raise ArtifactInvalid(f"{path}: tensor {name} lies outside the file")
            self.tensors.append(raw[begin:end].view("<f4").reshape(expected[name]))

    def rows(self, slots: SlotArray) -> list[np.ndarray[Any, Any]]:
        """Copies of the given slots of every tensor, in ``tensor_names`` order."""
        return [np.ascontiguousarray(t[slots]) for t in self.tensors]

    def layers(self, slots: SlotArray) -> list[Layer]:
        """The given slots as stacked (weight, bias) CPU tensors."""
        arrays = [torch.from_numpy(a) for a in self.rows(slots)]
        return [(arrays[i], arrays[i + 1]) for i in range(0, len(arrays), 2)]


class InMemoryWeights:
    """Stacked weights held as tensors (a model just trained), with ``StackedWeights``'s
    interface: the trainer scores its thresholds with the same ``EntityScorer`` the worker
    uses, before anything is written."""

    def __init__(self, config: ModelConfig, layers: list[Layer]) -> None:
        self.config = config
        self.n_slots = int(layers[0][0].shape[0])
        self._layers = [(w.detach().cpu(), b.detach().cpu()) for w, b in layers]

    def layers(self, slots: SlotArray) -> list[Layer]:
        index = torch.from_numpy(np.asarray(slots, dtype=np.int64))
        return [(w[index], b[index]) for w, b in self._layers]


WeightsSource = StackedWeights | InMemoryWeights


def _expected_shapes(config: ModelConfig, n: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (d_in, d_out) in enumerate(layer_dims(config)):
        shapes[f"layers.{i}.weight"] = (n, d_in, d_out)
        shapes[f"layers.{i}.bias"] = (n, d_out)
    return shapes


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header (without ``__metadata__``) and where the data starts."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        try:
            header = json.loads(fh.read(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArtifactInvalid(f"{path}: unreadable safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ArtifactInvalid(f"{path}: safetensors header is not an object")
    header.pop("__metadata__", None)
    return header, 8 + length


@dataclass
class BankStats:
    """Cumulative counts; the worker turns their increments into metrics."""

    loads: int = 0  # models copied into the pool
    evictions: int = 0  # models dropped to make room


def capacity_for(config: ModelConfig, n_slots: int, budget_bytes: int) -> int:
    """Models (fallback included) that fit ``budget_bytes``: at least 2, at most all."""
    per_model = params_per_model(config) * BYTES_PER_WEIGHT
    return int(min(n_slots, max(2, budget_bytes // per_model)))


class EntityBank:
    """At most ``capacity`` models resident on ``device``, least recently used evicted."""

    def __init__(
        self,
        weights: WeightsSource,
        device: torch.device,
        capacity: int,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.weights = weights
        self.device = device
        self.capacity = max(2, min(capacity, weights.n_slots))
        self.stats = BankStats()
        self._on_change = on_change
        dims = layer_dims(weights.config)
        self.pool: list[Layer] = [
            (
                torch.zeros(self.capacity, d_in, d_out, device=device),
                torch.zeros(self.capacity, d_out, device=device),
            )
            for d_in, d_out in dims
        ]
        self._resident: OrderedDict[int, int] = OrderedDict()  # slot -> pool row, LRU first
        self._free = list(range(self.capacity - 1, 0, -1))  # row 0: the fallback
        self._copy_in(np.array([0], dtype=np.int64), [0])

    @property
    def resident(self) -> int:
        """Entity models in the pool (the fallback not counted)."""
        return len(self._resident)

    @property
    def room(self) -> int:
        """Most distinct entity models one call can use: the pool less the fallback's row."""
        return self.capacity - 1

    def place(self, slots: SlotArray) -> SlotArray:
        """Pool rows of the given distinct slots (at most ``room`` besides slot 0), copying in
        the missing ones; the slots become the most recently used."""
        rows = np.zeros(len(slots), dtype=np.int64)
        needed = set(slots.tolist())
        missing = [s for s in needed if s != 0 and s not in self._resident]
        evicted = 0
        if missing:
            evicted = self._make_room(len(missing), needed)
            new_rows = [self._free.pop() for _ in missing]
            self._copy_in(np.array(missing, dtype=np.int64), new_rows)
            self._resident.update(zip(missing, new_rows, strict=True))
            self.stats.loads += len(missing)
        resident = self._resident
        for i, s in enumerate(slots.tolist()):
            if s:
                resident.move_to_end(s)
                rows[i] = resident[s]
        if missing and self._on_change is not None:
            self._on_change(len(missing), evicted)
        return rows

    def _make_room(self, count: int, keep: set[int]) -> int:
        """Evict least recently used models (none in ``keep``) until ``count`` rows are free;
        returns how many were evicted."""
        short = count - len(self._free)
        if short <= 0:
            return 0
        victims = [s for s in self._resident if s not in keep][:short]
        if len(victims) < short:
            raise ValueError(f"{count} new models do not fit {self.capacity} pool rows")
        for s in victims:
            self._free.append(self._resident.pop(s))
        self.stats.evictions += len(victims)
        return len(victims)

    def _copy_in(self, slots: SlotArray, rows: list[int]) -> None:
        index = torch.tensor(rows, dtype=torch.int64, device=self.device)
        for (pool_w, pool_b), (w, b) in zip(self.pool, self.weights.layers(slots), strict=True):
            pool_w.index_copy_(0, index, w.to(self.device))
            pool_b.index_copy_(0, index, b.to(self.device))
