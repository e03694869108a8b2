"""The model being served: a validated artifact with its scorer and decoder, and LATEST polling.

``open_model`` loads and validates a version (checksum, shapes, smoke batch on the CPU and
again through the scorer on the serving device); ``check_compatible`` refuses a candidate
whose feature columns differ from the served model's. The reload policy built on these
lives in ``pipeline.worker.reload``.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.contract.artifact import LoadedArtifact, latest_version, load_artifact
from pipeline.contract.entity_scoring import RoutedScores
from pipeline.contract.exceptions import ArtifactError, ArtifactInvalid, ScoringError
from pipeline.contract.features import FeatureSpec
from pipeline.contract.scoring import Scorer
from pipeline.worker.codec import DecodedBatch, RecordDecoder
from pipeline.worker.entity_serving import EntityOptions, EntityServing
from pipeline.worker.resilient import OomHook, ResilientScorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelHandle:
    """Everything needed to turn record bytes into scores with one model version.

    For a per-entity version ``entities`` scores every batch (``scorer`` then holds the
    fallback alone, used for nothing but its smoke batch)."""

    artifact: LoadedArtifact
    scorer: ResilientScorer
    decoder: RecordDecoder
    entities: EntityServing | None = None

    def score(self, decoded: DecodedBatch) -> RoutedScores:
        """Score the accepted rows of a decoded batch with this version."""
        if self.entities is None:
            scores = self.scorer.score(decoded.cont, decoded.cat)
            return RoutedScores(scores, None, np.full(len(scores), self.threshold, np.float64))
        return self.entities.score(decoded)

    @property
    def reference_threshold(self) -> float:
        """The threshold ``RoutedScores.monitored`` is compared with (1 for per-entity
        models)."""
        return self.threshold if self.entities is None else 1.0

    @property
    def name(self) -> str:
        return self.artifact.manifest.name

    @property
    def version(self) -> str:
        return self.artifact.manifest.version

    @property
    def threshold(self) -> float:
        return self.artifact.manifest.threshold.value

    @property
    def spec(self) -> FeatureSpec:
        return self.artifact.manifest.features


def open_model(
    store: str,
    name: str,
    version: str | None,
    device: torch.device,
    *,
    id_field: str | None,
    top_k: int,
    max_record_bytes: int,
    on_oom: OomHook | None = None,
    entity_options: EntityOptions | None = None,
) -> ModelHandle:
    """Load and validate a model version (checksum, strict shapes, smoke batch on the CPU),
    build its scorer on ``device`` and run a smoke batch through that too."""
    artifact = load_artifact(store, name, version)
    spec = artifact.manifest.features
    # Scorer moves its model to the device, so the CPU fallback copy is taken first.
    cpu_copy = copy.deepcopy(artifact.model) if device.type != "cpu" else None
    primary = Scorer(spec, artifact.model, device, top_k=top_k)

    def cpu_scorer() -> Scorer:
        if cpu_copy is None:
            return primary  # already on the CPU
        log.warning("building a CPU copy of the model for out-of-memory fallback")
        return Scorer(spec, cpu_copy, torch.device("cpu"), top_k=top_k)

    scorer = ResilientScorer(primary, cpu_scorer, on_oom=on_oom)
    _smoke_score(scorer, artifact.path)
    if artifact.entities is None:
        decoder = RecordDecoder(spec, id_field=id_field, max_bytes=max_record_bytes)
        return ModelHandle(artifact=artifact, scorer=scorer, decoder=decoder)
    options = entity_options or EntityOptions()
    decoder = RecordDecoder(
        spec,
        id_field=id_field,
        max_bytes=max_record_bytes,
        entity_field=options.field or artifact.entities.info.column,
        entity_from_key=options.from_key,
    )
    entities = EntityServing(spec, artifact.entities, device, top_k, options)
    handle = ModelHandle(artifact=artifact, scorer=scorer, decoder=decoder, entities=entities)
    _smoke_entities(handle)
    return handle


def _smoke_entities(handle: ModelHandle) -> None:
    """Rows of means through the fallback and the first entity model on the serving device."""
    spec, entities, path = handle.spec, handle.entities, handle.artifact.path
    assert entities is not None
    first = entities.entity_of(1) if entities.entities.n_slots > 1 else None
    cont = np.tile(spec.continuous_mean_std()[0], (2, 1)).astype(np.float32)
    cat = np.zeros((2, spec.n_categorical), dtype=np.int64)
    try:
        scores = entities.scorer.score(cont, cat, [None, first]).scores.scores
    except (RuntimeError, ValueError) as exc:
        raise ArtifactInvalid(f"{path}: smoke batch of the entity models failed: {exc}") from exc
    if not np.isfinite(scores).all():
        raise ArtifactInvalid(f"{path}: smoke batch of the entity models gave {scores!r}")


def _smoke_score(scorer: ResilientScorer, path: Path) -> None:
    """Two rows of means through the whole scoring path on the serving device."""
    spec = scorer.spec
    cont = np.tile(spec.continuous_mean_std()[0], (2, 1)).astype(np.float32)
    cat = np.zeros((2, spec.n_categorical), dtype=np.int64)
    try:
        scores = scorer.score(cont, cat).scores
    except ScoringError as exc:
        raise ArtifactInvalid(f"{path}: smoke batch through the scorer failed: {exc}") from exc
    if scores.shape != (2,) or not np.isfinite(scores).all():
        raise ArtifactInvalid(f"{path}: smoke batch through the scorer gave {scores!r}")


def check_compatible(current: FeatureSpec, candidate: FeatureSpec) -> None:
    """A new model must read the same columns with the same kinds as the one in service,
    otherwise every record valid today would be dead-lettered after the swap."""
    old = [(f.name, f.kind, getattr(f, "length", None)) for f in current.features]
    new = [(f.name, f.kind, getattr(f, "length", None)) for f in candidate.features]
    if old != new:
        raise ArtifactInvalid(f"feature columns changed: serving {old}, candidate {new}")


class ModelWatcher:
    """Polls the store's LATEST every ``interval_s`` (0: never) for a version to load."""

    def __init__(self, store: str, name: str, interval_s: float) -> None:
        self.store = store
        self.name = name
        self.interval_s = interval_s
        self._next_check = time.monotonic() + interval_s
        self._refused: str | None = None

    def poll(self, current: str | None) -> str | None:
        """The LATEST version if it differs from the served one (``current``) and was not
        refused before; reads LATEST at most every ``interval_s``."""
        now = time.monotonic()
        if self.interval_s <= 0 or now < self._next_check:
            return None
        self._next_check = now + self.interval_s
        return self.check_now(current)

    def check_now(self, current: str | None) -> str | None:
        """Like ``poll`` but reads LATEST at once (an announcement arrived)."""
        try:
            version = latest_version(self.store, self.name)
        except ArtifactError as exc:
            log.warning("cannot read LATEST", extra={"model": self.name, "error": str(exc)})
            return None
        if version in (current, self._refused):
            return None
        return version

    def refuse(self, version: str) -> None:
        self._refused = version
