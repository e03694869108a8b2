"""Per-entity models in the contract: stacked forward, artifact, resident bank, routed scoring."""

import hashlib
import json
from typing import get_args

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.contract.artifact import load_artifact
from pipeline.contract.entity_artifact import autoencoder_from_slot
from pipeline.contract.entity_bank import EntityBank, capacity_for
from pipeline.contract.entity_scoring import EntityRouter, EntityScorer
from pipeline.contract.exceptions import ArtifactInvalid
from pipeline.contract.models import Activation, ModelConfig, build_model
from pipeline.contract.scoring import Scorer
from pipeline.contract.stacked import (
    StackedAutoEncoder,
    from_autoencoder,
    params_per_model,
    stacked_forward,
)
from tests.support.entities import publish_entity_set, tiny_config
from tests.support.factories import mixed_spec, numeric_spec

ENTITIES = [f"e{i}" for i in range(6)]


def _version_dir(store, manifest):
    return store / manifest.name / manifest.version


def _scorer(loaded, capacity=None, top_k=3):
    ents = loaded.entities
    cap = capacity or ents.n_slots
    bank = EntityBank(ents.weights, torch.device("cpu"), cap)
    return EntityScorer(loaded.manifest.features, EntityRouter(ents.index), bank, top_k=top_k)


@pytest.mark.parametrize("activation", get_args(Activation))
def test_routed_and_grouped_forward_match_the_autoencoders_they_came_from(activation):
    cfg = ModelConfig(
        input_dim=5, output_dim=5, hidden_dims=[6, 4], latent_dim=2, activation=activation
    )
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(cfg).eval())
    per_model = [from_autoencoder(m) for m in models]
    layers = [
        (torch.cat([p[i][0] for p in per_model]), torch.cat([p[i][1] for p in per_model]))
        for i in range(len(per_model[0]))
    ]
    x = torch.randn(7, 5)
    slots = torch.tensor([2, 0, 1, 1, 2, 0, 2])
    with torch.inference_mode():
        routed = stacked_forward(layers, x, cfg, slots=slots)
        expected = torch.stack([models[int(s)](x[i : i + 1])[0] for i, s in enumerate(slots)])
        grouped = stacked_forward(layers, x[:4].expand(3, 4, 5), cfg)
    assert torch.allclose(routed, expected, atol=1e-6)
    for m in range(3):
        assert torch.allclose(grouped[m], models[m](x[:4]), atol=1e-6)


def test_stacked_models_refuse_what_does_not_stack():
    from pipeline.contract.exceptions import ConfigError

    with pytest.raises(ConfigError, match="ae or dae"):
        StackedAutoEncoder(ModelConfig(kind="vae", input_dim=3, output_dim=3), 2)
    with pytest.raises(ConfigError, match="norm none"):
        StackedAutoEncoder(ModelConfig(input_dim=3, output_dim=3, norm="layer"), 2)


def test_entity_version_round_trips_with_the_fallback_as_its_model(tmp_path):
    spec = mixed_spec()
    manifest = publish_entity_set(tmp_path, spec, ENTITIES, thresholds=[0.5 + i for i in range(7)])
    files = sorted(p.name for p in _version_dir(tmp_path, manifest).iterdir())
    assert files == ["entities.json", "manifest.json", "model.safetensors"]
    loaded = load_artifact(tmp_path, "m")
    assert loaded.manifest == manifest and loaded.entities is not None
    assert loaded.entities.index.slots == {e: i + 1 for i, e in enumerate(ENTITIES)}
    state = load_file(str(_version_dir(tmp_path, manifest) / "model.safetensors"))
    fallback_layers = [
        (state[f"layers.{i}.weight"][:1], state[f"layers.{i}.bias"][:1]) for i in range(4)
    ]
    x = torch.randn(3, spec.input_dim)
    with torch.inference_mode():
        assert torch.allclose(
            loaded.model(x),
            stacked_forward(fallback_layers, x, manifest.model, torch.zeros(3, dtype=torch.long)),
            atol=1e-6,
        )


def test_tampered_index_and_non_finite_weights_are_refused(tmp_path):
    spec = numeric_spec(3)
    manifest = publish_entity_set(tmp_path, spec, ENTITIES)
    index = _version_dir(tmp_path, manifest) / "entities.json"
    raw = json.loads(index.read_text())
    raw["thresholds"][3] = 1e-9  # silences nobody's alerts... unless checked
    index.write_text(json.dumps(raw))
    with pytest.raises(ArtifactInvalid, match=r"entities\.json: sha256"):
        load_artifact(tmp_path, "m")

    other = tmp_path / "other"
    manifest = publish_entity_set(other, spec, ENTITIES)
    vdir = _version_dir(other, manifest)
    state = load_file(str(vdir / "model.safetensors"))
    state["layers.1.weight"][4, 0, 0] = float("nan")
    save_file(state, str(vdir / "model.safetensors"))
    mpath = vdir / "manifest.json"
    meta = json.loads(mpath.read_text())
    meta["weights"]["sha256"] = hashlib.sha256(
        (vdir / "model.safetensors").read_bytes()
    ).hexdigest()
    mpath.write_text(json.dumps(meta))
    with pytest.raises(ArtifactInvalid, match=r"layers\.1\.weight is not finite in slot 4"):
        load_artifact(other, "m")


