"""Small kafka-python helpers for integration tests (topics, produce, consume)."""

from __future__ import annotations

import uuid
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

TOPIC_TIMEOUT_MS = 30_000


def create_topic(
    admin: Any, partitions: int = 1, *, config: dict[str, str] | None = None, prefix: str = "test"
) -> str:
    """Create a uuid-named topic and return once every partition has a leader in metadata."""
    name = f"{prefix}-{uuid.uuid4().hex}"
    spec = {"num_partitions": partitions, "replication_factor": 1, "configs": config or {}}
    admin.create_topics({name: spec}, timeout_ms=TOPIC_TIMEOUT_MS)
    admin.wait_for_topics([name], timeout_ms=TOPIC_TIMEOUT_MS)
    return name


def produce(config: dict[str, Any], topic: str, values: list[bytes]) -> None:
    """Send ``values`` to partition 0 of ``topic`` and wait for every ack."""
    producer = KafkaProducer(acks="all", **config)
    try:
        for value in values:
            producer.send(topic, value, partition=0).get(timeout=30)
    finally:
        producer.close(timeout=10)


def consume(
    config: dict[str, Any],
    topic: str,
    count: int,
    *,
    group: str | None = None,
    commit: bool = False,
) -> list[bytes]:
    """Read up to ``count`` records from partition 0 (from the committed offset if ``group``)."""
    consumer = KafkaConsumer(
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
        **config,
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        values = [record.value for _, record in zip(range(count), consumer, strict=False)]
        if commit:
            consumer.commit()
        return values
    finally:
        consumer.close()
