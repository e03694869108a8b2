"""Autoencoder architectures and their registry, shared by the trainer and the worker.

A model is fully described by a ``ModelConfig``; the artifact stores that config so the
worker rebuilds the exact module from the manifest alone, then loads the weights.

Every model maps a standardised input x (B, D_in) to an output (B, D_out) whose first C
columns reconstruct the continuous block and whose remaining columns are logits for each
categorical column (see ``pipeline.contract.features``). In eval mode the output is deterministic.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

ModelKind = Literal["ae", "vae", "dae"]
Activation = Literal["relu", "gelu", "silu", "tanh", "leaky_relu"]
Norm = Literal["none", "batch", "layer"]
ScoreKind = Literal["reconstruction", "elbo"]


class ModelConfig(BaseModel):
    """Architecture hyper-parameters; stored verbatim in the artifact manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ModelKind = "ae"
    input_dim: int = Field(gt=0)
    output_dim: int = Field(gt=0)
    hidden_dims: list[int] = Field(default_factory=lambda: [64, 32])
    latent_dim: int = Field(default=8, gt=0)
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    norm: Norm = "none"
    beta: float = Field(default=1.0, ge=0.0, description="VAE: weight of the KL term")
    noise: Literal["gaussian", "mask"] = Field(default="gaussian", description="DAE corruption")
    noise_level: float = Field(default=0.1, ge=0.0, description="DAE: std or mask probability")
    score: ScoreKind = Field(
        default="reconstruction",
        description=(
            "the record score the threshold was computed with, honoured by the scorer: "
            "reconstruction error, or (VAE only) 'elbo' = reconstruction error plus the "
            "record's KL term weighted as in training (negative ELBO up to constants)"
        ),
    )
    members: int = Field(
        default=1,
        ge=1,
        le=64,
        description="autoencoders trained side by side from different initial weights, run "
        "as one batched forward pass (ae and dae only); spread_weight says how their "
        "reconstructions make a unit's error",
    )
    diversity: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="ensemble training (negative correlation learning): the loss is the "
        "members' mean error minus this share of their variance, so the members are pushed "
        "apart where the rows leave them free; 0: members trained independently",
    )
    spread_weight: float = Field(
        default=1.0,
        ge=0.0,
        description="ensemble score: the error of the members' mean reconstruction plus this "
        "times their variance (1: the members' mean error)",
    )
    error_units: int = Field(
        default=0,
        ge=0,
        description="error units normalised by the model's ``unit_scale`` buffer (each unit's "
        "mean error on the select rows, floored); 0: raw errors (models from before normalisation)",
    )
    whitened_units: int = Field(
        default=0,
        ge=0,
        description="continuous units (the first ones) whose reconstruction residual is "
        "decorrelated by the model's ``residual_whitening`` buffer before it is squared, so "
        "residuals that move together on normal rows count once and a record that breaks "
        "their relation counts more; 0: each unit's own squared error",
    )

    @model_validator(mode="after")
    def _positive_hidden(self) -> ModelConfig:
        if any(h <= 0 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive, got {self.hidden_dims}")
        if self.score == "elbo" and self.kind != "vae":
            raise ValueError(f"score='elbo' needs kind='vae', got kind={self.kind!r}")
        if self.whitened_units and not self.error_units:
            raise ValueError(
                f"whitened_units={self.whitened_units} needs normalised errors (error_units > 0)"
            )
        if self.members > 1 and (self.kind == "vae" or self.norm == "batch"):
            raise ValueError(
                f"members={self.members} needs kind ae or dae without batch norm "
                f"(got kind={self.kind!r}, norm={self.norm!r})"
            )
        return self


def default_hidden_dims(input_dim: int, members: int = 1) -> tuple[list[int], int]:
    """Layer sizes of each member that scale with the input: a funnel down to the latent.

    The input rounded up to a power of two (at most 512) is the first layer's width, split
    between the members, so the widest and costliest layers of a wide input (input x first,
    and its mirror) cost about what one model's do however many members there are; then half
    of that, and a latent of a quarter of the input (4 to 32, at most the second width).
    The latent stays narrower than the input: the floor of 4 made it as wide as a 3- or
    4-value input or wider, a bottleneck that lets the identity through (the fresh benchmark
    set isl_default, 3 inputs: 0.675 with a latent of 4, 0.715 with 2; no other set of the
    benchmark has fewer than 5 inputs, so none changes). Members get a floor: 32 wide, or 16
    in an ensemble below 64 inputs. On the tuning sets
    below 64 inputs, 16-8 members scored as well as 32-16 ones (mean ROC-AUC 0.884 vs 0.880
    over five sets, 3 seeds) at about the cost of the single model before the ensemble, while
    the 64-wide digits lost 0.011 at 16 wide (BENCHMARKS.md "Detection quality").
    """
    floor = 16 if members > 1 and input_dim < 64 else 32
    first = max(floor, min(512, _round_pow2(input_dim)) // members)
    second = max(floor // 2, first // 2)
    latent = max(4, min(32, input_dim // 4))
    return [first, second], min(latent, second, max(1, input_dim - 1))


DEFAULT_MEMBERS = 4
# ``trainer fit --whiten-residuals``: at most this many continuous units (a C x C matrix per
# record), and a warning below WHITEN_ROWS_PER_UNIT select rows a unit (trainer.whitening)
WHITEN_MAX_UNITS = 256
WHITEN_ROWS_PER_UNIT = 100
# ``trainer fit``'s ensemble training and score from DIVERSE_FROM_ROWS fit rows on: members
# trained with negative correlation learning (loss: mean error minus 0.75 x the members'
# variance) and scored by the error of their mean reconstruction (``ensemble_recipe``).
DEFAULT_DIVERSITY = 0.75
DEFAULT_SPREAD_WEIGHT = 0.0
DIVERSE_FROM_ROWS = 1000


def ensemble_recipe(fit_rows: int | None, members: int = DEFAULT_MEMBERS) -> tuple[float, float]:
    """(diversity, spread_weight) of ``trainer fit``'s default model of ``members`` for
    ``fit_rows`` rows (None: as many as a production model has); (0, 1) for a single model.

    With a thousand fit rows or more, members trained to disagree where the rows leave them
    free and scored by their mean's error: on the tuning group mean ROC-AUC 0.864 -> 0.874
    (diamonds 0.887 -> 0.937, weather 0.718 -> 0.762, credit +0.010), PR-AUC 0.710 -> 0.732,
    and the sample data's lowest injected anomaly about twice as far over the threshold. On
    a few hundred rows it lost (breast_cancer -0.010, biopsy -0.008): there the members stay
    independent and are scored by their mean error, as before (BENCHMARKS.md "Negative
    correlation learning").
    """
    if members == 1 or (fit_rows is not None and fit_rows < DIVERSE_FROM_ROWS):
        return 0.0, 1.0
    return DEFAULT_DIVERSITY, DEFAULT_SPREAD_WEIGHT


# ``trainer fit``'s activation (tanh scored better but costs more: BENCHMARKS.md)
DEFAULT_ACTIVATION: Activation = "relu"


def default_config(
    input_dim: int,
    n_units: int | None = None,
    members: int = DEFAULT_MEMBERS,
    normalize: bool = True,
    fit_rows: int | None = None,
) -> ModelConfig:
    """The autoencoder ``trainer fit`` builds for this input width with default settings
    (``n_units``: error units of the spec, the input width when every feature is continuous).
    Per-entity models are single plain autoencoders: ``members=1, normalize=False``."""
    hidden, latent = default_hidden_dims(input_dim, members)
    diversity, spread_weight = ensemble_recipe(fit_rows, members)
    return ModelConfig(
        input_dim=input_dim,
        output_dim=input_dim,
        hidden_dims=hidden,
        latent_dim=latent,
        activation=DEFAULT_ACTIVATION,
        members=members,
        diversity=diversity,
        spread_weight=spread_weight,
        error_units=(n_units if n_units is not None else input_dim) if normalize else 0,
    )


def _round_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def fast_tanh(x: Tensor) -> Tensor:
    """tanh as 2 sigmoid(2x) - 1 (equal to 2e-7): PyTorch's CPU tanh measured 3.5 ns an
    element here against 0.5 for sigmoid; with tanh the 32-feature default model took 2.2x
    the previous default's time, 1.7x-1.9x this way (BENCHMARKS.md, "Trials of 2026-12-01,
    evening")."""
    s = torch.sigmoid(x + x)
    return s * 2 - 1 if s.requires_grad else s.mul_(2).sub_(1)


class FastTanh(nn.Module):
    """``nn.Tanh`` computed by ``fast_tanh``."""

    def forward(self, x: Tensor) -> Tensor:
        return fast_tanh(x)


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": FastTanh,
    "leaky_relu": nn.LeakyReLU,
}


def _activation(name: Activation) -> nn.Module:
    return _ACTIVATIONS[name]()


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied as one batched matmul:
    (M, B, in) -> (M, B, out). Each member is initialised like ``nn.Linear``."""

    def __init__(self, members: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(members, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


def _linear(cfg: ModelConfig, d_in: int, d_out: int) -> nn.Module:
    return nn.Linear(d_in, d_out) if cfg.members == 1 else EnsembleLinear(cfg.members, d_in, d_out)


def _mlp(dims: list[int], cfg: ModelConfig, last_plain: bool) -> nn.Sequential:
    """Linear layers with norm/activation/dropout between them; optionally a bare last layer."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        layers.append(_linear(cfg, d_in, d_out))
        if last_plain and i == len(dims) - 2:
            break
        if cfg.norm == "batch":
            layers.append(nn.BatchNorm1d(d_out))
        elif cfg.norm == "layer":
            layers.append(nn.LayerNorm(d_out))
        layers.append(_activation(cfg.activation))
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
    return nn.Sequential(*layers)


class AnomalyModel(nn.Module):
    """Base class: ``forward`` reconstructs, ``training_forward`` adds a regulariser.

    The reconstruction is (B, D_out), or (M, B, D_out) for an ensemble of M members. With
    ``config.error_units`` the model carries ``unit_scale`` (U,), saved with the weights: the
    scorer divides each unit's error by it (``pipeline.contract.scoring``). With
    ``config.whitened_units`` C it also carries ``residual_whitening`` (C, C): the scorer
    multiplies the first C units' residual row by it before squaring (identity until
    ``trainer.whitening`` fits it).
    """

    config: ModelConfig
    unit_scale: Tensor
    residual_whitening: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.error_units:
            self.register_buffer("unit_scale", torch.ones(config.error_units))
        if config.whitened_units:
            self.register_buffer("residual_whitening", torch.eye(config.whitened_units))

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction (B, D_out), extra loss scalar) for one training step."""
        return self(x), x.new_zeros(())

    def score_extra(self, x: Tensor) -> Tensor | None:
        """(B,) term added to a record's mean unit error to form its score, or None.

        Only the VAE with ``score='elbo'`` has one; deterministic in eval mode.
        """
        return None


class AutoEncoder(AnomalyModel):
    """Plain deterministic autoencoder."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        enc = [config.input_dim, *config.hidden_dims, config.latent_dim]
        dec = [config.latent_dim, *reversed(config.hidden_dims), config.output_dim]
        self.encoder = _mlp(enc, config, last_plain=True)
        self.decoder = _mlp(dec, config, last_plain=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.config.members > 1:
            x = x.unsqueeze(0).expand(self.config.members, -1, -1)  # (M, B, D_in)
        out: Tensor = self.decoder(self.encoder(x))  # (..., B, D_in) -> L -> (..., B, D_out)
        return out


class DenoisingAutoEncoder(AutoEncoder):
    """Trained to reconstruct clean input from a corrupted copy; scores uncorrupted input."""

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self(self.corrupt(x)), x.new_zeros(())

    def corrupt(self, x: Tensor) -> Tensor:
        level = self.config.noise_level
        if self.config.noise == "mask":
            keep = torch.rand_like(x) >= level
            return x * keep
        return x + level * torch.randn_like(x)


class VariationalAutoEncoder(AnomalyModel):
    """VAE with a Gaussian latent; the score uses the reconstruction from the latent mean."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_dims
        self.encoder = _mlp([config.input_dim, *hidden], config, last_plain=False)
        self.to_mu = nn.Linear(hidden[-1] if hidden else config.input_dim, config.latent_dim)
        self.to_logvar = nn.Linear(hidden[-1] if hidden else config.input_dim, config.latent_dim)
        dec = [config.latent_dim, *reversed(hidden), config.output_dim]
        self.decoder = _mlp(dec, config, last_plain=True)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)  # (B, H)
        return self.to_mu(h), self.to_logvar(h).clamp(-10.0, 10.0)  # (B, L) each

    def forward(self, x: Tensor) -> Tensor:
        mu, _ = self.encode(x)
        out: Tensor = self.decoder(mu)
        return out

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        kl = _kl(mu, logvar).mean()
        return self.decoder(z), self.config.beta * kl / max(1, self.config.output_dim)

    def kl_per_record(self, x: Tensor) -> Tensor:
        """KL(q(z|x) || N(0, I)) for each record (B,), for ELBO-style scores."""
        mu, logvar = self.encode(x)
        return _kl(mu, logvar)

    def score_extra(self, x: Tensor) -> Tensor | None:
        """With score='elbo': the KL term of the training loss, per record (B,).

        Training minimises mean(unit errors) + beta * mean(KL) / D_out over a batch, so a
        record's share of that objective is its mean unit error plus beta * KL / D_out.
        """
        if self.config.score != "elbo":
            return None
        return self.config.beta * self.kl_per_record(x) / max(1, self.config.output_dim)


def _kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row (B,)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


MODEL_REGISTRY: dict[str, type[AnomalyModel]] = {
    "ae": AutoEncoder,
    "vae": VariationalAutoEncoder,
    "dae": DenoisingAutoEncoder,
}


def build_model(config: ModelConfig) -> AnomalyModel:
    """Instantiate the architecture named by ``config.kind``."""
    return MODEL_REGISTRY[config.kind](config)
