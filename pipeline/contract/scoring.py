"""Reconstruction scoring: raw feature arrays in, per-record scores and top features out.

The trainer computes its threshold with exactly this code, so a record scores the same in
training, batch scoring and the streaming worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from pipeline.contract.exceptions import ConfigError
from pipeline.contract.features import FeatureSpec, FloatArray, IndexArray
from pipeline.contract.models import AnomalyModel

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


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op CPU threads (0: leave torch's choice), then restore the count.

    The worker defaults to 1: its other threads (Kafka I/O, decoding, the loop) need the
    remaining cores, and on a busy machine torch's thread pool spins against them; on two
    shared cores two threads made a 784-wide model 5x slower per batch (BENCHMARKS.md).
    """
    previous = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0:
            torch.set_num_threads(previous)


def _squared_error(
    recon: Tensor, x: Tensor, spread_weight: float = 1.0, whitening: Tensor | None = None
) -> Tensor:
    """(B, C) squared error of a reconstruction (B, C); for an ensemble's (M, B, C), the
    error of the members' mean reconstruction plus ``spread_weight`` times the members'
    variance around it. The members' mean error is exactly that sum at weight 1
    (mean_m (r_m - x)^2 = (mean_m r_m - x)^2 + var_m r_m), so weight 1 is every member's
    own error, averaged. Accumulated member by member: one (B, C) buffer instead of an
    (M, B, C) one keeps a 784-wide ensemble's scoring at the cost of a single model's.
    With ``whitening`` (C, C) the residual row of the (mean) reconstruction is multiplied
    by it before it is squared."""
    x = x.float()
    if whitening is not None:
        return _whitened_error(recon.float(), x, spread_weight, whitening)
    if recon.dim() == 2:
        return (recon.float() - x).pow(2)
    if spread_weight == 0.0:  # the default's score: one mean, one error
        return (recon.float().mean(dim=0) - x).pow(2)
    total = (recon[0].float() - x).pow(2)
    for member in recon[1:]:
        total = total + (member.float() - x).pow(2)
    total = total / recon.shape[0]
    if spread_weight == 1.0:
        return total
    of_mean = (recon.float().mean(dim=0) - x).pow(2)
    return spread_weight * total + (1.0 - spread_weight) * of_mean


def _whitened_error(recon: Tensor, x: Tensor, spread_weight: float, whitening: Tensor) -> Tensor:
    """``_squared_error`` of a whitened residual: ((mean recon - x) W)^2 plus, for an
    ensemble, ``spread_weight`` times the members' variance (not whitened)."""
    mean = recon if recon.dim() == 2 else recon.mean(dim=0)
    error = ((mean - x) @ whitening).pow(2)
    if recon.dim() == 2 or spread_weight == 0.0:
        return error
    return error + spread_weight * (recon - mean).pow(2).mean(dim=0)


def signed_log(values: Tensor, inverse_scale: Tensor | float) -> Tensor:
    """sign(v) log(1 + |v| / scale): the one definition of a heavy-tailed column's
    compression, used by the scorer and by the trainer for the column's statistics."""
    return (values * inverse_scale).abs().log1p().copysign(values)


