"""Publishing a per-entity version through the one atomic publish path.

The stacked weights are the version's ``model.safetensors`` and the index its
``entities.json``, both written by ``pipeline.contract.artifact.publish`` into the staging
directory before the manifest, so a per-entity version appears, and LATEST moves to it,
exactly like a single model's.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from pipeline.contract import artifact
from pipeline.contract.artifact import Manifest
from pipeline.contract.entities import EntityIndex, EntityInfo
from pipeline.contract.stacked import StackedAutoEncoder

RELATIVE_LEVELS = [round(0.05 * i, 2) for i in range(21)] + [0.99, 0.995, 0.999]


def relative_quantiles(relative: np.ndarray[Any, Any]) -> dict[str, float]:
    """Quantiles of scores divided by their own slot's threshold (drift across entities)."""
    if relative.size == 0:
        return {"0.5": 0.0}
    return {f"{q:g}": float(np.quantile(relative, q)) for q in RELATIVE_LEVELS}


def publish_entities(
    store: str,
    model: StackedAutoEncoder,
    index: EntityIndex,
    manifest_fields: dict[str, Any],
    entity_fields: dict[str, Any],
    version: str | None = None,
) -> Manifest:
    """Publish stacked weights (slot 0 the fallback) with their index as one new version.

    ``manifest_fields`` as for ``artifact.publish``; ``entity_fields`` are the ``EntityInfo``
    fields other than ``column``, ``models`` and the index checksum, which come from ``index``.
    """
    if model.n_models != len(index.entities):
        raise ValueError(f"{model.n_models} stacked models for {len(index.entities)} slots")
    data = index.to_json()
    info = EntityInfo(
        column=index.column,
        models=len(index.entities) - 1,
        index_sha256=hashlib.sha256(data).hexdigest(),
        **entity_fields,
    )
    return artifact.publish(
        store,
        model,
        {**manifest_fields, "entities": info},
        extra_files={info.index_file: data},
        version=version,
    )
