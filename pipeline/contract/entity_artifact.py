"""Loading a per-entity version: the index checked against its checksum, the stacked weights
mapped read-only and checked against the manifest's architecture, smoke batches through the
fallback and through entity slots.

``pipeline.contract.artifact.load_artifact`` calls ``load_entity_set`` for a manifest with an
``entities`` section; the returned ``EntitySet`` travels in ``LoadedArtifact.entities`` and
its ``fallback`` model in ``LoadedArtifact.model``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from pipeline.contract.entities import EntityIndex, EntityInfo
from pipeline.contract.entity_bank import StackedWeights
from pipeline.contract.exceptions import ArtifactInvalid, ArtifactNotFound
from pipeline.contract.models import AnomalyModel, ModelConfig, build_model
from pipeline.contract.stacked import Layer, check_stackable, stacked_forward, tensor_names

_FINITE_CHECK_SLOTS = 4096  # slots per block when checking the weights are finite


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class EntitySet:
    """A per-entity version's index and (memory-mapped) stacked weights."""

    info: EntityInfo
    index: EntityIndex
    weights: StackedWeights

    @property
    def n_slots(self) -> int:
        return len(self.index.entities)


def load_entity_set(
    path: Path, info: EntityInfo, config: ModelConfig, weights_file: Path
) -> tuple[EntitySet, AnomalyModel]:
    """The entity set of a version directory and its fallback as an ordinary model (eval)."""
    try:
        check_stackable(config)
    except ValueError as exc:  # ConfigError is a ValueError too
        raise ArtifactInvalid(f"{path}: {exc}") from exc
    index = read_index(path, info)
    weights = StackedWeights(weights_file, config, len(index.entities))
    fallback = autoencoder_from_slot(config, weights.layers(np.array([0], dtype=np.int64)))
    _smoke_slots(weights, config, path)
    return EntitySet(info=info, index=index, weights=weights), fallback


def read_index(path: Path, info: EntityInfo) -> EntityIndex:
    file = path / info.index_file
    if not file.is_file():
        raise ArtifactNotFound(f"missing entity index {file}")
    actual = file_sha256(file)
    if actual != info.index_sha256:
        raise ArtifactInvalid(f"{file}: sha256 {actual} does not match the manifest's")
    try:
        index = EntityIndex.model_validate_json(file.read_bytes())
    except ValidationError as exc:
        raise ArtifactInvalid(f"{file} is not a valid entity index: {exc}") from exc
    if len(index.entities) != info.models + 1 or index.column != info.column:
        raise ArtifactInvalid(
            f"{file}: {len(index.entities)} slots for column {index.column!r}, the manifest "
            f"says {info.models + 1} for {info.column!r}"
        )
    return index


def autoencoder_from_slot(config: ModelConfig, layers: list[Layer]) -> AnomalyModel:
    """An ``AutoEncoder`` whose linear layers are slot 0 of ``layers`` (eval mode)."""
    model = build_model(config)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for linear, (weight, bias) in zip(linears, layers, strict=True):
            linear.weight.copy_(weight[0].t())
            linear.bias.copy_(bias[0])
    return model.eval()


def _smoke_slots(weights: StackedWeights, config: ModelConfig, path: Path) -> None:
    """Every weight finite (a NaN in one entity's model would silence its alerts), then
    zeros through the fallback and the first and last entity slots."""
    for name, tensor in zip(tensor_names(config), weights.tensors, strict=True):
        for start in range(0, weights.n_slots, _FINITE_CHECK_SLOTS):
            block = tensor[start : start + _FINITE_CHECK_SLOTS]
            finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
            if not finite.all():
                bad = start + int(np.flatnonzero(~finite)[0])
                raise ArtifactInvalid(f"{path}: tensor {name} is not finite in slot {bad}")
    slots = np.unique(np.array([0, 1, weights.n_slots - 1], dtype=np.int64) % weights.n_slots)
    layers = weights.layers(slots)
    with torch.inference_mode():
        x = torch.zeros(len(slots), config.input_dim)
        out = stacked_forward(layers, x, config, slots=torch.arange(len(slots)))
    if out.shape != (len(slots), config.output_dim) or not torch.isfinite(out).all():
        raise ArtifactInvalid(f"{path}: smoke batch through entity slots gave non-finite output")
