"""A local KRaft cluster of several Apache Kafka nodes on loopback, for fault tests and demos.

Why: a single broker cannot show what production looks like when a broker dies: leaders
moving, in-sync replicas shrinking, a controller election. Each node is a
:class:`~pipeline.devstack.localkafka.LocalKafka` (broker and controller in one JVM) with its
own ports and data directory under one state directory::

    cluster.json   cluster id, node count and every node's ports (fixed at first start)
    node-1/ ...    one LocalKafka state directory per node (server.properties, data/, kafka.log)

Every node votes in the controller quorum; the internal topics (consumer offsets, transaction
state) get min(3, n) replicas and, on three nodes, min.insync.replicas 2, so losing one node
loses neither a committed offset nor a transaction. Brokers are fenced after 6 s without a
heartbeat (Kafka's default is 9 s): a killed node's partitions move within seconds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.devstack.localkafka import LocalKafka
from pipeline.devstack.localkafka_proc import free_ports
from pipeline.devstack.localkafka_setup import (
    HOST,
    LocalKafkaError,
    Ports,
    default_state_dir,
    file_lock,
    new_cluster_id,
    read_json,
    write_json,
)
from pipeline.devstack.localkafka_state import BrokerRecord

log = logging.getLogger(__name__)

CLUSTER_NAME = "cluster.json"
MAX_NODES = 9
QUORUM_STATE = Path("data") / "__cluster_metadata-0" / "quorum-state"


@dataclass(frozen=True)
class NodeStatus:
    """One node as ``status`` reports it: its record while it runs, None when stopped."""

    node_id: int
    bootstrap: str
    record: BrokerRecord | None

    @property
    def running(self) -> bool:
        return self.record is not None


@dataclass(frozen=True)
class ClusterStatus:
    """Every node and the active controller (None when no running node knows one)."""

    nodes: list[NodeStatus]
    controller: int | None

    @property
    def running(self) -> list[int]:
        return [n.node_id for n in self.nodes if n.running]


def internal_replication(nodes: int) -> dict[str, str]:
    """Replication of the brokers' internal topics: min(3, n) copies; min ISR 2 from 3 nodes,
    so one node can be lost and writes (commits, transaction markers) go on."""
    replicas = str(min(3, nodes))
    min_isr = "2" if nodes >= 3 else "1"
    return {
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
    }


def node_properties(node_id: int, controller_ports: Mapping[int, int]) -> dict[str, str]:
    """What a cluster node's ``server.properties`` has beyond a single broker's."""
    voters = ",".join(f"{n}@{HOST}:{port}" for n, port in sorted(controller_ports.items()))
    return {
        "node.id": str(node_id),
        "controller.quorum.voters": voters,
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "6000",
        # a transaction left open past its timeout is aborted (its producer fenced) within a
        # second, not up to 10 s later: the exactly-once fence test waits for exactly that
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        **internal_replication(len(controller_ports)),
    }


class LocalKafkaCluster:
    """``brokers`` local nodes forming one KRaft cluster; restartable node by node.

    ``start()`` launches every node that is not running and waits for all of them (a quorum
    needs a majority before any node is ready); ``start(node=N)``/``stop(node=N)`` act on one.
    Another process (the CLI) finds the same cluster through the state directory;
    ``fast_start`` is every node's (:class:`~pipeline.devstack.localkafka.LocalKafka`).
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        brokers: int | None = None,
        version: str | None = None,
        *,
        cache_dir: Path | None = None,
        heap: str = "512m",
        fast_start: bool = False,
    ) -> None:
        root = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_dir = root.expanduser().resolve()
        layout = self._layout(brokers)
        self.cluster_id: str = layout["cluster_id"]
        ports = {int(n): Ports(p["client"], p["controller"]) for n, p in layout["ports"].items()}
        controllers = {n: p.controller for n, p in ports.items()}
        self.nodes = {
            n: LocalKafka(
                self.state_dir / f"node-{n}",
                version=version,
                cache_dir=cache_dir,
                heap=heap,
                fast_start=fast_start,
                extra_properties=node_properties(n, controllers),
                node_id=n,
                cluster_id=self.cluster_id,
                ports=ports[n],
            )
            for n in sorted(ports)
        }

    # -- addresses

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated (clients survive any one node down)."""
        return ",".join(self.node_bootstrap(n) for n in self.nodes)

    def node_bootstrap(self, node_id: int) -> str:
        return f"{HOST}:{self.node(node_id).ports.client}"

    def node(self, node_id: int) -> LocalKafka:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise LocalKafkaError(
                f"no node {node_id} in the cluster at {self.state_dir} (nodes {list(self.nodes)})"
            ) from None

    @property
    def pid(self) -> tuple[int | None, ...]:
        """Every node's pid (None for a stopped one): changes whenever a node restarts."""
        return tuple(node.pid for node in self.nodes.values())

    def client_config(self) -> dict[str, str]:
        return {"bootstrap_servers": self.bootstrap}

    # -- lifecycle

    def start(self, timeout: float = 120.0, node: int | None = None) -> float:
        """Start every stopped node (or only ``node``); returns seconds until all are ready."""
        began = time.monotonic()
        if node is not None:
            self.node(node).start(timeout)
            return time.monotonic() - began
        launched = [n for n in self.nodes.values() if n.launch() is not None]
        try:
            for member in launched:
                member.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        seconds = time.monotonic() - began
        log.info("kafka.cluster.ready bootstrap=%s seconds=%.1f", self.bootstrap, seconds)
        return seconds

    def stop(self, node: int | None = None, timeout: float = 30.0) -> list[int]:
        """Stop every node (or only ``node``); returns the ids that were running."""
        chosen = [node] if node is not None else list(self.nodes)
        members = [self.node(n) for n in chosen]
        # all at once: a node stopped last would wait for a quorum that is already gone
        with ThreadPoolExecutor(max_workers=len(members)) as pool:
            stopped = list(pool.map(lambda member: member.stop(timeout), members))
        return [n for n, was_running in zip(chosen, stopped, strict=True) if was_running]

    def restart(self, node: int, timeout: float = 120.0) -> float:
        """Stop and start one node on the same ports and data (a rolling-restart step)."""
        self.stop(node)
        return self.start(timeout, node=node)

    def is_running(self) -> bool:
        """True when every node runs."""
        return all(n.is_running() for n in self.nodes.values())

    def status(self) -> ClusterStatus:
        nodes = [
            NodeStatus(n, f"{HOST}:{member.ports.client}", member.status())
            for n, member in self.nodes.items()
        ]
        return ClusterStatus(nodes, self.active_controller())

    def active_controller(self) -> int | None:
        """The quorum leader as the running nodes last recorded it (highest epoch wins).

        Read from each node's ``quorum-state`` file, which KRaft rewrites on every election:
        kafka-python has no DescribeQuorum, and DescribeCluster answers a random broker."""
        best: tuple[int, int] | None = None
        for member in self.nodes.values():
            if not member.is_running():
                continue
            state = read_json(member.state_dir / QUORUM_STATE) or {}
            leader, epoch = state.get("leaderId", -1), state.get("leaderEpoch", -1)
            known = isinstance(leader, int) and leader in self.nodes
            if known and (best is None or epoch > best[0]):
                best = (int(epoch), leader)
        return best[1] if best else None

    # -- layout

    def _layout(self, brokers: int | None) -> dict[str, Any]:
        """The cluster's fixed layout: read it, or choose id and ports at the first start."""
        path = self.state_dir / CLUSTER_NAME
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.state_dir / ".cluster.lock"):
            layout = read_json(path)
            if layout is not None:
                known = len(layout.get("ports", {}))
                if brokers not in (None, known):
                    raise LocalKafkaError(
                        f"the cluster at {self.state_dir} has {known} nodes, not {brokers}; "
                        "stop it and use a fresh --state-dir"
                    )
                return layout
            if (self.state_dir / "broker.json").exists() or (self.state_dir / "data").exists():
                raise LocalKafkaError(
                    f"{self.state_dir} holds a single broker; use another --state-dir"
                )
            count = brokers or 3
            if not 1 <= count <= MAX_NODES:
                raise LocalKafkaError(f"--brokers must be 1..{MAX_NODES}, not {count}")
            ports = free_ports(2 * count)
            layout = {
                "cluster_id": new_cluster_id(),
                "ports": {
                    str(n): {"client": ports[2 * i], "controller": ports[2 * i + 1]}
                    for i, n in enumerate(range(1, count + 1))
                },
            }
            write_json(path, layout)
            return layout


def is_cluster(state_dir: Path | str | None) -> bool:
    """Does ``state_dir`` (default: the usual one) hold a cluster rather than one broker?"""
    root = Path(state_dir) if state_dir is not None else default_state_dir()
    return (root.expanduser() / CLUSTER_NAME).is_file()


def describe(status: ClusterStatus) -> str:
    """Human-readable status: one line per node, then the controller."""
    lines = []
    for node in status.nodes:
        state = f"running pid={node.record.pid}" if node.record else "stopped"
        mark = " (active controller)" if node.node_id == status.controller else ""
        lines.append(f"node {node.node_id} {node.bootstrap} {state}{mark}")
    lines.append(f"active controller: {status.controller if status.controller else 'unknown'}")
    return "\n".join(lines)


def status_json(status: ClusterStatus) -> str:
    return json.dumps(
        {
            "running": len(status.running) == len(status.nodes),
            "controller": status.controller,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "bootstrap": n.bootstrap,
                    "running": n.running,
                    "pid": n.record.pid if n.record else None,
                    "log_path": n.record.log_path if n.record else None,
                }
                for n in status.nodes
            ],
        }
    )
