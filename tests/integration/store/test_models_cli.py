"""``python -m trainer models list|prune`` on a real S3 server and on a local directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.contract import store
from pipeline.contract.artifact import load_artifact
from tests.support.cli import run_module
from tests.support.factories import publish_model


def _models(*args: str, cwd: Path) -> tuple[int, list[str], str]:
    done = run_module("trainer", "models", *args, env=dict(os.environ), cwd=cwd, timeout=120)
    return done.returncode, done.stdout.splitlines(), done.stderr


@pytest.mark.parametrize("where", ["s3", "directory"])
def test_prune_keeps_the_newest_latest_and_incomplete_versions(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    location = request.getfixturevalue("s3_store") if where == "s3" else str(tmp_path / "store")
    versions = [publish_model(location, seed=s).version for s in range(4)]  # type: ignore[arg-type]
    fs, root = store.filesystem(location)
    fs.makedirs(f"{root}/m/{versions[0]}-partial", exist_ok=True)  # a publish that died
    fs.pipe_file(f"{root}/m/{versions[0]}-partial/model.safetensors", b"half")  # no manifest
    opts = ("--model-store", location, "--name", "m")

    code, lines, err = _models("list", *opts, cwd=tmp_path)
    assert code == 0, err
    listed = [json.loads(line) for line in lines]
    assert [v["version"] for v in listed if v["complete"]] == versions
    assert [v["version"] for v in listed if v["latest"]] == [versions[-1]]
    assert [v["version"] for v in listed if not v["complete"]] == [f"{versions[0]}-partial"]

    code, lines, _ = _models("prune", *opts, "--keep", "2", "--dry-run", cwd=tmp_path)
    assert (code, lines) == (0, versions[:2])
    assert len(store.list_versions(location, "m")) == 5  # dry run deleted nothing

    code, lines, err = _models("prune", *opts, "--keep", "2", cwd=tmp_path)
    assert (code, lines) == (0, versions[:2]), err
    left = [v.version for v in store.list_versions(location, "m")]
    assert left == [*versions[2:], f"{versions[0]}-partial"]
    assert load_artifact(location, "m").version == versions[-1]
    assert load_artifact(location, "m", versions[2]).version == versions[2]
