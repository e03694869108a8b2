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

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.contract import artifact
from pipeline.contract.artifact import Manifest, ThresholdInfo, TrainingSummary
from pipeline.contract.exceptions import ArtifactError, ConfigError, DataError, PipelineError
from pipeline.contract.features import FeatureSpec
from pipeline.contract.models import (
    WHITEN_MAX_UNITS,
    WHITEN_ROWS_PER_UNIT,
    ModelConfig,
    default_hidden_dims,
    ensemble_recipe,
)
from pipeline.contract.scoring import resolve_device
from pipeline.contract.store import check_access
from trainer.budget import Budget, plan_budget
from trainer.checkpoint import Checkpointer
from trainer.data import ParquetSource
from trainer.distributed import Dist, device_for, init_distributed, shutdown
from trainer.drift import drifting_columns
from trainer.fingerprint import data_fingerprint, run_fingerprint
from trainer.loop import TrainResult, train
from trainer.negatives import negative_sampling
from trainer.progress import make_reporter
from trainer.rows import SplitRows, bytes_per_row
from trainer.settings import TrainerSettings
from trainer.spec import (
    Kind,
    SpecOptions,
    SpecStats,
    build_spec,
    column_kinds,
    constant_columns,
    discrete_as_categorical,
    gather_stats,
)
from trainer.split import (
    CALIBRATE,
    FIT,
    SELECT,
    RowSplit,
    SplitOptions,
    plan_from_sample,
    split_kind,
    time_sample,
)
from trainer.threshold import HeldOut, fit_unit_scale, held_out_stats
from trainer.whitening import fit_residual_whitening

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """The data opened and understood: source, split, spec, and the rows of each part."""

    source: ParquetSource
    split: RowSplit
    spec: FeatureSpec
    part_rows: list[int]  # fit, select, calibrate over all ranks
    local_rows: list[int]  # the same on this rank
    constant_columns: list[str]
    drifting_columns: list[str]  # columns that move with a time split (trainer.drift)


def fit(settings: TrainerSettings) -> Manifest:
    """Run the whole job and return the published manifest (on every rank)."""
    if not settings.data:
        raise DataError("no training data given (--data or TRAINER_DATA)")
    check_access(settings.model_store, "TRAINER_MODEL_STORE")  # before hours of training
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
    config = model_config(data.spec, s, data.part_rows[FIT], data.part_rows[SELECT])
    fitted = fit_model(s, d, data, config, device)
    summary = summary_of(s, data, fitted, device, d, started)
    manifest = _publish_on_rank0(s, d, data.spec, config, fitted.result, fitted.held, summary, data)
    if fitted.checkpointer is not None:
        fitted.checkpointer.remove()
    return manifest


@dataclass(frozen=True)
class Fitted:
    """A trained model with its calibration statistics (threshold, drift, explanations)."""

    result: TrainResult
    held: HeldOut
    mode: str  # memory or stream
    checkpointer: Checkpointer | None
    budget: Budget


def fit_model(
    s: TrainerSettings, d: Dist, data: Prepared, config: ModelConfig, device: torch.device
) -> Fitted:
    """Train ``config`` on this rank's fit rows (selecting on the select rows), normalise its
    errors and score the calibration rows (every rank)."""
    spec = data.spec
    spans = data.source.shard(d.rank, d.world)
    cache = sum(data.local_rows) * bytes_per_row(spec) <= (s.memory_budget_mb * 2**20)
    fit_rows, select_rows, calibrate_rows = (
        SplitRows(
            data.source,
            spec,
            spans,
            split=data.split,
            part=part,
            rows=data.local_rows[part],
            cache=cache,
        )
        for part in (FIT, SELECT, CALIBRATE)
    )
    log.info(
        "training",
        extra={
            "rank": d.rank,
            "world_size": d.world,
            "rows_fit": data.local_rows[FIT],
            "rows_select": data.local_rows[SELECT],
            "rows_calibrate": data.local_rows[CALIBRATE],
            "split": data.split.kind,
            "first_row": data.source.total_rows * d.rank // d.world,
            "end_row": data.source.total_rows * (d.rank + 1) // d.world,
            "data_mode": fit_rows.mode,
            "model": config.kind,
            "device": str(device),
        },
    )
    checkpointer = (
        Checkpointer(s.checkpoint_dir, d.rank, run_fingerprint(s, data.source, data.spec, d.world))
        if s.checkpoint_dir
        else None
    )
    budget = plan_budget(data.part_rows[FIT], s, d.world)
    reporter = make_reporter(s.progress, budget.epochs, d.is_main)
    result = train(
        spec, config, fit_rows, select_rows, s, budget, device, d, reporter, checkpointer
    )
    if config.error_units:
        fit_unit_scale(spec, result.model, select_rows, device, d)
    if config.whitened_units:
        fit_residual_whitening(spec, result.model, select_rows, device, d)
    held = held_out_stats(spec, result.model, calibrate_rows, device, d, s.seed)
    return Fitted(result, held, fit_rows.mode, checkpointer, budget)


