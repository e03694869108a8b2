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

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_VERSION = "4.3.1"
SLF4J_VERSION = "2.0.17"
LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
ENV_CACHE = "PIPELINE_KAFKA_CACHE"
ENV_STATE_DIR = "PIPELINE_KAFKA_STATE_DIR"
ENV_VERSION = "PIPELINE_KAFKA_VERSION"
HOST = "127.0.0.1"
NODE_ID = 1
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
MIN_JAVA = 17
JAVA_HINT = "install openjdk-17-jre-headless (Debian/Ubuntu) or a JDK 17+ from adoptium.net"
MAVEN_HINT = "install maven (Debian/Ubuntu: apt-get install maven) or get it from maven.apache.org"
MARKER_NAME = "download-complete.json"
STATE_NAME = "broker.json"
LAYOUT_NAME = "layout.json"

_VERSION_RE = re.compile(r"\d+\.\d+\.\d+(?:-[A-Za-z0-9.]+)?")
_SCRAM_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_SCRAM_PASSWORD_FORBIDDEN = frozenset(',[]"=\\') | frozenset(" \t\r\n")
_SCRAM_RECORD_RE = re.compile(r"UserScramCredentialRecord\(.*?\) at version \d+")


class LocalKafkaError(RuntimeError):
    """The local broker could not be resolved, started or stopped; the message says why."""


@dataclass(frozen=True)
class ScramUser:
    """A SASL/SCRAM user written into the KRaft bootstrap metadata when storage is formatted."""

    name: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not _SCRAM_NAME_RE.fullmatch(self.name):
            raise LocalKafkaError(f"SCRAM user name {self.name!r} must match [A-Za-z0-9._-]+")
        if not self.password or _SCRAM_PASSWORD_FORBIDDEN & set(self.password):
            raise LocalKafkaError(
                f"SCRAM password of {self.name!r} must be non-empty and free of whitespace and "
                "of , [ ] \" = \\ (kafka-storage's --add-scram syntax cannot carry them)"
            )


@dataclass(frozen=True)
class Ports:
    """Loopback ports of one broker; ``internal`` exists only when clients use SASL."""

    client: int
    controller: int
    internal: int | None = None


@dataclass(frozen=True)
class Jars:
    """A resolved jar directory and whether this call had to run Maven for it."""

    libs_dir: Path
    downloaded: bool
    seconds: float


@dataclass(frozen=True)
class StartTiming:
    """How long ``start`` took; ``seconds`` spans jar resolution through readiness."""

    seconds: float
    download_seconds: float
    downloaded: bool
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


# --------------------------------------------------------------------------- defaults


def cache_root() -> Path:
    """Per-user jar cache root, so every worktree and test run shares one download."""
    override = os.environ.get(ENV_CACHE)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "anomaly-pipeline" / "kafka"


def default_state_dir() -> Path:
    """Per-checkout state dir, so parallel worktrees run separate brokers."""
    override = os.environ.get(ENV_STATE_DIR)
    return Path(override).expanduser() if override else Path.cwd() / ".kafka-local"


def default_version() -> str:
    """The Kafka release to run; one place to bump it, env for trying another."""
    return os.environ.get(ENV_VERSION) or DEFAULT_VERSION


def validate_version(version: str) -> str:
    """Reject anything but a release number: it ends up in a pom.xml and a cache path."""
    if not _VERSION_RE.fullmatch(version):
        raise LocalKafkaError(f"not a Kafka release version: {version!r} (expected e.g. 4.3.1)")
    return version


# --------------------------------------------------------------------------- tools


def find_java() -> str:
    """Return a Java 17+ executable; Kafka 4 brokers do not run on older JVMs."""
    java = _java_candidate()
    if java is None:
        raise LocalKafkaError(f"Java {MIN_JAVA}+ not found on PATH or in $JAVA_HOME: {JAVA_HINT}")
    major = parse_java_major(_java_version_output(java))
    if major < MIN_JAVA:
        raise LocalKafkaError(f"Java {MIN_JAVA}+ required, {java} is Java {major}: {JAVA_HINT}")
    return java


def _java_candidate() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        if java.is_file() and os.access(java, os.X_OK):
            return str(java)
    return shutil.which("java")


def _java_version_output(java: str) -> str:
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalKafkaError(f"cannot run `{java} -version`: {exc}") from exc
    return proc.stderr + proc.stdout


def parse_java_major(version_output: str) -> int:
    """Major version from ``java -version`` output (``1.8.0_x`` counts as 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        raise LocalKafkaError(f"cannot parse `java -version` output: {version_output[:200]!r}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_maven(version: str) -> str:
    """Return ``mvn``; it is needed only for the first start of each Kafka version."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            f"Maven (mvn) not found on PATH; it is needed once to download the Kafka {version} "
            f"jars: {MAVEN_HINT}"
        )
    return mvn


# --------------------------------------------------------------------------- jars


