"""Client construction against an address where no broker listens (real kafka-python)."""

import threading

import pytest
from kafka.errors import KafkaTimeoutError

from pipeline.contract.exceptions import KafkaIOError
from pipeline.devstack.localkafka import free_ports
from pipeline.kafka.clients import make_consumer, new_consumer
from pipeline.kafka.settings import KafkaSettings


def kafka_io_threads() -> int:
    return sum(t.name.startswith("kafka-io") for t in threading.enumerate())


def test_a_consumer_that_cannot_bootstrap_leaves_no_io_thread_behind():
    (port,) = free_ports(1)
    before = kafka_io_threads()
    for _ in range(2):
        with pytest.raises(KafkaTimeoutError):
            new_consumer(bootstrap_servers=f"127.0.0.1:{port}", bootstrap_timeout_ms=300)
    assert kafka_io_threads() == before


def test_sasl_bootstrap_failure_hints_at_credentials():
    (port,) = free_ports(1)
    kafka = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{port}",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="u",
        sasl_password="p",  # type: ignore[arg-type]
        bootstrap_timeout_ms=300,
    )
    with pytest.raises(KafkaIOError, match="wrong credentials look like"):
        make_consumer(kafka, "g", max_poll_records=1)
