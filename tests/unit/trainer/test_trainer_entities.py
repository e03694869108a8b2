"""trainer fit --entity-column: one model per entity plus a fallback, on real Parquet data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from pipeline.contract.artifact import load_artifact
from pipeline.contract.entity_scoring import open_entity_scorer
from pipeline.contract.exceptions import ConfigError
from pipeline.contract.tabular import encode_record_batch
from pipeline.devstack.fleet import fleet_frame, fleet_stream
from tests.conftest import one_torch_thread
from trainer.evaluate import EvaluationRequest, evaluate
from trainer.fit import fit
from trainer.settings import load_trainer_settings
from trainer.split import SplitOptions, split_indices

pytestmark = pytest.mark.usefixtures("torch_one_thread")
MACHINES = 6


def _settings(root: Path, data: Path, **kw: object):
    base = {
        "data": str(data),
        "model_store": str(root / "store"),
        "name": "fleet",
        "id_column": "reading_id",
        "entity_column": "machine_id",
        "min_entity_rows": 300,
        "entity_epochs": 30,
        "epochs": 10,
        "batch_size": 256,  # the fallback's cost as before the row-sized default batch
        "device": "cpu",
        "seed": 3,
    }
    return load_trainer_settings(**(base | kw))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Six machines with ~1,000 rows each, plus one thin machine with 40 rows."""
    root = tmp_path_factory.mktemp("fleet")
    frame = fleet_frame(6000, MACHINES, seed=1)
    thin = fleet_frame(40, MACHINES, seed=2, start_id=10_000).assign(machine_id="press-thin")
    data = root / "normal.parquet"
    pd.concat([frame, thin], ignore_index=True).to_parquet(data)
    with one_torch_thread():  # module-scoped: torch_one_thread is not set up yet
        manifest = fit(_settings(root, data))
    return root, data, manifest


def test_every_entity_with_enough_rows_gets_its_model_the_rest_the_fallback(fleet):
    root, _, manifest = fleet
    info = manifest.entities
    assert info is not None and info.column == "machine_id"
    assert info.models == MACHINES and info.fitted == MACHINES and info.thin_entities == 1
    loaded = load_artifact(root / "store", "fleet")
    index = loaded.entities.index
    assert index.entities[0] is None  # slot 0: the fallback
    assert sorted(str(e) for e in index.entities[1:]) == [f"press-{i:03d}" for i in range(MACHINES)]
    assert "machine_id" not in manifest.features.column_names  # not a feature
    assert manifest.training.model_dump()["entity_models"] == MACHINES
    assert manifest.training.model_dump()["entity_rows_per_s"] > 0
    assert set(index.fitted_in) == {manifest.version}


def _parts(data: Path) -> dict[str, np.ndarray]:
    """The single model's three-way split of the same rows (trainer.split, default shares)."""
    return split_indices(pq.read_table(data), SplitOptions(seed=3))


def test_each_threshold_is_the_quantile_of_its_own_calibration_rows(fleet):
    root, data, manifest = fleet
    loaded = load_artifact(root / "store", "fleet")
    spec = manifest.features
    table = pd.read_parquet(data)
    held = _parts(data)["calibrate"]

    rb = pa.RecordBatch.from_pandas(table.iloc[held], preserve_index=False)
    cont, cat = encode_record_batch(rb, spec)
    keys = table.machine_id.iloc[held].tolist()
    assert loaded.entities is not None
    scorer = open_entity_scorer(spec, loaded.entities, torch.device("cpu"), top_k=0)
    routed = scorer.score(cont, cat, keys)
    assert routed.slots is not None
    index = loaded.entities.index
    for slot in range(1, len(index.entities)):
        own = routed.scores.scores[routed.slots == slot]
        assert index.calibration_rows[slot] == len(own)
        k = int(np.ceil((len(own) + 1) * 0.99))  # conformal rank (trainer.calibration)
        assert index.thresholds[slot] == pytest.approx(float(np.sort(own)[min(k, len(own)) - 1]))
    assert index.thresholds[0] == manifest.threshold.value  # the fallback's, over all rows
    thin_rows = routed.slots[np.array(keys) == "press-thin"]
    assert thin_rows.size and (thin_rows == 0).all()