class SpecTransform(nn.Module):
    """The spec's side of scoring, shared by every model kind: standardise the raw arrays
    into model input, and measure the error of a reconstruction per unit."""

    mean: Tensor
    std: Tensor
    tail_inverse: Tensor
    tailed: Tensor

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        mean, std = spec.continuous_mean_std()
        tails = spec.continuous_tail_scales()
        self.register_buffer("mean", torch.from_numpy(mean), persistent=False)
        self.register_buffer("std", torch.from_numpy(np.maximum(std, 1e-6)), persistent=False)
        inverse = np.where(tails > 0, 1.0 / np.maximum(tails, 1e-30), 1.0).astype(np.float32)
        self.register_buffer("tail_inverse", torch.from_numpy(inverse), persistent=False)
        self.register_buffer("tailed", torch.from_numpy(tails > 0), persistent=False)
        self.has_tails = bool((tails > 0).any())  # a spec without one pays nothing
        self.all_tails = bool((tails > 0).all())
        self.n_cont = spec.n_continuous
        self.cardinalities = spec.cardinalities

    def compressed(self, cont: Tensor) -> Tensor:
        """(B, C) raw values with each heavy-tailed column as its signed log,
        sign(v) log(1 + |v| / scale) (``trainer.tails``); log1p is a quarter of asinh's cost."""
        if not self.has_tails:
            return cont
        logs = signed_log(cont, self.tail_inverse)
        return logs if self.all_tails else torch.where(self.tailed, logs, cont)

    def model_input(self, cont: Tensor, cat: Tensor) -> Tensor:
        """(B, C) raw + (B, K) indices -> (B, D_in) standardised input; NaN imputed as mean."""
        z = torch.nan_to_num((self.compressed(cont) - self.mean) / self.std, nan=0.0)  # (B, C)
        if not self.cardinalities:
            return z
        hots = [F.one_hot(cat[:, j], k).to(z.dtype) for j, k in enumerate(self.cardinalities)]
        return torch.cat([z, *hots], dim=1)  # (B, C + sum k)

    def unit_errors(
        self,
        x: Tensor,
        recon: Tensor,
        cat: Tensor,
        spread_weight: float = 1.0,
        whitening: Tensor | None = None,
    ) -> Tensor:
        """(B, U) error per unit: squared error per continuous value, CE per categorical.

        An ensemble's reconstruction (M, B, D_out) gives the error of the members' mean
        reconstruction plus ``spread_weight`` times their variance for continuous values
        (weight 1: each member's own error, averaged), and each member's CE averaged for
        categoricals. Training uses it too, with weight 1 - ``diversity`` (never normalised,
        never whitened). ``whitening`` (C, C) multiplies the continuous residuals' row.
        """
        c = self.n_cont
        errs = [_squared_error(recon[..., :c], x[:, :c], spread_weight, whitening)]  # (B, C)
        offset = c
        for j, k in enumerate(self.cardinalities):
            logits = recon[..., offset : offset + k].float()  # (..., B, k)
            target = cat[:, j].expand(logits.shape[:-1])  # (..., B)
            ce = F.cross_entropy(logits.reshape(-1, k), target.reshape(-1), reduction="none")
            ce = ce.view(target.shape)
            errs.append((ce.mean(dim=0) if ce.dim() == 2 else ce).unsqueeze(-1))
            offset += k
        return torch.cat(errs, dim=-1)

    def record_scores(self, errors: Tensor, extra: Tensor | None = None) -> Tensor:
        """(B,) record scores from (B, U) unit errors: their mean, plus the model's extra
        term (the KL term of a VAE scored by ELBO)."""
        scores = errors.mean(dim=1)
        return scores if extra is None else scores + extra.float()


class ReconstructionScorer(SpecTransform):
    """Spec-aware wrapper around a model: standardise, reconstruct, measure error per unit."""

    def __init__(self, spec: FeatureSpec, model: AnomalyModel) -> None:
        super().__init__(spec)
        self.model = model
        whitened = model.config.whitened_units
        if whitened and whitened != spec.n_continuous:
            raise ConfigError(
                f"the model whitens {whitened} continuous units but the feature spec has "
                f"{spec.n_continuous}: model and spec are from different artifacts"
            )

    def scaled(self, errors: Tensor) -> Tensor:
        """Unit errors divided by the model's per-unit scale, when it has one: each unit's
        error in multiples of its typical error on normal rows, so units the model
        reconstructs well are not drowned out by noisy ones."""
        if not self.model.config.error_units:
            return errors
        return errors / self.model.unit_scale

    def forward(self, cont: Tensor, cat: Tensor) -> Tensor:
        x = self.model_input(cont, cat)
        return self.scaled(self.score_errors(x, cat))  # (B, U)

    def score_errors(self, x: Tensor, cat: Tensor) -> Tensor:
        """(B, U) unit errors as the score counts them (before normalisation)."""
        cfg = self.model.config
        whitening = self.model.residual_whitening if cfg.whitened_units else None
        return self.unit_errors(x, self.model(x), cat, cfg.spread_weight, whitening)

    def score_terms(self, cont: Tensor, cat: Tensor) -> tuple[Tensor, Tensor]:
        """(unit errors (B, U), record scores (B,)): the score is what the threshold applies to.

        The score is the mean (normalised) unit error, plus the model's ``score_extra`` (the
        KL term of a VAE whose config says ``score='elbo'``); unit errors stay
        reconstruction-only, so top features explain the reconstruction part.
        """
        x = self.model_input(cont, cat)
        errors = self.scaled(self.score_errors(x, cat))
        return errors, self.record_scores(errors, self.model.score_extra(x))


