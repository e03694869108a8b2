"""Processes and ports of local Kafka nodes: free ports, pid checks, readiness, termination.

Why a module of its own: the single broker (:mod:`pipeline.devstack.localkafka`) and the
three-node cluster (:mod:`pipeline.devstack.localcluster`) launch, probe and stop JVMs the
same way; only what they launch differs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.devstack.localkafka_setup import HOST, NODE_ID, LocalKafkaError, Ports
from pipeline.kafka.construct import construct

log = logging.getLogger(__name__)


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if a server could bind ``port`` now.

    SO_REUSEADDR mirrors the JVM, which rebinds a port whose old connections still sit in
    TIME_WAIT; without it every restart on the same port would look blocked.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports the kernel considers free (all bound at once so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) != "Z"


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # no procfs (macOS) or the process just vanished
    return stat.rsplit(")", 1)[-1].split()[0]


def cmdline_mentions(pid: int, needle: str) -> bool:
    """Guard against pid reuse: does ``pid`` run with ``needle`` on its command line?"""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # cannot tell without procfs: trust the pid
    except OSError:
        return False
    return needle.encode() in raw


# --------------------------------------------------------------------------- kafka-python


@contextlib.contextmanager
def open_admin(bootstrap: str, **config: Any) -> Iterator[Any]:
    """A kafka-python ``KafkaAdminClient`` that is closed on exit, even if its constructor fails.

    (kafka-python leaks its IO thread when the constructor fails: ``kafka_clients``.)"""
    from kafka import KafkaAdminClient

    admin = construct(KafkaAdminClient, bootstrap_servers=bootstrap, **config)
    try:
        yield admin
    finally:
        admin.close()


def pick_port(taken: set[int]) -> int:
    while True:
        port = free_ports(1)[0]
        if port not in taken:
            return port


def keep_or_pick(preferred: int | None, taken: set[int]) -> int:
    if preferred is not None and preferred not in taken and port_is_free(preferred):
        return preferred
    return pick_port(taken)


def plan_ports(previous: Ports | None, requested: int | None, *, internal: bool) -> Ports:
    """A single broker's ports: the requested or previous client port (restarts keep the
    bootstrap address), the previous others where still free, fresh ones otherwise."""
    client = requested or (previous.client if previous else None)
    if client is not None and not port_is_free(client):
        raise LocalKafkaError(
            f"port {client} on {HOST} is in use; pick another --port or stop what holds it"
        )
    taken = {client} if client else set()
    client = client or pick_port(taken)
    controller = keep_or_pick(previous.controller if previous else None, taken | {client})
    internal_port = None
    if internal:
        old = previous.internal if previous else None
        internal_port = keep_or_pick(old, taken | {client, controller})
    return Ports(client, controller, internal_port)


def check_fixed_ports(ports: Ports, node_id: int) -> Ports:
    """A cluster node keeps the ports every other node's config names: fail if one is taken."""
    for port in (ports.client, ports.controller):
        if not port_is_free(port):
            raise LocalKafkaError(
                f"port {port} of node {node_id} on {HOST} is in use; stop what holds it"
            )
    return ports


def wait_until_ready(
    proc: subprocess.Popen[bytes], ports: Sequence[int], deadline: float, node_id: int = NODE_ID
) -> None:
    """Block until every port accepts TCP and an admin round trip on ``ports[0]`` sees us.

    An open port alone is not enough: the broker must have registered with its controller and
    be unfenced, otherwise the first topic creation of a test can still fail.
    """
    for port in ports:
        wait_for_port(proc, port, deadline)
    wait_for_registration(proc, f"{HOST}:{ports[0]}", deadline, node_id)


def check_alive(proc: subprocess.Popen[bytes]) -> None:
    code = proc.poll()
    if code is not None:
        raise LocalKafkaError(f"Kafka JVM (pid {proc.pid}) exited with code {code} during start")


def wait_for_port(proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
    while True:
        check_alive(proc)
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise LocalKafkaError(f"Kafka did not open {HOST}:{port} before the start timeout")
        time.sleep(0.1)


def wait_for_registration(
    proc: subprocess.Popen[bytes], address: str, deadline: float, node_id: int = NODE_ID
) -> None:
    from kafka.errors import KafkaError

    remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
    try:
        with open_admin(
            address, bootstrap_timeout_ms=remaining_ms, request_timeout_ms=5000
        ) as admin:
            while not _unfenced_yet(admin, node_id, deadline):
                check_alive(proc)
                if time.monotonic() > deadline:
                    raise LocalKafkaError(f"broker at {address} never reported itself unfenced")
                time.sleep(0.1)
    except KafkaError as exc:
        check_alive(proc)
        raise LocalKafkaError(f"Kafka admin round trip to {address} failed: {exc!r}") from exc


def _unfenced_yet(admin: Any, node_id: int, deadline: float) -> bool:
    """One describe-cluster round trip; a retriable error before the deadline is "not yet".

    kafka-python sends it to the least loaded node it knows, which on a cluster starting all
    at once can be a peer whose client port is not open yet: connection refused, though the
    node asked about is up (CI, the whole-cluster restart test).
    """
    from kafka.errors import KafkaError

    try:
        return node_unfenced(admin.describe_cluster(), node_id)
    except KafkaError as exc:
        if not exc.retriable or time.monotonic() > deadline:
            raise
        log.info("kafka.start.retry node=%s error=%r", node_id, exc)
        return False


def node_unfenced(cluster: Mapping[str, Any], node_id: int = NODE_ID) -> bool:
    """Does the cluster (as one node describes it) list ``node_id`` as a live broker?"""
    brokers = cluster.get("brokers") or []
    return any(b.get("broker_id") == node_id and not b.get("is_fenced") for b in brokers)


def terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """SIGTERM, wait, then SIGKILL; True when the process exited on SIGTERM alone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_exit(pid, proc, timeout):
        return True
    log.warning("kafka.stop.sigkill pid=%s after_s=%.0f", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_exit(pid, proc, 10.0):
        raise LocalKafkaError(f"Kafka JVM pid {pid} survived SIGKILL")
    return False


def wait_exit(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if proc is not None and proc.pid == pid:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
