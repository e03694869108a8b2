"""Small real objects for tests: specs, models with pinned weights, published artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.contract import artifact
from pipeline.contract.artifact import Manifest, ThresholdInfo, TrainingSummary
from pipeline.contract.features import (
    BooleanFeature,
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    VectorFeature,
)
from pipeline.contract.models import AnomalyModel, ModelConfig, build_model


def numeric_spec(n: int = 4) -> FeatureSpec:
    return FeatureSpec(
        features=[NumericFeature(name=f"x{i}", mean=float(i), std=1.0 + i) for i in range(n)]
    )


def mixed_spec(missing: str = "impute") -> FeatureSpec:
    return FeatureSpec(
        features=[
            NumericFeature(name="amount", mean=10.0, std=2.0),
            CategoricalFeature(name="channel", categories=["web", "pos"]),
            BooleanFeature(name="foreign", mean=0.25, std=0.433),
            VectorFeature(name="emb", length=3, mean=[0.0, 1.0, 2.0], std=[1.0, 1.0, 2.0]),
        ],
        id_column="txn",
        missing=missing,  # type: ignore[arg-type]
    )


def tiny_model(
    spec: FeatureSpec, kind: str = "ae", seed: int = 0, norm: str = "none"
) -> AnomalyModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        kind=kind,  # type: ignore[arg-type]
        input_dim=spec.input_dim,
        output_dim=spec.input_dim,
        hidden_dims=[8],
        latent_dim=2,
        norm=norm,  # type: ignore[arg-type]
    )
    return build_model(cfg).eval()


def manifest_fields(
    spec: FeatureSpec, model: AnomalyModel, name: str = "m", threshold: float = 1.0
) -> dict[str, Any]:
    return {
        "name": name,
        "model": model.config,
        "features": spec,
        "threshold": ThresholdInfo(value=threshold, quantile=0.99, rows=100),
        "score_quantiles": {"0.5": 0.1, "0.99": threshold},
        "training": TrainingSummary(rows_train=10, rows_validation=5, epochs=1, best_epoch=1),
    }


def publish_model(
    store: Path,
    spec: FeatureSpec | None = None,
    name: str = "m",
    threshold: float = 1.0,
    kind: str = "ae",
    seed: int = 0,
    norm: str = "none",
) -> Manifest:
    spec = spec or numeric_spec()
    model = tiny_model(spec, kind=kind, seed=seed, norm=norm)
    return artifact.publish(store, model, manifest_fields(spec, model, name, threshold))


def rng_rows(n: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)