def test_rows_that_select_an_entity_model_never_calibrate_it(fleet):
    """The same three parts as a single model: fit, select (early stopping, best epoch),
    calibrate; the index counts fitting and calibration rows, the rest selected."""
    root, data, _ = fleet
    entities = load_artifact(root / "store", "fleet").entities
    assert entities is not None
    index = entities.index
    machines = pd.read_parquet(data).machine_id.to_numpy()
    parts = _parts(data)
    for slot, entity in enumerate(index.entities):
        if entity is None:
            continue
        counts = {name: int((machines[rows] == entity).sum()) for name, rows in parts.items()}
        assert counts["select"] > 0
        assert (index.train_rows[slot], index.calibration_rows[slot]) == (
            counts["fit"],
            counts["calibrate"],
        ), entity


def test_refitting_some_entities_reuses_every_other_model(fleet, tmp_path):
    root, data, base = fleet
    store = tmp_path / "store"
    store.mkdir()
    import shutil

    shutil.copytree(root / "store" / "fleet", store / "fleet")
    refit = fit(_settings(tmp_path, data, entities="press-002,press-004", seed=9, entity_epochs=5))
    assert refit.entities.base_version == base.version and refit.entities.fitted == 2
    old = load_artifact(store, "fleet", base.version)
    new = load_artifact(store, "fleet", refit.version)
    assert new.entities.index.entities == old.entities.index.entities
    old_w = load_file(str(old.path / "model.safetensors"))
    new_w = load_file(str(new.path / "model.safetensors"))
    slots = old.entities.index.slots
    refitted = {slots["press-002"], slots["press-004"]}
    for name, tensor in new_w.items():
        for slot in range(len(old.entities.index.entities)):
            same = torch.equal(tensor[slot], old_w[name][slot])
            assert same == (slot not in refitted), (name, slot)
    fitted_in = new.entities.index.fitted_in
    assert [fitted_in[s] for s in sorted(refitted)] == [refit.version] * 2
    assert fitted_in.count(base.version) == len(fitted_in) - 2
    kept = [s for s in range(len(fitted_in)) if s not in refitted]
    assert [new.entities.index.thresholds[s] for s in kept] == [
        old.entities.index.thresholds[s] for s in kept
    ]
    assert new.manifest.features == old.manifest.features


def test_per_machine_models_beat_the_global_model_on_per_machine_anomalies(fleet, tmp_path):
    root, data, _ = fleet
    stream, injected = fleet_stream(1200, 120, MACHINES, seed=5)
    labelled = tmp_path / "labelled.parquet"
    stream.assign(is_anomaly=stream.reading_id.isin(injected)).to_parquet(labelled)
    fit(_settings(root, data, name="global", entity_column=None, ignore_columns="machine_id"))

    def auc(name: str) -> float:
        request = EvaluationRequest(
            data=str(labelled),
            model_store=str(root / "store"),
            name=name,
            label_column="is_anomaly",
            device="cpu",
        )
        return evaluate(request).roc_auc

    per_machine, global_ = auc("fleet"), auc("global")
    assert per_machine > global_ + 0.05, (per_machine, global_)


def test_entity_models_must_stack(tmp_path, fleet):
    _, data, _ = fleet
    with pytest.raises(ConfigError, match="ae or dae"):
        fit(_settings(tmp_path, data, model="vae"))


def test_entity_options_without_an_entity_column_fail_naming_the_env_var():
    for bad in ({"entities": "a,b"}, {"base_version": "v1"}):
        with pytest.raises(ConfigError, match=r"TRAINER_(ENTITIES|BASE_VERSION).*--entity-column"):
            load_trainer_settings(**bad)


def test_splitting_entity_models_by_their_own_entity_column_is_refused():
    with pytest.raises(ConfigError, match=r"split_by .*'machine_id'.* is the entity column"):
        load_trainer_settings(entity_column="machine_id", split_by="machine_id")
