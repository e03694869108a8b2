"""Locate the external tools the deploy tests run (installed by `make tools`).

A missing tool fails the test that needs it with the command that installs it: a deploy test
that silently skipped would look exactly like one that passed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run `make tools` (deploy/tools/install-test-tools.sh)"


def require_tool(name: str) -> str:
    """Absolute path of ``name`` from the venv's bin dir or PATH; fails the test if absent."""
    venv_bin = Path(sys.executable).parent
    found = shutil.which(name, path=str(venv_bin)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}", pytrace=False)
    return found
