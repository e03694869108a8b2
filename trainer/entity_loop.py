"""Fitting thousands of entity models at once: one stacked model, one optimiser step for all.

Every step takes ``entity_batch_size`` fitting rows of *each* entity, as an (E, b, D) block,
and runs one grouped forward (``pipeline.contract.stacked``): a batched product per layer
instead of E separate fits. The loss is the sum over entities of each entity's mean record
error, so each entity's weights get exactly the gradient they would get trained alone, and
Adam's state is per weight, so each entity's optimiser is independent too.

An entity's rows are visited in its own shuffled order, reshuffled after each pass; an epoch
is the median entity's rows once, in at most ``STEPS_PER_EPOCH`` steps: entities of a few
hundred rows step ``entity_batch_size`` rows at a time, larger ones in proportionally larger
batches (so 10,000-row entities do not cost 50 times the steps). Small entities pass over
their rows more often in an epoch and large ones less. After every epoch each entity's
validation loss (mean score of its selection rows) decides its own early stopping: its best
weights are kept, and training ends when every entity has gone ``patience`` epochs without
improving (or at ``entity_epochs``).
The validation loss watches at most ``VALIDATION_ROWS`` selection rows per entity, in one
grouped forward per epoch; the thresholds use the calibration rows, which training never sees.

Rows live on the training device as two arrays; entities are processed in chunks of
``ENTITY_CHUNK`` per forward/backward (gradients accumulate) to bound activation memory.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from pipeline.contract.features import FeatureSpec
from pipeline.contract.models import ModelConfig
from pipeline.contract.scoring import SpecTransform
from pipeline.contract.stacked import StackedAutoEncoder
from trainer.entity_data import EntityRows
from trainer.settings import TrainerSettings
from trainer.split import FIT, SELECT

log = logging.getLogger(__name__)
ENTITY_CHUNK = 4096  # entities per forward/backward within a step
VALIDATION_ROWS = 512  # most selection rows per entity behind its early-stopping decisions
STEPS_PER_EPOCH = 50  # most optimiser steps between two validations
# epochs without gain when --patience is unset (the single model derives its own)
ENTITY_PATIENCE = 5


@dataclass
class StackedFit:
    """The fitted entity models (best epoch of each) and how the fit went."""

    model: StackedAutoEncoder
    best_epoch: npt.NDArray[np.int64]
    best_loss: npt.NDArray[np.float64]
    epochs: int = 0
    train_loss: list[float] = field(default_factory=list)  # mean over entities, per epoch
    validation_loss: list[float] = field(default_factory=list)
    rows_seen: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows_seen / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class _Data:
    cont: Tensor
    cat: Tensor
    fit_rows: list[npt.NDArray[np.int64]]  # per entity
    val_idx: Tensor  # (E, V) selection rows of each entity, padded with its first one
    val_mask: Tensor  # (E, V) True for real rows


def fit_stacked(
    config: ModelConfig,
    spec: FeatureSpec,
    rows: EntityRows,
    members: list[int],
    s: TrainerSettings,
    device: torch.device,
) -> StackedFit:
    """Fit one model per entity in ``members`` (indices into ``rows.keys``)."""
    started = time.monotonic()
    data = _device_data(rows, members, device)
    torch.manual_seed(s.seed)
    model = StackedAutoEncoder(config, len(members)).to(device)
    transform = SpecTransform(spec).to(device)
    opt = torch.optim.Adam(
        model.parameters(), lr=s.entity_learning_rate, weight_decay=s.weight_decay
    )
    median = float(np.median([len(r) for r in data.fit_rows]))
    b = max(s.entity_batch_size, math.ceil(median / STEPS_PER_EPOCH))
    steps = max(1, math.ceil(median / b))
    rng = np.random.default_rng([s.seed, 0xE7])
    torch.manual_seed(s.seed * 1_000_003 + 1)  # dropout and noise
    best = [p.detach().clone() for p in model.parameters()]
    fit = StackedFit(
        model=model,
        best_epoch=np.zeros(len(members), dtype=np.int64),
        best_loss=np.full(len(members), np.inf),
    )
    stale = np.zeros(len(members), dtype=np.int64)
    patience = s.patience or ENTITY_PATIENCE
    for epoch in range(1, s.entity_epochs + 1):
        order = _epoch_order(data.fit_rows, steps * b, rng)  # (E, steps * b)
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        for step in range(steps):
            idx = torch.from_numpy(order[:, step * b : (step + 1) * b]).to(device)
            total += _step(model, transform, opt, data, idx)
        fit.rows_seen += len(members) * steps * b
        val = _validation(model, transform, data, len(members))
        improved = val < fit.best_loss - 1e-7
        fit.best_loss[improved] = val[improved]
        fit.best_epoch[improved] = epoch
        stale = np.where(improved, 0, stale + 1)
        _keep_best(model, best, torch.from_numpy(improved).to(device))
        fit.epochs = epoch
        fit.train_loss.append(round(float(total) / (steps * len(members)), 6))
        fit.validation_loss.append(round(float(np.mean(val)), 6))
        log.info(
            "entity epoch",
            extra={
                "epoch": epoch,
                "entities": len(members),
                "train_loss": fit.train_loss[-1],
                "validation_loss": fit.validation_loss[-1],
                "improving": int(improved.sum()),
                "stopped": int((stale >= patience).sum()),
            },
        )
        if (stale >= patience).all():
            break
    with torch.no_grad():
        for p, kept in zip(model.parameters(), best, strict=True):
            p.copy_(kept)
    model.eval()
    fit.seconds = time.monotonic() - started
    return fit


def _device_data(rows: EntityRows, members: list[int], device: torch.device) -> _Data:
    """Rows on the device; per entity its fitting rows and (up to ``VALIDATION_ROWS``, evenly
    spread over its selection rows in position order) the rows its early stopping watches,
    as an (E, V) block that the grouped forward scores without gathering weights."""
    fit_all = rows.rows_of(FIT)
    val_all = rows.rows_of(SELECT)
    width = min(VALIDATION_ROWS, max(len(val_all[m]) for m in members))
    idx = np.zeros((len(members), width), dtype=np.int64)
    mask = np.zeros((len(members), width), dtype=bool)
    for e, m in enumerate(members):
        held = val_all[m]
        pick = held[np.linspace(0, len(held) - 1, min(width, len(held))).astype(np.int64)]
        idx[e, : len(pick)] = pick
        idx[e, len(pick) :] = pick[0]
        mask[e, : len(pick)] = True
    return _Data(
        cont=torch.from_numpy(rows.cont).to(device),
        cat=torch.from_numpy(rows.cat).to(device),
        fit_rows=[fit_all[m] for m in members],
        val_idx=torch.from_numpy(idx).to(device),
        val_mask=torch.from_numpy(mask).to(device),
    )


def _epoch_order(
    fit_rows: list[npt.NDArray[np.int64]], width: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """(E, width) row indices: each entity's rows in shuffled passes, as many as needed."""
    out = np.empty((len(fit_rows), width), dtype=np.int64)
    for e, idx in enumerate(fit_rows):
        passes = math.ceil(width / len(idx))
        out[e] = np.concatenate([rng.permutation(idx) for _ in range(passes)])[:width]
    return out


