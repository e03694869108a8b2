"""Pure logic of the local broker launcher; nothing here starts Kafka or runs Maven."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.cli.kafka import kafka_group
from pipeline.devstack import localkafka
from pipeline.devstack import localkafka_setup as kafka_setup
from pipeline.devstack.localkafka import LocalKafka, LocalKafkaError, Ports, ScramUser
from pipeline.devstack.localkafka_jvm import FAST_START_JVM, launch_broker
from tests.support.cli import run_module

VERSION = "4.3.1"


def parse_properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_plaintext_properties_bind_loopback_and_single_replica(tmp_path: Path) -> None:
    props = parse_properties(
        kafka_setup.render_server_properties(Ports(9100, 9101), tmp_path, scram=False)
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9100,CONTROLLER://127.0.0.1:9101"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9100"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9101"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path)
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert not any(key.startswith("sasl") or ".sasl." in key for key in props)


def test_scram_properties_use_sasl_client_listener_and_plaintext_internal(tmp_path: Path) -> None:
    text = kafka_setup.render_server_properties(Ports(9100, 9101, 9102), tmp_path, scram=True)
    props = parse_properties(text)
    assert props["listeners"] == (
        "SASL_PLAINTEXT://127.0.0.1:9100,INTERNAL://127.0.0.1:9102,CONTROLLER://127.0.0.1:9101"
    )
    assert props["listener.security.protocol.map"] == (
        "SASL_PLAINTEXT:SASL_PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
    )
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256,SCRAM-SHA-512"
    for mechanism in ("scram-sha-256", "scram-sha-512"):
        jaas = props[f"listener.name.sasl_plaintext.{mechanism}.sasl.jaas.config"]
        assert jaas == "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    assert "password" not in text


def test_scram_properties_need_an_internal_port(tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match="internal PLAINTEXT port"):
        kafka_setup.render_server_properties(Ports(9100, 9101), tmp_path, scram=True)


def test_extra_properties_override_defaults(tmp_path: Path) -> None:
    extra = {"num.partitions": "4", "auto.create.topics.enable": "false"}
    text = kafka_setup.render_server_properties(Ports(1, 2), tmp_path, scram=False, extra=extra)
    props = parse_properties(text)
    assert props["num.partitions"] == "4"
    assert props["auto.create.topics.enable"] == "false"
    assert [line for line in text.splitlines() if line.startswith("num.partitions=")] == [
        "num.partitions=4"
    ]


def test_property_values_are_escaped_for_latin1_properties_files() -> None:
    assert kafka_setup.escape_property("/data/ü\\x") == "/data/\\u00fc\\\\x"
    assert kafka_setup.escape_property("a\nb") == "a\\nb"
    assert kafka_setup.escape_property("🙂") == "\\ud83d\\ude42"


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = localkafka.free_ports(3)
    assert len(set(ports)) == 3
    assert all(localkafka.port_is_free(port) for port in ports)


def test_listening_port_is_not_free() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not localkafka.port_is_free(port)
    assert localkafka.port_is_free(port)


def test_cluster_id_is_base64url_of_16_bytes_without_padding() -> None:
    cluster_id = kafka_setup.new_cluster_id()
    assert len(cluster_id) == 22
    assert "=" not in cluster_id
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert kafka_setup.new_cluster_id() != cluster_id


def test_cluster_id_never_starts_with_a_dash() -> None:
    """kafka-storage's argument parser reads '-t -abc...' as a missing value, so one broker
    start in 64 failed; Kafka's own Uuid.randomUuid() draws again for the same reason."""
    assert not any(kafka_setup.new_cluster_id().startswith("-") for _ in range(5000))


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
    ],
)
def test_parse_java_major(output: str, major: int) -> None:
    assert kafka_setup.parse_java_major(output) == major


def test_parse_java_major_rejects_garbage() -> None:
    with pytest.raises(LocalKafkaError, match="cannot parse"):
        kafka_setup.parse_java_major("command not found")


@pytest.mark.parametrize("version", ["4.3.1", "3.9.0", "4.1.0-rc1"])
def test_valid_versions(version: str) -> None:
    assert kafka_setup.validate_version(version) == version


@pytest.mark.parametrize("version", ["", "4.3", "latest", "4.3.1</version>", "../4.3.1"])
def test_invalid_versions_are_rejected(version: str) -> None:
    with pytest.raises(LocalKafkaError, match="not a Kafka release version"):
        kafka_setup.validate_version(version)


