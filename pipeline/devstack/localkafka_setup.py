"""Everything the local broker needs before a JVM starts: tools, jars and config files.

Why a separate module: the Kafka jar closure and rendering ``server.properties`` are pure or
one-off steps, testable without a broker; the process lifecycle lives in
:mod:`pipeline.devstack.localkafka`, which re-exports the public names from here. Finding Java and
resolving jars with Maven is shared with the other local JVM services in
:mod:`pipeline.devstack.maven`; this module wraps its errors as :class:`LocalKafkaError`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.devstack import maven
from pipeline.devstack.maven import MARKER_NAME, Jars, file_lock, read_json, tail_lines, write_json

# The shared helpers are re-exported: the broker lifecycle module imports them from here.
__all__ = [
    "MARKER_NAME",
    "Jars",
    "LocalKafkaError",
    "Ports",
    "ScramUser",
    "file_lock",
    "find_java",
    "read_json",
    "resolve_jars",
    "tail_lines",
    "write_json",
]

log = logging.getLogger(__name__)

DEFAULT_VERSION = "4.3.1"
SLF4J_VERSION = "2.0.17"
LOG4J_VERSION = "2.24.3"
ENV_CACHE = "PIPELINE_KAFKA_CACHE"
ENV_STATE_DIR = "PIPELINE_KAFKA_STATE_DIR"
ENV_VERSION = "PIPELINE_KAFKA_VERSION"
HOST = "127.0.0.1"
NODE_ID = 1
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
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


# --------------------------------------------------------------------------- defaults


def cache_root() -> Path:
    """Per-user jar cache root, so every worktree and test run shares one download."""
    return maven.jar_cache(ENV_CACHE, "kafka")


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


# --------------------------------------------------------------------------- tools and jars


@contextlib.contextmanager
def _kafka_errors() -> Iterator[None]:
    """Callers of this module catch LocalKafkaError; the shared Maven module raises its own."""
    try:
        yield
    except maven.MavenError as exc:
        raise LocalKafkaError(str(exc)) from exc


def find_java() -> str:
    """Return a Java 17+ executable; Kafka 4 brokers do not run on older JVMs."""
    with _kafka_errors():
        return maven.find_java()


def parse_java_major(version_output: str) -> int:
    """Major version from ``java -version`` output (``1.8.0_x`` counts as 8)."""
    with _kafka_errors():
        return maven.parse_java_major(version_output)


def _runtime_deps(version: str) -> list[maven.Artifact]:
    return [
        maven.Artifact("org.apache.kafka", "kafka_2.13", validate_version(version)),
        maven.Artifact("org.slf4j", "slf4j-api", SLF4J_VERSION),
        maven.Artifact("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
        maven.Artifact("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
    ]


def render_pom(version: str) -> str:
    """A throwaway POM whose runtime closure is exactly what ``kafka.Kafka`` needs."""
    return maven.render_pom("kafka", version, _runtime_deps(version))


def resolve_jars(version: str, root: Path | None = None, timeout: float = 600.0) -> Jars:
    """Jar dir for ``version``; runs Maven only when no completed download is cached."""
    deps = _runtime_deps(version)
    with _kafka_errors():
        return maven.resolve("kafka", deps, (root or cache_root()) / version, timeout)


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


def redact(text: str, secrets: Sequence[str]) -> str:
    """Blank out passwords and SCRAM credential records before text reaches an error/log."""
    text = _SCRAM_RECORD_RE.sub("UserScramCredentialRecord(<redacted>)", text)
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text
