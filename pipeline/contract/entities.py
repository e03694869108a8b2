"""Per-entity model sets: what the manifest says about them and the entity index file.

A per-entity version (``trainer fit --entity-column C``) is an ordinary version directory
with one more file::

    <store>/<name>/<version>/model.safetensors   # stacked tensors, slot 0 = fallback
    <store>/<name>/<version>/entities.json       # slot -> entity, threshold, row counts
    <store>/<name>/<version>/manifest.json       # + "entities": EntityInfo

Slot ``s`` of every stacked tensor (``pipeline.contract.stacked``) is the model of
``entities[s]``; slot 0 is the fallback, fitted on every row, which scores records of
unknown entities and of entities with too few rows of their own. Each slot has its own
threshold, a quantile of the scores of its own calibration rows. The manifest's top-level
``threshold`` and ``score_quantiles`` are the fallback's; ``EntityInfo`` adds what drift and
calibration monitoring need across all slots (scores relative to each slot's threshold).

Entity values are compared by ``category_key`` (``7`` and ``"7"`` are the same entity), the
canonical form the feature spec uses for categories.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.contract.features import category_key

INDEX_FILE = "entities.json"
FALLBACK_SLOT = 0


class EntityInfo(BaseModel):
    """The manifest's ``entities`` section: present only for per-entity versions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str = Field(min_length=1, description="entity column of the training data")
    models: int = Field(ge=0, description="entity models (slots 1..models); slot 0 is fallback")
    min_rows: int = Field(ge=1, description="fewest normal rows an entity needed for a model")
    index_file: Literal["entities.json"] = "entities.json"
    index_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    relative_score_quantiles: dict[str, float] = Field(
        description="quantiles of calibration scores divided by their own slot's threshold, "
        "pooled over every slot (drift and calibration monitoring across entities)"
    )
    fitted: int = Field(ge=0, description="entity models fitted for this version")
    base_version: str | None = Field(
        default=None, description="version whose other entity models this one reuses"
    )
    thin_entities: int = Field(
        default=0, ge=0, description="entities in the data left to the fallback (too few rows)"
    )


class EntityIndex(BaseModel):
    """``entities.json``: one entry per slot, slot 0 the fallback (entity ``None``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = 1
    column: str
    entities: list[str | None] = Field(min_length=1)
    thresholds: list[float]
    calibration_rows: list[int]
    train_rows: list[int]
    fitted_in: list[str] = Field(description="version in which each slot's model was fitted")

    @model_validator(mode="after")
    def _consistent(self) -> EntityIndex:
        n = len(self.entities)
        lengths = {
            "thresholds": len(self.thresholds),
            "calibration_rows": len(self.calibration_rows),
            "train_rows": len(self.train_rows),
            "fitted_in": len(self.fitted_in),
        }
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"{n} slots but {wrong}")
        if self.entities[FALLBACK_SLOT] is not None:
            raise ValueError("slot 0 must be the fallback (entity null)")
        named = self.entities[1:]
        if any(e is None for e in named):
            raise ValueError("only slot 0 may have a null entity")
        if len(set(named)) != len(named):
            raise ValueError("entities must be unique")
        if not all(math.isfinite(t) for t in self.thresholds):
            raise ValueError("thresholds must be finite")
        return self

    @cached_property
    def slots(self) -> dict[str, int]:
        """Entity key -> slot, for the entities that have a model."""
        return {e: s for s, e in enumerate(self.entities) if e is not None}

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def entity_key(value: Any) -> str | None:
    """An entity value as the index keys it (None stays None: the fallback scores it)."""
    return None if value is None else category_key(value)
