"""Running the project's commands as a user does: ``python -m <package> ...`` in a new process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run_module(
    *argv: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m argv[0] argv[1:]`` with this interpreter; output captured as text, the exit
    code left to the caller's assertions."""
    return subprocess.run(
        [sys.executable, "-m", *argv],
        env=None if env is None else dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
