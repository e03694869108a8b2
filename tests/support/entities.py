"""Per-entity model sets for tests and benchmarks: stacked weights of real (untrained or
pinned-seed) autoencoders published as a real per-entity version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.contract.artifact import Manifest, ThresholdInfo, TrainingSummary
from pipeline.contract.entities import EntityIndex
from pipeline.contract.entity_publish import publish_entities, relative_quantiles
from pipeline.contract.features import FeatureSpec
from pipeline.contract.models import ModelConfig
from pipeline.contract.stacked import StackedAutoEncoder


def tiny_config(spec: FeatureSpec) -> ModelConfig:
    return ModelConfig(
        input_dim=spec.input_dim, output_dim=spec.input_dim, hidden_dims=[8], latent_dim=2
    )


def stacked_model(config: ModelConfig, n_slots: int, seed: int = 0) -> StackedAutoEncoder:
    torch.manual_seed(seed)
    return StackedAutoEncoder(config, n_slots).eval()


def publish_entity_set(
    store: Path,
    spec: FeatureSpec,
    entities: list[str],
    *,
    name: str = "m",
    column: str = "machine",
    thresholds: list[float] | None = None,
    config: ModelConfig | None = None,
    seed: int = 0,
) -> Manifest:
    """Publish ``len(entities)`` entity models plus a fallback (slot 0), random weights of
    ``seed``; thresholds default to 1.0 for every slot."""
    config = config or tiny_config(spec)
    n = len(entities) + 1
    model = stacked_model(config, n, seed)
    thresholds = thresholds or [1.0] * n
    index = EntityIndex(
        column=column,
        entities=[None, *entities],
        thresholds=thresholds,
        calibration_rows=[100] * n,
        train_rows=[400] * n,
        fitted_in=["test"] * n,
    )
    return publish_entities(
        str(store),
        model,
        index,
        {
            "name": name,
            "model": config,
            "features": spec,
            "threshold": ThresholdInfo(value=thresholds[0], quantile=0.99, rows=100),
            "score_quantiles": {"0.5": 0.1, "0.99": thresholds[0]},
            "training": TrainingSummary(rows_train=10, rows_validation=5, epochs=1, best_epoch=1),
        },
        {
            "min_rows": 10,
            "relative_score_quantiles": relative_quantiles(np.linspace(0, 1.2, 50)),
            "fitted": len(entities),
        },
    )
