"""A real single-node Apache Kafka broker (KRaft) on loopback, for development and tests.

Why: the team has no Docker engine, yet integration tests must talk to a genuine broker, not a
fake. We let Maven fetch the official jars from Maven Central once per version into a per-user
cache, format a KRaft storage directory and run ``kafka.Kafka`` as a detached JVM.

A state directory (default ``./.kafka-local``, env ``PIPELINE_KAFKA_STATE_DIR``) holds::

    server.properties  broker config we render (never contains a password)
    log4j2.properties  broker logging: everything to stdout, which goes to kafka.log
    kafka.log          the JVM's stdout/stderr, appended across restarts
    data/              KRaft metadata log and topic partitions; survives stop/start
    layout.json        ports and SCRAM user names chosen at first start, reused by restarts
    broker.json        present only while a broker started by us runs (pid, bootstrap, ...)

With SCRAM users the client listener is SASL_PLAINTEXT; a second, *unauthenticated* PLAINTEXT
listener on loopback (``internal_bootstrap``) carries inter-broker traffic and our readiness
probe, so no password has to be written to disk or handed to a Kafka client by this module.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.devstack.localkafka_jvm import format_storage, launch_broker
from pipeline.devstack.localkafka_proc import (
    check_fixed_ports,
    cmdline_mentions,
    free_ports,
    open_admin,
    pid_alive,
    plan_ports,
    port_is_free,
    terminate,
    wait_until_ready,
)
from pipeline.devstack.localkafka_setup import (
    DEFAULT_VERSION,
    ENV_CACHE,
    ENV_STATE_DIR,
    ENV_VERSION,
    HOST,
    MARKER_NAME,
    NODE_ID,
    SCRAM_MECHANISMS,
    Jars,
    LocalKafkaError,
    Ports,
    ScramUser,
    cache_root,
    default_state_dir,
    default_version,
    file_lock,
    find_java,
    new_cluster_id,
    redact,
    render_log4j2,
    render_server_properties,
    resolve_jars,
    tail_lines,
    validate_version,
    write_json,
)
from pipeline.devstack.localkafka_state import (
    LAYOUT_NAME,
    STATE_NAME,
    BrokerRecord,
    StartTiming,
    client_kwargs,
    formatted_users,
    read_ports,
    read_record,
    validate_heap,
)

__all__ = [
    "DEFAULT_VERSION",
    "ENV_CACHE",
    "ENV_STATE_DIR",
    "ENV_VERSION",
    "MARKER_NAME",
    "SCRAM_MECHANISMS",
    "STATE_NAME",
    "BrokerRecord",
    "LocalKafka",
    "LocalKafkaError",
    "Ports",
    "ScramUser",
    "StartTiming",
    "cache_root",
    "free_ports",
    "open_admin",
    "pid_alive",
    "port_is_free",
    "resolve_jars",
]

log = logging.getLogger(__name__)


class LocalKafka:
    """One local broker bound to a state directory; restartable on the same port and data.

    ``start`` returns once a Kafka admin round trip succeeds; ``stop`` is idempotent. Another
    process (the CLI) can stop or inspect a broker through the same state directory.

    A node of a cluster (:class:`~pipeline.devstack.localcluster.LocalKafkaCluster`) is the
    same thing with its ``node_id``, the cluster's id, fixed ``ports`` and the quorum in
    ``extra_properties``; the cluster calls ``launch`` on every node before ``wait_ready``.

    ``fast_start`` runs the JVM with C1-only JIT and serial GC (``FAST_START_JVM``): it starts
    sooner and compiles less in the background, for the test suite's many short-lived brokers
    on a shared machine; benchmarks and the demo keep the JVM defaults.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        port: int | None = None,
        version: str | None = None,
        scram_users: Sequence[ScramUser] | None = None,
        *,
        cache_dir: Path | None = None,
        heap: str = "512m",
        extra_properties: Mapping[str, str] | None = None,
        node_id: int = NODE_ID,
        cluster_id: str | None = None,
        ports: Ports | None = None,
        fast_start: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_dir = self.state_dir.expanduser().resolve()  # pid checks match on this path
        self.version = validate_version(version or default_version())
        self.scram_users = tuple(scram_users or ())
        self.cache_dir = cache_dir
        self.heap = validate_heap(heap)
        self.fast_start = fast_start  # the JVM's FAST_START_JVM flags (test brokers)
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._fixed_ports = ports
        self.extra_properties = dict(extra_properties or {})
        self.last_start: StartTiming | None = None
        self.last_stop_forced = False
        self._requested_port = port
        self._ports: Ports | None = ports  # a cluster node's are fixed from the start
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._launched_at = 0.0

    # -- paths and addresses

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "kafka.log"

    @property
    def properties_path(self) -> Path:
        return self.state_dir / "server.properties"

    @property
    def security_protocol(self) -> str:
        return "SASL_PLAINTEXT" if self.scram_users else "PLAINTEXT"

    @property
    def ports(self) -> Ports:
        """Ports of the running (or last started) broker."""
        if self._ports is None:
            record = self.status()
            if record is None:
                raise LocalKafkaError(f"no broker started from {self.state_dir}")
            self._ports = Ports(record.port, record.controller_port, record.internal_port)
        return self._ports

    @property
    def bootstrap(self) -> str:
        """Client bootstrap address ``127.0.0.1:PORT`` (SASL_PLAINTEXT when SCRAM is on)."""
        return f"{HOST}:{self.ports.client}"

    @property
    def internal_bootstrap(self) -> str:
        """Unauthenticated PLAINTEXT address for admin work; equals ``bootstrap`` without SCRAM."""
        internal = self.ports.internal
        return f"{HOST}:{internal}" if internal is not None else self.bootstrap

    @property
    def pid(self) -> int | None:
        record = self.status()
        return record.pid if record else None

    def client_config(
        self, user: str | None = None, mechanism: str = "SCRAM-SHA-256"
    ) -> dict[str, Any]:
        """kafka-python keyword arguments for this broker (credentials of ``user`` if SCRAM)."""
        return client_kwargs(self.bootstrap, self.scram_users, user, mechanism)

    # -- lifecycle

    def start(self, timeout: float = 60.0) -> StartTiming:
        """Start (or adopt an already running) broker; ``timeout`` bounds JVM launch → ready.

        The first start of a version also downloads jars (Maven has its own 10 min limit).
        """
        began = time.monotonic()
        jars = self.launch()
        if jars is None:
            self.last_start = StartTiming(time.monotonic() - began, 0.0, False, adopted=True)
            return self.last_start
        jvm_seconds = self.wait_ready(timeout)
        timing = StartTiming(time.monotonic() - began, jars.seconds, jars.downloaded, jvm_seconds)
        log.info(
            "kafka.ready bootstrap=%s node=%s pid=%s start_to_ready_s=%.2f jvm_to_ready_s=%.2f "
            "download_s=%.2f cold_cache=%s",
            self.bootstrap, self.node_id, self._proc.pid if self._proc else None, timing.seconds,
            jvm_seconds, jars.seconds, jars.downloaded,
        )  # fmt: skip
        self.last_start = timing
        return timing

    def launch(self) -> Jars | None:
        """Prepare and launch the JVM without waiting for it; None when one already runs.

        Split from ``wait_ready`` because a node of a three-node quorum cannot become ready
        until a second one is up: the cluster launches them all, then waits.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.state_dir / ".lock"):
            if self._adopt_running():
                return None
            ports = self._plan_ports()
            java = find_java()
            jars = resolve_jars(self.version, self.cache_dir)
            self._prepare(java, jars.libs_dir, ports)
            self._launched_at = time.monotonic()
            proc = self._launch(java, jars.libs_dir)
            self._write_record(proc.pid)
        return jars

    def wait_ready(self, timeout: float) -> float:
        """Wait until the launched JVM serves (``timeout`` from launch); returns its seconds.

        A node that does not get ready is killed, with its log tail in the error."""
        proc = self._proc
        if proc is None:
            raise LocalKafkaError(f"node {self.node_id} in {self.state_dir} was not launched")
        try:
            deadline = self._launched_at + timeout
            wait_until_ready(proc, self._probe_ports(), deadline, self.node_id)
            return time.monotonic() - self._launched_at
        except BaseException as exc:
            terminate(proc.pid, proc, 10.0)
            (self.state_dir / STATE_NAME).unlink(missing_ok=True)
            self._proc = None
            if isinstance(exc, LocalKafkaError):
                raise LocalKafkaError(
                    f"{exc}\n--- {self.log_path} (tail) ---\n{self.log_tail()}"
                ) from exc
            raise

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the broker, SIGKILL after ``timeout``; True if one was running."""
        if not self.state_dir.is_dir():
            return False
        with file_lock(self.state_dir / ".lock"):
            pid = self._running_pid()
            if pid is None:
                (self.state_dir / STATE_NAME).unlink(missing_ok=True)
                self._proc = None
                return False
            began = time.monotonic()
            self.last_stop_forced = not terminate(pid, self._proc, timeout)
            (self.state_dir / STATE_NAME).unlink(missing_ok=True)
            self._proc = None
        log.info(
            "kafka.stopped pid=%s seconds=%.2f forced=%s",
            pid, time.monotonic() - began, self.last_stop_forced,
        )  # fmt: skip
        return True

    def restart(self, timeout: float = 60.0) -> StartTiming:
        """Stop, then start again on the same ports and data directory."""
        self.stop()
        return self.start(timeout)

    def is_running(self) -> bool:
        return self.status() is not None

    def status(self) -> BrokerRecord | None:
        """The running broker's record, or None (a stale ``broker.json`` counts as stopped)."""
        record = read_record(self.state_dir / STATE_NAME)
        if record is None or not self._is_our_process(record.pid):
            return None
        return record

    def log_tail(self, lines: int = 40, *, since_launch: bool = True) -> str:
        """Last lines of ``kafka.log`` (by default only from the latest launch)."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(self._log_offset if since_launch else 0)
                text = handle.read().decode(errors="replace")
        except OSError:
            return ""
        return redact(tail_lines(text, lines), [u.password for u in self.scram_users])

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- start internals

    def _adopt_running(self) -> bool:
        """Reuse a broker already running from this state dir if it matches what we asked for."""
        record = self.status()
        if record is None:
            (self.state_dir / STATE_NAME).unlink(missing_ok=True)
            return False
        wanted_users = sorted(u.name for u in self.scram_users)
        if self._requested_port not in (None, record.port) or record.scram_users != wanted_users:
            raise LocalKafkaError(
                f"a broker already runs from {self.state_dir} (pid {record.pid}, "
                f"{record.bootstrap}, SCRAM users {record.scram_users}); stop it first"
            )
        self._ports = Ports(record.port, record.controller_port, record.internal_port)
        log.info("kafka.already_running bootstrap=%s pid=%s", record.bootstrap, record.pid)
        return True

    def _plan_ports(self) -> Ports:
        """Same ports as last time where possible: restarts must keep the bootstrap address."""
        if self._fixed_ports is not None:
            return check_fixed_ports(self._fixed_ports, self.node_id)
        previous = self._ports or read_ports(self.state_dir / LAYOUT_NAME)
        return plan_ports(previous, self._requested_port, internal=bool(self.scram_users))

    def _prepare(self, java: str, libs: Path, ports: Ports) -> None:
        """Write configs and format storage once; a formatted data dir is kept as is."""
        formatted = (self.data_dir / "meta.properties").exists()
        known_users = formatted_users(self.state_dir, self.scram_users) if formatted else []
        self.properties_path.write_text(
            render_server_properties(
                ports, self.data_dir, scram=bool(self.scram_users), extra=self.extra_properties
            )
        )
        (self.state_dir / "log4j2.properties").write_text(render_log4j2())
        if not formatted:
            self._format(java, libs)
            known_users = sorted(u.name for u in self.scram_users)
        write_json(self.state_dir / LAYOUT_NAME, {**asdict(ports), "scram_users": known_users})
        self._ports = ports

    def _format(self, java: str, libs: Path) -> None:
        cluster_id = self.cluster_id or new_cluster_id()
        format_storage(java, libs, self.state_dir, cluster_id, self.scram_users)

    def _launch(self, java: str, libs: Path) -> subprocess.Popen[bytes]:
        proc, self._log_offset = launch_broker(
            java, libs, self.state_dir, self.heap, self.version, fast_start=self.fast_start
        )
        self._proc = proc
        log.info(
            "kafka.launched node=%s pid=%s bootstrap=%s log=%s",
            self.node_id, proc.pid, self.bootstrap, self.log_path,
        )  # fmt: skip
        return proc

    def _probe_ports(self) -> tuple[int, ...]:
        """Ports to wait for; the first one gets the admin round trip (never needs a password)."""
        ports = self.ports
        return (ports.internal, ports.client) if ports.internal is not None else (ports.client,)

    def _write_record(self, pid: int) -> None:
        ports = self.ports
        record = BrokerRecord(
            pid=pid, bootstrap=self.bootstrap, internal_bootstrap=self.internal_bootstrap,
            port=ports.client, controller_port=ports.controller, internal_port=ports.internal,
            security_protocol=self.security_protocol,
            scram_users=sorted(u.name for u in self.scram_users), version=self.version,
            state_dir=str(self.state_dir), log_path=str(self.log_path), started_at=time.time(),
        )  # fmt: skip
        write_json(self.state_dir / STATE_NAME, asdict(record))

    # -- stop internals

    def _running_pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        record = self.status()
        return record.pid if record else None

    def _is_our_process(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return pid_alive(pid) and cmdline_mentions(pid, str(self.properties_path))
