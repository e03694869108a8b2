"""The model store on a real S3 server: ordered publish, incomplete versions, races, failures."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from pipeline.contract import store
from pipeline.contract.artifact import latest_version, load_artifact, set_latest
from pipeline.contract.exceptions import (
    ArtifactInvalid,
    ArtifactNotFound,
    ConfigError,
    StoreUnavailable,
)
from pipeline.devstack.locals3 import S3Record
from tests.integration.store.conftest import use_server
from tests.support.cli import run_module
from tests.support.factories import numeric_spec, publish_model, tiny_model


def test_publish_then_load_round_trips_through_s3(s3_store: str) -> None:
    spec = numeric_spec()
    manifest = publish_model(s3_store, spec=spec, name="fraud", threshold=0.5)  # type: ignore[arg-type]

    assert latest_version(s3_store, "fraud") == manifest.version
    loaded = load_artifact(s3_store, "fraud")
    assert loaded.manifest == manifest
    x = torch.randn(3, spec.input_dim)
    with torch.inference_mode():
        assert torch.allclose(loaded.model(x), tiny_model(spec)(x))
    fs, root = store.filesystem(s3_store)
    found = fs.find(f"{root}/fraud", detail=True)
    objects = sorted(
        k.removeprefix(f"{root}/fraud/") for k, v in found.items() if v["type"] == "file"
    )
    v = manifest.version
    assert objects == sorted(["LATEST", f"{v}/manifest.json", f"{v}/model.safetensors"])
    assert [v.version for v in store.list_versions(s3_store, "fraud")] == [manifest.version]


def test_half_written_version_is_never_served(s3_store: str) -> None:
    good = publish_model(s3_store, seed=1)  # type: ignore[arg-type]
    fs, root = store.filesystem(s3_store)
    # a trainer that died after its weights but before the manifest (the completion marker)
    weights = fs.cat_file(f"{root}/m/{good.version}/model.safetensors")
    fs.pipe_file(f"{root}/m/20991231T000000Z-dead00/model.safetensors", weights)

    with pytest.raises(ArtifactNotFound, match="incomplete"):
        load_artifact(s3_store, "m", "20991231T000000Z-dead00")
    with pytest.raises(ArtifactNotFound, match="no manifest"):
        set_latest(s3_store, "m", "20991231T000000Z-dead00")
    assert load_artifact(s3_store, "m").version == good.version
    listed = {v.version: v.complete for v in store.list_versions(s3_store, "m")}
    assert listed == {good.version: True, "20991231T000000Z-dead00": False}


def test_a_corrupted_object_is_refused_by_its_checksum(s3_store: str) -> None:
    manifest = publish_model(s3_store)  # type: ignore[arg-type]
    fs, root = store.filesystem(s3_store)
    path = f"{root}/m/{manifest.version}/model.safetensors"
    data = bytearray(fs.cat_file(path))
    data[-1] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    with pytest.raises(ArtifactInvalid, match="sha256"):
        load_artifact(s3_store, "m")


def test_publish_racing_a_reader_only_ever_serves_complete_versions(s3_store: str) -> None:
    first = publish_model(s3_store, seed=0)  # type: ignore[arg-type]
    published = [first.version]
    done = threading.Event()

    def publisher() -> None:
        try:
            for seed in range(1, 6):
                published.append(publish_model(s3_store, seed=seed).version)  # type: ignore[arg-type]
        finally:
            done.set()

    thread = threading.Thread(target=publisher)
    thread.start()
    seen: list[str] = []
    while not done.is_set() or len(seen) < 3:
        loaded = load_artifact(s3_store, "m")  # raises if it ever meets a partial version
        seen.append(loaded.version)
    thread.join()

    assert set(seen) <= set(published)
    order = [published.index(v) for v in seen]
    assert order == sorted(order)  # LATEST only ever moves forward
    assert len(set(seen)) >= 2  # the reader really overlapped with publishing
    assert latest_version(s3_store, "m") == published[-1]


def test_wrong_credentials_fail_at_start_naming_the_setting(
    s3_store: str, local_s3: S3Record, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    publish_model(s3_store)  # type: ignore[arg-type]
    secret = "not-the-credential-0451"
    use_server(monkeypatch, local_s3, AWS_SECRET_ACCESS_KEY=secret)
    with pytest.raises(ConfigError, match=r"PIPELINE_MODEL_STORE: .*access denied"):
        store.check_access(s3_store, "PIPELINE_MODEL_STORE")

    env = {**os.environ, "PIPELINE_MODEL_STORE": s3_store, "PIPELINE_MODEL_NAME": "m"}
    env |= {"PIPELINE_METRICS_PORT": "0", "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    done = run_module("pipeline", "run", env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "PIPELINE_MODEL_STORE" in done.stderr
    assert "access denied" in done.stderr
    assert secret not in done.stderr + done.stdout

    data = tmp_path / "rows.parquet"
    data.write_bytes(b"")  # never read: the store is checked before the data
    env = {**os.environ, "TRAINER_MODEL_STORE": s3_store, "TRAINER_DATA": str(data)}
    done = run_module("trainer", "fit", env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "TRAINER_MODEL_STORE" in done.stderr
    assert secret not in done.stderr + done.stdout


def test_unreachable_store_is_unavailable_not_missing(
    monkeypatch: pytest.MonkeyPatch, local_s3: S3Record
) -> None:
    use_server(monkeypatch, local_s3, AWS_ENDPOINT_URL="http://127.0.0.1:1")
    with pytest.raises(StoreUnavailable, match="reading m/LATEST"):
        store.read_latest("s3://models/anything", "m")


def test_unknown_bucket_fails_at_start_but_an_empty_prefix_does_not(s3_store: str) -> None:
    store.check_access(s3_store, "PIPELINE_MODEL_STORE")  # nothing published there yet
    with pytest.raises(ConfigError, match=r"PIPELINE_MODEL_STORE: .*no bucket 'no-such-bucket'"):
        store.check_access("s3://no-such-bucket/models", "PIPELINE_MODEL_STORE")