def prepare(s: TrainerSettings, d: Dist) -> Prepared:
    """Open the data, plan the split, infer kinds, gather statistics over this rank's shard
    and merge them across ranks. A failure on any rank is raised on every rank."""
    error: PipelineError | None = None
    opts = _spec_options(s)
    location = s.data or ""
    try:
        source = ParquetSource(location, batch_rows=s.read_batch_rows)
        kind = split_kind(source.schema, opts.split)
        sample = time_sample(source, opts.split.by, d.rank, d.world) if kind == "time" else None
    except PipelineError as exc:
        error = exc
    d.agree(error)
    if sample is not None:
        sample = np.concatenate(d.gather(sample))
    try:
        split = plan_from_sample(source.total_rows, opts.split, kind, sample)
        kinds = column_kinds(source, opts)
        local = gather_stats(
            source, kinds, split, opts.max_levels, d.rank, d.world, opts.tail_ratio > 0
        )
    except PipelineError as exc:
        error = exc
    d.agree(error)
    merged = SpecStats()
    for part in d.gather(local):
        merged.merge(part)
    kinds, merged = discrete_as_categorical(kinds, merged, opts)
    drifting: list[str] = []
    if split.kind == "time":
        drifting = drifting_columns(kinds, merged, s.split_by or "", s.drop_drifting_columns)
        if s.drop_drifting_columns:
            kinds, opts = _without(kinds, opts, drifting)
    spec = build_spec(kinds, merged, opts, location)
    _check_parts(merged.part_rows, s)
    return Prepared(
        source,
        split,
        spec,
        merged.part_rows,
        local.part_rows,
        constant_columns(kinds, merged),
        drifting,
    )


def _without(
    kinds: dict[str, Kind], opts: SpecOptions, columns: list[str]
) -> tuple[dict[str, Kind], SpecOptions]:
    """The kinds and options with ``columns`` left out of the features (listed as ignored)."""
    if not columns:
        return kinds, opts
    kept = {name: kind for name, kind in kinds.items() if name not in columns}
    if not kept:
        raise DataError(
            f"every feature column drifts with the split column ({', '.join(columns)}); "
            "nothing is left to fit on. Keep them with --no-drop-drifting-columns."
        )
    return kept, replace(opts, ignore_columns=(*opts.ignore_columns, *columns))


def _check_parts(rows: list[int], s: TrainerSettings) -> None:
    """Every part needs rows; too few calibration rows for the quantile is only a warning
    (``trainer.calibration``)."""
    for part, name in ((SELECT, "validation (select)"), (CALIBRATE, "calibration")):
        if rows[part] == 0:
            raise DataError(
                f"no {name} rows in {s.data!r} ({rows[FIT]} fit rows): too little data to "
                f"hold out, or a --split-by column with too few distinct values"
            )


def model_config(
    spec: FeatureSpec,
    s: TrainerSettings,
    fit_rows: int | None = None,
    select_rows: int | None = None,
) -> ModelConfig:
    """The architecture for this spec: sized from the input width unless given; an ensemble
    of ``members`` where the kind allows it, trained and scored as ``ensemble_recipe`` says
    for ``fit_rows`` unless given; error units normalised unless turned off; residuals
    whitened when asked (``select_rows``: for the warning when they are too few)."""
    # per-entity models (trainer.entity_fit) stack single plain autoencoders
    single = s.model == "vae" or s.norm == "batch" or bool(s.entity_column)
    members = 1 if single else s.members
    hidden, latent = default_hidden_dims(spec.input_dim, members)
    normalized = s.normalize_errors and not s.entity_column
    diversity, spread_weight = ensemble_recipe(fit_rows, members)
    if members > 1:
        diversity = diversity if s.diversity is None else s.diversity
        spread_weight = spread_weight if s.spread_weight is None else s.spread_weight
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
        members=members,
        diversity=diversity,
        spread_weight=spread_weight,
        error_units=spec.n_units if normalized else 0,
        whitened_units=_whitened_units(spec, s, normalized, select_rows),
    )


