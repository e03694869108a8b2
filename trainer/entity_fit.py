"""``trainer fit --entity-column C``: one model per entity plus a fallback, one version.

1. The feature spec is fitted on every row (one input layout for every model); the entity
   column is left out of the features.
2. The fallback is an ordinary fit of the entity architecture on every row
   (``trainer.fit.fit_model``): same split, early stopping and threshold as a single model.
3. Entities with at least ``min_entity_rows`` rows, and enough calibration rows for the threshold
   quantile, get a model of their own, all fitted at once (``trainer.entity_loop``).
4. Each entity's threshold is the quantile of *its own* calibration scores, scored by the
   worker's ``EntityScorer``. The split is the single model's three parts (``trainer.split``):
   fit rows train, select rows drive early stopping, calibration rows only set thresholds.
5. Stacked weights (slot 0 the fallback), the entity index and the manifest are published as
   one version through the atomic publish path.

``--entities a,b`` refits only those entities: every other slot, the fallback and the feature
spec are taken from the base version (``--base-version``, else LATEST) and copied into the new
version, whose index says in which version each slot's model was fitted.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.contract.artifact import (
    LoadedArtifact,
    Manifest,
    TrainingSummary,
    load_artifact,
)
from pipeline.contract.artifact import new_version as make_version
from pipeline.contract.entities import EntityIndex
from pipeline.contract.entity_bank import EntityBank, InMemoryWeights
from pipeline.contract.entity_publish import publish_entities, relative_quantiles
from pipeline.contract.entity_scoring import EntityRouter, EntityScorer
from pipeline.contract.exceptions import ConfigError
from pipeline.contract.features import FeatureSpec
from pipeline.contract.models import ModelConfig
from pipeline.contract.scoring import resolve_device
from pipeline.contract.stacked import Layer, StackedAutoEncoder, check_stackable, from_autoencoder
from trainer.data import ParquetSource
from trainer.distributed import Dist, init_distributed, shutdown
from trainer.entity_data import EntityRows, read_entity_rows
from trainer.entity_loop import StackedFit, fit_stacked
from trainer.fingerprint import data_fingerprint
from trainer.fit import (
    fit_model,
    model_config,
    prepare,
    split_options,
    summary_of,
    threshold_info,
)
from trainer.rows import bytes_per_row
from trainer.settings import TrainerSettings
from trainer.split import CALIBRATE, FIT, SELECT, plan_split
from trainer.threshold import HeldOut

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fallback:
    """Slot 0: its weights and what the manifest's top level says about it."""

    layers: list[Layer]
    fields: dict[str, Any]  # threshold, score_quantiles, unit errors, training


def fit_entities(s: TrainerSettings) -> Manifest:
    """Fit, score and publish a per-entity version; returns its manifest."""
    d = init_distributed(s.device)
    try:
        if d.enabled:
            raise ConfigError("per-entity fits run as one process, not under torchrun")
        return _fit(s, d)
    finally:
        shutdown(d)


def _fit(s: TrainerSettings, d: Dist) -> Manifest:
    started = time.monotonic()
    column = s.entity_column or ""
    device = resolve_device(s.device)
    base = _base(s) if s.entities else None
    if base is not None:
        spec, config = base.manifest.features, base.manifest.model
        source = ParquetSource(s.data or "", batch_rows=s.read_batch_rows)
        fallback = _base_fallback(base)
    else:
        data = prepare(s, d)
        spec, source = data.spec, data.source
        config = model_config(spec, s)
        check_stackable(config)
        fallback = _fit_fallback(s, d, data, config, device, started)
    _check_memory(s, source, spec)
    rows = read_entity_rows(
        source, spec, column, split=plan_split(source, split_options(s)), only=s.entities
    )
    members, thin = _eligible(rows, s)
    log.info("entity models", extra={"entities": len(members), "thin": thin, "column": column})
    stacked = fit_stacked(config, spec, rows, members, s, device) if members else None
    version = make_version()
    slots = _assemble(base, fallback, rows, members, stacked, version)
    thresholds, relative = _thresholds(spec, config, slots, rows, s.quantile, version)
    index = EntityIndex(
        column=column,
        entities=slots.entities,
        thresholds=thresholds,
        calibration_rows=slots.calibration_rows,
        train_rows=slots.train_rows,
        fitted_in=slots.fitted_in,
    )
    model = _stacked_module(config, slots.layers)
    fields = {
        "name": s.name,
        "model": config,
        "features": spec,
        **fallback.fields,
        "data_fingerprint": data_fingerprint(source, spec),
    }
    fields["training"] = _with_entity_summary(fields["training"], stacked)
    manifest = publish_entities(
        s.model_store,
        model,
        index,
        fields,
        {
            "min_rows": s.min_entity_rows,
            "relative_score_quantiles": relative_quantiles(relative),
            "fitted": len(members),
            "base_version": base.version if base is not None else None,
            "thin_entities": thin,
        },
        version=version,
    )
    log.info(
        "published",
        extra={"model": manifest.name, "version": manifest.version, "entities": len(members)},
    )
    return manifest


