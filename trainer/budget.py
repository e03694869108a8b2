"""How long to train and in what batches, from the number of fit rows.

The budget is counted in optimiser steps, not epochs: 350 rows at batch 256 are two steps an
epoch, so an epoch cap left small sets with ~100 steps while large sets ran tens of
thousands. Here the batch size follows the rows (``auto_batch``: 32 for a few hundred rows
up to 256 from ~10k), and the number of epochs is what reaches ``max_steps`` (at least one
epoch), but at most ``MAX_PASSES``: on a few hundred rows thousands of steps overfit
(breast_cancer ROC-AUC 0.95 at 100 steps, 0.93 at 3,000; BENCHMARKS.md "Detection
quality"). Early stopping patience is a tenth of the epochs (at least 5). An explicit
``--batch-size``, ``--epochs`` or ``--patience`` wins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from trainer.settings import TrainerSettings

MIN_BATCH, MAX_BATCH = 32, 256
MAX_PASSES = 25  # small data: at most this many epochs (more overfits, see below)
ROWS_PER_BATCH = 40  # auto batch: about this many batches an epoch before the cap


@dataclass(frozen=True)
class Budget:
    batch_size: int
    epochs: int
    patience: int
    max_steps: int

    def describe(self) -> dict[str, int]:
        return asdict(self)


def auto_batch(rows: int) -> int:
    """A power of two near rows / 40, between 32 and 256."""
    target = max(1, rows // ROWS_PER_BATCH)
    return max(MIN_BATCH, min(MAX_BATCH, 1 << (target.bit_length() - 1)))


def plan_budget(fit_rows: int, s: TrainerSettings, world: int = 1) -> Budget:
    """The batch size, epochs and patience for ``fit_rows`` rows over ``world`` processes."""
    batch = s.batch_size or auto_batch(fit_rows)
    steps_per_epoch = max(1, math.ceil(fit_rows / max(1, world) / batch))
    epochs = s.epochs or max(1, min(MAX_PASSES, round(s.max_steps / steps_per_epoch)))
    patience = s.patience or max(5, epochs // 10)
    return Budget(batch, epochs, patience, s.max_steps)
