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

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.devstack.localkafka_setup import (
    DEFAULT_VERSION,
    ENV_CACHE,
    ENV_STATE_DIR,
    ENV_VERSION,
    HOST,
    MARKER_NAME,
    NODE_ID,
    SCRAM_MECHANISMS,
    LocalKafkaError,
    Ports,
    ScramUser,
    cache_root,
    default_state_dir,
    default_version,
    file_lock,
    find_java,
    new_cluster_id,
    read_json,
    redact,
    render_log4j2,
    render_server_properties,
    resolve_jars,
    tail_lines,
    validate_version,
    write_json,
)
from pipeline.kafka.construct import construct

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

# For the short-lived StorageTool only: C1-only JIT and serial GC start faster; the broker keeps
# the JVM defaults so throughput measured against it stays representative.
FAST_TOOL_JVM = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
STATE_NAME = "broker.json"
LAYOUT_NAME = "layout.json"


@dataclass(frozen=True)
class StartTiming:
    """How long ``start`` took: ``seconds`` from the call to ready, ``jvm_seconds`` from launch."""

    seconds: float
    download_seconds: float
    downloaded: bool
    jvm_seconds: float = 0.0
    adopted: bool = False


@dataclass(frozen=True)
class BrokerRecord:
    """What ``broker.json`` says about a running broker (written after launch)."""

    pid: int
    bootstrap: str
    internal_bootstrap: str
    port: int
    controller_port: int
    internal_port: int | None
    security_protocol: str
    scram_users: list[str]
    version: str
    state_dir: str
    log_path: str
    started_at: float


# --------------------------------------------------------------------------- ports & processes


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


def _cmdline_mentions(pid: int, needle: str) -> bool:
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


# --------------------------------------------------------------------------- the broker


