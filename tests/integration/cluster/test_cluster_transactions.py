"""Transactions on the local three-node cluster when the coordinators go away: the node hosting
the group and transaction coordinators SIGKILLed mid-stream (both delivery modes), and an
exactly-once transaction kept open past its timeout, so the coordinator aborts it and fences
the worker's producer (the worker frozen inside it; every broker frozen past it). Every input
record is accounted for through the scores topic afterwards
(``pipeline.alert_consumers.audit``): nothing lost, and no duplicate in exactly-once mode.

The first test reproduces the kafka-python defect on its own (``pipeline.kafka.txn_requeue``):
a transactional request bound for a coordinator that cannot be reached was dropped, and the
call waiting for it (commit, send_offsets_to_transaction) never returned."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from pipeline.devstack.localcluster import LocalKafkaCluster
from pipeline.devstack.localkafka import open_admin
from pipeline.kafka.clients import close_quietly, make_producer
from pipeline.kafka.settings import KafkaSettings
from tests.support.cluster import commits, pid_of
from tests.support.faults import (
    SCALED_TIMEOUT,
    OffsetProbe,
    SteadyProducer,
    WorkerProcess,
    Workers,
    finish_and_account,
    freeze_when,
    scaled,
    worker_env,
)
from tests.support.kafka import create_topic
from tests.support.workers import publish, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, SCALED_TIMEOUT]
MODES = ["at-least-once", "exactly-once"]
STREAM_S = 10.0
OFFSETS, TXN_STATE = "__consumer_offsets", "__transaction_state"


# ----------------------------------------------------------------------------- coordinators


def java_hash(text: str) -> int:
    """Java's ``String.hashCode``: how a broker maps a group or transactional id to the
    partition of its internal topic whose leader is the coordinator."""
    data = text.encode("utf-16-be")
    h = 0
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i : i + 2], "big")) & 0xFFFFFFFF
    return h


def coordinator(admin: Any, internal_topic: str, key: str) -> int:
    """The broker coordinating ``key`` (a group id in ``__consumer_offsets``, a transactional
    id in ``__transaction_state``): the leader of the key's partition of that topic."""
    (described,) = admin.describe_topics([internal_topic])
    partitions = {p["partition_index"]: p["leader_id"] for p in described["partitions"]}
    return int(partitions[(java_hash(key) & 0x7FFFFFFF) % len(partitions)])


def colocate_coordinators(bootstrap: str, group: str, txn_id: str) -> int:
    """Make the node coordinating ``group`` coordinate ``txn_id`` too, so one SIGKILL takes
    both away: the transaction-state partition of ``txn_id`` gets that node first in its
    replica list (same replicas, no data moves) and a preferred-leader election. Creates both
    internal topics first (a group lookup, a transactional producer's init). Returns the node."""
    producer = make_producer(KafkaSettings(bootstrap_servers=bootstrap), transactional_id=txn_id)
    close_quietly(producer)
    with open_admin(bootstrap) as admin:
        with contextlib.suppress(KafkaError):  # the lookup creates __consumer_offsets
            admin.describe_groups([group])
        target = wait_for(lambda: _leader_of(admin, OFFSETS, group), 60, "group coordinator")
        tp = TopicPartition(TXN_STATE, _partition_of(admin, TXN_STATE, txn_id))
        (described,) = admin.describe_topics([TXN_STATE])
        (state,) = [p for p in described["partitions"] if p["partition_index"] == tp.partition]
        replicas = state["replica_nodes"]
        if state["leader_id"] != target:
            admin.alter_partition_reassignments(
                {tp: [target, *(r for r in replicas if r != target)]}
            )
            wait_for(lambda: _first_replica(admin, tp) == target, 60, "replica order changed")
            admin.elect_leaders(0, {TXN_STATE: [tp.partition]}, raise_errors=False)
            wait_for(lambda: coordinator(admin, TXN_STATE, txn_id) == target, 60, "election")
    return int(target)


def _partition_of(admin: Any, internal_topic: str, key: str) -> int:
    (described,) = admin.describe_topics([internal_topic])
    return (java_hash(key) & 0x7FFFFFFF) % len(described["partitions"])


def _leader_of(admin: Any, internal_topic: str, key: str) -> int | None:
    try:
        leader = coordinator(admin, internal_topic, key)
    except (KeyError, ValueError, KafkaError):
        return None
    return leader if leader >= 0 else None


def _first_replica(admin: Any, tp: TopicPartition) -> int:
    (described,) = admin.describe_topics([tp.topic])
    by_index = {p["partition_index"]: p for p in described["partitions"]}
    return int(by_index[tp.partition]["replica_nodes"][0])


def ongoing(admin: Any, txn_id: str) -> bool:
    """The coordinator holds ``txn_id``'s transaction open (``Ongoing``), not already being
    committed: output still unmarked on a topic is also what a commit looks like until its
    markers are written, and a worker frozen then had committed, never timed out (once under
    load: the freeze caught a commit in flight, no fence, no producer replaced)."""
    described = admin.describe_transactions([txn_id])[txn_id]
    return bool(described.state == "Ongoing")


