"""Reconstruction scoring: raw feature arrays in, per-record scores and top features out.

The trainer computes its threshold with exactly this code, so a record scores the same in
training, batch scoring and the streaming worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from pipeline.exceptions import ConfigError
from pipeline.features import FeatureSpec, FloatArray, IndexArray
from pipeline.models import AnomalyModel

DeviceChoice = Literal["auto", "cpu", "cuda"]


def resolve_device(choice: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; an explicit 'cuda' without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={choice!r} but no CUDA device is available (use auto or cpu)")
    try:
        return torch.device(choice)
    except RuntimeError as exc:
        raise ConfigError(f"device={choice!r} is not a valid torch device") from exc


class ReconstructionScorer(nn.Module):
    """Spec-aware wrapper around a model: standardise, reconstruct, measure error per unit."""

    mean: Tensor
    std: Tensor

    def __init__(self, spec: FeatureSpec, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model
        mean, std = spec.continuous_mean_std()
        self.register_buffer("mean", torch.from_numpy(mean), persistent=False)
        self.register_buffer("std", torch.from_numpy(np.maximum(std, 1e-6)), persistent=False)
        self.n_cont = spec.n_continuous
        self.cardinalities = spec.cardinalities

    def model_input(self, cont: Tensor, cat: Tensor) -> Tensor:
        """(B, C) raw + (B, K) indices -> (B, D_in) standardised input; NaN imputed as mean."""
        z = torch.nan_to_num((cont - self.mean) / self.std, nan=0.0)  # (B, C)
        if not self.cardinalities:
            return z
        hots = [F.one_hot(cat[:, j], k).to(z.dtype) for j, k in enumerate(self.cardinalities)]
        return torch.cat([z, *hots], dim=1)  # (B, C + sum k)

    def unit_errors(self, x: Tensor, recon: Tensor, cat: Tensor) -> Tensor:
        """(B, U) error per unit: squared error per continuous value, CE per categorical."""
        c = self.n_cont
        errs = [(recon[:, :c].float() - x[:, :c].float()).pow(2)]  # (B, C)
        offset = c
        for j, k in enumerate(self.cardinalities):
            logits = recon[:, offset : offset + k].float()  # (B, k)
            errs.append(F.cross_entropy(logits, cat[:, j], reduction="none").unsqueeze(1))
            offset += k
        return torch.cat(errs, dim=1)

    def forward(self, cont: Tensor, cat: Tensor) -> Tensor:
        x = self.model_input(cont, cat)
        return self.unit_errors(x, self.model(x), cat)  # (B, U)

    def score_terms(self, cont: Tensor, cat: Tensor) -> tuple[Tensor, Tensor]:
        """(unit errors (B, U), record scores (B,)): the score is what the threshold applies to.

        The score is the mean unit error, plus the model's ``score_extra`` (the KL term of a
        VAE whose config says ``score='elbo'``); unit errors stay reconstruction-only, so
        top features explain the reconstruction part.
        """
        x = self.model_input(cont, cat)
        errors = self.unit_errors(x, self.model(x), cat)
        scores = errors.mean(dim=1)
        extra = self.model.score_extra(x)
        if extra is not None:
            scores = scores + extra.float()
        return errors, scores


@dataclass(frozen=True)
class BatchScores:
    """Scores of one batch, on the host."""

    scores: npt.NDArray[np.float32]  # (B,)
    top_index: npt.NDArray[np.int64]  # (B, k) unit indices, largest error first
    top_error: npt.NDArray[np.float32]  # (B, k)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Scorer:
    """Runs a ReconstructionScorer on its device under inference mode."""

    def __init__(
        self, spec: FeatureSpec, model: AnomalyModel, device: torch.device, top_k: int = 3
    ) -> None:
        self.spec = spec
        self.device = device
        self.top_k = max(0, min(top_k, spec.n_units))
        self.module = ReconstructionScorer(spec, model).to(device).eval()

    def score(self, cont: FloatArray, cat: IndexArray) -> BatchScores:
        """Score raw arrays (B, C) and (B, K); B may be 0."""
        with torch.inference_mode():
            errors, scores = self.score_terms(cont, cat)  # (B, U), (B,)
            top_err, top_idx = torch.topk(errors, self.top_k, dim=1)
        return BatchScores(
            scores=scores.float().cpu().numpy(),
            top_index=top_idx.cpu().numpy(),
            top_error=top_err.float().cpu().numpy(),
        )

    def unit_errors(self, cont: FloatArray, cat: IndexArray) -> Tensor:
        """(B, U) errors on the scorer's device; call under inference mode."""
        errors: Tensor = self.module(*self._to_device(cont, cat))
        return errors

    def score_terms(self, cont: FloatArray, cat: IndexArray) -> tuple[Tensor, Tensor]:
        """(unit errors (B, U), scores (B,)) on the scorer's device; call under inference mode.

        The trainer computes its threshold with this, so it scores exactly like the worker.
        """
        return self.module.score_terms(*self._to_device(cont, cat))

    def _to_device(self, cont: FloatArray, cat: IndexArray) -> tuple[Tensor, Tensor]:
        cont_t = torch.from_numpy(np.ascontiguousarray(cont, dtype=np.float32))
        cat_t = torch.from_numpy(np.ascontiguousarray(cat, dtype=np.int64))
        non_blocking = self.device.type == "cuda"
        if non_blocking:
            cont_t, cat_t = cont_t.pin_memory(), cat_t.pin_memory()
        return (
            cont_t.to(self.device, non_blocking=non_blocking),
            cat_t.to(self.device, non_blocking=non_blocking),
        )