class LocalKafka:
    """One local broker bound to a state directory; restartable on the same port and data.

    ``start`` returns once a Kafka admin round trip succeeds; ``stop`` is idempotent. Another
    process (the CLI) can stop or inspect a broker through the same state directory.
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
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.state_dir = self.state_dir.expanduser().resolve()  # pid checks match on this path
        self.version = validate_version(version or default_version())
        self.scram_users = tuple(scram_users or ())
        self.cache_dir = cache_dir
        self.heap = _validate_heap(heap)
        self.extra_properties = dict(extra_properties or {})
        self.last_start: StartTiming | None = None
        self.last_stop_forced = False
        self._requested_port = port
        self._ports: Ports | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

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
        config: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        if not self.scram_users:
            return config
        chosen = next((u for u in self.scram_users if user in (None, u.name)), None)
        if chosen is None:
            raise LocalKafkaError(f"no SCRAM user {user!r} on this broker")
        return config | {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": chosen.name,
            "sasl_plain_password": chosen.password,
        }

    # -- lifecycle

    def start(self, timeout: float = 60.0) -> StartTiming:
        """Start (or adopt an already running) broker; ``timeout`` bounds JVM launch → ready.

        The first start of a version also downloads jars (Maven has its own 10 min limit).
        """
        began = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.state_dir / ".lock"):
            if self._adopt_running():
                self.last_start = StartTiming(time.monotonic() - began, 0.0, False, adopted=True)
                return self.last_start
            ports = self._plan_ports()
            java = find_java()
            jars = resolve_jars(self.version, self.cache_dir)
            self._prepare(java, jars.libs_dir, ports)
            jvm_seconds = self._launch_and_wait(java, jars.libs_dir, timeout)
        timing = StartTiming(time.monotonic() - began, jars.seconds, jars.downloaded, jvm_seconds)
        log.info(
            "kafka.ready bootstrap=%s pid=%s start_to_ready_s=%.2f jvm_to_ready_s=%.2f "
            "download_s=%.2f cold_cache=%s",
            self.bootstrap, self._proc.pid if self._proc else None, timing.seconds,
            jvm_seconds, jars.seconds, jars.downloaded,
        )  # fmt: skip
        self.last_start = timing
        return timing

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
            self.last_stop_forced = not _terminate(pid, self._proc, timeout)
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
        record = _read_record(self.state_dir / STATE_NAME)
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
        previous = self._ports or _read_ports(self.state_dir / LAYOUT_NAME)
        client = self._requested_port or (previous.client if previous else None)
        if client is not None and not port_is_free(client):
            raise LocalKafkaError(
                f"port {client} on {HOST} is in use; pick another --port or stop what holds it"
            )
        taken = {client} if client else set()
        client = client or _pick_port(taken)
        controller = _keep_or_pick(previous.controller if previous else None, taken | {client})
        internal = None
        if self.scram_users:
            old = previous.internal if previous else None
            internal = _keep_or_pick(old, taken | {client, controller})
        return Ports(client, controller, internal)

    def _prepare(self, java: str, libs: Path, ports: Ports) -> None:
        """Write configs and format storage once; a formatted data dir is kept as is."""
        formatted = (self.data_dir / "meta.properties").exists()
        layout = read_json(self.state_dir / LAYOUT_NAME) or {}
        known_users = sorted(layout.get("scram_users", [])) if formatted else []
        missing = sorted({u.name for u in self.scram_users} - set(known_users))
        if formatted and missing:
            raise LocalKafkaError(
                f"{self.data_dir} was formatted without SCRAM users {missing}; users can only be "
                "added at format time, so use a fresh --state-dir"
            )
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

    def _jvm_base(self, libs: Path) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.state_dir}",
            "-Djava.awt.headless=true",
            "-cp",
            str(libs / "*"),  # the JVM expands this classpath wildcard itself
        ]

    def _format(self, java: str, libs: Path) -> None:
        """Run kafka-storage format; SCRAM users become part of the bootstrap metadata.

        The passwords appear on StorageTool's argv for about a second (its only interface);
        they are never logged, and its output is redacted before it can reach an error.
        """
        cmd = [java, "-Xmx256m", *FAST_TOOL_JVM, *self._jvm_base(libs), "kafka.tools.StorageTool"]
        cmd += ["format", "-t", new_cluster_id(), "-c", str(self.properties_path)]
        for user in self.scram_users:
            for mechanism in SCRAM_MECHANISMS:
                cmd += ["--add-scram", f"{mechanism}=[name={user.name},password={user.password}]"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalKafkaError(
                f"kafka-storage format did not run: {type(exc).__name__}"
            ) from None
        if proc.returncode != 0:
            output = redact(proc.stdout + proc.stderr, [u.password for u in self.scram_users])
            raise LocalKafkaError(
                f"kafka-storage format failed (exit {proc.returncode}); output tail:\n"
                f"{tail_lines(output)}"
            )
        log.info("kafka.formatted data_dir=%s scram_users=%s", self.data_dir, len(self.scram_users))

    def _launch_and_wait(self, java: str, libs: Path, timeout: float) -> float:
        """Launch the JVM and wait for readiness; returns launch-to-ready seconds."""
        launched = time.monotonic()
        proc = self._launch(java, libs)
        try:
            self._write_record(proc.pid)
            wait_until_ready(proc, self._probe_ports(), launched + timeout)
            return time.monotonic() - launched
        except BaseException as exc:
            _terminate(proc.pid, proc, 10.0)
            (self.state_dir / STATE_NAME).unlink(missing_ok=True)
            self._proc = None
            if isinstance(exc, LocalKafkaError):
                raise LocalKafkaError(
                    f"{exc}\n--- {self.log_path} (tail) ---\n{self.log_tail()}"
                ) from exc
            raise

    def _launch(self, java: str, libs: Path) -> subprocess.Popen[bytes]:
        """Start the JVM detached (own session), stdout+stderr appended to ``kafka.log``."""
        cmd = [java, "-Xms128m", f"-Xmx{self.heap}", "-XX:+ExitOnOutOfMemoryError"]
        cmd += [*self._jvm_base(libs), "kafka.Kafka", str(self.properties_path)]
        with self.log_path.open("ab") as out:
            self._log_offset = out.tell()
            out.write(f"=== launching Kafka {self.version} at {time.ctime()} ===\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.state_dir, start_new_session=True,
            )  # fmt: skip
        self._proc = proc
        log.info(
            "kafka.launched pid=%s bootstrap=%s log=%s", proc.pid, self.bootstrap, self.log_path
        )
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
        return pid_alive(pid) and _cmdline_mentions(pid, str(self.properties_path))


# --------------------------------------------------------------------------- module helpers


def _validate_heap(heap: str) -> str:
    """Accept only a size like ``512m``: the value is spliced into the JVM's argv."""
    if not re.fullmatch(r"\d+[kKmMgG]?", heap):
        raise LocalKafkaError(f"heap must be a JVM size such as 512m or 1g, not {heap!r}")
    return heap