def _whitened_units(
    spec: FeatureSpec, s: TrainerSettings, normalized: bool, select_rows: int | None
) -> int:
    """The continuous units to whiten: none unless ``whiten_residuals``; then all of them,
    with a warning when the select rows are too few to estimate their covariance well."""
    if not s.whiten_residuals:
        return 0
    if not normalized:
        raise ConfigError(
            "whiten_residuals needs normalised errors: not with --no-normalize-errors "
            "nor with per-entity models (entity_column)"
        )
    units = spec.whitenable_units
    if not 2 <= units <= WHITEN_MAX_UNITS:
        raise ConfigError(
            f"whiten_residuals needs 2 to {WHITEN_MAX_UNITS} continuous units and no vector "
            f"feature; this spec has {spec.n_continuous} continuous units"
            + (" and a vector feature" if spec.has_vector_feature else "")
        )
    needed = WHITEN_ROWS_PER_UNIT * units
    if select_rows is not None and select_rows < needed:
        log.warning(
            "few select rows to whiten the residuals",
            extra={"select_rows": select_rows, "units": units, "rows_advised": needed},
        )
    return units


def summary_of(
    s: TrainerSettings,
    data: Prepared,
    fitted: Fitted,
    device: torch.device,
    d: Dist,
    started: float,
) -> TrainingSummary:
    result, mode = fitted.result, fitted.mode
    return TrainingSummary(
        budget=fitted.budget.describe(),
        learning_rate=s.learning_rate,
        weight_decay=s.weight_decay,
        negatives=sampling.describe() if (sampling := negative_sampling(s)) else {},
        rows_train=data.part_rows[FIT],
        rows_validation=data.part_rows[SELECT],
        rows_calibration=data.part_rows[CALIBRATE],
        split=data.split.describe(),
        constant_columns=data.constant_columns,
        drifting_columns=data.drifting_columns,
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
                    "threshold": threshold_info(held, s),
                    "score_quantiles": held.quantiles(),
                    "unit_error_mean": held.unit_mean,
                    "unit_error_p99": held.unit_p99,
                    "training": summary,
                    "data_fingerprint": data_fingerprint(data.source, spec),
                },
            )
            outcome = (manifest, None)
        except (OSError, ArtifactError) as exc:  # StoreUnavailable too: no rank may hang
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
                "rows_calibration": published.threshold.rows,
                "expected_false_alarm_rate": published.threshold.expected_false_alarm_rate,
            },
        )
    return published


def threshold_info(held: HeldOut, s: TrainerSettings) -> ThresholdInfo:
    """The conformal threshold over the calibration scores, with what it promises."""
    t = held.threshold(s.threshold_quantile)
    return ThresholdInfo(
        value=t.value,
        quantile=t.quantile,
        rows=t.rows,
        rank=t.rank,
        target_fpr=s.target_fpr,
        expected_false_alarm_rate=t.expected_false_alarm_rate,
        false_alarm_rate_interval=t.false_alarm_rate_interval,
        enough_rows=t.enough_rows,
    )


def _spec_options(s: TrainerSettings) -> SpecOptions:
    entity = (s.entity_column,) if s.entity_column else ()
    return SpecOptions(
        id_column=s.id_column,
        label_column=s.label_column,
        ignore_columns=(*s.ignore_columns, *entity),
        categorical_columns=tuple(s.categorical_columns),
        numeric_columns=tuple(s.numeric_columns),
        max_categories=s.max_categories,
        max_levels=s.max_levels,
        tail_ratio=s.heavy_tail_ratio,
        missing=s.missing,
        split=split_options(s),
    )


def split_options(s: TrainerSettings) -> SplitOptions:
    """The three-way split of the settings; entity models use it too (trainer.entity_fit)."""
    return SplitOptions(
        validation_fraction=s.validation_fraction,
        calibration_fraction=s.calibration_fraction,
        seed=s.seed,
        by=s.split_by,
        kind=s.split_kind,
    )
