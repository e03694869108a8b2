"""Whitened residuals: the covariance of the continuous units' reconstruction residuals on the
select rows, turned into the matrix the scorer multiplies a residual row by.

An autoencoder's residuals are correlated on normal rows: where the model smooths over a
relation (temperature and dew point), both residuals move together. Squared one by one, a
normal record whose residuals follow that relation scores as high as one that breaks it.
Multiplied by the inverse square root of their covariance (ZCA, which keeps every unit as
close as possible to its own residual, so top features still name columns), the residuals
that move together count once and a record that breaks the relation stands out. This is
the Gaussian error model of LSTM-AD (Malhotra et al., 2015) on an autoencoder's residuals.
Opt-in (``--whiten-residuals``): on the benchmark it won the broken correlations of the
weather set (0.762 -> 0.885 ROC-AUC) and lost on records far off in a coherent way (flights
0.519 -> 0.492), BENCHMARKS.md "Whitened residuals". For the same kind of anomaly,
``--shuffled-negatives`` (``trainer.negatives``) later did better (weather 0.971, flights
0.516) at no cost to scoring.

Two guards keep it from amplifying noise: the covariance is shrunk towards a scaled
identity by the Ledoit-Wolf rule (the shrinkage is estimated from the rows themselves), and
its eigenvalues are floored at ``EIGEN_FLOOR`` of a unit's typical error, so a direction the
model reconstructs almost exactly weighs at most 1/sqrt(EIGEN_FLOOR) times a typical one,
the same concern as ``trainer.threshold.UNIT_SCALE_FLOOR``. Select rows, as for the unit
scales: the calibration rows must shape nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from pipeline.contract.features import FeatureSpec
from pipeline.contract.models import AnomalyModel
from pipeline.contract.scoring import ReconstructionScorer
from trainer.distributed import Dist
from trainer.rows import SplitRows
from trainer.threshold import EVAL_BATCH

log = logging.getLogger(__name__)
EIGEN_FLOOR = 0.03  # of a unit's error at its scale; tuning group: 0.1 -> 0.880, 0.03 -> 0.886

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Whitening:
    """What the fit found, for the log and the tests."""

    rows: int
    shrinkage: float  # Ledoit-Wolf weight of the scaled identity, 0..1
    floored: int  # eigenvalues raised to EIGEN_FLOOR


def fit_residual_whitening(
    spec: FeatureSpec, model: AnomalyModel, rows: SplitRows, device: torch.device, d: Dist
) -> Whitening:
    """Set the model's ``residual_whitening`` from the select rows of every rank; call after
    ``fit_unit_scale``, whose scales it keeps (each unit's residual is first divided by the
    square root of its scale, then decorrelated, then multiplied back)."""
    c = model.config.whitened_units
    scale = model.unit_scale[:c].double().cpu().numpy()
    second, fourth, n = _residual_moments(spec, model, rows, device, scale)
    totals = d.all_sum([*second.ravel(), *fourth.ravel(), float(n)])
    n_all = max(1.0, totals[-1])
    second = np.asarray(totals[: c * c]).reshape(c, c) / n_all
    fourth_sum = float(np.sum(totals[c * c : 2 * c * c]))
    cov, shrinkage = ledoit_wolf(second, fourth_sum, n_all)
    inverse_root, floored = floored_inverse_root(cov, EIGEN_FLOOR)
    root = np.sqrt(scale)
    mixing = (inverse_root / root[:, None]) * root[None, :]  # D^-1/2 W D^1/2
    model.residual_whitening.copy_(torch.from_numpy(mixing).to(model.residual_whitening))
    found = Whitening(rows=int(n_all), shrinkage=shrinkage, floored=floored)
    log.info(
        "residual whitening",
        extra={
            "units": c,
            "rows": found.rows,
            "shrinkage": round(shrinkage, 4),
            "floored": floored,
        },
    )
    return found


def _residual_moments(
    spec: FeatureSpec,
    model: AnomalyModel,
    rows: SplitRows,
    device: torch.device,
    scale: Matrix,
) -> tuple[Matrix, Matrix, int]:
    """(sum r r^T, sum r^2 (r^2)^T, rows) of this rank's scaled residuals r (C,)."""
    c = model.config.whitened_units
    model.residual_whitening.copy_(torch.eye(c))
    scorer = ReconstructionScorer(spec, model).to(device).eval()
    inv_root = torch.from_numpy(1.0 / np.sqrt(scale)).to(device)
    second = torch.zeros(c, c, dtype=torch.float64, device=device)
    fourth = torch.zeros(c, c, dtype=torch.float64, device=device)
    n = 0
    with torch.inference_mode():
        for chunk in rows.chunks():
            for start in range(0, len(chunk), EVAL_BATCH):
                part = chunk.take(slice(start, start + EVAL_BATCH))
                x = scorer.model_input(
                    torch.from_numpy(part.cont).to(device), torch.from_numpy(part.cat).to(device)
                )
                r = _residual(model(x)[..., :c], x[:, :c]).double() * inv_root
                second += r.T @ r
                fourth += r.pow(2).T @ r.pow(2)
                n += r.shape[0]
    return second.cpu().numpy(), fourth.cpu().numpy(), n


def _residual(recon: Tensor, x: Tensor) -> Tensor:
    """(B, C) residual of the (members' mean) reconstruction, as the scorer computes it."""
    recon = recon.float()
    return (recon if recon.dim() == 2 else recon.mean(dim=0)) - x.float()


def ledoit_wolf(second: Matrix, fourth_sum: float, n: float) -> tuple[Matrix, float]:
    """(shrunk covariance, shrinkage) from the second moment S (C, C) of n rows and the sum
    over all unit pairs of sum_rows r_i^2 r_j^2: S shrunk towards mu I, mu = trace(S)/C, by
    the weight that minimises the expected squared error (Ledoit and Wolf, 2004)."""
    c = second.shape[0]
    mu = float(np.trace(second)) / c
    delta = float(np.sum((second - mu * np.eye(c)) ** 2)) / c
    beta = (fourth_sum / n - float(np.sum(second**2))) / (c * n)
    shrinkage = 1.0 if delta <= 0 else min(max(beta, 0.0), delta) / delta
    return (1.0 - shrinkage) * second + shrinkage * mu * np.eye(c), shrinkage


def floored_inverse_root(cov: Matrix, floor: float) -> tuple[Matrix, int]:
    """(cov^-1/2 with eigenvalues raised to ``floor``, how many were raised)."""
    eigenvalues, vectors = np.linalg.eigh(cov)
    raised = np.maximum(eigenvalues, floor)
    return (vectors / np.sqrt(raised)) @ vectors.T, int(np.sum(eigenvalues < floor))
