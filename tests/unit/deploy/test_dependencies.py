"""Dependencies: what a fresh install gets is pinned, and the build prints no deprecation.

``make install`` (so ``make demo`` and ``make test``) and the Docker image install with ``-c
constraints.txt``: a new release of any dependency cannot change a fresh install. These tests
hold that promise: every dependency and extra of pyproject.toml has an exact pin that its
specifier allows, the installers use the file, the venv holds what it pins, and kafka-python,
whose private internals the code uses, is held to the 3.0 series.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.tools import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements() -> list[Requirement]:
    """Every requirement of the project: dependencies and every extra."""
    project = PYPROJECT["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts.extend(extra)
    return [Requirement(t) for t in texts]


def pins() -> dict[str, Version]:
    pinned: dict[str, Version] = {}
    for number, raw in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        assert match, f"constraints.txt:{number}: not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pinned, f"constraints.txt:{number}: {name} pinned twice"
        pinned[name] = Version(match.group(2))
    return pinned


def test_every_dependency_and_extra_has_an_exact_pin_its_specifier_allows():
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} (pyproject.toml) has no pin in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, which {req} does not allow"
        )


def test_kafka_python_is_held_to_the_series_whose_internals_the_code_uses():
    (req,) = [r for r in requirements() if canonicalize_name(r.name) == "kafka-python"]
    assert req.specifier.contains("3.0.12")
    assert not req.specifier.contains("3.1.0"), "kafka-python needs an upper bound below 3.1"
    assert not req.specifier.contains("3.0.11")


def test_make_install_and_the_image_install_from_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    install = [
        line for line in makefile.splitlines() if "$(BIN)/python -m pip install -q -" in line
    ]
    assert install and all("-c constraints.txt" in line for line in install), install
    assert re.search(r"^\$\(STAMP\):.*constraints\.txt", makefile, re.MULTILINE), (
        "the venv must be rebuilt when constraints.txt changes"
    )
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md constraints.txt" in dockerfile
    assert "pip install -c constraints.txt --upgrade pip" in dockerfile
    assert "pip install -c constraints.txt --build-constraint constraints.txt ." in dockerfile


def test_the_venv_holds_exactly_what_the_constraints_pin():
    """Every distribution ``make install`` put in the venv, pip and setuptools (the build
    backend) included, at its pinned version: nothing in a fresh install floats."""
    pinned = pins()
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name == "anomaly-pipeline":
            continue
        assert name in pinned, f"{name} {dist.version} is installed but not pinned"
        assert Version(dist.version) == pinned[name], (
            f"{name} {dist.version} installed, constraints.txt pins {pinned[name]} "
            "(run make install)"
        )
    for tool in ("pip", "setuptools"):
        assert tool in pinned, f"{tool} is part of a fresh install: pin it"


def test_make_lock_pins_pip_and_setuptools_too():
    lock = (ROOT / "Makefile").read_text().split("\nlock:")[1]
    assert "pip freeze --all" in lock


def test_building_the_wheel_prints_no_deprecation_warning(tmp_path: Path):
    """setuptools warns (and will refuse from 2027) about a license given as a TOML table;
    the build backend's own output is where it shows."""
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for package in ("pipeline", "trainer"):
        shutil.copytree(
            ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps",
         "--no-index", "-w", str(tmp_path / "out"), str(tree)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    warnings = [
        line
        for line in output.splitlines()
        if re.search(r"deprecat", line, re.IGNORECASE) or "Warning:" in line
    ]
    assert not warnings, "\n".join(warnings)
    assert list((tmp_path / "out").glob("anomaly_pipeline-*.whl"))


def test_the_build_backend_is_new_enough_for_an_spdx_license():
    requires = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    (req,) = [r for r in requires if canonicalize_name(r.name) == "setuptools"]
    assert not req.specifier.contains("76.9"), "SPDX license strings need setuptools>=77"
    assert isinstance(PYPROJECT["project"]["license"], str)