def sigkill(cluster: LocalKafkaCluster, node_id: int) -> None:
    os.kill(pid_of(cluster, node_id), signal.SIGKILL)


# ----------------------------------------------------------------------- the library defect


def test_a_transaction_commits_after_its_coordinator_node_is_killed(
    cluster: LocalKafkaCluster,
) -> None:
    """kafka-python 3.0.12 dropped the AddPartitionsToTxn request when the coordinator's node
    could not be reached (``await_ready`` raised where the sender expects False), so a
    transaction begun after the node died never committed: commit_transaction waited
    forever although a new coordinator took over within seconds."""
    bootstrap = cluster.bootstrap
    with open_admin(bootstrap) as admin:
        topic = create_topic(admin, 1, replication=3, config={"min.insync.replicas": "2"})
    txn_id = f"txn-{uuid.uuid4().hex}"
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    producer = make_producer(kafka, transactional_id=txn_id)
    try:
        producer.begin_transaction()  # one transaction first: the coordinator is known
        producer.send(topic, b"before")
        producer.commit_transaction()
        with open_admin(bootstrap) as admin:
            victim = coordinator(admin, TXN_STATE, txn_id)
        sigkill(cluster, victim)
        errors: list[BaseException] = []
        done = threading.Thread(target=_one_transaction, args=(producer, topic, errors))
        done.start()
        done.join(90)
        assert not done.is_alive(), f"commit_transaction hung after node {victim} was killed"
        assert errors == []
    finally:
        close_quietly(producer)
    assert sorted(_read_committed(bootstrap, topic, 2)) == [b"after", b"before"]


