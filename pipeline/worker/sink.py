"""The sink that makes a batch's output durable, then commits the batch's offsets.

Delivery (README "Delivery guarantees"):
- at-least-once: send alerts / dead letters / scores, flush, check every ack, then commit the
  batch's offsets. A crash before the commit replays the batch (same event ids).
- exactly-once: the same sends inside a Kafka transaction that also carries the consumer
  offsets (``send_offsets_to_transaction``); readers use ``isolation_level=read_committed``.

After any failure the sink replaces its producer: an idempotent or transactional producer that
saw an error refuses every later send. So does a transaction whose offsets were refused after a
rebalance: kafka-python would send the refused offsets again with the next transaction's.
Every transactional call waits at most ``txn_deadline_s`` (the transaction timeout: past it
the coordinator aborts the transaction anyway); one that does not finish raises
TransactionStalled (``pipeline.kafka.txn_calls``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import kafka.errors as kerr
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.contract.exceptions import (
    CommitRejected,
    DeliveryError,
    KafkaIOError,
    OutputTooLarge,
    TransactionStalled,
)
from pipeline.kafka import txn_calls
from pipeline.kafka.clients import close_quietly

log = logging.getLogger(__name__)

DeliveryMode = Literal["at-least-once", "exactly-once"]
Headers = list[tuple[str, bytes]]
_FLUSH_SLICE_S = 1.0
_REBALANCED = (kerr.CommitFailedError, kerr.RebalanceInProgressError)
# a transaction's offsets refused because the consumer's generation or membership is stale
_TXN_REBALANCED = (
    *_REBALANCED,
    kerr.IllegalGenerationError,
    kerr.UnknownMemberIdError,
    kerr.FencedInstanceIdError,
)


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
    """Collects one batch's produced records and commits them together with the offsets.

    Owns the producer: it is created on first use from ``make``, and ``reset`` replaces it
    after a failure (the next batch then starts with a fresh, healthy producer; in
    exactly-once mode the new one's ``init_transactions`` also aborts what the old one left).
    """

    def __init__(
        self,
        make: Callable[[], KafkaProducer],
        mode: DeliveryMode,
        flush_timeout_s: float = 60,
        txn_deadline_s: float = 60,
    ) -> None:
        self._make = make
        self.mode = mode
        self.flush_timeout_s = flush_timeout_s
        self.txn_deadline_s = txn_deadline_s
        self._producer: KafkaProducer | None = None
        self._pending: list[tuple[str, FutureRecordMetadata]] = []
        self._in_txn = False
        self.waiting_since: float | None = None  # monotonic start of a wait for the broker

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            with self._waiting():  # bootstrap, and init_transactions in exactly-once mode
                self._producer = self._make()
        return self._producer

    def waited_s(self) -> float:
        """How long the current call has been waiting for Kafka (0 outside such calls)."""
        since = self.waiting_since
        return 0.0 if since is None else time.monotonic() - since

    @contextmanager
    def _waiting(self) -> Iterator[None]:
        """Mark a call that waits for the broker. While the broker is away these calls block
        (a transaction commit for up to ``txn_deadline_s``, a flush for up to
        ``flush_timeout_s``); the worker reports itself alive meanwhile, since restarting it
        would not bring the broker back (``pipeline_kafka_wait_seconds``)."""
        outer = self.waiting_since is None
        if outer:
            self.waiting_since = time.monotonic()
        try:
            yield
        finally:
            if outer:
                self.waiting_since = None

    def begin(self) -> None:
        if self.mode == "exactly-once" and not self._in_txn:
            producer = self.producer
            try:
                producer.begin_transaction()
            except KafkaError as exc:
                error = txn_calls.with_last_error(producer, exc)
                raise DeliveryError(f"begin_transaction failed: {exc!r}") from error
            self._in_txn = True

    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> None:
        try:
            future = self.producer.send(topic, value=value, key=key, headers=headers or [])
        except kerr.MessageSizeTooLargeError as exc:
            raise OutputTooLarge(f"record to {topic} refused as too large: {exc}") from exc
        except KafkaError as exc:
            raise DeliveryError(f"send to {topic} failed: {exc!r}") from exc
        self._pending.append((topic, future))

    def commit(
        self,
        consumer: KafkaConsumer,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        group: Any = None,
    ) -> None:
        """Make the batch's output durable, then (atomically, in EOS mode) its offsets.

        ``group``: the membership the batch was polled under, i.e. the one the consumer's
        assignment in force came with (``Assignment.membership``; None: the consumer's
        ``group_metadata()`` now). The transaction's offsets are committed under that
        generation, so the broker refuses them if the group moved on since (KIP-447 fencing).
        Raises CommitRejected when the group rebalanced meanwhile (at-least-once: the output
        is durable and the new owner replays; exactly-once: the transaction is aborted, the
        producer replaced, and the batch must be read again), DeliveryError / KafkaIOError
        otherwise."""
        if self.mode == "exactly-once":
            with self._waiting():
                self._commit_transaction(consumer, offsets, group)
            return
        with self._waiting():
            self._flush_and_check()
        if not offsets:
            return
        try:
            with self._waiting():
                consumer.commit(offsets=offsets)
        except _REBALANCED as exc:
            raise CommitRejected(f"offset commit refused for {_fmt(offsets)}: {exc!r}") from exc
        except KafkaError as exc:
            raise KafkaIOError(f"offset commit failed for {_fmt(offsets)}: {exc!r}") from exc

    def abort(self) -> None:
        """Drop the batch's output: abort the transaction (EOS) or forget the futures. A
        producer whose abort failed is replaced: its transactional state is unknown."""
        self._pending.clear()
        if self._in_txn:
            self._in_txn = False
            try:
                with self._waiting():
                    txn_calls.abort_transaction(self.producer, self.txn_deadline_s)
            except KafkaError as exc:
                log.warning("abort_transaction failed", extra={"error": repr(exc)})
                self.reset()

    def reset(self) -> None:
        """Close the producer (after a failure); the next batch creates a new one."""
        self._pending.clear()
        self._in_txn = False
        producer, self._producer = self._producer, None
        if producer is not None:
            with self._waiting():
                close_quietly(producer)

    def close(self) -> None:
        self.reset()

    def _commit_transaction(
        self,
        consumer: KafkaConsumer,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        group: Any = None,
    ) -> None:
        self.begin()
        try:
            if offsets:
                group = consumer.group_metadata() if group is None else group
                _check_generation(group, consumer.group_metadata(), offsets)
                txn_calls.send_offsets_to_transaction(
                    self.producer, offsets, group, self.txn_deadline_s
                )
            txn_calls.commit_transaction(self.producer, self.txn_deadline_s)
        except (CommitRejected, *_TXN_REBALANCED) as exc:
            self.abort()  # nothing of the batch becomes visible; its records are read again
            # kafka-python 3.0.12 keeps offsets the broker refused in the producer's
            # transaction manager and sends them again with the next transaction's offsets
            # (rolling back partitions now owned by others): only a new producer forgets them
            self.reset()
            if isinstance(exc, CommitRejected):
                raise
            raise CommitRejected(
                f"transaction offsets refused for {_fmt(offsets)} (group rebalanced): {exc!r}"
            ) from exc
        except kerr.KafkaTimeoutError as exc:
            self._in_txn = False
            raise TransactionStalled(
                f"transaction for {_fmt(offsets)} not committed within"
                f" {self.txn_deadline_s:.1f} s: {exc!r}"
            ) from exc
        except KafkaError as exc:
            self._in_txn = False
            error = txn_calls.with_last_error(self._producer, exc)
            raise DeliveryError(
                f"transaction commit failed for {_fmt(offsets)}: {exc!r}"
            ) from error
        self._in_txn = False
        self._check_futures()

    def _flush_and_check(self) -> None:
        """Wait for every send of the batch, but stop as soon as one of them failed.

        The flush goes in one-second slices: kafka-python 3.0.12 can leave a batch it split
        after MessageSizeTooLarge incomplete forever, so a plain flush would sit out its whole
        timeout although the batch is known to have failed."""
        deadline = time.monotonic() + self.flush_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                self.producer.flush(timeout=max(0.0, min(_FLUSH_SLICE_S, remaining)))
                break
            except KafkaError as exc:
                failed = self._first_failure()
                if failed is not None:
                    topic, error = failed
                    raise DeliveryError(
                        f"record to {topic} was not delivered: {error!r} (flush: {exc!r})"
                    ) from error
                timed_out = isinstance(exc, kerr.KafkaTimeoutError)
                if not timed_out or remaining <= _FLUSH_SLICE_S:
                    raise DeliveryError(
                        f"flush failed after {self.flush_timeout_s - remaining:.1f}s: {exc!r}"
                    ) from exc
        self._check_futures()

    def _first_failure(self) -> tuple[str, BaseException] | None:
        for topic, future in self._pending:
            if future.is_done and future.failed():
                return topic, future.exception
        return None

    def _check_futures(self) -> None:
        pending, self._pending = self._pending, []
        for topic, future in pending:
            if not future.is_done:
                raise DeliveryError(f"record to {topic} not acknowledged in time")
            if future.failed():
                error = future.exception
                raise DeliveryError(f"record to {topic} was not delivered: {error!r}") from error


def _check_generation(
    polled: Any, now: Any, offsets: dict[TopicPartition, OffsetAndMetadata]
) -> None:
    """Refuse to commit a batch's offsets under another membership than the one it was polled
    in. kafka-python resets a member's generation to -1 when its session expired, and the
    broker does not check a transactional offset commit of generation -1 at all: committing
    then would let a member that lost its partitions commit over their new owner. And its
    generation moves on as soon as a JoinGroup is answered, before the new assignment is
    applied: the batch's partitions may belong to another member in that generation."""
    was, is_ = (polled.generation_id, polled.member_id), (now.generation_id, now.member_id)
    if was != is_ or polled.generation_id < 0:
        raise CommitRejected(
            f"offsets for {_fmt(offsets)} not committed: the batch was polled in generation "
            f"{was[0]} as {was[1]!r}, the consumer is now in generation {is_[0]} as {is_[1]!r}"
        )


def _fmt(offsets: dict[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}] offset={om.offset}" for tp, om in offsets.items())
