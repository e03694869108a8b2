"""A rebalance that the group's metadata asked for must finish even when the poll that started
it gave up before the broker answered (``pipeline.kafka.rejoin_pending``), against a real broker.

kafka-python 3.0.12 leaves the member's rejoin flag down when the leader's metadata changed
(partitions added, or the first join made before the topic's metadata arrived), so once the
leader has computed the new assignment the consumer reports "no rejoin needed" while its
SyncGroup is still in flight. A poll whose timeout fell in between never came back to the
join: the consumer kept its revoked partitions paused, sent no heartbeat and read nothing,
for good. A real worker stalled this way after "partitions revoked" (the cluster fault tests,
about one worker start in twenty on the shared machine). A poll with timeout 0 makes the
poll give up at exactly that point every time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewPartitions

from pipeline.kafka.clients import new_consumer
from tests.support.workers import wait_for


def send_to(bootstrap: str, tp: TopicPartition, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(tp.topic, value, partition=tp.partition).get(timeout=30)
    finally:
        producer.close(timeout=10)


def owns(consumer: KafkaConsumer, count: int, timeout_s: float) -> set[TopicPartition]:
    """Poll until the consumer owns ``count`` partitions (or the time is up); what it owns."""
    deadline = time.monotonic() + timeout_s
    while len(consumer.assignment()) != count and time.monotonic() < deadline:
        consumer.poll(timeout_ms=200)
    return set(consumer.assignment())


def test_a_rebalance_the_metadata_asked_for_finishes_after_a_poll_gave_up_midway(
    kafka_bootstrap: str, kafka_admin: Any, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(2)
    consumer = new_consumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,  # the added partition shows up without a poll
    )
    try:
        consumer.subscribe([topic])
        assert len(owns(consumer, 2, 30)) == 2, "the first join did not finish"
        kafka_admin.create_partitions({topic: NewPartitions(total_count=3)})
        wait_for(lambda: consumer.partitions_for_topic(topic) == {0, 1, 2}, 30, "3 partitions")
        consumer.poll(timeout_ms=0)  # starts the rejoin and gives up before any answer
        time.sleep(2)  # the JoinGroup and SyncGroup complete meanwhile
        send_to(kafka_bootstrap, TopicPartition(topic, 2), b"on the new partition")
        assert owns(consumer, 3, 20) == {TopicPartition(topic, p) for p in range(3)}
        values: list[bytes] = []
        deadline = time.monotonic() + 20
        while not values and time.monotonic() < deadline:
            values += [r.value for rs in consumer.poll(timeout_ms=200).values() for r in rs]
        assert values == [b"on the new partition"]
    finally:
        consumer.close(autocommit=False)
