"""The store layer on file:// URLs: the object-store code path on the real local filesystem."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.contract import store
from pipeline.contract.artifact import latest_version, load_artifact
from pipeline.contract.exceptions import ArtifactNotFound, ConfigError
from tests.support.factories import publish_model


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the local cache of fetched versions
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return f"file://{tmp_path / 'store'}"


def test_url_store_publishes_manifest_last_and_loads_a_local_copy(url: str) -> None:
    manifest = publish_model(url)  # type: ignore[arg-type]
    assert latest_version(url, "m") == manifest.version
    loaded = load_artifact(url, "m")
    assert loaded.manifest == manifest
    assert loaded.path == store.cache_dir(url) / "m" / manifest.version
    assert not (store.cache_dir(url) / "m" / manifest.version).is_relative_to(url[7:])


def test_version_without_manifest_is_incomplete_and_never_served(url: str) -> None:
    good = publish_model(url)  # type: ignore[arg-type]
    half = Path(url[7:]) / "m" / "20990101T000000Z-aaaaaa"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(ArtifactNotFound, match="incomplete"):
        load_artifact(url, "m", half.name)
    assert not (store.cache_dir(url) / "m" / half.name).exists()
    assert load_artifact(url, "m").version == good.version


def test_local_cache_keeps_only_the_newest_fetched_versions(url: str) -> None:
    versions = []
    for seed in range(5):
        versions.append(publish_model(url, seed=seed).version)  # type: ignore[arg-type]
        load_artifact(url, "m")
    cached = sorted(p.name for p in (store.cache_dir(url) / "m").iterdir())
    assert cached == sorted(versions[-store.CACHED_VERSIONS :])


def test_downloads_abandoned_by_a_killed_process_are_removed(url: str) -> None:
    publish_model(url, seed=0)  # type: ignore[arg-type]
    load_artifact(url, "m")
    models = store.cache_dir(url) / "m"
    old, fresh = models / ".fetch-v0-dead", models / ".fetch-v1-live"
    for path in (old, fresh):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"part")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    publish_model(url, seed=1)  # type: ignore[arg-type]
    load_artifact(url, "m")
    assert not old.exists()
    assert fresh.exists()  # maybe another process's download in progress


def test_plain_paths_are_not_checked_and_bad_urls_name_the_setting(tmp_path: Path) -> None:
    store.check_access(tmp_path / "nowhere", "TRAINER_MODEL_STORE")  # created on first publish
    with pytest.raises(ConfigError, match=r"TRAINER_MODEL_STORE: .*no filesystem for 'nosuch'"):
        store.check_access("nosuch://bucket/x", "TRAINER_MODEL_STORE")
