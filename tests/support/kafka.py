"""Kafka helpers for integration tests: topics, producing, reading a topic to its end, offsets."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.devstack.localkafka import open_admin
from pipeline.kafka.metadata import wait_for_partitions

TOPIC_TIMEOUT_MS = 30_000


def create_topic(
    admin: Any,
    partitions: int = 1,
    *,
    config: dict[str, str] | None = None,
    prefix: str = "test",
    replication: int = 1,
) -> str:
    """Create a uuid-named topic and return once every partition has a leader in metadata."""
    name = f"{prefix}-{uuid.uuid4().hex}"
    spec = {
        "num_partitions": partitions,
        "replication_factor": replication,
        "configs": config or {},
    }
    admin.create_topics({name: spec}, timeout_ms=TOPIC_TIMEOUT_MS)
    admin.wait_for_topics([name], timeout_ms=TOPIC_TIMEOUT_MS)
    return name


def produce_acked(config: dict[str, Any], topic: str, values: list[bytes]) -> None:
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


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[tuple[bytes | None, bytes]],
    headers: list[tuple[str, bytes]] | None = None,
) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    try:
        for key, value in values:
            producer.send(topic, key=key, value=value, headers=headers or [])
            n += 1
        producer.flush(timeout=30)
    finally:
        producer.close()
    return n


def produce_json(bootstrap: str, topic: str, records: list[dict[str, Any]], key_field: str) -> int:
    return produce(
        bootstrap,
        topic,
        ((str(r[key_field]).encode(), msgspec.json.encode(r)) for r in records),
    )


def read_all(
    bootstrap: str,
    topic: str,
    timeout_s: float = 30,
    isolation_level: str = "read_uncommitted",
    *,
    config: dict[str, Any] | None = None,
) -> list[Any]:
    """Every record currently in the topic (all partitions, from the beginning); ``config``:
    client settings (SASL, TLS) in place of a PLAINTEXT ``bootstrap``."""
    consumer = KafkaConsumer(
        **(config or {"bootstrap_servers": bootstrap}),
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    try:
        parts = wait_for_partitions(consumer, topic, timeout_s)
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: got {len(out)} records before timeout")
            for recs in consumer.poll(timeout_ms=200).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def committed_and_end(bootstrap: str, group: str, topic: str) -> dict[int, tuple[int | None, int]]:
    """partition -> (committed offset of the group, log end offset)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = wait_for_partitions(consumer, topic, 30)
        end = consumer.end_offsets(parts)
        return {tp.partition: (consumer.committed(tp), end[tp]) for tp in parts}
    finally:
        consumer.close()


def fully_committed(bootstrap: str, group: str, topic: str) -> bool:
    """The group committed every partition of the topic up to its end."""
    return all(c == e for c, e in committed_and_end(bootstrap, group, topic).values())


def settle_cluster(bootstrap: str, timeout_s: float = 90) -> None:
    """Wait until every replica is in sync again, then give leadership back to the preferred
    replicas. After a node restarts, the brokers' own leader rebalance (every 5 minutes) would
    otherwise move partitions, the group coordinators among them, in the middle of a later
    test, and a group rejoining then stalled kafka-python's join for minutes."""
    deadline = time.monotonic() + timeout_s
    with open_admin(bootstrap) as admin:
        while lagging := [
            f"{d['name']}[{p['partition_index']}]"
            for d in admin.describe_topics()
            for p in d["partitions"]
            if len(p["isr_nodes"]) < len(p["replica_nodes"])
        ]:
            assert time.monotonic() < deadline, f"replicas not back in sync: {lagging[:5]}"
            time.sleep(0.5)
        admin.elect_leaders(0, raise_errors=False)  # 0: preferred replicas
