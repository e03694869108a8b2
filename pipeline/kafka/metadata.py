"""Topic metadata as the project's tools need it: the partitions of a topic, once known.

A topic created a moment ago (or auto-created on first use) can be missing from a client's
metadata for a short while; callers wait for it rather than treat it as absent at once.
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from pipeline.contract.exceptions import KafkaIOError

POLL_S = 0.1


def wait_for_partitions(
    consumer: KafkaConsumer, topic: str, timeout_s: float
) -> list[TopicPartition]:
    """The topic's partitions, in order; KafkaIOError when none are known after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return [TopicPartition(topic, p) for p in sorted(ids)]
        if time.monotonic() > deadline:
            raise KafkaIOError(f"topic {topic} does not exist (no partitions after {timeout_s} s)")
        time.sleep(POLL_S)
