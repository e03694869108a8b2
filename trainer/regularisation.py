"""The weight decay a fit uses when none is set: it follows the kind of data.

Tabular rows get Adam weight decay ``TABULAR_WEIGHT_DECAY``; a model with a vector column
(an image, an embedding) gets none. On the tuning sets (BENCHMARKS.md "Detection quality")
weight decay 1e-3 raised the tabular sets' mean ROC-AUC (diamonds 0.887 -> 0.945, the rest
within a seed's spread) but cost the 64-pixel digits 0.009: decay pulls an image
autoencoder's reconstruction towards the mean image, so a stroke where the class has none
reconstructs better than it should. The rule was chosen on the tuning group only and then
checked on the untuned one (mean 0.723 -> 0.732; flights +0.070, phishing +0.018, attrition
-0.036).

Per-entity models keep 0 unless one is set: their fits were measured without decay.
"""

from __future__ import annotations

from pipeline.contract.features import FeatureSpec, VectorFeature
from trainer.settings import TrainerSettings

TABULAR_WEIGHT_DECAY = 1e-3


def default_weight_decay(spec: FeatureSpec) -> float:
    """``TABULAR_WEIGHT_DECAY``, or 0 when any feature is a vector."""
    if any(isinstance(f, VectorFeature) for f in spec.features):
        return 0.0
    return TABULAR_WEIGHT_DECAY


def with_weight_decay(s: TrainerSettings, spec: FeatureSpec | None) -> TrainerSettings:
    """``s`` with its weight decay resolved: the one set, else the data's default (``spec``),
    else 0 (``spec`` None: per-entity fits)."""
    if s.weight_decay is not None:
        return s
    decay = default_weight_decay(spec) if spec is not None else 0.0
    return s.model_copy(update={"weight_decay": decay})


def resolved_weight_decay(s: TrainerSettings) -> float:
    """The weight decay an optimiser gets; unset means the per-entity default, 0 (the
    global fit resolves it from the data first, ``with_weight_decay``)."""
    return s.weight_decay if s.weight_decay is not None else 0.0