def _step(
    model: StackedAutoEncoder,
    transform: SpecTransform,
    opt: torch.optim.Optimizer,
    data: _Data,
    idx: Tensor,
) -> Tensor:
    """One optimiser step for every entity; returns the summed per-entity losses."""
    opt.zero_grad(set_to_none=True)
    total = torch.zeros((), dtype=torch.float64, device=idx.device)
    n_ent, b = idx.shape
    for start in range(0, n_ent, ENTITY_CHUNK):
        chunk = idx[start : start + ENTITY_CHUNK]
        flat = chunk.reshape(-1)
        cat = data.cat[flat]
        x = transform.model_input(data.cont[flat], cat)  # (e * b, D)
        grouped = x.view(len(chunk), b, -1)
        source = model.corrupt(grouped) if model.config.kind == "dae" else grouped
        recon = model.forward_chunk(source, start)  # (e, b, D)
        errors = transform.unit_errors(x, recon.reshape(len(flat), -1), cat)
        loss = errors.mean(dim=1).view(len(chunk), b).mean(dim=1).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        total += loss.detach().double()
    opt.step()
    return total


def _validation(
    model: StackedAutoEncoder, transform: SpecTransform, data: _Data, n: int
) -> npt.NDArray[np.float64]:
    """Mean score of each entity's validation rows (grouped forward, no weight gathering)."""
    model.eval()
    out = torch.zeros(n, dtype=torch.float64, device=data.val_idx.device)
    width = data.val_idx.shape[1]
    with torch.inference_mode():
        for start in range(0, n, ENTITY_CHUNK):
            idx = data.val_idx[start : start + ENTITY_CHUNK]
            mask = data.val_mask[start : start + ENTITY_CHUNK]
            flat = idx.reshape(-1)
            cat = data.cat[flat]
            x = transform.model_input(data.cont[flat], cat)
            recon = model.forward_chunk(x.view(len(idx), width, -1), start)
            errors = transform.unit_errors(x, recon.reshape(len(flat), -1), cat)
            scores = transform.record_scores(errors).view(len(idx), width).double()
            out[start : start + len(idx)] = (scores * mask).sum(1) / mask.sum(1)
    return out.cpu().numpy()


def _keep_best(model: StackedAutoEncoder, best: list[Tensor], improved: Tensor) -> None:
    """Copy the weights of the entities that improved into their best-so-far slots."""
    if not bool(improved.any()):
        return
    with torch.no_grad():
        for p, kept in zip(model.parameters(), best, strict=True):
            mask = improved.view(-1, *([1] * (p.dim() - 1)))
            kept.copy_(torch.where(mask, p, kept))