def test_weights_of_another_shape_are_refused(tmp_path):
    spec = numeric_spec(3)
    manifest = publish_entity_set(tmp_path, spec, ENTITIES)
    vdir = _version_dir(tmp_path, manifest)
    state = load_file(str(vdir / "model.safetensors"))
    state = {k: v[:-1].contiguous() for k, v in state.items()}  # one slot short of the index
    save_file(state, str(vdir / "model.safetensors"))
    meta = json.loads((vdir / "manifest.json").read_text())
    meta["weights"]["sha256"] = hashlib.sha256(
        (vdir / "model.safetensors").read_bytes()
    ).hexdigest()
    (vdir / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactInvalid, match="expected F32"):
        load_artifact(tmp_path, "m")


def test_bank_loads_on_demand_and_evicts_the_least_recently_used(tmp_path):
    spec = numeric_spec(3)
    publish_entity_set(tmp_path, spec, ENTITIES)
    weights = load_artifact(tmp_path, "m").entities.weights
    bank = EntityBank(weights, torch.device("cpu"), capacity=3)  # fallback + 2
    assert bank.room == 2 and bank.resident == 0
    rows = bank.place(np.array([0, 1, 2]))
    assert rows[0] == 0 and bank.stats.loads == 2 and bank.resident == 2
    bank.place(np.array([3]))  # evicts slot 1, the least recently used
    assert bank.stats.evictions == 1
    bank.place(np.array([2]))
    assert bank.stats.loads == 3  # 2 stayed resident
    bank.place(np.array([1]))  # 3 is now the LRU one
    assert (bank.stats.loads, bank.stats.evictions) == (4, 2)
    for slot in (1, 2):
        row = int(bank.place(np.array([slot]))[0])
        expected = weights.layers(np.array([slot]))
        for (pool_w, pool_b), (w, b) in zip(bank.pool, expected, strict=True):
            assert torch.equal(pool_w[row], w[0]) and torch.equal(pool_b[row], b[0])


def test_capacity_follows_the_memory_budget():
    cfg = tiny_config(numeric_spec(3))
    per_model = params_per_model(cfg) * 4
    assert capacity_for(cfg, 1000, per_model * 10) == 10
    assert capacity_for(cfg, 5, per_model * 10) == 5
    assert capacity_for(cfg, 1000, 1) == 2


def test_each_row_is_scored_by_its_own_entity_model_unknown_ones_by_the_fallback(tmp_path):
    spec = numeric_spec(3)
    thresholds = [0.1 * (i + 1) for i in range(7)]
    publish_entity_set(tmp_path, spec, ENTITIES, thresholds=thresholds)
    loaded = load_artifact(tmp_path, "m")
    rng = np.random.default_rng(0)
    cont = rng.normal(size=(40, 3)).astype(np.float32)
    cat = np.zeros((40, 0), dtype=np.int64)
    keys = [None if i % 7 == 0 else ("zz" if i % 5 == 0 else ENTITIES[i % 6]) for i in range(40)]
    routed = _scorer(loaded).score(cont, cat, keys)
    weights = loaded.entities.weights
    for i, key in enumerate(keys):
        slot = 0 if key in (None, "zz") else ENTITIES.index(key) + 1
        assert routed.slots[i] == slot and routed.thresholds[i] == thresholds[slot]
        model = autoencoder_from_slot(loaded.manifest.model, weights.layers(np.array([slot])))
        alone = Scorer(spec, model, torch.device("cpu")).score(cont[i : i + 1], cat[i : i + 1])
        assert routed.scores.scores[i] == pytest.approx(float(alone.scores[0]), rel=1e-5)
    assert routed.fallback.sum() == sum(k in (None, "zz") for k in keys)


def test_a_bank_smaller_than_the_batch_scores_the_same(tmp_path):
    spec = mixed_spec()
    publish_entity_set(tmp_path, spec, ENTITIES)
    loaded = load_artifact(tmp_path, "m")
    rng = np.random.default_rng(1)
    n = 50
    cont = rng.normal(size=(n, spec.n_continuous)).astype(np.float32)
    cat = rng.integers(0, 3, size=(n, spec.n_categorical))
    keys = [ENTITIES[i % 6] for i in range(n)]
    big = _scorer(loaded).score(cont, cat, keys)
    small_scorer = _scorer(loaded, capacity=3)
    small = small_scorer.score(cont, cat, keys)
    np.testing.assert_array_equal(big.scores.scores, small.scores.scores)
    np.testing.assert_array_equal(big.scores.top_index, small.scores.top_index)
    assert small_scorer.bank.stats.evictions > 0


def test_the_fallback_takes_no_room_a_batch_of_one_entity_and_unknowns_is_one_call(tmp_path):
    spec = numeric_spec(3)
    publish_entity_set(tmp_path, spec, ENTITIES[:1])
    scorer = _scorer(load_artifact(tmp_path, "m"), capacity=2)  # the fallback + one model
    slots = scorer.router.slots_of(["e0", None, "zz", "e0"] * 10)
    assert scorer._chunks(slots) == [(0, 40)]
