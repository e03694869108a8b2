"""The fit job: data -> feature spec -> trained model -> threshold -> published artifact.

Nothing is published unless every step succeeded; any error leaves the store untouched.

Runs as one process, or as several under ``torchrun`` (see ``trainer.distributed``): each
rank reads its own shard of rows, statistics and validation results are combined across
ranks, and rank 0 alone publishes (and announces) the model.

Memory does not grow with the data: the statistics pass streams; training rows are cached
in RAM only when they fit ``memory_budget_mb`` and are otherwise streamed from Parquet every
epoch through a bounded shuffle buffer (``trainer.rows``); the threshold keeps 4 bytes per
held-out row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

import torch

from pipeline.contract import artifact
from pipeline.contract.artifact import Manifest, ThresholdInfo, TrainingSummary
from pipeline.contract.exceptions import ArtifactError, DataError, PipelineError
from pipeline.contract.features import FeatureSpec
from pipeline.contract.models import ModelConfig, default_hidden_dims
from pipeline.contract.scoring import resolve_device
from trainer.checkpoint import Checkpointer
from trainer.data import ParquetSource
from trainer.distributed import Dist, device_for, init_distributed, shutdown
from trainer.loop import TrainResult, train
from trainer.progress import make_reporter
from trainer.rows import SplitRows, bytes_per_row
from trainer.settings import TrainerSettings
from trainer.spec import SpecOptions, SpecStats, build_spec, column_kinds, gather_stats
from trainer.threshold import HeldOut, held_out_stats

log = logging.getLogger(__name__)

# Settings that do not change the trained model; a checkpoint may be resumed across them.
_NOT_IN_RUN_FINGERPRINT = {
    "epochs",
    "model_store",
    "name",
    "checkpoint_dir",
    "progress",
    "announce_topic",
    "kafka",
    "device",
    "memory_budget_mb",
}


@dataclass(frozen=True)
class Prepared:
    """The data opened and understood: source, spec, and this rank's row counts."""

    source: ParquetSource
    spec: FeatureSpec
    rows_train: int  # all ranks
    rows_validation: int  # all ranks
    local_train: int  # this rank
    local_validation: int  # this rank


def fit(settings: TrainerSettings) -> Manifest:
    """Run the whole job and return the published manifest (on every rank)."""
    if not settings.data:
        raise DataError("no training data given (--data or TRAINER_DATA)")
    if settings.entity_column:
        from trainer.entity_fit import fit_entities

        manifest, is_main = fit_entities(settings), True
    else:
        manifest, is_main = _fit_distributed(settings)
    if is_main and settings.announce_topic:
        from trainer.announce import announce  # kafka-python only when announcing

        announce(settings.kafka, settings.announce_topic, manifest, settings.model_store)
    return manifest


def _fit_distributed(settings: TrainerSettings) -> tuple[Manifest, bool]:
    """The single-model fit, on one process or every rank of a torchrun job."""
    d = init_distributed(settings.device)
    try:
        manifest = _fit(settings, d)
        d.barrier()  # nobody tears the group down while a peer still talks to it
    finally:
        shutdown(d)
    return manifest, d.is_main


def _fit(s: TrainerSettings, d: Dist) -> Manifest:
    started = time.monotonic()
    device = device_for(d, resolve_device(s.device))
    data = prepare(s, d)
    config = model_config(data.spec, s)
    fitted = fit_model(s, d, data, config, device)
    summary = summary_of(s, data, fitted.result, device, d, fitted.mode, started)
    manifest = _publish_on_rank0(s, d, data.spec, config, fitted.result, fitted.held, summary, data)
    if fitted.checkpointer is not None:
        fitted.checkpointer.remove()
    return manifest


@dataclass(frozen=True)
class Fitted:
    """A trained model with its held-out statistics (threshold, drift, explanations)."""

    result: TrainResult
    held: HeldOut
    mode: str  # memory or stream
    checkpointer: Checkpointer | None


def fit_model(
    s: TrainerSettings, d: Dist, data: Prepared, config: ModelConfig, device: torch.device
) -> Fitted:
    """Train ``config`` on this rank's rows and score the held-out ones (every rank)."""
    spec = data.spec
    spans = data.source.shard(d.rank, d.world)
    cache = (data.local_train + data.local_validation) * bytes_per_row(spec) <= (
        s.memory_budget_mb * 2**20
    )
    train_rows, val_rows = (
        SplitRows(
            data.source,
            spec,
            spans,
            fraction=s.validation_fraction,
            seed=s.seed,
            validation=validation,
            rows=data.local_validation if validation else data.local_train,
            cache=cache,
        )
        for validation in (False, True)
    )
    log.info(
        "training",
        extra={
            "rank": d.rank,
            "world_size": d.world,
            "rows_train": data.local_train,
            "rows_validation": data.local_validation,
            "first_row": data.source.total_rows * d.rank // d.world,
            "end_row": data.source.total_rows * (d.rank + 1) // d.world,
            "data_mode": train_rows.mode,
            "model": config.kind,
            "device": str(device),
        },
    )
    checkpointer = (
        Checkpointer(s.checkpoint_dir, d.rank, run_fingerprint(s, data, d.world))
        if s.checkpoint_dir
        else None
    )
    reporter = make_reporter(s.progress, s.epochs, d.is_main)
    result = train(spec, config, train_rows, val_rows, s, device, d, reporter, checkpointer)
    held = held_out_stats(spec, result.model, val_rows, device, d, s.seed)
    return Fitted(result, held, train_rows.mode, checkpointer)