def _base(s: TrainerSettings) -> LoadedArtifact:
    """The version a partial refit builds on: an entity version of the same column."""
    base = load_artifact(s.model_store, s.name, s.base_version)
    if base.entities is None or base.entities.info.column != s.entity_column:
        raise ConfigError(
            f"--entities needs a base version with entity column {s.entity_column!r}; "
            f"{s.name}/{base.version} has "
            f"{'none' if base.entities is None else repr(base.entities.info.column)}"
        )
    return base


def _base_fallback(base: LoadedArtifact) -> Fallback:
    m = base.manifest
    return Fallback(
        layers=from_autoencoder(base.model),
        fields={
            "threshold": m.threshold,
            "score_quantiles": m.score_quantiles,
            "unit_error_mean": m.unit_error_mean,
            "unit_error_p99": m.unit_error_p99,
            "training": m.training,
        },
    )


def _fit_fallback(
    s: TrainerSettings,
    d: Dist,
    data: Any,
    config: ModelConfig,
    device: torch.device,
    started: float,
) -> Fallback:
    fitted = fit_model(s, d, data, config, device)
    held: HeldOut = fitted.held
    if fitted.checkpointer is not None:
        fitted.checkpointer.remove()
    return Fallback(
        layers=from_autoencoder(fitted.result.model.cpu()),
        fields={
            "threshold": threshold_info(held, s),
            "score_quantiles": held.quantiles(),
            "unit_error_mean": held.unit_mean,
            "unit_error_p99": held.unit_p99,
            "training": summary_of(s, data, fitted, device, d, started),
        },
    )


def _check_memory(s: TrainerSettings, source: ParquetSource, spec: FeatureSpec) -> None:
    need = source.total_rows * (bytes_per_row(spec) + 9)
    if need > s.memory_budget_mb * 2**20:
        raise ConfigError(
            f"a per-entity fit holds its rows in memory: {need / 2**20:.0f} MiB for "
            f"{source.total_rows} rows, over TRAINER_MEMORY_BUDGET_MB={s.memory_budget_mb}"
        )


def min_held_out(quantile: float) -> int:
    """Fewest calibration rows for which the quantile is not the largest score: the smallest n
    with ceil((n + 1) q) <= n."""
    return max(1, math.ceil(quantile / (1 - quantile) - 1e-9))


def _eligible(rows: EntityRows, s: TrainerSettings) -> tuple[list[int], int]:
    """Entities that get a model (indices into rows.keys), and how many are too thin."""
    total = rows.counts()
    fitting, selecting = rows.counts(FIT), rows.counts(SELECT)
    calibrating = rows.counts(CALIBRATE)
    ok = total >= s.min_entity_rows
    ok &= (calibrating >= min_held_out(s.quantile)) & (fitting > 0) & (selecting > 0)
    return [int(i) for i in np.flatnonzero(ok)], int((~ok).sum())


@dataclass
class Slots:
    """Every slot of the new version, slot 0 the fallback."""

    entities: list[str | None]
    layers: list[Layer]
    calibration_rows: list[int]
    train_rows: list[int]
    fitted_in: list[str]
    thresholds: list[float] = field(default_factory=lambda: [0.0])


