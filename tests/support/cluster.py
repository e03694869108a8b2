"""Broker faults on the local three-node cluster while a real worker process scores a stream,
and the accounting afterwards (tests/integration/cluster/test_cluster_faults.py).

``run_fault`` streams into a fresh topic, lets a fault (a function of the running stream)
strike once the worker scores, waits for the worker to commit again, and audits every record
through the scores topic. The faults themselves are small functions here so the default run
and the larger-scale run (marker ``slow``) inject exactly the same ones.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.devstack.localcluster import LocalKafkaCluster
from pipeline.devstack.localkafka import open_admin
from tests.support.faults import (
    OffsetProbe,
    SteadyProducer,
    WorkerProcess,
    Workers,
    finish_and_account,
    worker_env,
)
from tests.support.kafka import create_topic, settle_cluster
from tests.support.workers import publish, wait_for

INTERNAL = ("__consumer_offsets", "__transaction_state")
RESUME_TIMEOUT_S = 180.0
RESUMED_BATCHES = 3
STREAM_CAP = 10_000_000  # the stream ends when the test says so, never at this count


@dataclass
class Stream:
    """What a fault may act on: the cluster, the input topic and the worker scoring it."""

    cluster: LocalKafkaCluster
    source: str
    worker: WorkerProcess
    workers: Workers
    env: dict[str, str]
    backlog: Callable[[], int]  # records of the source the group has not committed yet


@dataclass
class Injected:
    """What a fault did, how to undo it once the stream is over, and which worker runs on
    (a new one when the fault restarted it). ``resumed_s`` is set by faults that measure
    their own time to resume (the rolling restart: the longest of its steps)."""

    fault: str
    recover: Callable[[], object]
    worker: WorkerProcess | None = None
    resumed_s: float | None = None


Fault = Callable[[Stream], Injected]


@dataclass(frozen=True)
class Size:
    """A stream at ``rate`` records per second that starts once the worker is in its group,
    lets the fault strike after ``lead_s`` worth of records are scored, and goes on
    ``tail_s`` after the worker resumed: records keep coming through the whole fault (a
    rolling restart lasts a minute), so every step of it has work to commit."""

    rate: float
    lead_s: float
    tail_s: float

    @property
    def lead(self) -> int:
        return max(1, round(self.rate * self.lead_s))


def run_fault(
    cluster: LocalKafkaCluster,
    tmp_path: Path,
    workers: Workers,
    delivery: str,
    fault: Fault,
    scenario: str,
    size: Size,
) -> None:
    """Stream into a fresh 3-partition topic, inject ``fault`` once the worker scores, wait
    until it commits again, end the stream and account for every record."""
    publish(tmp_path)
    bootstrap = cluster.bootstrap
    with open_admin(bootstrap) as admin:
        source = create_topic(admin, 3, replication=3, config={"min.insync.replicas": "2"})
    group = f"g-{source}"
    env = worker_env(bootstrap, tmp_path, source, group=group, delivery=delivery)
    config = {"bootstrap_servers": bootstrap}
    probe = OffsetProbe(config, group)
    producer: SteadyProducer | None = None
    try:
        worker = workers.start(env, "worker")
        wait_for(lambda: in_group(worker), 120, f"{worker.name} in its group")
        producer = SteadyProducer(config, source, STREAM_CAP, rate=size.rate)
        wait_for(lambda: worker.consumed() >= size.lead, 120, "first records scored")
        backlog = partial(uncommitted, probe, source)
        injected = fault(Stream(cluster, source, worker, workers, env, backlog))
        worker = injected.worker or worker
        resumed_s = injected.resumed_s
        if resumed_s is None:
            resumed_s = time_to_resume(worker, time.monotonic(), backlog)
        time.sleep(size.tail_s)
        producer.stop_sending()
        finish_and_account(
            producer, probe, worker, bootstrap=bootstrap, source=source, group=group,
            scenario=f"cluster: {scenario} ({delivery})", faults=injected.fault,
            no_duplicates=delivery == "exactly-once", recover=injected.recover,
            check=scored_something, resumed_after_s=round(resumed_s, 1),
        )  # fmt: skip
    finally:
        if producer is not None:
            producer.abort()
        probe.close()


def scored_something(worker: WorkerProcess) -> dict[str, Any]:
    """The worker that ran on (the restarted one, after some faults) scored records itself."""
    assert worker.consumed() > 0, f"{worker.name} scored nothing:\n{worker.tail()}"
    return {}


def in_group(worker: WorkerProcess) -> bool:
    """The worker was given its partitions (it logs each assignment)."""
    return any(entry.get("msg") == "partitions assigned" for entry in worker.logs())


def commits(worker: WorkerProcess) -> float:
    """Batches the worker committed (output durable), counted by the worker itself: asking
    the group coordinator would race its failover."""
    return worker.metric("pipeline_commits_total")


def uncommitted(probe: OffsetProbe, topic: str) -> int:
    return probe.high_water(topic) - probe.committed(topic)


def time_to_resume(worker: WorkerProcess, since: float, backlog: Callable[[], int]) -> float:
    """Seconds from ``since`` until the worker committed RESUMED_BATCHES more batches.

    A timeout says how many records were waiting: none means the stream had ended and
    the worker was idle (a test without records after its fault), many that it stalled."""
    before = commits(worker)
    try:
        wait_for(
            lambda: commits(worker) >= before + RESUMED_BATCHES,
            RESUME_TIMEOUT_S,
            f"{worker.name} to commit again",
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; {backlog()} records not committed; {commits(worker) - before:.0f} "
            f"batches committed meanwhile:\n{worker.tail()}"
        ) from None
    return time.monotonic() - since


# --------------------------------------------------------------------------- where things are


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


def leader_not_coordinator(cluster: LocalKafkaCluster, topic: str) -> int:
    """A broker leading partitions of ``topic`` that hosts no coordinator."""
    with open_admin(cluster.bootstrap) as admin:
        spared = coordinator_nodes(admin)
        candidates = sorted(set(leaders(admin, [topic]).values()) - spared)
    assert candidates, f"every leader of {topic} is a coordinator node {spared}"
    return candidates[0]


def pid_of(cluster: LocalKafkaCluster, node_id: int) -> int:
    pid = cluster.node(node_id).pid
    assert pid is not None, f"node {node_id} is not running"
    return pid


# --------------------------------------------------------------------------- the faults


def kill_node(cluster: LocalKafkaCluster, victim: int) -> Injected:
    os.kill(pid_of(cluster, victim), signal.SIGKILL)
    return Injected(f"SIGKILL node {victim}", lambda: cluster.start(node=victim))


def kill_leader_of(topic_of: Callable[[str], str]) -> Fault:
    """SIGKILL a (non-coordinator) leader of the topic ``topic_of(source)``."""

    def inject(stream: Stream) -> Injected:
        victim = leader_not_coordinator(stream.cluster, topic_of(stream.source))
        return kill_node(stream.cluster, victim)

    return inject


def kill_controller(stream: Stream) -> Injected:
    active = stream.cluster.active_controller()
    assert active is not None, "no active controller known"
    return kill_node(stream.cluster, active)


def freeze_leader(frozen_s: float) -> Fault:
    """SIGSTOP a (non-coordinator) input leader for ``frozen_s``, then SIGCONT it."""

    def inject(stream: Stream) -> Injected:
        victim = leader_not_coordinator(stream.cluster, stream.source)
        pid = pid_of(stream.cluster, victim)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(frozen_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        return Injected(f"SIGSTOP node {victim} for {frozen_s:.0f} s", lambda: None)

    return inject


def restart_without_first_bootstrap(stream: Stream) -> Injected:
    """Stop the first broker of the worker's bootstrap list, SIGKILL the worker and start a
    new one while that broker stays down: it must bootstrap from the others and resume."""
    first = next(iter(stream.cluster.nodes))
    assert stream.env["PIPELINE_KAFKA__BOOTSTRAP_SERVERS"].startswith(
        stream.cluster.node_bootstrap(first)
    )
    stream.cluster.stop(node=first)
    stream.worker.kill()
    restarted = stream.workers.start(stream.env, "worker-restarted")
    return Injected(
        f"stop node {first} (first bootstrap broker), SIGKILL and restart the worker",
        lambda: stream.cluster.start(node=first),
        worker=restarted,
    )


def rolling_restart(stream: Stream) -> Injected:
    """Stop each node in turn, wait for the worker to commit again without it, start it and
    wait until its replicas are back in sync (preferred leaders elected, as the brokers' own
    rebalance would): the group and transaction coordinators move at every step."""
    cluster, worker = stream.cluster, stream.worker
    steps: list[float] = []
    for node in cluster.nodes:
        stopped_at = time.monotonic()
        cluster.stop(node=node)
        steps.append(time_to_resume(worker, stopped_at, stream.backlog))
        cluster.start(node=node)
        settle_cluster(cluster.bootstrap)
    return Injected(
        f"stop/start nodes {', '.join(map(str, cluster.nodes))} in turn",
        lambda: None,
        resumed_s=max(steps),
    )
