"""Broker faults on the local three-node cluster while real worker processes score a stream,
with every input record accounted for afterwards through the scores topic
(``pipeline.alert_consumers.audit``): nothing lost, and no duplicate in exactly-once mode.

- the leader of input partitions SIGKILLed mid-stream (both delivery modes);
- the leader of the alert topic SIGKILLed mid-stream;
- the active KRaft controller SIGKILLed mid-stream;
- a broker frozen with SIGSTOP for longer than its session timeout, then resumed.

Topics have three replicas and min.insync.replicas 2 (the worker's defaults on three brokers),
so one broker down stops nothing. The node that hosts the group and transaction coordinators
is spared by the input-leader fault (its loss is a separate fault, see docs/reliability.md).
Sizes scale with RELIABILITY_SCALE; the cluster is started once per session."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.devstack.localcluster import LocalKafkaCluster
from pipeline.devstack.localkafka import open_admin
from tests.support.faults import (
    SCALED_TIMEOUT,
    OffsetProbe,
    SteadyProducer,
    WorkerProcess,
    Workers,
    assert_accounted,
    record_result,
    scaled,
    worker_env,
)
from tests.support.kafka import create_topic
from tests.support.workers import publish, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, SCALED_TIMEOUT]
MODES = ["at-least-once", "exactly-once"]
STREAM_S = 10.0
INTERNAL = ("__consumer_offsets", "__transaction_state")


def leaders(admin: Any, topics: list[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the broker leading it now."""
    return {
        (d["name"], p["partition_index"]): p["leader_id"]
        for d in admin.describe_topics(topics)
        for p in d["partitions"]
    }


def coordinator_nodes(admin: Any) -> set[int]:
    """Brokers leading the offsets and transaction-state partitions (the coordinators)."""
    existing = set(admin.list_topics())
    return set(leaders(admin, [t for t in INTERNAL if t in existing]).values())


def sigkill(cluster: LocalKafkaCluster, node_id: int) -> None:
    pid = cluster.node(node_id).pid
    assert pid is not None, f"node {node_id} is not running"
    os.kill(pid, signal.SIGKILL)


def run_fault(
    cluster: LocalKafkaCluster,
    tmp_path: Any,
    workers: Workers,
    delivery: str,
    inject: Callable[[Any, str], tuple[str, Callable[[], object]]],
    scenario: str,
) -> None:
    """Stream into a fresh 3-partition topic, ``inject(admin, source)`` a fault once the
    worker scores (it returns what it did and how to undo it after the stream), and account
    for every record."""
    publish(tmp_path)
    bootstrap = cluster.bootstrap
    with open_admin(bootstrap) as admin:
        source = create_topic(admin, 3, replication=3, config={"min.insync.replicas": "2"})
    group = f"g-{source}"
    env = worker_env(bootstrap, tmp_path, source, group=group, delivery=delivery)
    config = {"bootstrap_servers": bootstrap}
    total = scaled(1200)
    producer = SteadyProducer(config, source, total, rate=total / STREAM_S)
    probe = OffsetProbe(config, group)
    try:
        worker = workers.start(env, "worker")
        wait_for(lambda: worker.consumed() >= min(200, total // 5), 120, "first records scored")
        with open_admin(bootstrap) as admin:
            fault, recover = inject(admin, source)
        injected = time.monotonic()
        # resumed: three more batches committed (output durable) than at the fault; counted by
        # the worker itself, since asking the group coordinator races its failover
        at_fault = commits(worker)
        wait_for(lambda: commits(worker) >= at_fault + 3, 180, "commits resume")
        resumed_s = time.monotonic() - injected
        sent = producer.finish()
        recover()
        wait_for(lambda: probe.all_committed(source), 180, "every record committed")
        assert worker.stop() == 0, worker.tail()
    finally:
        producer.abort()
        probe.close()
    exactly_once = delivery == "exactly-once"
    report = assert_accounted(bootstrap, source, group, total, no_duplicates=exactly_once)
    assert sent == total
    record_result(
        f"cluster: {scenario} ({delivery})",
        sent=total, faults=fault, lost=report.lost,
        duplicates=report.duplicates, resumed_after_s=round(resumed_s, 1),
    )  # fmt: skip


def commits(worker: WorkerProcess) -> float:
    return worker.metric("pipeline_commits_total")


def leader_not_coordinator(admin: Any, topic: str) -> int:
    """A broker leading partitions of ``topic`` that hosts no coordinator."""
    spared = coordinator_nodes(admin)
    candidates = sorted(set(leaders(admin, [topic]).values()) - spared)
    assert candidates, f"every leader of {topic} is a coordinator node {spared}"
    return candidates[0]


def kill_node(cluster: LocalKafkaCluster, victim: int) -> tuple[str, Callable[[], object]]:
    sigkill(cluster, victim)
    return f"SIGKILL node {victim}", lambda: cluster.start(node=victim)


def kill_leader_of(
    cluster: LocalKafkaCluster, topic_of: Callable[[str], str]
) -> Callable[[Any, str], tuple[str, Callable[[], object]]]:
    def inject(admin: Any, source: str) -> tuple[str, Callable[[], object]]:
        return kill_node(cluster, leader_not_coordinator(admin, topic_of(source)))

    return inject


@pytest.mark.parametrize("delivery", MODES)
def test_sigkill_of_an_input_partition_leader_loses_nothing(
    cluster: LocalKafkaCluster, tmp_path: Any, workers: Workers, delivery: str
) -> None:
    run_fault(
        cluster, tmp_path, workers, delivery, kill_leader_of(cluster, lambda source: source),
        "SIGKILL of the input partitions' leader",
    )  # fmt: skip


def test_sigkill_of_the_alert_topic_leader_loses_nothing(
    cluster: LocalKafkaCluster, tmp_path: Any, workers: Workers
) -> None:
    alerts = kill_leader_of(cluster, lambda source: f"g-{source}-alerts")
    run_fault(
        cluster, tmp_path, workers, "at-least-once", alerts, "SIGKILL of the alert topic's leader"
    )


def test_sigkill_of_the_active_controller_loses_nothing(
    cluster: LocalKafkaCluster, tmp_path: Any, workers: Workers
) -> None:
    def controller(_admin: Any, _source: str) -> tuple[str, Callable[[], object]]:
        active = cluster.active_controller()
        assert active is not None
        return kill_node(cluster, active)

    run_fault(
        cluster, tmp_path, workers, "at-least-once", controller,
        "SIGKILL of the active controller",
    )  # fmt: skip


def test_a_broker_frozen_past_its_session_timeout_loses_nothing(
    cluster: LocalKafkaCluster, tmp_path: Any, workers: Workers
) -> None:
    frozen_s = 10.0  # the cluster fences a broker after 6 s without a heartbeat

    def freeze(admin: Any, source: str) -> tuple[str, Callable[[], object]]:
        victim = leader_not_coordinator(admin, source)
        pid = cluster.node(victim).pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(frozen_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        return f"SIGSTOP node {victim} for {frozen_s:.0f} s", lambda: None

    run_fault(cluster, tmp_path, workers, "at-least-once", freeze, "broker frozen (SIGSTOP)")
