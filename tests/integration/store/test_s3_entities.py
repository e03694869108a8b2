"""Per-entity versions (stacked weights + entities.json) through the object store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.contract import store
from pipeline.contract.artifact import load_artifact
from pipeline.contract.entity_bank import capacity_for
from pipeline.contract.entity_scoring import open_entity_scorer
from tests.support.entities import publish_entity_set
from tests.support.factories import numeric_spec

MACHINES = [f"m{i}" for i in range(6)]


def test_entity_version_on_s3_scores_like_the_same_version_on_disk(
    s3_store: str, tmp_path: Path
) -> None:
    spec = numeric_spec(4)
    on_s3 = publish_entity_set(s3_store, spec, MACHINES, seed=3)  # type: ignore[arg-type]
    publish_entity_set(tmp_path, spec, MACHINES, seed=3)
    fs, root = store.filesystem(s3_store)
    files = {Path(p).name for p in fs.find(f"{root}/m/{on_s3.version}")}
    assert files == {"manifest.json", "model.safetensors", "entities.json"}

    remote, local = load_artifact(s3_store, "m"), load_artifact(tmp_path, "m")
    assert remote.entities is not None and local.entities is not None
    rng = np.random.default_rng(0)
    cont = rng.normal(size=(40, spec.input_dim)).astype(np.float32)
    cat = np.zeros((40, 0), np.int64)
    keys = [MACHINES[i % 6] if i % 5 else None for i in range(40)]
    budget = 1  # two resident models of seven: the rest are read from the cached files
    assert capacity_for(remote.entities.weights.config, remote.entities.n_slots, budget) == 2
    cpu = torch.device("cpu")
    a = open_entity_scorer(spec, remote.entities, cpu, budget_bytes=budget).score(cont, cat, keys)
    b = open_entity_scorer(spec, local.entities, cpu, budget_bytes=budget).score(cont, cat, keys)
    np.testing.assert_allclose(a.scores.scores, b.scores.scores, rtol=1e-6)
    assert a.slots is not None and b.slots is not None
    assert (a.slots == b.slots).all()
    assert on_s3.entities is not None and on_s3.entities.models == len(MACHINES)
