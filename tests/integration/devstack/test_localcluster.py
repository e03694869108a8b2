"""The local three-node KRaft cluster (real Apache Kafka jars), driven through the CLI the fault
tests and a developer use: status per node and the active controller, one node stopped and
started again, the whole cluster stopped and started on the same data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.devstack.localcluster import LocalKafkaCluster
from pipeline.devstack.localkafka import open_admin
from tests.conftest import CLUSTER_START_TIMEOUT_S, FAST_START
from tests.support.cli import run_module
from tests.support.kafka import consume, create_topic, produce_acked
from tests.support.workers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.cluster]
HEAP = "384m"
FAST = ("--fast-start",) if FAST_START else ()  # as the suite's other brokers


def kafka_cli(cluster: LocalKafkaCluster, *args: str) -> subprocess.CompletedProcess[str]:
    state = ("--state-dir", str(cluster.state_dir))
    return run_module("pipeline", "kafka", *args, *state, timeout=300)


def cli_status(cluster: LocalKafkaCluster) -> tuple[int, dict[str, Any]]:
    proc = kafka_cli(cluster, "status", "--json")
    return proc.returncode, json.loads(proc.stdout)


def replicated_topic(cluster: LocalKafkaCluster) -> str:
    with open_admin(cluster.bootstrap) as admin:
        return create_topic(admin, 1, replication=3, config={"min.insync.replicas": "2"})


def test_status_lists_every_node_and_the_active_controller(
    cluster: LocalKafkaCluster,
) -> None:
    code, status = cli_status(cluster)
    assert code == 0, status
    assert [(n["node_id"], n["running"]) for n in status["nodes"]] == [(i, True) for i in (1, 2, 3)]
    assert status["controller"] in (1, 2, 3)
    assert ",".join(n["bootstrap"] for n in status["nodes"]) == cluster.bootstrap
    text = kafka_cli(cluster, "status").stdout
    assert f"node {status['controller']} " in text and "(active controller)" in text
    with open_admin(cluster.bootstrap) as admin:
        brokers = admin.describe_cluster()["brokers"]
    assert sorted((b["broker_id"], b["is_fenced"]) for b in brokers) == [
        (1, False), (2, False), (3, False),
    ]  # fmt: skip


def test_one_node_stopped_and_started_again_by_the_cli(cluster: LocalKafkaCluster) -> None:
    topic = replicated_topic(cluster)
    config = cluster.client_config()
    produce_acked(config, topic, [b"before"])
    victim = cluster.status().controller or 2

    stopped = kafka_cli(cluster, "stop", "--node", str(victim))
    assert stopped.returncode == 0, stopped.stderr
    code, status = cli_status(cluster)
    assert code == 3  # not every node runs
    assert {n["node_id"]: n["running"] for n in status["nodes"]}[victim] is False
    # a new controller is elected among the other two; acks=all writes go on with 2 replicas
    wait_for(lambda: cli_status(cluster)[1]["controller"] not in (None, victim), 60, "election")
    produce_acked(config, topic, [b"during"])

    started = kafka_cli(cluster, "start", "--node", str(victim), *FAST)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip().splitlines()[-1] == cluster.bootstrap
    assert cli_status(cluster)[0] == 0
    assert consume(config, topic, 2) == [b"before", b"during"]


def test_the_whole_cluster_stops_and_starts_on_the_same_data(tmp_path: Path) -> None:
    """On a cluster of its own: stopping every node of the session's cluster from another
    process would leave the other tests' clients to a cluster restarted behind their back."""
    # 384m as the session's cluster: at 256m a node restarted on its data under load ran out
    # of heap during start (CI, load ~10)
    own = LocalKafkaCluster(tmp_path / "own", 3, heap=HEAP, fast_start=FAST_START)
    try:
        own.start(CLUSTER_START_TIMEOUT_S)
        topic = replicated_topic(own)
        config = own.client_config()
        produce_acked(config, topic, [b"kept"])

        assert kafka_cli(own, "stop").returncode == 0
        code, status = cli_status(own)
        assert code == 3 and not any(n["running"] for n in status["nodes"])
        assert status["controller"] is None

        started = kafka_cli(own, "start", "--timeout", "240", "--heap", HEAP, *FAST)
        assert started.returncode == 0, started.stderr
        assert cli_status(own)[0] == 0
        assert consume(config, topic, 1) == [b"kept"]
    finally:
        own.stop()


def test_a_cluster_keeps_its_node_count(cluster: LocalKafkaCluster) -> None:
    proc = kafka_cli(cluster, "start", "--brokers", "5")
    assert proc.returncode != 0
    assert "has 3 nodes, not 5" in proc.stderr