def render_pom(version: str) -> str:
    """A throwaway POM whose runtime closure is exactly what ``kafka.Kafka`` needs."""
    deps = [
        ("org.apache.kafka", "kafka_2.13", validate_version(version)),
        ("org.slf4j", "slf4j-api", SLF4J_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
    ]
    body = "".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>\n"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>local.anomaly-pipeline</groupId><artifactId>kafka-runtime</artifactId>\n"
        f"  <version>{version}</version><packaging>pom</packaging>\n"
        f"  <dependencies>\n{body}  </dependencies>\n</project>\n"
    )


def resolve_jars(version: str, root: Path | None = None, timeout: float = 600.0) -> Jars:
    """Jar dir for ``version``; runs Maven only when no completed download is cached.

    A marker listing the jars is written after Maven succeeds, so an interrupted download is
    detected and redone. A file lock keeps concurrent starts from downloading twice.
    """
    version_dir = (root or cache_root()) / validate_version(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(version_dir / ".lock"):
        if _download_complete(version_dir):
            log.debug("kafka.jars.cached version=%s dir=%s", version, version_dir)
            return Jars(version_dir / "libs", downloaded=False, seconds=0.0)
        started = time.monotonic()
        _download(version, version_dir, timeout)
        seconds = time.monotonic() - started
    log.info("kafka.jars.downloaded version=%s dir=%s seconds=%.1f", version, version_dir, seconds)
    return Jars(version_dir / "libs", downloaded=True, seconds=seconds)


def _download_complete(version_dir: Path) -> bool:
    try:
        jars = json.loads((version_dir / MARKER_NAME).read_text())["jars"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    libs = version_dir / "libs"
    return bool(jars) and all((libs / str(name)).is_file() for name in jars)


def _download(version: str, version_dir: Path, timeout: float) -> None:
    mvn = find_maven(version)
    (version_dir / MARKER_NAME).unlink(missing_ok=True)
    partial, libs = version_dir / "libs.partial", version_dir / "libs"
    shutil.rmtree(partial, ignore_errors=True)
    pom = version_dir / "pom.xml"
    pom.write_text(render_pom(version))
    log.info("kafka.jars.download version=%s dir=%s", version, version_dir)
    _run_maven(mvn, pom, partial, version, timeout)
    jars = sorted(p.name for p in partial.glob("*.jar"))
    if f"kafka_2.13-{version}.jar" not in jars:
        raise LocalKafkaError(f"Maven finished but {partial} lacks kafka_2.13-{version}.jar")
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    _write_json(version_dir / MARKER_NAME, {"version": version, "jars": jars})


def _run_maven(mvn: str, pom: Path, dest: Path, version: str, timeout: float) -> None:
    cmd = [
        mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies", f"-DoutputDirectory={dest}",
        "-DincludeScope=runtime",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise LocalKafkaError(
            f"Maven did not finish downloading Kafka {version} within {timeout:.0f}s; "
            f"output tail:\n{tail_lines(output)}"
        ) from exc
    except OSError as exc:
        raise LocalKafkaError(f"cannot run Maven ({mvn}): {exc}") from exc
    if proc.returncode != 0:
        raise LocalKafkaError(
            f"Maven failed (exit {proc.returncode}) resolving org.apache.kafka:kafka_2.13:"
            f"{version}; output tail:\n{tail_lines(proc.stdout + proc.stderr)}"
        )


# --------------------------------------------------------------------------- config files


def render_server_properties(
    ports: Ports, data_dir: Path, *, scram: bool, extra: Mapping[str, str] | None = None
) -> str:
    """``server.properties`` for a combined broker+controller node; ``extra`` wins on clashes."""
    props = _base_properties(ports, data_dir)
    props |= _scram_listeners(ports) if scram else _plaintext_listeners(ports)
    props |= dict(extra or {})
    return "".join(f"{key}={escape_property(value)}\n" for key, value in props.items())


def _base_properties(ports: Ports, data_dir: Path) -> dict[str, str]:
    # Single replica everywhere, and one partition for the internal topics so the first consumer
    # group or transaction does not wait for 50 partitions to be created.
    return {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{HOST}:{ports.controller}",
        "controller.listener.names": "CONTROLLER",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }


def _plaintext_listeners(ports: Ports) -> dict[str, str]:
    return {
        "listeners": f"PLAINTEXT://{HOST}:{ports.client},CONTROLLER://{HOST}:{ports.controller}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{ports.client}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
    }


def _scram_listeners(ports: Ports) -> dict[str, str]:
    if ports.internal is None:
        raise LocalKafkaError("a SCRAM broker needs an internal PLAINTEXT port")
    client, internal = (
        f"SASL_PLAINTEXT://{HOST}:{ports.client}",
        f"INTERNAL://{HOST}:{ports.internal}",
    )
    login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    props = {
        "listeners": f"{client},{internal},CONTROLLER://{HOST}:{ports.controller}",
        "advertised.listeners": f"{client},{internal}",
        "listener.security.protocol.map": (
            "SASL_PLAINTEXT:SASL_PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "inter.broker.listener.name": "INTERNAL",
        "sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
    }
    for mechanism in SCRAM_MECHANISMS:
        props[f"listener.name.sasl_plaintext.{mechanism.lower()}.sasl.jaas.config"] = login
    return props


def escape_property(value: str) -> str:
    """Escape a value for java.util.Properties, which Kafka reads as ISO-8859-1."""
    out = []
    for char in value.replace("\\", "\\\\"):
        if char == "\n":
            out.append("\\n")
        elif ord(char) > 0x7E:
            units = char.encode("utf-16-be")
            out.extend(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
        else:
            out.append(char)
    return "".join(out)


def render_log4j2() -> str:
    """Broker logging: INFO to stdout, which ``start`` redirects into ``kafka.log``.

    log4j's own shutdown hook would stop logging before Kafka's hook has finished, hiding the
    shutdown messages that show a stop was clean; Kafka flushes nothing log4j-specific itself.
    """
    return (
        "status = warn\n"
        "shutdownHook = disable\n"
        "appender.out.type = Console\n"
        "appender.out.name = OUT\n"
        "appender.out.layout.type = PatternLayout\n"
        "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.out.ref = OUT\n"
    )


def new_cluster_id() -> str:
    """KRaft cluster id: 16 random bytes, base64url without padding (as kafka-storage does)."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


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


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock: two starts on one state dir or cache must not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- small helpers


def tail_lines(text: str, lines: int = 40) -> str:
    """Last ``lines`` lines of ``text``: enough context for an error message."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def redact(text: str, secrets: Sequence[str]) -> str:
    """Blank out passwords and SCRAM credential records before text reaches an error/log."""
    text = _SCRAM_RECORD_RE.sub("UserScramCredentialRecord(<redacted>)", text)
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write via rename so a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def open_admin(bootstrap: str, **config: Any) -> Iterator[Any]:
    """A kafka-python ``KafkaAdminClient`` that is closed on exit, even if its constructor fails.

    kafka-python 3.0.x starts an IO thread before it bootstraps; when bootstrapping fails the
    constructor raises and leaves that thread and its sockets behind. We capture the network
    client through the ``kafka_client`` factory hook so it can be shut down in that case too.
    """
    from kafka import KafkaAdminClient  # noqa: PLC0415  (keeps `python -m pipeline` light)
    from kafka.net.compat import KafkaNetClient  # noqa: PLC0415

    created: list[Any] = []

    def factory(**kwargs: Any) -> Any:
        client = KafkaNetClient(**kwargs)
        created.append(client)
        return client

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, kafka_client=factory, **config)
    except Exception:
        for client in created:
            _shutdown_net_client(client)
        raise
    try:
        yield admin
    finally:
        admin.close()


def _shutdown_net_client(client: Any) -> None:
    """Mirror ``KafkaAdminClient.close`` for a client whose admin never finished constructing."""
    with contextlib.suppress(Exception):
        client.close()
    with contextlib.suppress(Exception):
        # No public handle on the IO loop exists; admin.close() does exactly this.
        client._net.stop(timeout_ms=5000)


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
        self.state_dir = self.state_dir.expanduser().absolute()
        self.version = validate_version(version or default_version())
        self.scram_users = tuple(scram_users or ())
        self.cache_dir = cache_dir
        self.heap = heap
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
        with _file_lock(self.state_dir / ".lock"):
            if self._adopt_running():
                self.last_start = StartTiming(time.monotonic() - began, 0.0, False, adopted=True)
                return self.last_start
            ports = self._plan_ports()
            java = find_java()
            jars = resolve_jars(self.version, self.cache_dir)
            self._prepare(java, jars.libs_dir, ports)
            self._launch_and_wait(java, jars.libs_dir, timeout)
        self.last_start = StartTiming(time.monotonic() - began, jars.seconds, jars.downloaded)
        log.info(
            "kafka.ready bootstrap=%s pid=%s start_to_ready_s=%.2f download_s=%.2f cold_cache=%s",
            self.bootstrap, self._proc.pid if self._proc else None, self.last_start.seconds,
            jars.seconds, jars.downloaded,
        )  # fmt: skip
        return self.last_start

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the broker, SIGKILL after ``timeout``; True if one was running."""
        if not self.state_dir.is_dir():
            return False
        with _file_lock(self.state_dir / ".lock"):
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
        layout = _read_json(self.state_dir / LAYOUT_NAME) or {}
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
        _write_json(self.state_dir / LAYOUT_NAME, {**asdict(ports), "scram_users": known_users})
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
        cmd = [java, "-Xmx256m", *self._jvm_base(libs), "kafka.tools.StorageTool", "format"]
        cmd += ["-t", new_cluster_id(), "-c", str(self.properties_path)]
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

    def _launch_and_wait(self, java: str, libs: Path, timeout: float) -> None:
        proc = self._launch(java, libs)
        try:
            self._write_record(proc.pid)
            wait_until_ready(proc, self._probe_ports(), time.monotonic() + timeout)
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
        _write_json(self.state_dir / STATE_NAME, asdict(record))

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


def _read_record(path: Path) -> BrokerRecord | None:
    data = _read_json(path)
    if data is None:
        return None
    try:
        return BrokerRecord(**data)
    except TypeError:
        return None  # written by an incompatible version: treat as stale


def _read_ports(path: Path) -> Ports | None:
    data = _read_json(path)
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
    from kafka.errors import KafkaError  # noqa: PLC0415

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