def _one_transaction(producer: Any, topic: str, errors: list[BaseException]) -> None:
    try:
        producer.begin_transaction()
        producer.send(topic, b"after")
        producer.commit_transaction()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def _read_committed(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        seen: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(seen) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen.extend(r.value for r in records)
        return seen
    finally:
        consumer.close()


# --------------------------------------------------------------------- worker scenarios


def stream_with_fault(
    cluster: LocalKafkaCluster,
    tmp_path: Any,
    workers: Workers,
    delivery: str,
    inject: Any,
    scenario: str,
    check: Any = None,
    prepare: Any = None,
    **env_extra: str,
) -> float:
    """Stream 1,200 records (scaled) over 10 s into a fresh 3-partition RF3 topic, call
    ``prepare(group, txn_id)`` before the worker starts,
    ``inject(admin, group, txn_id, worker)`` once the worker scores (it returns what it did and
    how to undo it), wait until three more batches are committed, ``check(worker)`` while it
    still runs (what it returns is recorded too), and account for every record. Returns the
    seconds until commits resumed."""
    publish(tmp_path)
    bootstrap = cluster.bootstrap
    with open_admin(bootstrap) as admin:
        source = create_topic(admin, 3, replication=3, config={"min.insync.replicas": "2"})
    group, txn_id = f"g-{source}", f"t-{source}"
    env = worker_env(
        bootstrap, tmp_path, source, group=group, delivery=delivery,
        PIPELINE_TRANSACTIONAL_ID=txn_id, **env_extra,
    )  # fmt: skip
    config = {"bootstrap_servers": bootstrap}
    total = scaled(1200)
    producer = SteadyProducer(config, source, total, rate=total / STREAM_S)
    probe = OffsetProbe(config, group)
    try:
        if prepare is not None:
            prepare(group, txn_id)
        worker = workers.start(env, "worker")
        wait_for(lambda: worker.consumed() >= min(200, total // 5), 120, "first records scored")
        with open_admin(bootstrap) as admin:
            fault, recover = inject(admin, group, txn_id, worker)
        injected = time.monotonic()
        at_fault = commits(worker)
        wait_for(lambda: commits(worker) >= at_fault + 3, 180, "commits resume")
        resumed_s = time.monotonic() - injected
        finish_and_account(
            producer, probe, worker, bootstrap=bootstrap, source=source, group=group,
            scenario=f"cluster: {scenario} ({delivery})", faults=fault,
            no_duplicates=delivery == "exactly-once", total=total, recover=recover,
            check=check, resumed_after_s=round(resumed_s, 1),
        )  # fmt: skip
    finally:
        producer.abort()
        probe.close()
    return resumed_s


@pytest.mark.parametrize("delivery", MODES)
def test_sigkill_of_the_coordinator_node_loses_nothing(
    cluster: LocalKafkaCluster, tmp_path: Any, workers: Workers, delivery: str
) -> None:
    """The node coordinating the worker's group and (exactly-once) its transactions is
    SIGKILLed mid-stream; the coordinators move to other nodes once the cluster fences the
    dead one (6 s) and the worker goes on committing. Exactly-once, the test first makes one
    node host both coordinators (``colocate_coordinators``)."""
    exactly_once = delivery == "exactly-once"

    def prepare(group: str, txn_id: str) -> None:
        if exactly_once:
            colocate_coordinators(cluster.bootstrap, group, txn_id)

    def kill_coordinator(admin: Any, group: str, txn_id: str, _: WorkerProcess) -> Any:
        group_node = coordinator(admin, OFFSETS, group)
        txn_node = coordinator(admin, TXN_STATE, txn_id) if exactly_once else None
        assert txn_node in (None, group_node), (group_node, txn_node)
        victim = group_node
        sigkill(cluster, victim)
        hosts = [
            n for n, node in (("group", group_node), ("transaction", txn_node)) if node == victim
        ]
        what = f"SIGKILL node {victim} ({' and '.join(hosts)} coordinator)"
        return what, lambda: cluster.start(node=victim)

    stream_with_fault(
        cluster, tmp_path, workers, delivery, kill_coordinator,
        "SIGKILL of the coordinator node", prepare=prepare,
    )  # fmt: skip


def test_a_transaction_open_past_its_timeout_fences_the_producer_and_the_worker_goes_on(
    cluster: LocalKafkaCluster, tmp_path: Any, workers: Workers
) -> None:
    """The worker is frozen (SIGSTOP) inside an open transaction for longer than its 6 s
    transaction timeout: the coordinator aborts the transaction and bumps the producer epoch.
    Resumed, the worker's producer is fenced; the worker must replace it and re-read from the
    committed offsets (before: ProducerFencedError was fatal, exit 4, and a supervisor
    restart-looped it). Its session timeout outlasts the freeze, so the fence is the only
    fault (the group rebalance on top is test_reliability_rebalance's). The freeze outlasts
    the timeout by 4 s; the coordinator looks for expired ones every second (localcluster)."""
    timeout_s, frozen_s = 6.0, 10.0

    def freeze_in_transaction(admin: Any, group: str, txn_id: str, worker: WorkerProcess) -> Any:
        probe = OffsetProbe({"bootstrap_servers": cluster.bootstrap})
        try:
            tries = freeze_when(
                worker,
                lambda: probe.open_transaction(f"{group}-scores") and ongoing(admin, txn_id),
            )
        finally:
            probe.close()
        time.sleep(frozen_s)
        worker.signal(signal.SIGCONT)
        what = f"SIGSTOP the worker in an open transaction for {frozen_s:.0f} s ({tries} tries)"
        return what, lambda: None

    def rebuilt(worker: WorkerProcess) -> dict[str, float]:
        """The producer was replaced: as ``fenced`` when the coordinator's answer came first,
        as ``stalled`` when the call's deadline (the same 6 s, which the freeze outlasted)
        expired first on resuming; either way nothing else may have stopped the worker."""
        rebuilds = {
            reason: worker.metric("pipeline_producer_rebuilds_total", reason=reason)
            for reason in ("fenced", "stalled")
        }
        assert sum(rebuilds.values()) >= 1, worker.tail()
        return {f"rebuilds_{reason}": n for reason, n in rebuilds.items()}

    stream_with_fault(
        cluster, tmp_path, workers, "exactly-once", freeze_in_transaction,
        "transaction open past its timeout (worker frozen)", check=rebuilt,
        PIPELINE_TRANSACTION_TIMEOUT_MS=str(int(timeout_s * 1000)),
        PIPELINE_SESSION_TIMEOUT_MS="45000",
    )  # fmt: skip


def test_a_cluster_outage_longer_than_the_transaction_timeout_loses_nothing(
    cluster: LocalKafkaCluster, tmp_path: Any, workers: Workers
) -> None:
    """Every broker frozen (SIGSTOP) for 12 s while the worker has a transaction open, with a
    6 s transaction timeout: the worker's transactional call runs past its deadline during
    the outage, and afterwards the coordinators find the transaction expired (the outage is
    twice the timeout and longer than the brokers' 6 s session timeout, as it was at 20 s and
    10 s). The worker must come back without exiting; 0 lost, 0 duplicates."""
    timeout_s, outage_s = 6.0, 12.0

    def freeze_cluster(admin: Any, group: str, _txn: str, worker: WorkerProcess) -> Any:
        pids = [pid for pid in cluster.pid if pid is not None]
        probe = OffsetProbe({"bootstrap_servers": cluster.bootstrap})
        try:
            wait_for(lambda: probe.open_transaction(f"{group}-scores"), 60, "open transaction")
        finally:
            probe.close()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(outage_s)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        return f"SIGSTOP all {len(pids)} brokers for {outage_s:.0f} s", lambda: None

    def rebuilds(worker: WorkerProcess) -> dict[str, float]:
        return {
            f"rebuilds_{reason}": worker.metric("pipeline_producer_rebuilds_total", reason=reason)
            for reason in ("fenced", "stalled")
        }

    stream_with_fault(
        cluster, tmp_path, workers, "exactly-once", freeze_cluster,
        "cluster frozen past the transaction timeout", check=rebuilds,
        PIPELINE_TRANSACTION_TIMEOUT_MS=str(int(timeout_s * 1000)),
    )  # fmt: skip