def test_pom_pins_kafka_and_logging_versions() -> None:
    pom = kafka_setup.render_pom(VERSION)
    assert f"<artifactId>kafka_2.13</artifactId><version>{VERSION}</version>" in pom
    assert f"<artifactId>log4j-core</artifactId><version>{kafka_setup.LOG4J_VERSION}" in pom
    assert "<artifactId>slf4j-api</artifactId>" in pom


def test_scram_user_hides_password_and_validates() -> None:
    user = ScramUser("alice", "pw-123")
    assert "pw-123" not in repr(user)
    with pytest.raises(LocalKafkaError, match="user name"):
        ScramUser("al ice", "pw")
    with pytest.raises(LocalKafkaError, match="must be non-empty") as info:
        ScramUser("alice", "a,b]")
    assert "a,b]" not in str(info.value)


@pytest.mark.parametrize("heap", ["1g -XX:+Bad", "", "lots"])
def test_heap_must_be_a_jvm_size(tmp_path: Path, heap: str) -> None:
    with pytest.raises(LocalKafkaError, match="heap must be a JVM size"):
        LocalKafka(tmp_path, heap=heap)


def test_redact_removes_passwords_and_scram_records() -> None:
    text = "pw=hunter2 UserScramCredentialRecord(name='a', salt=[1, 2]) at version 0 done"
    assert kafka_setup.redact(text, ["hunter2"]) == (
        "pw=<redacted> UserScramCredentialRecord(<redacted>) done"
    )


# --------------------------------------------------------------------------- defaults


def test_cache_root_honours_override_then_xdg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(localkafka.ENV_CACHE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert localkafka.cache_root() == tmp_path / "xdg" / "anomaly-pipeline" / "kafka"
    monkeypatch.setenv(localkafka.ENV_CACHE, str(tmp_path / "mine"))
    assert localkafka.cache_root() == tmp_path / "mine"


def test_state_dir_defaults_to_cwd_and_honours_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(localkafka.ENV_STATE_DIR, raising=False)
    assert LocalKafka().state_dir == tmp_path / ".kafka-local"
    monkeypatch.setenv(localkafka.ENV_STATE_DIR, str(tmp_path / "elsewhere"))
    assert LocalKafka().state_dir == tmp_path / "elsewhere"


# --------------------------------------------------------------------------- jar cache


def fake_cache(root: Path, *, marker: bool, jars: tuple[str, ...] = ("a.jar", "b.jar")) -> Path:
    libs = root / VERSION / "libs"
    libs.mkdir(parents=True)
    for name in jars:
        (libs / name).write_bytes(b"PK")
    if marker:
        payload = {"version": VERSION, "jars": ["a.jar", "b.jar"]}
        (root / VERSION / localkafka.MARKER_NAME).write_text(json.dumps(payload))
    return libs


def test_completed_download_is_reused_without_maven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    libs = fake_cache(tmp_path, marker=True)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no mvn reachable
    jars = localkafka.resolve_jars(VERSION, tmp_path)
    assert jars.libs_dir == libs
    assert jars.downloaded is False


@pytest.mark.parametrize(
    ("marker", "jars"),
    [(False, ("a.jar", "b.jar")), (True, ("a.jar",))],
    ids=["no-marker", "jar-missing"],
)
def test_incomplete_download_is_redone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, marker: bool, jars: tuple[str, ...]
) -> None:
    fake_cache(tmp_path, marker=marker, jars=jars)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(LocalKafkaError, match=r"Maven \(mvn\) not found on PATH") as info:
        localkafka.resolve_jars(VERSION, tmp_path)
    assert "install maven" in str(info.value)


# --------------------------------------------------------------------------- missing tools


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_module("pipeline", "kafka", *args, env=env, cwd=cwd, timeout=60)


def env_with_path(path: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    return env | {"PATH": str(path), localkafka.ENV_CACHE: str(tmp_path / "cache")}


def test_cli_start_without_java_says_what_to_install(tmp_path: Path) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    result = run_cli(
        ["start", "--state-dir", str(tmp_path / "s")], env_with_path(empty_bin, tmp_path), tmp_path
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Java 17+ not found on PATH" in result.stderr
    assert "openjdk-17-jre-headless" in result.stderr


def test_old_java_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_java = tmp_path / "bin" / "java"
    fake_java.parent.mkdir()
    fake_java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake_java.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_java.parent))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(LocalKafkaError, match=r"Java 17\+ required, .* is Java 11"):
        kafka_setup.find_java()


# --------------------------------------------------------------------------- state handling


