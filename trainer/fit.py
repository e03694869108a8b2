"""The fit job: data -> feature spec -> trained model -> threshold -> published artifact.

Nothing is published unless every step succeeded; any error leaves the store untouched.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pipeline import artifact
from pipeline.artifact import Manifest, ThresholdInfo, TrainingSummary
from pipeline.exceptions import DataError
from pipeline.features import FeatureSpec
from pipeline.models import AnomalyModel, ModelConfig, build_model, default_hidden_dims
from pipeline.scoring import ReconstructionScorer, Scorer, resolve_device
from trainer.data import ParquetSource
from trainer.encode import EncodedRows, load_split
from trainer.settings import TrainerSettings
from trainer.spec import SpecOptions, infer_spec

log = logging.getLogger(__name__)

QUANTILE_LEVELS = [round(0.05 * i, 2) for i in range(21)] + [0.99, 0.995, 0.999]


@dataclass
class TrainResult:
    model: AnomalyModel
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0


def fit(settings: TrainerSettings) -> Manifest:
    """Run the whole job and return the published manifest."""
    if not settings.data:
        raise DataError("no training data given (--data or TRAINER_DATA)")
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    source = ParquetSource(settings.data, batch_rows=settings.read_batch_rows)
    spec, n_train = infer_spec(source, _spec_options(settings))
    _check_budget(spec, n_train, settings)
    train_rows = load_split(source, spec, settings.validation_fraction, settings.seed, False)
    val_rows = load_split(source, spec, settings.validation_fraction, settings.seed, True)
    if len(val_rows) == 0:
        raise DataError(f"no validation rows in {settings.data!r}: too little data to hold out")
    device = resolve_device(settings.device)
    config = model_config(spec, settings)
    log.info(
        "training",
        extra={
            "rows_train": len(train_rows),
            "rows_validation": len(val_rows),
            "model": config.kind,
            "device": str(device),
        },
    )
    result = train(spec, config, train_rows, val_rows, settings, device)
    scores, unit_mean = validation_scores(spec, result.model, val_rows, device)
    threshold = float(np.quantile(scores, settings.quantile))
    summary = TrainingSummary(
        rows_train=len(train_rows),
        rows_validation=len(val_rows),
        epochs=len(result.train_loss),
        best_epoch=result.best_epoch,
        train_loss=result.train_loss,
        validation_loss=result.validation_loss,
        seed=settings.seed,
        device=str(device),
        duration_s=round(time.monotonic() - started, 3),
        torch_version=torch.__version__,
    )
    return artifact.publish(
        settings.model_store,
        result.model.cpu(),
        {
            "name": settings.name,
            "model": config,
            "features": spec,
            "threshold": ThresholdInfo(
                value=threshold, quantile=settings.quantile, rows=len(val_rows)
            ),
            "score_quantiles": {f"{q:g}": float(np.quantile(scores, q)) for q in QUANTILE_LEVELS},
            "unit_error_mean": unit_mean,
            "training": summary,
            "data_fingerprint": data_fingerprint(source, spec),
        },
    )


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
    )


def train(
    spec: FeatureSpec,
    config: ModelConfig,
    train_rows: EncodedRows,
    val_rows: EncodedRows,
    s: TrainerSettings,
    device: torch.device,
) -> TrainResult:
    """Adam with plateau LR decay and early stopping on validation loss; keeps the best."""
    torch.manual_seed(s.seed)
    model = build_model(config)
    module = ReconstructionScorer(spec, model).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(1, s.patience // 2)
    )
    generator = torch.Generator().manual_seed(s.seed)
    result = TrainResult(model=model)
    best, best_state, stale = math.inf, copy.deepcopy(model.state_dict()), 0
    for epoch in range(s.epochs):
        loss = _train_epoch(module, optimizer, train_rows, s.batch_size, generator, device)
        val = _validation_loss(module, val_rows, s.batch_size, device)
        scheduler.step(val)
        result.train_loss.append(round(loss, 6))
        result.validation_loss.append(round(val, 6))
        log.info("epoch", extra={"epoch": epoch + 1, "train_loss": loss, "validation_loss": val})
        if val < best - 1e-7:
            best, best_state, stale, result.best_epoch = (
                val,
                copy.deepcopy(model.state_dict()),
                0,
                epoch + 1,
            )
        else:
            stale += 1
            if stale >= s.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return result


def _train_epoch(
    module: ReconstructionScorer,
    optimizer: torch.optim.Optimizer,
    rows: EncodedRows,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    model = module.model
    model.train()
    order = torch.randperm(len(rows), generator=generator)
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2 and isinstance(model, nn.Module) and len(rows) > 1:
            continue  # batch norm cannot train on a single row
        cont, cat = rows.cont[idx].to(device), rows.cat[idx].to(device)
        x = module.model_input(cont, cat)  # (b, D_in)
        recon, extra = model.training_forward(x)
        loss = module.unit_errors(x, recon, cat).mean() + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(1, count)


def _validation_loss(
    module: ReconstructionScorer, rows: EncodedRows, batch_size: int, device: torch.device
) -> float:
    module.model.eval()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size * 4):
            cont = rows.cont[start : start + batch_size * 4].to(device)
            cat = rows.cat[start : start + batch_size * 4].to(device)
            total += float(module(cont, cat).mean(dim=1).sum())
    return total / max(1, len(rows))


def validation_scores(
    spec: FeatureSpec, model: AnomalyModel, rows: EncodedRows, device: torch.device
) -> tuple[np.ndarray, list[float]]:
    """Scores of the held-out rows through the worker's own Scorer, and mean unit errors."""
    scorer = Scorer(spec, model, device, top_k=0)
    scores: list[np.ndarray] = []
    unit_sum = torch.zeros(spec.n_units, dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, len(rows), 8192):
            cont = rows.cont[start : start + 8192].numpy()
            cat = rows.cat[start : start + 8192].numpy()
            errors = scorer.unit_errors(cont, cat).double().cpu()
            unit_sum += errors.sum(dim=0)
            scores.append(errors.mean(dim=1).float().numpy())
    unit_mean = (unit_sum / max(1, len(rows))).tolist()
    return np.concatenate(scores), [float(u) for u in unit_mean]


def data_fingerprint(source: ParquetSource, spec: FeatureSpec) -> str:
    """sha256 over the file list with sizes and the fitted statistics: same data, same print."""
    digest = hashlib.sha256()
    for fragment in source.fragments:
        digest.update(fragment.path.encode())
        digest.update(str(fragment.count_rows()).encode())
    digest.update(spec.model_dump_json().encode())
    return digest.hexdigest()


def _spec_options(s: TrainerSettings) -> SpecOptions:
    return SpecOptions(
        id_column=s.id_column,
        label_column=s.label_column,
        ignore_columns=tuple(s.ignore_columns),
        categorical_columns=tuple(s.categorical_columns),
        max_categories=s.max_categories,
        missing=s.missing,
        validation_fraction=s.validation_fraction,
        seed=s.seed,
    )


def _check_budget(spec: FeatureSpec, n_train: int, s: TrainerSettings) -> None:
    est_mb = (
        n_train / (1 - s.validation_fraction) * (spec.n_continuous * 4 + spec.n_categorical * 8)
    )
    if est_mb / 1e6 > s.memory_budget_mb:
        raise DataError(
            f"data needs about {est_mb / 1e6:.0f} MB in memory, over memory_budget_mb="
            f"{s.memory_budget_mb}; raise TRAINER_MEMORY_BUDGET_MB"
        )
