"""The training loop: Adam, plateau LR decay, early stopping on validation loss, the best
weights kept; mixed precision (CUDA, and CPUs with native bfloat16), DistributedDataParallel
under torchrun, a checkpoint after every epoch.

Reproducible by construction: initial weights from ``seed``; an epoch's data order from
(seed, epoch, rank); dropout/noise from a torch RNG whose state is checkpointed. Validation
loss is the mean record *score* (what the threshold applies to) over every rank's held-out
rows, so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.contract.exceptions import DataError
from pipeline.contract.features import FeatureSpec
from pipeline.contract.models import AnomalyModel, ModelConfig, build_model
from pipeline.contract.scoring import ReconstructionScorer
from trainer.budget import Budget
from trainer.checkpoint import Checkpointer, rng_state, set_rng_state
from trainer.distributed import Dist
from trainer.negatives import NegativeSampling, negative_sampling, shortfall, shuffle_columns
from trainer.progress import Reporter
from trainer.rows import SplitRows, bytes_per_row
from trainer.settings import TrainerSettings
from trainer.threshold import scored_chunks

log = logging.getLogger(__name__)
LOSS_EVERY = 20  # steps between loss read-backs for progress (each one syncs the GPU)


@dataclass
class TrainResult:
    model: AnomalyModel
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    rows_per_s: float = 0.0
    resumed_from_epoch: int = 0
    mixed_precision: str | None = None


@dataclass
class LoopState:
    """Everything about the loop that a checkpoint must restore."""

    epoch: int = 0  # completed epochs
    best_loss: float = math.inf
    best_epoch: int = 0
    stale: int = 0
    stopped: bool = False
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    rows_per_s: list[float] = field(default_factory=list)


class TrainStep(nn.Module):
    """The training objective as one module, so DDP sees a single forward per step."""

    def __init__(
        self, scorer: ReconstructionScorer, negatives: NegativeSampling | None = None
    ) -> None:
        super().__init__()
        self.scorer = scorer
        self.negatives = negatives

    def forward(self, cont: Tensor, cat: Tensor) -> Tensor:
        x = self.scorer.model_input(cont, cat)  # (B, D_in)
        recon, extra = self.scorer.model.training_forward(x)
        weight = 1.0 - self.scorer.model.config.diversity  # negative correlation learning
        loss = self.scorer.unit_errors(x, recon, cat, weight).mean() + extra
        if self.negatives is None or not self.training:
            return loss
        missed = self._negatives_shortfall(cont, cat, self.negatives.margin)
        return loss + self.negatives.weight * missed

    def _negatives_shortfall(self, cont: Tensor, cat: Tensor, margin: float) -> Tensor:
        """How far the batch's shuffled negatives are reconstructed better than ``margin``
        allows (``trainer.negatives``); each member's own error counts."""
        cont_n, cat_n = shuffle_columns(cont), shuffle_columns(cat)
        x = self.scorer.model_input(cont_n, cat_n)
        recon, _ = self.scorer.model.training_forward(x)
        errors = self.scorer.unit_errors(x, recon, cat_n, 1.0).mean(dim=1)  # (B,)
        return shortfall(errors, margin)


# Below this many weights, CPU bfloat16 autocast loses: casting dominates tiny matmuls (the
# 12-wide demo model trained 2x slower under it; the 784-wide MNIST model 2x faster).
CPU_BF16_MIN_PARAMS = 100_000