def _read_record(path: Path) -> BrokerRecord | None:
    data = read_json(path)
    if data is None:
        return None
    try:
        return BrokerRecord(**data)
    except TypeError:
        return None  # written by an incompatible version: treat as stale


def _read_ports(path: Path) -> Ports | None:
    data = read_json(path)
    if data is None:
        return None
    try:
        return Ports(int(data["client"]), int(data["controller"]), data.get("internal"))
    except (KeyError, TypeError, ValueError):
        return None


def _pick_port(taken: set[int]) -> int:
    while True:
        port = free_ports(1)[0]
        if port not in taken:
            return port


def _keep_or_pick(preferred: int | None, taken: set[int]) -> int:
    if preferred is not None and preferred not in taken and port_is_free(preferred):
        return preferred
    return _pick_port(taken)


def wait_until_ready(proc: subprocess.Popen[bytes], ports: Sequence[int], deadline: float) -> None:
    """Block until every port accepts TCP and an admin round trip on ``ports[0]`` sees us.

    An open port alone is not enough: the broker must have registered with its controller and
    be unfenced, otherwise the first topic creation of a test can still fail.
    """
    for port in ports:
        _wait_for_port(proc, port, deadline)
    _wait_for_registration(proc, f"{HOST}:{ports[0]}", deadline)


def _check_alive(proc: subprocess.Popen[bytes]) -> None:
    code = proc.poll()
    if code is not None:
        raise LocalKafkaError(f"Kafka JVM (pid {proc.pid}) exited with code {code} during start")


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
    while True:
        _check_alive(proc)
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise LocalKafkaError(f"Kafka did not open {HOST}:{port} before the start timeout")
        time.sleep(0.1)


def _wait_for_registration(proc: subprocess.Popen[bytes], address: str, deadline: float) -> None:
    from kafka.errors import KafkaError

    remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
    try:
        with open_admin(
            address, bootstrap_timeout_ms=remaining_ms, request_timeout_ms=5000
        ) as admin:
            while not _cluster_ready(admin.describe_cluster()):
                _check_alive(proc)
                if time.monotonic() > deadline:
                    raise LocalKafkaError(f"broker at {address} never reported itself unfenced")
                time.sleep(0.1)
    except KafkaError as exc:
        _check_alive(proc)
        raise LocalKafkaError(f"Kafka admin round trip to {address} failed: {exc!r}") from exc


def _cluster_ready(cluster: Mapping[str, Any]) -> bool:
    brokers = cluster.get("brokers") or []
    return any(b.get("broker_id") == NODE_ID and not b.get("is_fenced") for b in brokers)


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """SIGTERM, wait, then SIGKILL; True when the process exited on SIGTERM alone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_exit(pid, proc, timeout):
        return True
    log.warning("kafka.stop.sigkill pid=%s after_s=%.0f", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_exit(pid, proc, 10.0):
        raise LocalKafkaError(f"Kafka JVM pid {pid} survived SIGKILL")
    return False


def _wait_exit(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
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
