"""Helpers for integration tests: produce records, read a topic to its end, committed offsets."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import msgspec
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition


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
    bootstrap: str, topic: str, timeout_s: float = 30, isolation_level: str = "read_uncommitted"
) -> list[Any]:
    """Every record currently in the topic (all partitions, from the beginning)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level
    )
    try:
        parts = _partitions(consumer, topic, timeout_s)
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
        parts = _partitions(consumer, topic, 30)
        end = consumer.end_offsets(parts)
        return {tp.partition: (consumer.committed(tp), end[tp]) for tp in parts}
    finally:
        consumer.close()


def _partitions(consumer: KafkaConsumer, topic: str, timeout_s: float) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout_s
    while True:
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return [TopicPartition(topic, p) for p in sorted(ids)]
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} has no partitions")
        time.sleep(0.1)
