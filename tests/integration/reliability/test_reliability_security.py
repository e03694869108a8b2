"""SASL/SCRAM end to end on a broker of this module's own (a SCRAM user made for the test):
a worker process at DEBUG level (its alerts, scores and dead letters), the audit and the
trainer's announcement work with the right password and fail clearly with a wrong one, and no
log line, settings repr or dump ever holds the password, not even kafka-python's own DEBUG
output (it prints its whole configuration). The suite's only SCRAM worker test."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kafka import KafkaProducer
from pydantic import SecretStr

from pipeline.common.logs import configure_logging
from pipeline.contract.announce import decode_announcement
from pipeline.contract.exceptions import AnnounceError
from pipeline.devstack.localkafka import LocalKafka, ScramUser, free_ports
from pipeline.kafka.settings import KafkaSettings
from pipeline.kafka.topics import ensure_topics
from tests.conftest import FAST_START, start_or_fail
from tests.support.cli import run_module
from tests.support.kafka import read_all
from tests.support.training import write_sensors
from tests.support.workers import NAME, numeric_records, publish
from tests.support.workers import settings as worker_settings
from trainer.fit import fit
from trainer.settings import load_trainer_settings

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("torch_one_thread")]
PASSWORD = "Scr4m-only-4-this-test"
WRONG = "not-the-Scr4m-password"


@pytest.fixture(scope="module")
def scram(tmp_path_factory) -> Iterator[LocalKafka]:
    broker = LocalKafka(
        tmp_path_factory.mktemp("kafka-scram"),
        scram_users=[ScramUser("svc", PASSWORD)],
        fast_start=FAST_START,
    )
    start_or_fail(broker)
    try:
        yield broker
    finally:
        broker.stop()


def kafka_settings(broker: LocalKafka, password: str = PASSWORD) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=SecretStr(password),
        bootstrap_timeout_ms=5_000,
        request_timeout_ms=5_000,  # bounds the trainer's announcement
    )


def sasl_env(broker: LocalKafka, password: str, prefix: str = "PIPELINE_") -> dict[str, str]:
    return {
        f"{prefix}KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        f"{prefix}KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        f"{prefix}KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        f"{prefix}KAFKA__SASL_USERNAME": "svc",
        f"{prefix}KAFKA__SASL_PASSWORD": password,
        f"{prefix}KAFKA__BOOTSTRAP_TIMEOUT_MS": "5000",
    }


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "TRAINER_"))}
    return run_module(*args, env=base | {"OMP_NUM_THREADS": "1"} | env, cwd=cwd, timeout=180)


def test_a_debug_level_worker_and_the_audit_work_over_scram_and_never_log_the_password(
    scram, tmp_path
):
    publish(tmp_path)
    source = "secure-records"
    client_config = scram.client_config("svc", mechanism="SCRAM-SHA-512")
    producer = KafkaProducer(**client_config, acks="all")
    try:
        for rec in numeric_records(200):
            producer.send(source, key=rec["id"].encode(), value=msgspec.json.encode(rec))
        producer.send(source, key=b"bad", value=b"{not json")
        producer.flush(30)
    finally:
        producer.close()
    env = sasl_env(scram, PASSWORD) | {
        "PIPELINE_INPUT_TOPIC": source,
        "PIPELINE_SCORES_TOPIC": f"{source}-scores",
        "PIPELINE_DLQ_TOPIC": f"{source}-dlq",
        "PIPELINE_ALERT_TOPIC": f"{source}-alerts",
        "PIPELINE_GROUP_ID": "secure",
        "PIPELINE_START_FROM": "earliest",
        "PIPELINE_MODEL_STORE": str(tmp_path),
        "PIPELINE_MODEL_NAME": NAME,
        "PIPELINE_ID_FIELD": "id",
        "PIPELINE_DEVICE": "cpu",
        "PIPELINE_METRICS_HOST": "127.0.0.1",
        "PIPELINE_METRICS_PORT": str(free_ports(1)[0]),
        "PIPELINE_LOG_LEVEL": "DEBUG",
        "PIPELINE_LOG_FORMAT": "text",
    }
    run = run_cli(["pipeline", "run", "--idle-timeout", "3"], env, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = msgspec.json.decode(run.stdout.strip().splitlines()[-1])
    assert summary["consumed"] == 201
    assert PASSWORD not in run.stderr + run.stdout
    # the alerts reached their topic over SCRAM, every one the worker counted
    alerts = read_all("", f"{source}-alerts", config=client_config)
    assert len(alerts) == summary["anomalies"] > 0
    # the worker's settings never show the password
    settings = worker_settings(scram.bootstrap, tmp_path, source, kafka=kafka_settings(scram))
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.model_dump())

    audit = run_cli(["pipeline", "audit", "--json"], env, tmp_path)
    assert audit.returncode == 0, audit.stderr[-3000:]
    report = msgspec.json.decode(audit.stdout)
    assert (report["records"], report["scored"], report["dead_lettered"], report["lost"]) == (
        201, 200, 1, 0,
    )  # fmt: skip
    assert PASSWORD not in audit.stderr + audit.stdout

    wrong = run_cli(
        ["pipeline", "run", "--idle-timeout", "3"], env | sasl_env(scram, WRONG), tmp_path
    )
    assert wrong.returncode == 4, wrong.stderr[-3000:]
    assert "wrong credentials" in wrong.stderr
    assert WRONG not in wrong.stderr + wrong.stdout


@pytest.fixture(scope="module")
def sensors(tmp_path_factory) -> str:
    return str(write_sensors(tmp_path_factory.mktemp("sensors"), 600))


def test_the_trainer_announces_over_scram_and_a_wrong_password_says_so(
    scram, sensors, tmp_path, caplog
):
    quick: dict[str, Any] = {"epochs": 1, "hidden_dims": "8", "latent_dim": 2, "name": "s"}
    base = {"data": sensors, "model_store": str(tmp_path), "announce_topic": "models", **quick}
    with caplog.at_level(logging.DEBUG):
        manifest = fit(load_trainer_settings(kafka=kafka_settings(scram), **base))
    consumer_config = scram.client_config("svc", mechanism="SCRAM-SHA-512")
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        "models", **consumer_config, auto_offset_reset="earliest", consumer_timeout_ms=10_000
    )
    try:
        announced = [decode_announcement(r.value).version for r in consumer]
    finally:
        consumer.close()
    assert manifest.version in announced
    assert PASSWORD not in caplog.text

    wrong = load_trainer_settings(kafka=kafka_settings(scram, WRONG), **base)
    with caplog.at_level(logging.DEBUG), pytest.raises(AnnounceError) as info:
        fit(wrong)
    assert "wrong credentials" in str(info.value)
    assert WRONG not in str(info.value) + caplog.text


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    saved = (root.handlers[:], root.level, kafka.level)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        kafka.setLevel(saved[2])


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_kafka_python_debug_output_is_redacted_even_when_turned_on(
    scram, restore_logging, monkeypatch, fmt
):
    """kafka-python's admin client logs ``Starting KafkaAdminClient with configuration:
    {... 'sasl_plain_password': ...}`` at DEBUG. Our logging keeps its loggers at WARNING, and
    if someone turns them up while chasing a connection problem, secrets are still masked."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("DEBUG", fmt)
    logging.getLogger("kafka").setLevel(logging.DEBUG)
    ensure_topics(kafka_settings(scram), ["redaction-check"])
    logging.getLogger("pipeline.test").info("config", extra={"password": PASSWORD})
    text = stream.getvalue()
    assert "Starting KafkaAdminClient with configuration" in text  # it did log its config
    assert PASSWORD not in text
    assert "***" in text
