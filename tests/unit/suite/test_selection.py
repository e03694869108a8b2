"""What the default run (``make test``, CI) selects: every cluster fault in one delivery
mode (a case of the fault test, or its larger-scale short form), the second mode of a fault
only with ``-m slow`` (tests/conftest.py), and the ``slow`` tests that have a short form in
both."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

ROOT = Path(__file__).resolve().parents[3]
FAULTS_FILE = "tests/integration/cluster/test_cluster_faults.py"
FAULT_TEST = f"{FAULTS_FILE}::test_a_cluster_fault_loses_nothing"
LARGER_TEST = f"{FAULTS_FILE}::test_a_cluster_fault_at_a_larger_scale_loses_nothing"


def collected(*args: str) -> list[str]:
    """Node ids pytest selects for ``args``, collected in a fresh process (nothing runs)."""
    (ids,) = collected_at_once(args)
    return ids


def collected_at_once(*selections: tuple[str, ...]) -> list[list[str]]:
    """``collected`` for each of ``selections``, the processes side by side: each spends
    seconds importing torch and the test modules, one core each on two."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                subprocess.Popen([*command, *args], cwd=ROOT, stdout=PIPE, stderr=PIPE, text=True)
            )
            for args in selections
        ]
        for proc in procs:
            stack.callback(proc.kill)  # first on the way out: no-op for one that exited
        outputs = [proc.communicate(timeout=120) for proc in procs]
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err
        results.append([line for line in out.splitlines() if "::" in line])
    return results


def faults_in(ids: list[str]) -> dict[str, set[str]]:
    """fault name -> the delivery modes it runs in, from ids like ``...[sigstop-exactly-once]``."""
    modes: dict[str, set[str]] = {}
    for node in ids:
        case = node.partition("[")[2].rstrip("]")
        for mode in ("at-least-once", "exactly-once"):
            if case.endswith(f"-{mode}"):
                modes.setdefault(case.removesuffix(f"-{mode}"), set()).add(mode)
    return modes


def test_the_default_run_covers_every_cluster_fault_in_one_mode_and_slow_the_other() -> None:
    default, slow = collected_at_once(
        (FAULTS_FILE, "tests/integration/reliability"), (FAULTS_FILE, "-m", "slow")
    )
    everything = faults_in([n for n in default + slow if n.startswith(FAULT_TEST + "[")])
    # a fault's one mode in the default run is a case of the fault test or, for a fault it
    # leaves out in both modes, the larger-scale short form (more records, the same fault)
    here = faults_in([n for n in default if n.startswith(FAULT_TEST + "[")])
    larger = faults_in([n for n in default if n.startswith(LARGER_TEST + "[")])
    assert not here.keys() & larger.keys(), (here, larger)  # never both: one mode per fault
    by_default = here | larger
    assert by_default.keys() == everything.keys()
    assert all(modes == {"at-least-once", "exactly-once"} for modes in everything.values())
    assert all(len(modes) == 1 for modes in by_default.values()), by_default
    # the slow tests with a short form stay in the default run
    assert f"{LARGER_TEST}[input-leader-exactly-once]" in default
    assert any("test_the_broker_restarting_mid_stream_loses_nothing" in n for n in default)


def test_a_second_mode_named_by_node_id_runs() -> None:
    node = f"{FAULT_TEST}[sigstop-at-least-once]"
    assert collected(node) == [node]
