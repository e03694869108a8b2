import json
import os
import pickle
import threading

import pytest
import torch

from pipeline.contract import artifact
from pipeline.contract.artifact import latest_version, load_artifact, set_latest
from pipeline.contract.exceptions import ArtifactInvalid, ArtifactNotFound
from tests.support.factories import (
    manifest_fields,
    mixed_spec,
    numeric_spec,
    publish_model,
    tiny_model,
)


def test_publish_then_load_round_trips_weights_and_manifest(tmp_path):
    spec = mixed_spec()
    manifest = publish_model(tmp_path, spec=spec, name="fraud", threshold=0.5)
    assert latest_version(tmp_path, "fraud") == manifest.version
    loaded = load_artifact(tmp_path, "fraud")
    assert loaded.manifest == manifest
    x = torch.randn(3, spec.input_dim)
    with torch.inference_mode():
        assert torch.allclose(loaded.model(x), tiny_model(spec)(x))
    files = sorted(p.name for p in (tmp_path / "fraud").iterdir())
    assert files == sorted(["LATEST", manifest.version])


def test_missing_model_is_not_found(tmp_path):
    with pytest.raises(ArtifactNotFound, match="no published model 'nope'"):
        load_artifact(tmp_path, "nope")


def _weights(tmp_path, manifest):
    return tmp_path / manifest.name / manifest.version / "model.safetensors"


def test_checksum_mismatch_is_refused(tmp_path):
    manifest = publish_model(tmp_path)
    path = _weights(tmp_path, manifest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactInvalid, match="sha256"):
        load_artifact(tmp_path, "m")


def _rewrite_with_checksum(tmp_path, manifest, payload: bytes) -> None:
    _weights(tmp_path, manifest).write_bytes(payload)
    mpath = tmp_path / manifest.name / manifest.version / "manifest.json"
    raw = json.loads(mpath.read_text())
    raw["weights"]["sha256"] = artifact.weights_bytes_sha256(_weights(tmp_path, manifest))
    mpath.write_text(json.dumps(raw))


def test_truncated_weights_are_refused_even_with_a_matching_checksum(tmp_path):
    manifest = publish_model(tmp_path)
    _rewrite_with_checksum(tmp_path, manifest, _weights(tmp_path, manifest).read_bytes()[:50])
    with pytest.raises(ArtifactInvalid):
        load_artifact(tmp_path, "m")


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_is_never_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = publish_model(tmp_path)
    _rewrite_with_checksum(tmp_path, manifest, pickle.dumps({"w": _Boom()}))
    with pytest.raises(ArtifactInvalid, match="not a safetensors file"):
        load_artifact(tmp_path, "m")
    assert not (tmp_path / "PWNED").exists()


def test_manifest_whose_spec_does_not_match_the_weights_is_refused(tmp_path):
    manifest = publish_model(tmp_path, spec=numeric_spec(4))
    mpath = tmp_path / "m" / manifest.version / "manifest.json"
    raw = json.loads(mpath.read_text())
    raw["features"] = json.loads(numeric_spec(5).model_dump_json())
    raw["model"]["input_dim"] = raw["model"]["output_dim"] = 5
    mpath.write_text(json.dumps(raw))
    with pytest.raises(ArtifactInvalid, match="do not fit"):
        load_artifact(tmp_path, "m")
    raw["model"]["input_dim"] = 4
    mpath.write_text(json.dumps(raw))
    with pytest.raises(ArtifactInvalid, match="input_dim=4"):
        load_artifact(tmp_path, "m")


def test_invalid_manifest_names_the_file(tmp_path):
    manifest = publish_model(tmp_path)
    (tmp_path / "m" / manifest.version / "manifest.json").write_text("{}")
    with pytest.raises(ArtifactInvalid, match=r"manifest\.json"):
        load_artifact(tmp_path, "m")


def test_non_finite_weights_fail_the_smoke_batch(tmp_path):
    spec = numeric_spec()
    model = tiny_model(spec)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    artifact.publish(tmp_path, model, manifest_fields(spec, model))
    with pytest.raises(ArtifactInvalid, match="non-finite"):
        load_artifact(tmp_path, "m")


def test_set_latest_rolls_back_and_refuses_unknown_versions(tmp_path):
    first = publish_model(tmp_path, seed=1)
    second = publish_model(tmp_path, seed=2)
    assert latest_version(tmp_path, "m") == second.version
    set_latest(tmp_path, "m", first.version)
    assert load_artifact(tmp_path, "m").version == first.version
    with pytest.raises(ArtifactNotFound):
        set_latest(tmp_path, "m", "20990101T000000Z-ffffff")


def test_reader_racing_the_publisher_never_sees_a_half_written_model(tmp_path):
    publish_model(tmp_path, seed=0)
    stop = threading.Event()
    errors: list[Exception] = []
    loads = 0

    def reader() -> None:
        nonlocal loads
        while not stop.is_set():
            try:
                load_artifact(tmp_path, "m")
                loads += 1
            except Exception as exc:  # any failure is the bug we look for
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    for seed in range(1, 25):
        publish_model(tmp_path, seed=seed)
    stop.set()
    thread.join()
    assert errors == []
    assert loads > 0


@pytest.mark.parametrize("how", ["absolute", "parent", "symlink"])
def test_weights_outside_the_version_directory_are_refused(tmp_path, how):
    manifest = publish_model(tmp_path)
    version_dir = tmp_path / manifest.name / manifest.version
    outside = tmp_path / "elsewhere.safetensors"
    _weights(tmp_path, manifest).rename(outside)  # intact weights, right checksum
    raw = json.loads((version_dir / "manifest.json").read_text())
    if how == "absolute":
        raw["weights"]["file"] = str(outside)
    elif how == "parent":
        raw["weights"]["file"] = "../../elsewhere.safetensors"
    else:
        (version_dir / "model.safetensors").symlink_to(outside)
    (version_dir / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactInvalid, match="is not a file inside the version directory"):
        load_artifact(tmp_path, manifest.name)