def test_status_stop_are_quiet_without_a_broker(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "never-started")
    assert broker.status() is None
    assert broker.is_running() is False
    assert broker.stop() is False
    assert not (tmp_path / "never-started").exists()
    with pytest.raises(LocalKafkaError, match="no broker started"):
        _ = broker.bootstrap


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


@pytest.mark.parametrize("pid_kind", ["dead", "reused"])
def test_stale_state_file_counts_as_not_running(tmp_path: Path, pid_kind: str) -> None:
    pid = dead_pid() if pid_kind == "dead" else os.getpid()  # reused: alive, but not Kafka
    record = {
        "pid": pid, "bootstrap": "127.0.0.1:1", "internal_bootstrap": "127.0.0.1:1", "port": 1,
        "controller_port": 2, "internal_port": None, "security_protocol": "PLAINTEXT",
        "scram_users": [], "version": VERSION, "state_dir": str(tmp_path), "log_path": "x",
        "started_at": 0.0,
    }  # fmt: skip
    (tmp_path / localkafka.STATE_NAME).write_text(json.dumps(record))
    broker = LocalKafka(tmp_path)
    assert broker.status() is None
    assert broker.stop() is False
    assert not (tmp_path / localkafka.STATE_NAME).exists()


def test_explicit_port_in_use_fails_before_launch(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(LocalKafkaError, match=f"port {port} on 127.0.0.1 is in use"):
            LocalKafka(tmp_path, port=port).start()


def test_cli_status_and_stop_without_broker(tmp_path: Path) -> None:
    runner = CliRunner()
    status = runner.invoke(kafka_group, ["status", "--state-dir", str(tmp_path)])
    assert status.exit_code == 3
    assert status.output.strip() == "not running"
    as_json = runner.invoke(kafka_group, ["status", "--json", "--state-dir", str(tmp_path)])
    assert json.loads(as_json.output) == {"running": False}
    stop = runner.invoke(kafka_group, ["stop", "--state-dir", str(tmp_path)])
    assert stop.exit_code == 0


def test_cli_scram_user_needs_password_from_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PIPELINE_KAFKA_SCRAM_PASSWORD", raising=False)
    result = CliRunner().invoke(
        kafka_group, ["start", "--scram-user", "alice", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "PIPELINE_KAFKA_SCRAM_PASSWORD" in result.output


def test_kafka_group_is_registered_on_the_pipeline_cli() -> None:
    assert cli.get_command(click.Context(cli), "kafka") is kafka_group


class _Admin:
    """Answers describe_cluster from a script: an exception to raise or a cluster to return."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)

    def describe_cluster(self) -> object:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_peer_not_listening_yet_is_retried_until_the_node_is_unfenced() -> None:
    """On a whole cluster starting at once, the round trip can go to a peer whose port is not
    open yet (CI): connection refused is "not yet", not a failed start."""
    import time

    from kafka.errors import KafkaConnectionError, UnsupportedVersionError

    from pipeline.devstack.localkafka_proc import _unfenced_yet

    up = {"brokers": [{"broker_id": 1, "is_fenced": False}]}
    admin = _Admin(KafkaConnectionError("111 ECONNREFUSED"), up)
    later = time.monotonic() + 60
    assert _unfenced_yet(admin, 1, later) is False
    assert _unfenced_yet(admin, 1, later) is True
    with pytest.raises(KafkaConnectionError):  # past the deadline it is the start's error
        _unfenced_yet(_Admin(KafkaConnectionError("refused")), 1, time.monotonic() - 1)
    with pytest.raises(UnsupportedVersionError):  # never retried: it will not go away
        _unfenced_yet(_Admin(UnsupportedVersionError("no")), 1, later)


@pytest.mark.parametrize("fast_start", [False, True])
def test_fast_start_runs_the_broker_jvm_with_c1_only_jit_and_serial_gc(
    tmp_path: Path, fast_start: bool
) -> None:
    """The suite's brokers (``fast_start``) start sooner; a default one (bench, demo) keeps the
    JVM's defaults. A stand-in ``java`` records the command line it was given."""
    java = tmp_path / "java"
    java.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "argv"}\n')
    java.chmod(0o755)
    proc, _ = launch_broker(
        str(java), tmp_path / "libs", tmp_path, "256m", VERSION, fast_start=fast_start
    )
    assert proc.wait(10) == 0
    argv = (tmp_path / "argv").read_text().split()
    assert [flag in argv for flag in FAST_START_JVM] == [fast_start] * 2
    assert argv[-2:] == ["kafka.Kafka", str(tmp_path / "server.properties")]