def prepare(s: TrainerSettings, d: Dist) -> Prepared:
    """Open the data, infer kinds, gather statistics over this rank's shard and merge them
    across ranks. A failure on any rank is raised on every rank."""
    error: PipelineError | None = None
    opts = _spec_options(s)
    location = s.data or ""
    try:
        source = ParquetSource(location, batch_rows=s.read_batch_rows)
        kinds = column_kinds(source, opts)
        local = gather_stats(source, kinds, opts, d.rank, d.world)
    except PipelineError as exc:
        error = exc
    d.agree(error)
    local_train, local_val = local.rows, local.validation_rows
    merged = SpecStats()
    for part in d.gather(local):
        merged.merge(part)
    spec = build_spec(kinds, merged, opts, location)
    if merged.validation_rows == 0:
        raise DataError(f"no validation rows in {s.data!r}: too little data to hold out")
    return Prepared(source, spec, merged.rows, merged.validation_rows, local_train, local_val)


def model_config(spec: FeatureSpec, s: TrainerSettings) -> ModelConfig:
    hidden, latent = default_hidden_dims(spec.input_dim)
    return ModelConfig(
        kind=s.model,
        input_dim=spec.input_dim,
        output_dim=spec.input_dim,
        hidden_dims=s.hidden_dims if s.hidden_dims is not None else hidden,
        latent_dim=s.latent_dim or latent,
        activation=s.activation,
        dropout=s.dropout,
        norm=s.norm,
        beta=s.beta,
        noise=s.noise,
        noise_level=s.noise_level,
        score=s.score,
    )


def summary_of(
    s: TrainerSettings,
    data: Prepared,
    result: TrainResult,
    device: torch.device,
    d: Dist,
    mode: str,
    started: float,
) -> TrainingSummary:
    return TrainingSummary(
        rows_train=data.rows_train,
        rows_validation=data.rows_validation,
        epochs=len(result.train_loss),
        best_epoch=result.best_epoch,
        train_loss=result.train_loss,
        validation_loss=result.validation_loss,
        seed=s.seed,
        device=str(device),
        duration_s=round(time.monotonic() - started, 3),
        torch_version=torch.__version__,
        world_size=d.world,
        data_mode="memory" if mode == "memory" else "stream",
        mixed_precision=result.mixed_precision,
        rows_per_s=round(result.rows_per_s, 1),
        resumed_from_epoch=result.resumed_from_epoch,
    )


def _publish_on_rank0(
    s: TrainerSettings,
    d: Dist,
    spec: FeatureSpec,
    config: ModelConfig,
    result: TrainResult,
    held: HeldOut,
    summary: TrainingSummary,
    data: Prepared,
) -> Manifest:
    """Rank 0 publishes; every rank gets the manifest (or the error)."""
    outcome: tuple[Manifest | None, str | None] = (None, None)
    if d.is_main:
        try:
            manifest = artifact.publish(
                s.model_store,
                result.model.cpu(),
                {
                    "name": s.name,
                    "model": config,
                    "features": spec,
                    "threshold": ThresholdInfo(
                        value=held.threshold(s.quantile),
                        quantile=s.quantile,
                        rows=len(held.scores),
                    ),
                    "score_quantiles": held.quantiles(),
                    "unit_error_mean": held.unit_mean,
                    "unit_error_p99": held.unit_p99,
                    "training": summary,
                    "data_fingerprint": data_fingerprint(data.source, spec),
                },
            )
            outcome = (manifest, None)
        except OSError as exc:
            outcome = (None, f"cannot publish to model store {s.model_store!r}: {exc}")
    published, error = d.broadcast(outcome)
    if published is None:
        raise ArtifactError(error or "publishing failed")
    if d.is_main:
        log.info(
            "published",
            extra={
                "model": published.name,
                "version": published.version,
                "threshold": published.threshold.value,
                "rows_validation": published.threshold.rows,
            },
        )
    return published


def data_fingerprint(source: ParquetSource, spec: FeatureSpec) -> str:
    """sha256 over the file list with row counts and the fitted statistics."""
    digest = hashlib.sha256()
    rows: dict[str, int] = {}
    for piece in source.pieces:
        rows[piece.path] = rows.get(piece.path, 0) + piece.rows
    for path in source.files:
        digest.update(path.encode())
        digest.update(str(rows.get(path, 0)).encode())
    digest.update(spec.model_dump_json().encode())
    return digest.hexdigest()


def run_fingerprint(s: TrainerSettings, data: Prepared, world: int) -> str:
    """What a checkpoint must match to be resumed: model-shaping settings, spec, data, ranks."""
    shaping = s.model_dump(mode="json", exclude=_NOT_IN_RUN_FINGERPRINT)
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode())
    digest.update(data_fingerprint(data.source, data.spec).encode())
    digest.update(f"world={world}".encode())
    return digest.hexdigest()


def _spec_options(s: TrainerSettings) -> SpecOptions:
    entity = (s.entity_column,) if s.entity_column else ()
    return SpecOptions(
        id_column=s.id_column,
        label_column=s.label_column,
        ignore_columns=(*s.ignore_columns, *entity),
        categorical_columns=tuple(s.categorical_columns),
        numeric_columns=tuple(s.numeric_columns),
        max_categories=s.max_categories,
        missing=s.missing,
        validation_fraction=s.validation_fraction,
        seed=s.seed,
    )
