"""Replication of the topics the worker creates, and its warning about existing ones, on the
local three-node cluster and on the single broker."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from pipeline.devstack.localcluster import LocalKafkaCluster
from pipeline.devstack.localkafka import open_admin
from pipeline.kafka.settings import KafkaSettings
from pipeline.kafka.topics import TopicDurability, create_missing, ensure_topics
from tests.support.kafka import create_topic
from tests.support.workers import wait_for

pytestmark = pytest.mark.kafka


def durability(admin: Any, topic: str) -> tuple[int, int]:
    """(replicas, min.insync.replicas) of ``topic``, once every broker knows it (the one that
    answers may not have seen a topic created a moment ago)."""
    admin.wait_for_topics([topic], timeout_ms=30_000)
    found: tuple[int, int] = wait_for(lambda: _durability(admin, topic), 30, f"config of {topic}")
    return found


def _durability(admin: Any, topic: str) -> tuple[int, int] | None:
    (described,) = admin.describe_topics([topic])
    replicas = {len(p["replica_nodes"]) for p in described["partitions"]}
    resource = ConfigResource(
        ConfigResourceType.TOPIC, topic, configs={"min.insync.replicas": None}
    )
    configs = admin.describe_configs([resource], config_filter="all")
    entries = [c for t, c in next(iter(configs.values())).items() if t == topic]
    value = entries[0].get("min.insync.replicas") if entries else None
    if value is None or not replicas:
        return None
    return replicas.pop(), int(value["value"] if isinstance(value, dict) else value)


def said_by_topics(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What ``pipeline.kafka.topics`` logged. caplog also holds other loggers' warnings, such as
    kafka-python's "Task ran for 0.122s (>0.100s threshold)" from its event loop on a loaded
    machine (it failed the single-broker test in CI once)."""
    return [r for r in caplog.records if r.name == "pipeline.kafka.topics"]


def test_created_topics_get_three_replicas_and_min_isr_two_on_three_nodes(
    kafka_cluster: LocalKafkaCluster, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap)
    topic = f"out-{uuid.uuid4().hex}"
    caplog.set_level(logging.WARNING, logger="pipeline.kafka.topics")
    assert ensure_topics(kafka, [topic], partitions=2) == [topic]
    with open_admin(kafka_cluster.bootstrap) as admin:
        assert durability(admin, topic) == (3, 2)
    assert ensure_topics(kafka, [topic]) == []  # exists, durable: nothing said
    assert not said_by_topics(caplog)


def test_configured_durability_wins(kafka_cluster: LocalKafkaCluster) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap)
    topic = f"out-{uuid.uuid4().hex}"
    ensure_topics(kafka, [topic], 1, TopicDurability(replication=2, min_insync=1))
    with open_admin(kafka_cluster.bootstrap) as admin:
        assert durability(admin, topic) == (2, 1)


@pytest.mark.parametrize(
    ("replication", "min_isr", "problem"),
    [
        (1, "1", "replication factor 1, a broker loss loses its data"),
        (3, "3", "min.insync.replicas 3 of 3 replicas, a broker loss stops acks=all writes"),
    ],
)
def test_existing_fragile_output_topics_are_warned_about_loudly(
    kafka_cluster: LocalKafkaCluster,
    caplog: pytest.LogCaptureFixture,
    replication: int,
    min_isr: str,
    problem: str,
) -> None:
    with open_admin(kafka_cluster.bootstrap) as admin:
        topic = create_topic(
            admin, 1, replication=replication, config={"min.insync.replicas": min_isr}
        )
    caplog.set_level(logging.WARNING, logger="pipeline.kafka.topics")
    ensure_topics(KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap), [topic])
    warned = [
        r for r in caplog.records if r.getMessage() == "OUTPUT TOPIC CANNOT SURVIVE A BROKER LOSS"
    ]
    assert [r.problem for r in warned] == [f"{topic}: {problem}"]  # type: ignore[attr-defined]


def test_a_single_broker_gets_one_replica_and_no_warning(
    kafka_bootstrap: str, kafka_admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"out-{uuid.uuid4().hex}"
    caplog.set_level(logging.WARNING, logger="pipeline.kafka.topics")
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    brokers = len(kafka_admin.describe_cluster()["brokers"])
    ensure_topics(kafka, [topic], partitions=1)
    ensure_topics(kafka, [topic], partitions=1)
    expected = min(3, brokers)
    assert durability(kafka_admin, topic) == (expected, max(1, expected - 1))
    assert not said_by_topics(caplog)
    kafka_admin.delete_topics([topic])


def test_a_topic_that_exists_already_is_not_reported_as_created(
    kafka_bootstrap: str, kafka_admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The topic list came from a broker that had not yet heard of a topic another client
    had just created (seen on the three-node cluster): creating it again is refused, and
    ensure_topics must not say it created it."""
    made, fresh = create_topic(kafka_admin, prefix="out"), f"out-{uuid.uuid4().hex}"
    caplog.set_level(logging.INFO, logger="pipeline.kafka.topics")
    with open_admin(kafka_bootstrap) as admin:
        assert create_missing(admin, [made, fresh], 1, 1, 1) == [fresh]  # as if the list missed it
    created = [r for r in caplog.records if r.getMessage() == "created topics"]
    assert [r.topics for r in created] == [[fresh]]  # type: ignore[attr-defined]
    kafka_admin.delete_topics([made, fresh])
