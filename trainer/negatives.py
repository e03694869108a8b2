"""Shuffled negatives: teach the autoencoder to reconstruct records that break the relations
between columns badly.

An autoencoder learns the relations of the normal rows, but nothing in plain training stops
it from also reconstructing a record that breaks them: with a bottleneck wide enough for
each column's marginal, two readings swapped in from another row come back almost as they
went in. Here every training batch also yields a batch of negatives, each column permuted
on its own across the batch's rows (the batch's marginals, every relation between columns
broken), and the loss adds ``weight`` times how far the negatives' record error falls
short of ``margin``. A margin of 1 is the error of predicting a standardised column's mean:
a negative should be reconstructed no better than that. The score is unchanged (the
record's own reconstruction error), so scoring costs nothing more; training does one more
forward and backward pass a step.

A hinge and not a plain "maximise the negatives' error": once a negative is as badly
reconstructed as a guess, pushing further would only distort the model, and rows whose
columns are independent (so that a shuffled row is a normal one) pull the other way.

Opt-in (``--shuffled-negatives``). On the benchmark (BENCHMARKS.md "Shuffled negatives") it
won the broken correlations of the weather set (0.762 -> 0.971 ROC-AUC) and did not hold on
the untuned group (0.741 -> 0.737: small discrete phishing and attrition lost).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from trainer.settings import TrainerSettings

NEGATIVE_WEIGHT = 0.3  # tuning group, 3 seeds: 0.1 -> 0.896, 0.3 -> 0.899, 1 -> 0.896
NEGATIVE_MARGIN = 1.0  # 0.5 -> 0.880 (weather 0.797), 1 -> 0.896, 2 -> 0.899 (at weight 0.1)


@dataclass(frozen=True)
class NegativeSampling:
    """How much the negatives count in the loss, and the record error they should reach."""

    weight: float = NEGATIVE_WEIGHT
    margin: float = NEGATIVE_MARGIN

    def describe(self) -> dict[str, float]:
        return asdict(self)


def negative_sampling(s: TrainerSettings) -> NegativeSampling | None:
    """The settings' negatives, or None when they are off."""
    return NegativeSampling() if s.shuffled_negatives else None


def shuffle_columns(values: Tensor) -> Tensor:
    """Each column of (B, C) ``values`` permuted on its own across the rows (torch's RNG, so
    the loop's seeded and checkpointed stream decides it)."""
    if values.shape[0] < 2 or values.shape[1] == 0:
        return values
    order = torch.argsort(torch.rand(values.shape, device=values.device), dim=0)
    return torch.gather(values, 0, order)


def shortfall(record_errors: Tensor, margin: float) -> Tensor:
    """Mean of how far each negative's record error (B,) falls below ``margin``."""
    return torch.relu(margin - record_errors).mean()
