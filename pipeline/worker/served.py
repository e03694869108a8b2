"""The models a worker serves: the live one and, optionally, a shadow candidate.

Each sits in a :class:`~pipeline.worker.reload.ModelSlot` (hot reload from LATEST or the
announce topic); this module wires the slots to the settings and to the metrics: a candidate
for the live slot must read the same columns as the model in service, and every load, reload
and refusal is counted.
"""

from __future__ import annotations

import logging

import torch

from pipeline.contract.exceptions import ArtifactError
from pipeline.contract.store import check_access
from pipeline.worker.entity_serving import EntityOptions
from pipeline.worker.metrics import PipelineMetrics
from pipeline.worker.reload import ModelSlot, Role
from pipeline.worker.resilient import OomAction
from pipeline.worker.serving import ModelHandle, ModelWatcher, check_compatible, open_model
from pipeline.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class ServedModels:
    """The live slot (loaded at once: ``ArtifactError`` means nothing to serve, exit 3) and
    the shadow slot (a failure to load it only logs: scoring goes on without it)."""

    def __init__(
        self, settings: WorkerSettings, metrics: PipelineMetrics, device: torch.device
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = device
        check_access(settings.model_store, "PIPELINE_MODEL_STORE")  # ConfigError: exit 2
        self.live = self._slot("live", settings.model_name, settings.model_version)
        self.live.start()
        self.shadow = self._start_shadow() if settings.shadow_enabled else None

    @property
    def model(self) -> ModelHandle:
        """The live model being served."""
        assert self.live.current is not None
        return self.live.current

    @property
    def shadow_model(self) -> ModelHandle | None:
        return self.shadow.current if self.shadow else None

    @property
    def slots(self) -> list[ModelSlot]:
        return [self.live, *([self.shadow] if self.shadow else [])]

    def maybe_reload(self) -> None:
        """Between batches: swap in new versions that are due (and valid)."""
        for slot in self.slots:
            slot.maybe_reload()

    def _slot(self, role: Role, name: str, pinned: str | None) -> ModelSlot:
        live = role == "live"
        reloads = self.metrics.model_reloads if live else self.metrics.shadow_reloads
        return ModelSlot(
            role=role,
            name=name,
            pinned=pinned,
            watcher=ModelWatcher(self.settings.model_store, name, self.settings.reload_interval_s),
            opener=lambda version: self._open(name, version),
            validate=self._compatible_with_live if live else None,
            on_loaded=self._live_loaded if live else self._shadow_loaded,
            on_refused=lambda version, exc: reloads.labels(result="refused").inc(),
        )

    def _start_shadow(self) -> ModelSlot:
        s = self.settings
        slot = self._slot("shadow", s.shadow_name, s.shadow_model_version)
        try:
            slot.start()
        except ArtifactError as exc:
            self.metrics.shadow_reloads.labels(result="refused").inc()
            log.error(
                "shadow model unavailable; scoring without it until one loads",
                extra={
                    "model": s.shadow_name,
                    "version": s.shadow_model_version,
                    "error": str(exc),
                },
            )
        return slot

    def _open(self, name: str, version: str | None) -> ModelHandle:
        s = self.settings
        return open_model(
            s.model_store,
            name,
            version,
            self.device,
            id_field=s.id_field,
            top_k=s.top_k,
            max_record_bytes=s.max_record_bytes,
            on_oom=self._on_oom,
            entity_options=EntityOptions(
                field=s.entity_field,
                from_key=s.entity_from == "key",
                budget_bytes=int(s.entity_memory_mb * 2**20),
                on_change=self._on_entity_change if name == s.model_name else None,
            ),
        )

    def _live_loaded(self, handle: ModelHandle, reloaded: bool) -> None:
        m = self.metrics
        m.set_model(handle.name, handle.version, handle.reference_threshold)
        if reloaded:
            m.model_reloads.labels(result="loaded").inc()
        ents = handle.entities
        m.entity_models.set(ents.entities.n_slots - 1 if ents is not None else 0)
        m.entity_capacity.set(ents.capacity - 1 if ents is not None else 0)
        m.entity_resident.set_function(lambda: ents.resident if ents is not None else 0)
        m.entities_served.set_function(lambda: ents.served if ents is not None else 0)

    def _on_entity_change(self, loaded: int, evicted: int) -> None:
        self.metrics.entity_loads.inc(loaded)
        self.metrics.entity_evictions.inc(evicted)

    def _shadow_loaded(self, handle: ModelHandle, reloaded: bool) -> None:
        self.metrics.set_shadow(handle.name, handle.version, handle.reference_threshold)
        self.metrics.shadow_reloads.labels(result="loaded").inc()

    def _compatible_with_live(self, candidate: ModelHandle) -> None:
        if self.live.current is not None:
            check_compatible(self.live.current.spec, candidate.spec)

    def _on_oom(self, action: OomAction, rows: int) -> None:
        self.metrics.oom_events.labels(action=action).inc()
