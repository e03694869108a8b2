"""The worker's consumer: subscribing the group, rewinding a failed batch, lag, leaving.

Offsets are never auto-committed (``pipeline.kafka.clients.make_consumer``): they move only
when the sink commits a batch whose output is durable.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from pipeline.contract.exceptions import KafkaFatalError, KafkaIOError
from pipeline.kafka.clients import make_consumer
from pipeline.kafka.errors import is_fatal
from pipeline.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def subscribe(settings: WorkerSettings, listener: ConsumerRebalanceListener) -> KafkaConsumer:
    """A group member subscribed to the input topics (or pattern)."""
    s = settings
    consumer = make_consumer(
        s.kafka,
        s.group_id,
        max_poll_records=s.batch.max_size,
        auto_offset_reset="earliest",  # a new group's start: pipeline.worker.startpos
        session_timeout_ms=s.session_timeout_ms,
        heartbeat_interval_ms=min(3_000, s.session_timeout_ms // 3),
    )
    if s.input_pattern:
        consumer.subscribe(pattern=s.input_pattern, listener=listener)
        return consumer
    # Without the topics' metadata at the first JoinGroup, kafka-python's assignor hands out
    # nothing and a second rebalance follows at once; once in a while (seen in ~1 of 10
    # test runs) that rejoin stalled for most of a session timeout. Fetch it first.
    for topic in s.input_topics:
        try:
            known = consumer.partitions_for_topic(topic)
        except KafkaError as exc:
            close_consumer(consumer)
            cls = KafkaFatalError if is_fatal(exc) else KafkaIOError
            raise cls(f"cannot read metadata of input topic {topic}: {exc!r}") from exc
        if not known:
            log.warning("input topic does not exist (yet)", extra={"topic": topic})
    consumer.subscribe(topics=s.input_topics, listener=listener)
    return consumer


def rewind(consumer: KafkaConsumer, records: list[Any]) -> None:
    """Seek each partition back to the batch's first offset so the retry sees the same data."""
    first: dict[TopicPartition, int] = {}
    for rec in records:
        tp = TopicPartition(rec.topic, rec.partition)
        first[tp] = min(first.get(tp, rec.offset), rec.offset)
    for tp, offset in first.items():
        if tp in consumer.assignment():
            consumer.seek(tp, offset)


def rewind_to_committed(
    consumer: KafkaConsumer, floor: dict[TopicPartition, int], timeout_ms: int = 30_000
) -> dict[TopicPartition, int]:
    """Seek every assigned partition to the group's committed offset, or to ``floor`` (what
    this worker itself committed last) where that is further on; returns the positions.

    For an exactly-once worker whose transaction was lost (fenced, stalled): everything before
    the committed offset is in committed transactions, nothing after it is visible. The group
    membership is kept (a rejoin would move partitions in a larger group for nothing). The
    floor guards against starting behind what this worker committed: once, rejoining the
    group after a fence instead, the worker re-read one partition from offset 0 and
    duplicated 320 records (cause not found; a partition with no committed offset is reset
    to the earliest). A partition known to neither keeps its position. Raises KafkaError when
    the offsets cannot be fetched (the caller then rejoins the group instead)."""
    positions: dict[TopicPartition, int] = {}
    for tp in sorted(consumer.assignment()):
        committed = consumer.committed(tp, timeout_ms=timeout_ms)
        known = max(committed if committed is not None else -1, floor.get(tp, -1))
        if known >= 0:
            consumer.seek(tp, known)
            positions[tp] = known
        if tp in floor and (committed is None or committed < floor[tp]):
            log.warning(
                "the group's committed offset is behind what this worker committed",
                extra={
                    "partition": f"{tp.topic}[{tp.partition}]",
                    "fetched": committed,
                    "committed_here": floor[tp],
                },
            )
    return positions


def rejoin_fresh(
    consumer: KafkaConsumer, settings: WorkerSettings, listener: ConsumerRebalanceListener
) -> None:
    """Leave the group and subscribe again, forgetting every fetch position.

    After an exactly-once batch was aborted because the group moved on, the positions this
    consumer holds are wrong either way: past the aborted batch, or (rewound) behind what a
    member that held the partition meanwhile committed. kafka-python keeps the position of a
    partition assigned back, so only a fresh subscription makes every partition start again
    from its committed offset."""
    consumer.unsubscribe()
    if settings.input_pattern:
        consumer.subscribe(pattern=settings.input_pattern, listener=listener)
    else:
        consumer.subscribe(topics=settings.input_topics, listener=listener)


def rejoin(consumer: KafkaConsumer) -> None:
    """Make the next poll rejoin the group.

    After the broker refused a commit as coming from a stale generation, kafka-python 3.0.12
    goes on polling as if still a member until a heartbeat tells it otherwise: a worker
    resumed after its session expired had every batch refused again, for minutes, without
    rejoining (test_reliability_rebalance). ``request_rejoin`` is the coordinator's own
    (internal) switch for this; the kafka-python version is pinned (pyproject)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None:
        coordinator.request_rejoin()


def lag(consumer: KafkaConsumer, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
    """Records behind the high watermark, for the partitions whose positions are known."""
    behind: dict[TopicPartition, int] = {}
    for tp in list(partitions):
        try:
            high = consumer.highwater(tp)
            pos = consumer.position(tp, timeout_ms=0) if high is not None else None
        except (KafkaError, AssertionError, ValueError):
            continue
        if high is not None and pos is not None:
            behind[tp] = max(0, high - pos)
    return behind


def close_consumer(consumer: KafkaConsumer) -> None:
    """Leave the group promptly so partitions move to other members at once."""
    try:
        consumer.close(autocommit=False)
    except KafkaError as exc:
        log.warning("consumer close failed", extra={"error": repr(exc)})
