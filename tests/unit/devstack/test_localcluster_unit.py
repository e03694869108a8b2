"""The local cluster's layout and node configs, without starting a JVM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.devstack import localkafka_setup as kafka_setup
from pipeline.devstack.localcluster import (
    CLUSTER_NAME,
    QUORUM_STATE,
    ClusterStatus,
    LocalKafkaCluster,
    NodeStatus,
    describe,
    internal_replication,
    is_cluster,
    node_properties,
)
from pipeline.devstack.localkafka import LocalKafkaError, Ports


@pytest.mark.parametrize(
    ("nodes", "replicas", "min_isr"), [(1, "1", "1"), (2, "2", "1"), (3, "3", "2"), (5, "3", "2")]
)
def test_internal_topics_get_min_3_n_replicas_and_min_isr_2_from_three_nodes(
    nodes: int, replicas: str, min_isr: str
) -> None:
    props = internal_replication(nodes)
    assert props["offsets.topic.replication.factor"] == replicas
    assert props["transaction.state.log.replication.factor"] == replicas
    assert props["transaction.state.log.min.isr"] == min_isr


def test_every_node_votes_and_has_its_own_id_ports_and_data(tmp_path: Path) -> None:
    cluster = LocalKafkaCluster(tmp_path, 3)
    voters = {n: node.ports.controller for n, node in cluster.nodes.items()}
    texts = {}
    for n, node in cluster.nodes.items():
        texts[n] = kafka_setup.render_server_properties(
            node.ports, node.data_dir, scram=False, extra=node_properties(n, voters)
        )
        assert f"node.id={n}\n" in texts[n]
        assert f"log.dirs={tmp_path.resolve()}/node-{n}/data\n" in texts[n]
        quorum = ",".join(f"{i}@127.0.0.1:{p}" for i, p in sorted(voters.items()))
        assert f"controller.quorum.voters={quorum}\n" in texts[n]
    ports = [
        p for node in cluster.nodes.values() for p in (node.ports.client, node.ports.controller)
    ]
    assert len(set(ports)) == 6
    assert len({node.data_dir for node in cluster.nodes.values()}) == 3
    assert cluster.bootstrap == ",".join(
        f"127.0.0.1:{node.ports.client}" for node in cluster.nodes.values()
    )


def test_the_layout_is_fixed_at_the_first_start_and_read_back(tmp_path: Path) -> None:
    first = LocalKafkaCluster(tmp_path, 3)
    assert is_cluster(tmp_path)
    again = LocalKafkaCluster(tmp_path)  # the CLI's stop/status: no count given
    assert again.cluster_id == first.cluster_id
    assert again.bootstrap == first.bootstrap
    with pytest.raises(LocalKafkaError, match="has 3 nodes, not 5"):
        LocalKafkaCluster(tmp_path, 5)
    assert json.loads((tmp_path / CLUSTER_NAME).read_text())["cluster_id"] == first.cluster_id


def test_a_single_broker_state_dir_is_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(LocalKafkaError, match="holds a single broker"):
        LocalKafkaCluster(tmp_path, 3)
    assert not is_cluster(tmp_path)


def test_no_node_runs_so_no_controller_is_known(tmp_path: Path) -> None:
    cluster = LocalKafkaCluster(tmp_path, 3)
    state = cluster.node(1).state_dir / QUORUM_STATE
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"leaderId": 1, "leaderEpoch": 4}))  # left by a stopped node
    status = cluster.status()
    assert status.controller is None and status.running == []
    with pytest.raises(LocalKafkaError, match="no node 4"):
        cluster.node(4)


def test_describe_marks_the_active_controller() -> None:
    nodes = [NodeStatus(1, "127.0.0.1:1", None), NodeStatus(2, "127.0.0.1:2", None)]
    text = describe(ClusterStatus(nodes, 2))
    assert "node 2 127.0.0.1:2 stopped (active controller)" in text
    assert text.endswith("active controller: 2")
    assert Ports(1, 2) == Ports(1, 2)


def test_fast_start_is_every_nodes(tmp_path: Path) -> None:
    assert not any(n.fast_start for n in LocalKafkaCluster(tmp_path / "a", 3).nodes.values())
    fast = LocalKafkaCluster(tmp_path / "b", 3, fast_start=True)
    assert all(n.fast_start for n in fast.nodes.values())
