"""Serving a per-entity version: route, score in one batched call, count without labels.

A batch's records are scored by their entities' models in one ``EntityScorer`` call (the
weights of each row gathered from the resident bank); records whose entity has no model, or
that name none, are scored by the fallback. What an operator needs to watch is counted
without one Prometheus series per entity: records scored by an entity model or the fallback,
models resident, loaded and evicted, distinct entities served since the version was loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from pipeline.contract.entity_artifact import EntitySet
from pipeline.contract.entity_scoring import RoutedScores, open_entity_scorer
from pipeline.contract.features import FeatureSpec
from pipeline.worker.codec import DecodedBatch

EntityHook = Callable[[int, int], None]  # (models loaded, models evicted) by one batch


@dataclass(frozen=True)
class EntityOptions:
    """How the worker finds a record's entity and how many models it keeps resident."""

    field: str | None = None  # None: the model's entity column
    from_key: bool = False
    budget_bytes: int = 256 * 2**20
    on_change: EntityHook | None = None  # models loaded or evicted


class EntityServing:
    """The entity scorer of one served version, and which entities it has served."""

    def __init__(
        self, spec: FeatureSpec, entities: EntitySet, device: torch.device, top_k: int,
        options: EntityOptions,
    ) -> None:  # fmt: skip
        self.entities = entities
        self.scorer = open_entity_scorer(
            spec,
            entities,
            device,
            top_k=top_k,
            budget_bytes=options.budget_bytes,
            on_change=options.on_change,
        )
        self.seen: npt.NDArray[np.bool_] = np.zeros(entities.n_slots, dtype=bool)
        self.seen[0] = True  # the fallback is not an entity

    @property
    def served(self) -> int:
        """Distinct entities scored by their own model since this version was loaded."""
        return int(self.seen.sum()) - 1

    @property
    def resident(self) -> int:
        return self.scorer.bank.resident

    @property
    def capacity(self) -> int:
        return self.scorer.bank.capacity

    def score(self, decoded: DecodedBatch) -> RoutedScores:
        keys = decoded.entities if decoded.entities is not None else [None] * len(decoded.cont)
        routed = self.scorer.score(decoded.cont, decoded.cat, keys)
        self.seen[routed.slots] = True
        return routed

    def entity_of(self, slot: int) -> str | None:
        return self.entities.index.entities[slot]
