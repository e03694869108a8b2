"""The threshold and the statistics stored with it, from every calibration row; and the one
loop that scores held-out rows (also the loop's validation loss).

Calibration rows (``trainer.split``) are scored by the worker's own ``ReconstructionScorer``
(float32, the manifest's score kind), so the threshold means the same thing in training and
serving; the threshold is their conformal quantile (``trainer.calibration``). Per process,
memory is the scores (4 bytes per calibration row) plus a bounded sample of per-unit errors
for the p99s; the mean unit errors are exact sums. Under torchrun every rank scores its
shard and the results are combined, so the threshold is over *all* calibration rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from pipeline.contract.exceptions import DataError
from pipeline.contract.features import FeatureSpec, VectorFeature
from pipeline.contract.models import AnomalyModel
from pipeline.contract.scoring import ReconstructionScorer
from trainer.calibration import ConformalThreshold, conformal_threshold
from trainer.data import split_mask
from trainer.distributed import Dist
from trainer.rows import Chunk, SplitRows

QUANTILE_LEVELS = [round(0.05 * i, 2) for i in range(21)] + [0.99, 0.995, 0.999]
UNIT_SAMPLE_ROWS = 100_000  # most held-out rows whose unit errors are kept for the p99s
UNIT_SAMPLE_BYTES = 64 * 2**20  # ... and at most this much memory for them
_SAMPLE_SALT = 0x5EED_0099
EVAL_BATCH = 8192


@dataclass(frozen=True)
class HeldOut:
    """Scores of every calibration row and per-unit error statistics."""

    scores: npt.NDArray[np.float32]  # (N_cal,) over all ranks
    unit_mean: list[float]  # (U,) exact
    unit_p99: list[float]  # (U,) over a sample of at most UNIT_SAMPLE_ROWS rows
    sample_rows: int

    def threshold(self, quantile: float, warn: bool = True) -> ConformalThreshold:
        """The conformal threshold at ``quantile`` with its expected false-alarm rate."""
        return conformal_threshold(self.scores, quantile, warn=warn)

    def quantiles(self) -> dict[str, float]:
        """Score quantiles keyed '0.05' ... '0.999', for drift monitoring."""
        return {f"{q:g}": float(np.quantile(self.scores, q)) for q in QUANTILE_LEVELS}


def scored_chunks(
    scorer: ReconstructionScorer, rows: SplitRows, device: torch.device
) -> Iterator[tuple[Chunk, Tensor, Tensor]]:
    """(rows, unit errors (B, U), scores (B,)) for every row of ``rows`` in batches of
    ``EVAL_BATCH``, scored in eval mode under inference mode: the held-out scoring of both
    the training loop (validation loss) and the threshold."""
    scorer.eval()
    with torch.inference_mode():
        for chunk in rows.chunks():
            for start in range(0, len(chunk), EVAL_BATCH):
                part = chunk.take(slice(start, start + EVAL_BATCH))
                cont = torch.from_numpy(part.cont).to(device)
                cat = torch.from_numpy(part.cat).to(device)
                errors, scores = scorer.score_terms(cont, cat)
                yield part, errors, scores


UNIT_SCALE_FLOOR = 3.0  # of the median unit's mean error: no unit weighs more than this


def fit_unit_scale(
    spec: FeatureSpec, model: AnomalyModel, rows: SplitRows, device: torch.device, d: Dist
) -> list[float]:
    """Set the model's ``unit_scale`` to each unit's mean error over the select rows (all
    ranks), but at least ``UNIT_SCALE_FLOOR`` times the median unit's, and return it.

    The scale is there so that a unit the model reconstructs badly on normal rows (a noisy
    column) does not drown out the others; it must not blow up the units it reconstructs
    well. Dividing by each unit's own mean error did both: it made a rare category or a
    column that is nearly always reconstructed exactly count hundreds of times more than the
    rest, so noise in a few units (and in their means, estimated on a few select rows)
    ranked the records. With the floor, units at or below three times the median unit's
    error weigh the same and only the noisier ones are scaled down (tuning group mean
    ROC-AUC 0.902 -> 0.912, credit +0.027, wine +0.048, diamonds -0.013; untuned group 0.714
    -> 0.723, attrition +0.054; BENCHMARKS.md "Detection quality"). A constant column still
    scores high when it moves: its standardised deviation is large (``trainer.spec``).

    A vector's elements share one scale (their mean), as its standardisation does: a border
    pixel that is nearly always blank would otherwise turn one stray stroke into the whole
    score. Select rows, not calibration rows: the calibration scores must come from rows
    that shaped nothing.
    """
    model.unit_scale.fill_(1.0)
    scorer = ReconstructionScorer(spec, model).to(device)
    unit_sum = torch.zeros(spec.n_units, dtype=torch.float64)
    for _, errors, _ in scored_chunks(scorer, rows, device):
        unit_sum += errors.double().sum(dim=0).cpu()
    totals = d.all_sum([*unit_sum.tolist(), float(rows.rows)])
    mean = np.asarray(totals[:-1]) / max(1.0, totals[-1])
    for slot in spec.continuous_slots:
        if isinstance(slot.feature, VectorFeature):  # one scale per vector, as in the spec
            mean[slot.start : slot.start + slot.width] = mean[
                slot.start : slot.start + slot.width
            ].mean()
    scale = floored_scale(mean)
    model.unit_scale.copy_(torch.from_numpy(scale).to(model.unit_scale))
    return [float(v) for v in scale]


def floored_scale(mean: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each unit's mean error, raised to ``UNIT_SCALE_FLOOR`` times the median unit's."""
    floor = max(float(np.median(mean)) * UNIT_SCALE_FLOOR, 1e-12)
    return np.maximum(mean, floor)


