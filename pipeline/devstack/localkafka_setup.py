"""Everything the local broker needs before a JVM starts: tools, jars and config files.

Why a separate module: resolving Java/Maven, caching the official Kafka jars and rendering
``server.properties`` are pure or one-off steps, testable without a broker; the process
lifecycle lives in :mod:`pipeline.devstack.localkafka`, which re-exports the public names from here.
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
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    with file_lock(version_dir / ".lock"):
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
    write_json(version_dir / MARKER_NAME, {"version": version, "jars": jars})


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
    """KRaft cluster id: 16 random bytes, base64url without padding (as kafka-storage does).

    Never starting with '-', which StorageTool would parse as an option (Kafka's own
    Uuid.randomUuid() redraws for the same reason).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


# --------------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock: two starts on one state dir or cache must not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write via rename so a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