def _assemble(
    base: LoadedArtifact | None,
    fallback: Fallback,
    rows: EntityRows,
    members: list[int],
    stacked: StackedFit | None,
    version: str,
) -> Slots:
    """Base slots (refit ones replaced) then new entities; slot 0 the fallback."""
    calibrating, fitting = rows.counts(CALIBRATE), rows.counts(FIT)
    if base is not None and base.entities is not None:
        idx = base.entities.index
        all_slots = np.arange(len(idx.entities), dtype=np.int64)
        out = Slots(
            list(idx.entities),
            [(w.clone(), b.clone()) for w, b in base.entities.weights.layers(all_slots)],
            list(idx.calibration_rows),
            list(idx.train_rows),
            list(idx.fitted_in),
            list(idx.thresholds),
        )
    else:
        out = Slots([None], list(fallback.layers), [0], [0], [version])
        out.thresholds[0] = fallback.fields["threshold"].value
    position = {e: i for i, e in enumerate(out.entities)}
    targets: list[int] = []
    for m in members:
        key = rows.keys[m]
        if key not in position:
            position[key] = len(out.entities)
            out.entities.append(key)
            out.calibration_rows.append(0)
            out.train_rows.append(0)
            out.fitted_in.append(version)
            out.thresholds.append(0.0)
        slot = position[key]
        targets.append(slot)
        out.calibration_rows[slot] = int(calibrating[m])
        out.train_rows[slot] = int(fitting[m])
        out.fitted_in[slot] = version
    if stacked is not None:
        out.layers = _placed(out.layers, stacked.model.stacked(), targets, len(out.entities))
    return out


def _placed(
    layers: list[Layer], fitted: list[Layer], targets: list[int], n_slots: int
) -> list[Layer]:
    """``layers`` grown to ``n_slots`` with the fitted models written into ``targets``."""
    index = torch.tensor(targets, dtype=torch.int64)
    out: list[Layer] = []
    for (old_w, old_b), (fw, fb) in zip(layers, fitted, strict=True):
        grow = n_slots - old_w.shape[0]
        w = torch.cat([old_w, old_w.new_zeros(grow, *old_w.shape[1:])])
        b = torch.cat([old_b, old_b.new_zeros(grow, *old_b.shape[1:])])
        w[index] = fw.detach().cpu()
        b[index] = fb.detach().cpu()
        out.append((w, b))
    return out


def _thresholds(
    spec: FeatureSpec,
    config: ModelConfig,
    slots: Slots,
    rows: EntityRows,
    quantile: float,
    version: str,
) -> tuple[list[float], np.ndarray[Any, Any]]:
    """The threshold of each slot fitted now, from its own calibration rows scored by
    ``EntityScorer`` (the fallback's and reused slots' stay as they are); and every calibration
    row's score relative to the threshold of the slot serving it."""
    weights = InMemoryWeights(config, slots.layers)
    index = EntityIndex(
        column="-",
        entities=slots.entities,
        thresholds=slots.thresholds,
        calibration_rows=slots.calibration_rows,
        train_rows=slots.train_rows,
        fitted_in=slots.fitted_in,
    )
    bank = EntityBank(weights, torch.device("cpu"), weights.n_slots)
    scorer = EntityScorer(spec, EntityRouter(index), bank, top_k=0)
    held = np.flatnonzero(rows.part == CALIBRATE)
    keys = [rows.keys[e] if e >= 0 else None for e in rows.entity[held].tolist()]
    routed = scorer.score(rows.cont[held], rows.cat[held], keys)
    assert routed.slots is not None
    scores = routed.scores.scores
    thresholds = list(slots.thresholds)
    for slot in range(1, len(slots.entities)):
        own = scores[routed.slots == slot]
        if slots.fitted_in[slot] == version and own.size:
            # per-entity warnings about thin calibration are left to the entity summary
            thresholds[slot] = HeldOut(own, [], [], 0).threshold(quantile, warn=False).value
    relative = scores / np.maximum(np.asarray(thresholds)[routed.slots], 1e-12)
    return thresholds, relative


def _stacked_module(config: ModelConfig, layers: list[Layer]) -> StackedAutoEncoder:
    """The assembled slots as one module, for publishing its state dict."""
    model = StackedAutoEncoder(config, int(layers[0][0].shape[0]))
    with torch.no_grad():
        for (w_param, b_param), (w, b) in zip(model.stacked(), layers, strict=True):
            w_param.copy_(w)
            b_param.copy_(b)
    return model.eval()


def _with_entity_summary(training: TrainingSummary, fit: StackedFit | None) -> TrainingSummary:
    """The fallback's training summary plus how the entity models' fit went."""
    extra: dict[str, Any] = {"entity_models": 0}
    if fit is not None:
        extra = {
            "entity_models": int(fit.model.n_models),
            "entity_epochs": fit.epochs,
            "entity_fit_s": round(fit.seconds, 3),
            "entity_rows_per_s": round(fit.rows_per_s, 1),
            "entity_train_loss": fit.train_loss,
            "entity_validation_loss": fit.validation_loss,
        }
    return TrainingSummary.model_validate({**training.model_dump(), **extra})
