"""Scoring with per-entity models: route each row to its entity's model, one call per batch.

The worker, ``pipeline score`` and ``trainer evaluate`` (and the trainer's thresholds) all
score entity models through ``EntityScorer``, so a record gets the same score everywhere. A
row's entity key picks its slot in the entity index; unknown keys and ``None`` go to slot 0,
the fallback. The spec's standardisation and per-unit errors are
``pipeline.contract.scoring.SpecTransform``'s, the same as for a single model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from pipeline.contract.entities import FALLBACK_SLOT, EntityIndex
from pipeline.contract.entity_artifact import EntitySet
from pipeline.contract.entity_bank import EntityBank, SlotArray, capacity_for
from pipeline.contract.features import FeatureSpec, FloatArray, IndexArray
from pipeline.contract.scoring import (
    BatchScores,
    DeviceFeed,
    SpecTransform,
    concat_scores,
    host_arrays,
    top_features,
)
from pipeline.contract.stacked import stacked_forward
from pipeline.contract.verdict import is_anomalous, non_finite


@dataclass(frozen=True)
class RoutedScores:
    """A batch's scores with each row's threshold and, for per-entity models, the slot whose
    model scored each row (0: the fallback; ``slots`` None for a single model)."""

    scores: BatchScores
    slots: SlotArray | None  # (B,)
    thresholds: npt.NDArray[np.float64]  # (B,)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def is_anomaly(self) -> npt.NDArray[np.bool_]:
        """Rows over their threshold or without a finite score: the alerts."""
        return is_anomalous(self.scores.scores, self.thresholds)

    @property
    def non_finite(self) -> int:
        """Rows whose score is NaN or infinite (alerts with reason ``non_finite_score``)."""
        return int(non_finite(self.scores.scores).sum())

    @property
    def fallback(self) -> npt.NDArray[np.bool_]:
        if self.slots is None:
            return np.zeros(len(self), dtype=bool)
        return np.equal(self.slots, FALLBACK_SLOT)

    @property
    def monitored(self) -> npt.NDArray[np.float64]:
        """What score metrics and drift watch: the score, or for per-entity models the score
        relative to its own model's threshold (scales differ between entities). Finite
        scores only: one infinity would make a histogram's sum infinite for good; the others
        are counted by reason (``pipeline_anomalies_by_reason_total``)."""
        raw = self.scores.scores.astype(np.float64)
        relative = raw if self.slots is None else raw / self.thresholds
        return relative[np.isfinite(raw)]


class EntityRouter:
    """Entity keys to slots and thresholds, from the index of one version."""

    def __init__(self, index: EntityIndex) -> None:
        self.index = index
        self._slots = index.slots
        self.thresholds = np.asarray(index.thresholds, dtype=np.float64)

    def slots_of(self, keys: Sequence[str | None]) -> SlotArray:
        get = self._slots.get
        return np.fromiter(
            (FALLBACK_SLOT if k is None else get(k, FALLBACK_SLOT) for k in keys),
            dtype=np.int64,
            count=len(keys),
        )

    def entity_of(self, slot: int) -> str | None:
        return self.index.entities[slot]


class EntityScorer:
    """Scores raw arrays with the entity models, gathering each row's weights from the bank."""

    def __init__(
        self, spec: FeatureSpec, router: EntityRouter, bank: EntityBank, top_k: int = 3
    ) -> None:
        self.spec = spec
        self.router = router
        self.bank = bank
        self.device = bank.device
        self.config = bank.weights.config
        self.top_k = max(0, min(top_k, spec.n_units))
        self.transform = SpecTransform(spec).to(bank.device).eval()
        self._feed = DeviceFeed(bank.device)

    def score(self, cont: FloatArray, cat: IndexArray, keys: Sequence[str | None]) -> RoutedScores:
        """Score (B, C), (B, K) with the models of ``keys`` (B entity keys)."""
        slots = self.router.slots_of(keys)
        parts = []
        with torch.inference_mode():
            for start, stop in self._chunks(slots):
                errors, scores = self.score_slots(
                    cont[start:stop], cat[start:stop], slots[start:stop]
                )
                parts.append(top_features(errors, scores, self.top_k))
        return RoutedScores(
            scores=parts[0] if len(parts) == 1 else concat_scores(parts),
            slots=slots,
            thresholds=self.router.thresholds[slots],
        )

    def score_slots(
        self, cont: FloatArray, cat: IndexArray, slots: SlotArray
    ) -> tuple[Tensor, Tensor]:
        """(unit errors (B, U), scores (B,)) of rows scored by the given slots (at most
        ``bank.room`` distinct ones); call under inference mode."""
        unique, inverse = np.unique(slots, return_inverse=True)
        rows = self.bank.place(unique)[inverse]
        cont_d, cat_d, rows_d = self._feed(*host_arrays(cont, cat), ("rows", rows))
        x = self.transform.model_input(cont_d, cat_d)
        recon = stacked_forward(self.bank.pool, x, self.config, slots=rows_d)
        errors = self.transform.unit_errors(x, recon, cat_d)
        return errors, self.transform.record_scores(errors)

    def _chunks(self, slots: SlotArray) -> list[tuple[int, int]]:
        """Row ranges whose distinct entity models fit the bank at once (one range unless
        the pool is smaller than the batch's set of entities)."""
        n = len(slots)
        if n == 0 or np.count_nonzero(np.unique(slots)) <= self.bank.room:  # 0: pinned
            return [(0, n)]
        step = self.bank.room
        return [(s, min(n, s + step)) for s in range(0, n, step)]


def open_entity_scorer(
    spec: FeatureSpec,
    entities: EntitySet,
    device: torch.device,
    *,
    top_k: int = 3,
    budget_bytes: int | None = None,
    on_change: Callable[[int, int], None] | None = None,
) -> EntityScorer:
    """An ``EntityScorer`` over a loaded entity set; without a budget every model may be
    resident (batch scoring, evaluation), with one the bank holds what fits."""
    n = entities.n_slots
    capacity = n if budget_bytes is None else capacity_for(entities.weights.config, n, budget_bytes)
    bank = EntityBank(entities.weights, device, capacity, on_change=on_change)
    return EntityScorer(spec, EntityRouter(entities.index), bank, top_k=top_k)
