"""Many small autoencoders as one batched model: stacked weights, one call for all of them.

A per-entity model set holds N autoencoders of one architecture (a ``ModelConfig`` of kind
``ae`` or ``dae``, no normalisation layers). Layer ``l`` of all of them is one tensor
``weight (N, d_in, d_out)`` and one ``bias (N, d_out)``; slot 0 is the fallback model, slots
1..N-1 the entities. Two ways to run them, both through ``stacked_forward``:

- **grouped** (training): ``x (N', b, d)`` holds ``b`` rows of each of N' models, and every
  layer is one ``baddbmm`` over the models: each model trains on its own rows only, exactly as
  if fitted alone, but in one call;
- **routed** (scoring): ``x (B, d)`` with ``slots (B,)`` naming each row's model; every layer
  gathers each row's weights (``weight[slots]``, (B, d_in, d_out)) and does one batched
  product, so a micro-batch spanning thousands of entities is still one call per layer.

Layer layout and activations are those of ``pipeline.contract.models.AutoEncoder`` (a plain
last layer in the encoder and the decoder), and ``from_autoencoder`` turns such a model into a
stacked slot, so the fallback can be trained by the ordinary trainer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from pipeline.contract.exceptions import ConfigError
from pipeline.contract.models import ModelConfig, fast_tanh

Layer = tuple[Tensor, Tensor]  # (weight (N, d_in, d_out), bias (N, d_out))

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": fast_tanh,
    "leaky_relu": F.leaky_relu,
}


def check_stackable(config: ModelConfig) -> None:
    """Per-entity models are plain or denoising autoencoders without normalisation layers:
    those are the ones whose layers stack into batched products."""
    if config.kind not in ("ae", "dae"):
        raise ConfigError(f"per-entity models support --model ae or dae, not {config.kind!r}")
    if config.norm != "none":
        raise ConfigError(f"per-entity models support --norm none, not {config.norm!r}")


def layer_dims(config: ModelConfig) -> list[tuple[int, int]]:
    """(d_in, d_out) of every linear layer, encoder then decoder."""
    enc = [config.input_dim, *config.hidden_dims, config.latent_dim]
    dec = [config.latent_dim, *reversed(config.hidden_dims), config.output_dim]
    return list(itertools.pairwise(enc)) + list(itertools.pairwise(dec))


def plain_layers(config: ModelConfig) -> set[int]:
    """Indices of layers with no activation after them: the last of encoder and decoder."""
    n_enc = len(config.hidden_dims) + 1
    return {n_enc - 1, 2 * n_enc - 1}


def params_per_model(config: ModelConfig) -> int:
    return sum(i * o + o for i, o in layer_dims(config))


def tensor_names(config: ModelConfig) -> list[str]:
    """Names of the stacked tensors in the weights file, in layer order."""
    return [f"layers.{i}.{p}" for i in range(len(layer_dims(config))) for p in ("weight", "bias")]


def stacked_forward(
    layers: Sequence[Layer],
    x: Tensor,
    config: ModelConfig,
    slots: Tensor | None = None,
    dropout: float = 0.0,
) -> Tensor:
    """Reconstruct ``x`` with the stacked models.

    Grouped: ``x (N, b, D_in)``, ``slots`` None, layer ``weight (N, d_in, d_out)`` -> (N, b,
    D_out). Routed: ``x (B, D_in)`` and ``slots (B,)`` -> (B, D_out), row i through model
    ``slots[i]``.
    """
    act = _ACTIVATIONS[config.activation]
    plain = plain_layers(config)
    h = x if slots is None else x.unsqueeze(1)  # (N, b, d) or (B, 1, d)
    for i, (weight, bias) in enumerate(layers):
        # index_select: ~3x faster than weight[slots] for these gathers on the CPU
        w = weight if slots is None else weight.index_select(0, slots)  # (N|B, d_in, d_out)
        b = bias if slots is None else bias.index_select(0, slots)  # (N|B, d_out)
        h = torch.baddbmm(b.unsqueeze(1), h, w)
        if i not in plain:
            h = act(h)
            if dropout > 0:
                h = F.dropout(h, dropout, training=True)
    return h if slots is None else h.squeeze(1)


class StackedAutoEncoder(nn.Module):
    """N autoencoders of one config as stacked parameters (``layers.{i}.weight|bias``)."""

    def __init__(self, config: ModelConfig, n_models: int) -> None:
        super().__init__()
        check_stackable(config)
        self.config = config
        self.n_models = n_models
        self.layers = nn.ModuleList(
            _StackedLinear(n_models, d_in, d_out) for d_in, d_out in layer_dims(config)
        )

    def stacked(self) -> list[Layer]:
        return [
            (layer.weight, layer.bias) for layer in self.layers if isinstance(layer, _StackedLinear)
        ]

    def forward(self, x: Tensor, slots: Tensor | None = None) -> Tensor:
        dropout = self.config.dropout if self.training else 0.0
        return stacked_forward(self.stacked(), x, self.config, slots, dropout)

    def forward_chunk(self, x: Tensor, start: int) -> Tensor:
        """Grouped forward of models ``start .. start + len(x)`` on ``x (e, b, D_in)``."""
        stop = start + x.shape[0]
        layers = [(w[start:stop], b[start:stop]) for w, b in self.stacked()]
        dropout = self.config.dropout if self.training else 0.0
        return stacked_forward(layers, x, self.config, None, dropout)

    def corrupt(self, x: Tensor) -> Tensor:
        """The DAE's training corruption (as ``DenoisingAutoEncoder.corrupt``)."""
        level = self.config.noise_level
        if self.config.noise == "mask":
            return x * (torch.rand_like(x) >= level)
        return x + level * torch.randn_like(x)


class _StackedLinear(nn.Module):
    """One layer of N models: weight (N, d_in, d_out), bias (N, d_out)."""

    def __init__(self, n_models: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n_models, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_models, d_out).uniform_(-bound, bound))


def from_autoencoder(model: nn.Module) -> list[Layer]:
    """An ``AutoEncoder``'s linear layers as one stacked slot each: weight (1, d_in, d_out)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [
        (m.weight.detach().t().unsqueeze(0).contiguous(), m.bias.detach().unsqueeze(0).clone())
        for m in linears
    ]
