"""``make test``'s two xdist workers keep every test of one ``xdist_group`` in one worker
(tests/support/xdist_groups.py): the tests that share the session's broker must not start a
second broker and cluster in the other worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

CONFTEST = 'pytest_plugins = ["tests.support.xdist_groups"]\n'

TESTS = """
import os
import time
from pathlib import Path

import pytest

OUT = Path(os.environ["GROUPS_OUT"])


def ran(name):
    (OUT / name).write_text(os.environ["PYTEST_XDIST_WORKER"])
    time.sleep(0.2)  # long enough that both workers are busy while the other tests run


@pytest.mark.parametrize("n", range(6))
@pytest.mark.xdist_group("broker")
def test_grouped(n):
    ran(f"grouped-{n}")


@pytest.mark.parametrize("n", range(6))
def test_free(n):
    ran(f"free-{n}")
"""


def test_the_tests_of_one_group_all_run_in_one_worker(tmp_path: Path) -> None:
    suite, out = tmp_path / "suite", tmp_path / "out"
    suite.mkdir()
    out.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_it.py").write_text(TESTS)
    env = {**os.environ, "GROUPS_OUT": str(out), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-q"]
    command += ["-p", "no:cacheprovider", str(suite)]
    proc = subprocess.run(
        command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    workers = {path.name: path.read_text() for path in out.iterdir()}
    assert len(workers) == 12, workers
    grouped = {workers[f"grouped-{n}"] for n in range(6)}
    assert len(grouped) == 1, workers
    # the other worker ran free tests meanwhile, so the group did not hold up the run
    assert {workers[f"free-{n}"] for n in range(6)} - grouped, workers
