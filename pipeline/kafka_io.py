"""Kafka clients built from settings, and the sink that makes a batch's output durable.

Delivery (README "Delivery guarantees"):
- at-least-once: send alerts / dead letters / scores, flush, check every ack, then commit the
  batch's offsets. A crash before the commit replays the batch (same event ids).
- exactly-once: the same sends inside a Kafka transaction that also carries the consumer
  offsets (``send_offsets_to_transaction``); readers use ``isolation_level=read_committed``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.exceptions import DeliveryError, KafkaIOError
from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

DeliveryMode = Literal["at-least-once", "exactly-once"]
Headers = list[tuple[str, bytes]]


def make_consumer(
    kafka: KafkaSettings,
    group_id: str,
    *,
    max_poll_records: int,
    auto_offset_reset: str = "earliest",
    isolation_level: str = "read_committed",
    **extra: Any,
) -> KafkaConsumer:
    """A consumer that never auto-commits: offsets move only after output is durable."""
    try:
        return KafkaConsumer(
            **kafka.client_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            isolation_level=isolation_level,
            max_poll_records=max_poll_records,
            **extra,
        )
    except KafkaError as exc:
        raise KafkaIOError(
            f"cannot create consumer for {kafka.bootstrap_servers} group={group_id}: {exc!r}"
        ) from exc


def make_producer(
    kafka: KafkaSettings, *, transactional_id: str | None = None, **extra: Any
) -> KafkaProducer:
    """An idempotent producer waiting for all in-sync replicas."""
    config: dict[str, Any] = {
        **kafka.client_kwargs(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        # kafka-python wakes its sender thread for every new batch; with the default 16 KiB
        # batches that happened every few score events and cost ~40 us per send (BENCHMARKS.md)
        "batch_size": 1 << 20,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "max_in_flight_requests_per_connection": 5,
        **extra,
    }
    if transactional_id is not None:
        config["transactional_id"] = transactional_id
    try:
        producer = KafkaProducer(**config)
        if transactional_id is not None:
            producer.init_transactions()
        return producer
    except KafkaError as exc:
        raise KafkaIOError(
            f"cannot create producer for {kafka.bootstrap_servers}: {exc!r}"
        ) from exc


def next_offsets(records: Iterable[Any]) -> dict[TopicPartition, OffsetAndMetadata]:
    """Offsets to commit after a batch: one past the last record of each partition."""
    last: dict[tuple[str, int], int] = {}  # plain tuples: this runs for every record
    get = last.get
    for rec in records:
        key = (rec.topic, rec.partition)
        offset = rec.offset
        if offset > get(key, -1):
            last[key] = offset
    return {TopicPartition(*key): OffsetAndMetadata(off + 1, "", -1) for key, off in last.items()}


class OutputSink:
    """Collects one batch's produced records and commits them together with the offsets."""

    def __init__(self, producer: KafkaProducer, mode: DeliveryMode, flush_timeout_s: float = 60):
        self.producer = producer
        self.mode = mode
        self.flush_timeout_s = flush_timeout_s
        self._pending: list[tuple[str, FutureRecordMetadata]] = []
        self._in_txn = False

    def begin(self) -> None:
        if self.mode == "exactly-once" and not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True

    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> None:
        try:
            future = self.producer.send(topic, value=value, key=key, headers=headers or [])
        except KafkaError as exc:
            raise DeliveryError(f"send to {topic} failed: {exc!r}") from exc
        self._pending.append((topic, future))

    def commit(
        self, consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> None:
        """Make the batch's output durable, then (atomically, in EOS mode) its offsets."""
        if self.mode == "exactly-once":
            self._commit_transaction(consumer, offsets)
        else:
            self._flush_and_check()
            if offsets:
                try:
                    consumer.commit(offsets=offsets)
                except KafkaError as exc:
                    raise KafkaIOError(
                        f"offset commit failed for {_fmt(offsets)}: {exc!r}"
                    ) from exc

    def abort(self) -> None:
        """Drop the batch's output: abort the transaction (EOS) or forget the futures."""
        self._pending.clear()
        if self._in_txn:
            self._in_txn = False
            try:
                self.producer.abort_transaction()
            except KafkaError as exc:
                log.warning("abort_transaction failed error=%r", exc)

    def _commit_transaction(
        self, consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> None:
        self.begin()
        try:
            if offsets:
                self.producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            self.producer.commit_transaction()
        except KafkaError as exc:
            raise DeliveryError(f"transaction commit failed for {_fmt(offsets)}: {exc!r}") from exc
        finally:
            self._in_txn = False
        self._check_futures()

    def _flush_and_check(self) -> None:
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as exc:
            raise DeliveryError(f"flush failed: {exc!r}") from exc
        self._check_futures()

    def _check_futures(self) -> None:
        pending, self._pending = self._pending, []
        for topic, future in pending:
            if not future.is_done:
                raise DeliveryError(f"record to {topic} not acknowledged in time")
            if future.failed():
                raise DeliveryError(f"record to {topic} was not delivered: {future.exception!r}")


def _fmt(offsets: dict[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}] offset={om.offset}" for tp, om in offsets.items())