def held_out_stats(
    spec: FeatureSpec,
    model: AnomalyModel,
    rows: SplitRows,
    device: torch.device,
    d: Dist,
    seed: int,
) -> HeldOut:
    """Score this rank's calibration rows and combine with the other ranks."""
    total_rows = d.all_sum([float(rows.rows)])[0]
    if total_rows == 0:
        raise DataError(f"no {rows.part_name} rows: too little data to hold out")
    sample_max = max(1000, min(UNIT_SAMPLE_ROWS, UNIT_SAMPLE_BYTES // (4 * spec.n_units)))
    fraction = min(1.0, sample_max / total_rows)
    scorer = ReconstructionScorer(spec, model).to(device)
    scores: list[npt.NDArray[np.float32]] = []
    sample: list[npt.NDArray[np.float32]] = []
    unit_sum = torch.zeros(spec.n_units, dtype=torch.float64)
    for part, errors_d, batch_scores in scored_chunks(scorer, rows, device):
        errors = errors_d.float().cpu()
        unit_sum += errors.double().sum(dim=0)
        scores.append(batch_scores.float().cpu().numpy())
        pick = split_mask(part.positions, fraction, seed ^ _SAMPLE_SALT)
        if pick.any():
            sample.append(errors.numpy()[pick])
    all_scores = np.concatenate([s for part in d.gather(scores) for s in part] or [_empty()])
    units = d.all_sum(unit_sum.tolist())
    sampled = [s for part in d.gather(sample) for s in part]
    unit_p99 = (
        np.quantile(np.concatenate(sampled), 0.99, axis=0).tolist()
        if sampled
        else [0.0] * spec.n_units
    )
    return HeldOut(
        scores=all_scores,
        unit_mean=[u / total_rows for u in units],
        unit_p99=[float(u) for u in unit_p99],
        sample_rows=sum(len(s) for s in sampled),
    )


def _empty() -> npt.NDArray[np.float32]:
    return np.zeros(0, dtype=np.float32)