def autocast_dtype(
    device: torch.device, enabled: bool, n_params: int = CPU_BF16_MIN_PARAMS
) -> torch.dtype | None:
    """The dtype to train under autocast, or None for float32.

    CUDA: bfloat16 where supported, else float16. CPU: bfloat16 only for models of at least
    ``CPU_BF16_MIN_PARAMS`` weights on CPUs with native bfloat16 instructions (AVX512_BF16
    or AMX): there the matmuls that dominate training run several times faster (a 784-wide
    model trains ~2x faster end to end), while on a tiny model the casts cost more than they
    save and without those instructions oneDNN emulates bfloat16, slower than float32.
    Weights, optimiser state and the threshold stay float32 either way.
    """
    if not enabled:
        return None
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and n_params >= CPU_BF16_MIN_PARAMS and cpu_has_native_bf16():
        return torch.bfloat16
    return None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (Linux; False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def train(
    spec: FeatureSpec,
    config: ModelConfig,
    train_rows: SplitRows,
    val_rows: SplitRows,
    s: TrainerSettings,
    budget: Budget,
    device: torch.device,
    d: Dist,
    reporter: Reporter,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Fit a model; returns it with the best validation weights, in eval mode."""
    torch.manual_seed(s.seed)
    model = build_model(config)
    scorer = ReconstructionScorer(spec, model).to(device)
    step: nn.Module = TrainStep(scorer, negative_sampling(s))
    if d.enabled:
        step = DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.Adam(
        model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay, fused=True
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(1, budget.patience // 2)
    )
    dtype = autocast_dtype(device, s.mixed_precision, sum(p.numel() for p in model.parameters()))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    torch.manual_seed(s.seed * 1_000_003 + d.rank + 1)  # dropout/noise stream of this rank
    state = LoopState()
    best_weights = _clone(model.state_dict())
    saved = checkpointer.load() if checkpointer else None
    if saved is not None:
        best_weights = _restore(saved, state, model, optimizer, scheduler, scaler)
    resumed = state.epoch
    steps = _steps_per_epoch(train_rows.rows, budget.batch_size, d)
    buffer_rows = max(1, int(s.shuffle_buffer_mb * 2**20) // bytes_per_row(spec))
    has_batchnorm = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    for epoch in range(state.epoch, budget.epochs):
        if state.stopped:
            break
        reporter.start_epoch(epoch + 1, steps)
        rng = np.random.default_rng([s.seed, epoch, d.rank])
        batches = train_rows.epoch_batches(rng, budget.batch_size, buffer_rows)
        started = time.monotonic()
        loss = _train_epoch(
            step, optimizer, scaler, batches, steps, device, dtype, reporter,
            skip_single=has_batchnorm and not d.enabled,
        )  # fmt: skip
        rows = d.all_sum([float(loss[1])])[0]
        rate = rows / max(time.monotonic() - started, 1e-9)
        train_loss = d.all_sum([loss[0] * loss[1], float(loss[1])])
        train_mean = train_loss[0] / max(1.0, train_loss[1])
        val = validation_loss(scorer, val_rows, device, d)
        scheduler.step(val)
        state.train_loss.append(round(train_mean, 6))
        state.validation_loss.append(round(val, 6))
        state.rows_per_s.append(round(rate, 1))
        if val < state.best_loss - 1e-7:
            state.best_loss, state.best_epoch, state.stale = val, epoch + 1, 0
            best_weights = _clone(model.state_dict())
        else:
            state.stale += 1
            state.stopped = state.stale >= budget.patience
        state.epoch = epoch + 1
        if checkpointer is not None:
            checkpointer.save(_snapshot(state, model, optimizer, scheduler, scaler, best_weights))
        reporter.end_epoch(epoch + 1, train_mean, val, optimizer.param_groups[0]["lr"], rate)
    reporter.close()
    model.load_state_dict(best_weights)
    model.eval()
    return TrainResult(
        model=model,
        train_loss=state.train_loss,
        validation_loss=state.validation_loss,
        best_epoch=state.best_epoch,
        rows_per_s=float(np.median(state.rows_per_s)) if state.rows_per_s else 0.0,
        resumed_from_epoch=resumed,
        mixed_precision=str(dtype).removeprefix("torch.") if dtype else None,
    )


def _steps_per_epoch(rows: int, batch_size: int, d: Dist) -> int:
    """Optimisation steps per epoch, equal on every rank (DDP needs the same count).

    One process uses every row. Several use full batches only, as many as the smallest
    shard has, so no rank waits for a peer that has run out of rows.
    """
    if not d.enabled:
        steps = math.ceil(rows / batch_size)
    else:
        steps = d.all_min(rows // batch_size) or d.all_min(math.ceil(rows / batch_size))
    if steps == 0:
        raise DataError("no training rows for this process: too little data (or too many ranks)")
    return steps


def _train_epoch(
    step: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Any,
    steps: int,
    device: torch.device,
    dtype: torch.dtype | None,
    reporter: Reporter,
    *,
    skip_single: bool,
) -> tuple[float, int]:
    """One pass over ``steps`` minibatches; (mean training loss, rows seen)."""
    step.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    non_blocking = device.type == "cuda"
    for i, chunk in zip(range(steps), batches, strict=False):
        n = len(chunk)
        if n < 2 and skip_single:
            continue  # batch norm cannot train on a single row
        cont = torch.from_numpy(chunk.cont).to(device, non_blocking=non_blocking)
        cat = torch.from_numpy(chunk.cat).to(device, non_blocking=non_blocking)
        with _autocast(device, dtype):
            loss = step(cont, cat)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach().double() * n
        count += n
        reporter.advance(n, float(total) / count if i % LOSS_EVERY == 0 else None)
    return float(total) / max(1, count), count


def _autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def validation_loss(
    scorer: ReconstructionScorer, rows: SplitRows, device: torch.device, d: Dist
) -> float:
    """Mean record score over every rank's select rows (float32, like the worker)."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for _, _, scores in scored_chunks(scorer, rows, device):
        total += scores.double().sum()
        count += int(scores.shape[0])
    summed = d.all_sum([float(total), float(count)])
    if summed[1] == 0:
        raise DataError("no validation (select) rows: too little data to hold out")
    return summed[0] / summed[1]


def _clone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _snapshot(
    state: LoopState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
    scaler: torch.amp.GradScaler,
    best_weights: dict[str, Tensor],
) -> dict[str, Any]:
    return {
        "epoch": state.epoch,
        "best_loss": state.best_loss,
        "best_epoch": state.best_epoch,
        "stale": state.stale,
        "stopped": state.stopped,
        "train_loss": state.train_loss,
        "validation_loss": state.validation_loss,
        "rows_per_s": state.rows_per_s,
        "model": model.state_dict(),
        "best_model": best_weights,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
    }


def _restore(
    saved: dict[str, Any],
    state: LoopState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
    scaler: torch.amp.GradScaler,
) -> dict[str, Tensor]:
    """Load a checkpoint into the loop; returns the best weights so far."""
    state.epoch = int(saved["epoch"])
    state.best_loss = float(saved["best_loss"])
    state.best_epoch = int(saved["best_epoch"])
    state.stale = int(saved["stale"])
    state.stopped = bool(saved["stopped"])
    state.train_loss = list(saved["train_loss"])
    state.validation_loss = list(saved["validation_loss"])
    state.rows_per_s = list(saved["rows_per_s"])
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    return copy.copy(saved["best_model"])
