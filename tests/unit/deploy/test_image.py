"""The runtime image leaves the dev stack out, and everything it runs still works without it.

There is no Docker engine here, so the test rebuilds the runtime target's file set the way the
Dockerfile does (copy ``pipeline`` and ``trainer``, remove ``pipeline/devstack``) and runs the
image's commands against it with a fresh interpreter.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def runtime_stage() -> str:
    return DOCKERFILE.split("FROM runtime AS devstack")[0]


def test_the_runtime_stage_removes_the_dev_stack_and_the_devstack_stage_adds_it_back():
    assert re.search(r"rm -rf pipeline/devstack", runtime_stage())
    devstack = DOCKERFILE.split("FROM runtime AS devstack")[1]
    assert "COPY pipeline/devstack ./pipeline/devstack" in devstack


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image")
    for line in runtime_stage().splitlines():
        match = re.match(r"COPY (pipeline|trainer) \./\1$", line)
        if match:
            shutil.copytree(ROOT / match[1], root / match[1])
    shutil.rmtree(root / "pipeline" / "devstack")
    assert (root / "pipeline" / "worker").is_dir() and (root / "trainer").is_dir()
    return root


def run(tree: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -S``: no site hooks, so this checkout's editable install (which would find
    pipeline.devstack here) stays out; the installed dependencies come in by path."""
    path = os.pathsep.join([str(tree), *site.getsitepackages()])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1", **env}
    return subprocess.run(
        [sys.executable, "-S", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_runtime_modules_import_without_the_dev_stack(image_tree):
    code = (
        "import sys, pipeline.worker.loop, pipeline.alert_consumers.sinks, "
        "pipeline.alert_consumers.audit, pipeline.offline.batch_scoring, trainer.fit, "
        "trainer.evaluate, pipeline.cli.run, pipeline.cli.alerts; "
        "assert pipeline.__file__.startswith(sys.argv[1]), pipeline.__file__; "
        "assert not [m for m in sys.modules if m.startswith('pipeline.devstack')]"
    )
    done = run(image_tree, "-c", code, str(image_tree))
    assert done.returncode == 0, done.stderr


def test_the_cli_lists_every_command_and_the_worker_starts_far_enough_to_check_settings(
    image_tree,
):
    listed = run(image_tree, "-m", "pipeline", "--help")
    assert listed.returncode == 0, listed.stderr
    assert "run" in listed.stdout and "not installed here" in listed.stdout
    bad = run(image_tree, "-m", "pipeline", "run", PIPELINE_BATCH__MAX_SIZE="0")
    assert bad.returncode == 2 and "PIPELINE_BATCH__MAX_SIZE" in bad.stderr, bad.stderr


@pytest.mark.parametrize("command", [["kafka", "status"], ["demo"], ["sample-data", "--out", "x"]])
def test_dev_stack_commands_say_they_are_not_installed(image_tree, command):
    done = run(image_tree, "-m", "pipeline", *command)
    assert done.returncode == 2
    assert "pipeline.devstack" in done.stderr and "Traceback" not in done.stderr
