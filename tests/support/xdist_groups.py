"""``--dist loadgroup`` that works on pytest 9.2: tests with one ``xdist_group`` run in one worker.

pytest-xdist 3.8's own loadgroup scheduler finds a test's group in a suffix (``@group``) that
its worker hook appends to ``item._nodeid``. pytest 9.2 builds node ids from ``item._id``
instead, so the suffix never appears, every test is its own unit of work, and the tests that
share the session's broker spread over both workers, each starting a broker and a three-node
cluster of its own (and the fault tests, timed to a loaded machine, flake).

Here each worker writes the group of every marked test it collected to a file the controller
named (``pytest_configure_node``), before it reports its collection; the controller's
scheduler (``pytest_xdist_make_scheduler``) reads it when it cuts the collection into units of
work, which it does only once every worker has reported. A plugin: ``pytest_plugins =
["tests.support.xdist_groups"]`` in a top-level conftest.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling

GROUPS_FILE_KEY = "xdist_groups_file"  # workerinput: where that worker writes its groups
_DIRECTORY = pytest.StashKey[Path]()


def group_of(item: pytest.Item) -> str | None:
    """The test's ``xdist_group`` name (as xdist names it: several groups joined by "_")."""
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    return "_".join(sorted(names)) or None


@pytest.hookimpl(trylast=True)  # after the conftests have marked the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker under ``--dist loadgroup``: record {node id: group} for the
    controller."""
    path = getattr(config, "workerinput", {}).get(GROUPS_FILE_KEY)
    if path is None:
        return
    groups = {item.nodeid: group for item in items if (group := group_of(item)) is not None}
    Path(path).write_text(json.dumps(groups))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Controller: give each worker its own file to write its groups to."""
    config: pytest.Config = node.config
    if config.getvalue("dist") != "loadgroup":
        return
    if _DIRECTORY not in config.stash:
        config.stash[_DIRECTORY] = Path(tempfile.mkdtemp(prefix="xdist-groups-"))
    node.workerinput[GROUPS_FILE_KEY] = str(config.stash[_DIRECTORY] / f"{node.gateway.id}.json")


class FileGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]  # xdist is untyped
    """xdist's loadgroup, with each test's group read from the workers' files."""

    def __init__(self, config: pytest.Config, directory: Path, log: Any = None) -> None:
        super().__init__(config, log)
        self._directory = directory
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:  # first call: every worker has reported its collection
            self._groups = {}
            for path in sorted(self._directory.glob("*.json")):
                self._groups.update(json.loads(path.read_text()))
        return self._groups.get(nodeid) or super()._split_scope(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Controller: the scheduler for ``--dist loadgroup`` (None: xdist's own for the rest)."""
    if config.getvalue("dist") != "loadgroup" or _DIRECTORY not in config.stash:
        return None
    return FileGroupScheduling(config, config.stash[_DIRECTORY], log)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Controller, at the end of the run: the workers' files are no longer read."""
    directory = config.stash.get(_DIRECTORY, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