@dataclass(frozen=True)
class BatchScores:
    """Scores of one batch, on the host."""

    scores: npt.NDArray[np.float32]  # (B,)
    top_index: npt.NDArray[np.int64]  # (B, k) unit indices, largest error first
    top_error: npt.NDArray[np.float32]  # (B, k)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def concat_scores(parts: list[BatchScores]) -> BatchScores:
    """Join the scores of consecutive chunks of one batch, keeping row order."""
    return BatchScores(
        scores=np.concatenate([p.scores for p in parts]),
        top_index=np.concatenate([p.top_index for p in parts]),
        top_error=np.concatenate([p.top_error for p in parts]),
    )


class HostStaging:
    """Reusable host buffers for copies to the device, page-locked on CUDA.

    Pinning memory is a costly system call, so buffers are allocated once, grown when a
    larger batch arrives and never shrunk; each batch is copied into a view of them. Before a
    buffer is overwritten the previous asynchronous copy out of it is awaited (``wait``).
    """

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.allocations = 0  # number of buffers allocated (tests check reuse)
        self._buffers: dict[str, Tensor] = {}

    def stage(self, name: str, array: np.ndarray[Any, Any]) -> Tensor:
        """A host tensor with ``array``'s shape and contents, in a reused buffer."""
        src = torch.from_numpy(array)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < src.numel() or buf.dtype != src.dtype:
            size = max(src.numel(), 2 * buf.numel() if buf is not None else 0, 1)
            buf = torch.empty(size, dtype=src.dtype, pin_memory=self.pin)
            self._buffers[name] = buf
            self.allocations += 1
        view = buf[: src.numel()].view(src.shape)
        view.copy_(src)
        return view


class DeviceFeed:
    """Host arrays to the scoring device: zero-copy on the CPU; on CUDA through reused pinned
    buffers with non-blocking copies (the device work is queued and the host waits only
    when it reads results back)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._cuda = device.type == "cuda"
        self._staging = HostStaging(pin=self._cuda)
        self._copied: torch.cuda.Event | None = None

    def __call__(self, *arrays: tuple[str, np.ndarray[Any, Any]]) -> list[Tensor]:
        """``(name, array)`` pairs to device tensors, in order (names key the buffers)."""
        if not self._cuda:
            return [torch.from_numpy(a) for _, a in arrays]
        if self._copied is not None:
            self._copied.synchronize()  # the last batch's copies out of the buffers are done
        out = [
            self._staging.stage(name, a).to(self.device, non_blocking=True) for name, a in arrays
        ]
        self._copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
        self._copied.record()
        return out


def host_arrays(cont: FloatArray, cat: IndexArray) -> list[tuple[str, np.ndarray[Any, Any]]]:
    """The raw arrays as the contiguous float32 / int64 blocks the scorers take."""
    return [
        ("cont", np.ascontiguousarray(cont, dtype=np.float32)),
        ("cat", np.ascontiguousarray(cat, dtype=np.int64)),
    ]


def top_features(errors: Tensor, scores: Tensor, k: int) -> BatchScores:
    """Scores and the k largest unit errors of each row, read back to the host."""
    top_err, top_idx = torch.topk(errors, k, dim=1)
    return BatchScores(
        scores=scores.float().cpu().numpy(),
        top_index=top_idx.cpu().numpy(),
        top_error=top_err.float().cpu().numpy(),
    )


class Scorer:
    """Runs a ReconstructionScorer on its device under inference mode."""

    def __init__(
        self, spec: FeatureSpec, model: AnomalyModel, device: torch.device, top_k: int = 3
    ) -> None:
        self.spec = spec
        self.device = device
        self.top_k = max(0, min(top_k, spec.n_units))
        self.module = ReconstructionScorer(spec, model).to(device).eval()
        self._feed = DeviceFeed(device)

    def score(self, cont: FloatArray, cat: IndexArray) -> BatchScores:
        """Score raw arrays (B, C) and (B, K); B may be 0."""
        with torch.inference_mode():
            errors, scores = self.score_terms(cont, cat)  # (B, U), (B,)
            return top_features(errors, scores, self.top_k)

    def unit_errors(self, cont: FloatArray, cat: IndexArray) -> Tensor:
        """(B, U) errors on the scorer's device; call under inference mode."""
        errors: Tensor = self.module(*self._feed(*host_arrays(cont, cat)))
        return errors

    def score_terms(self, cont: FloatArray, cat: IndexArray) -> tuple[Tensor, Tensor]:
        """(unit errors (B, U), scores (B,)) on the scorer's device; call under inference mode.

        The trainer computes its threshold with this, so it scores exactly like the worker.
        """
        cont_d, cat_d = self._feed(*host_arrays(cont, cat))
        return self.module.score_terms(cont_d, cat_d)
