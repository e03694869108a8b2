"""Broker faults on the local three-node cluster while real worker processes score a stream,
in both delivery modes, with every input record accounted for afterwards through the scores
topic (``pipeline.alert_consumers.audit``): nothing lost, and no duplicate in exactly-once mode.

- the leader of input partitions SIGKILLed mid-stream;
- the leader of the alert topic SIGKILLed mid-stream;
- the active KRaft controller SIGKILLed mid-stream;
- a broker frozen with SIGSTOP for longer than its session timeout, then resumed;
- the first broker of the worker's bootstrap list stopped, and the worker SIGKILLed and
  started again while that broker stays down;
- a rolling restart of all three brokers (the coordinators move at every step).

Topics have three replicas and min.insync.replicas 2 (the worker's defaults on three brokers),
so one broker down stops nothing. The leader faults spare the node that hosts the group and
transaction coordinators (the rolling restart takes every node down, the coordinators' too). The
stream starts once the worker is in its group and goes on until the worker resumed after the
fault: a fault that outlasts its stream would leave the worker idle, and an idle worker
commits nothing, which once passed for a stall (docs/reliability.md). The cluster is started
once per session; RELIABILITY_SCALE multiplies the rate.

The default run (CI) covers every fault in one mode, exactly-once (it checks for duplicates
too): the other mode of each is marked ``slow`` without a short form and runs with
``-m slow``. The same faults at a larger scale are marked ``slow``: every run (CI) executes
one of them (the input leader, exactly-once), which is the input leader's one mode in the
default run, so neither of its cases here runs by default; ``RELIABILITY_CLUSTER_LARGE=1``
runs every fault in both modes with about four times the records (docs/reliability.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.devstack.localcluster import LocalKafkaCluster
from tests.support.cluster import (
    Fault,
    Size,
    freeze_leader,
    kill_controller,
    kill_leader_of,
    restart_without_first_bootstrap,
    rolling_restart,
    run_fault,
)
from tests.support.faults import FULL_RUN_ONLY, SCALE, SCALED_TIMEOUT, Workers

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, SCALED_TIMEOUT]
MODES = ["at-least-once", "exactly-once"]

FAULTS: dict[str, tuple[str, Fault]] = {
    "input-leader": ("SIGKILL of the input partitions' leader", kill_leader_of(lambda s: s)),
    "alert-leader": (
        "SIGKILL of the alert topic's leader",
        kill_leader_of(lambda source: f"g-{source}-alerts"),
    ),
    "controller": ("SIGKILL of the active controller", kill_controller),
    # the cluster fences a broker after 6 s without a heartbeat
    "sigstop": ("broker frozen (SIGSTOP) 10 s", freeze_leader(10.0)),
    "bootstrap-down": (
        "worker restarted while its first bootstrap broker is down",
        restart_without_first_bootstrap,
    ),
    "rolling-restart": ("rolling restart of all three brokers", rolling_restart),
}
# records per second (RELIABILITY_SCALE multiplies), seconds of them scored before the fault,
# seconds streamed on after the worker resumed
DEFAULT = Size(rate=100 * SCALE, lead_s=2, tail_s=2)
LARGE = Size(rate=200 * SCALE, lead_s=5, tail_s=15)  # about four times the records
SHORT_FORM = Size(rate=150 * SCALE, lead_s=3, tail_s=6)
PAIRS = [(name, mode) for name in FAULTS for mode in MODES]
# The mode of each fault the default run leaves to ``-m slow`` (docs/reliability.md): the
# second mode of the faults whose handling does not depend on it. Exactly-once checks more
# (nothing lost and nothing twice), so it stays. The rolling restart's coordinator moves
# under an at-least-once commit are the coordinator kill's (test_cluster_transactions).
SECOND_MODE = {
    "input-leader": "at-least-once",
    "alert-leader": "at-least-once",
    "controller": "at-least-once",
    "sigstop": "at-least-once",
    "bootstrap-down": "at-least-once",
    "rolling-restart": "at-least-once",
}
# Faults whose default-run mode is the larger-scale short form below (more records, the
# same fault and mode), so neither of their cases of the default size runs by default
AT_LARGER_SCALE = {"input-leader"}
CASES = [
    pytest.param(
        name,
        mode,
        marks=[FULL_RUN_ONLY] if SECOND_MODE[name] == mode or name in AT_LARGER_SCALE else [],
    )
    for name, mode in PAIRS
]
LARGE_RUN = bool(os.environ.get("RELIABILITY_CLUSTER_LARGE"))
LARGE_CASES = (
    PAIRS
    if LARGE_RUN
    else [("input-leader", "exactly-once")]  # the short form every run (CI) executes
)


@pytest.mark.parametrize(("name", "delivery"), CASES)
def test_a_cluster_fault_loses_nothing(
    cluster: LocalKafkaCluster, tmp_path: Path, workers: Workers, name: str, delivery: str
) -> None:
    scenario, fault = FAULTS[name]
    run_fault(cluster, tmp_path, workers, delivery, fault, scenario, DEFAULT)


@pytest.mark.slow
@pytest.mark.timeout(int(900 * max(1.0, SCALE)))
@pytest.mark.parametrize(("name", "delivery"), LARGE_CASES)
def test_a_cluster_fault_at_a_larger_scale_loses_nothing(
    cluster: LocalKafkaCluster, tmp_path: Path, workers: Workers, name: str, delivery: str
) -> None:
    scenario, fault = FAULTS[name]
    size = LARGE if LARGE_RUN else SHORT_FORM
    run_fault(cluster, tmp_path, workers, delivery, fault, f"{scenario}, larger", size)
