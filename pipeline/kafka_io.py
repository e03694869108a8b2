"""Kafka clients built from settings, and the sink that makes a batch's output durable.

Delivery (README "Delivery guarantees"):
- at-least-once: send alerts / dead letters / scores, flush, check every ack, then commit the
  batch's offsets. A crash before the commit replays the batch (same event ids).
- exactly-once: the same sends inside a Kafka transaction that also carries the consumer
  offsets (``send_offsets_to_transaction``); readers use ``isolation_level=read_committed``.

Errors are sorted here (``is_fatal``): authentication and authorization failures, a fenced
transactional producer, an unsupported broker or a bad client configuration cannot be fixed
by retrying, so the worker stops at once; everything else (timeouts, lost connections,
leader changes, a record a topic refuses) is retried batch-wise with backoff, a bounded
number of times. After any failure the sink replaces its producer: an idempotent or
transactional producer that saw an error refuses every later send.
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

from pipeline.exceptions import CommitRejected, DeliveryError, KafkaFatalError, KafkaIOError
from pipeline.kafka_clients import construct
from pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

DeliveryMode = Literal["at-least-once", "exactly-once"]
Headers = list[tuple[str, bytes]]
_FLUSH_SLICE_S = 1.0

# kafka-python errors that no retry can fix (AuthorizationError covers topic, group, cluster,
# transactional-id and delegation-token ACL refusals).
FATAL_KAFKA_ERRORS: tuple[type[KafkaError], ...] = (
    kerr.AuthorizationError,
    kerr.SaslAuthenticationFailedError,
    kerr.UnsupportedSaslMechanismError,
    kerr.IllegalSaslStateError,
    kerr.ProducerFencedError,
    kerr.TransactionCoordinatorFencedError,
    kerr.FencedInstanceIdError,
    kerr.InvalidTxnStateError,
    kerr.UnsupportedVersionError,
    kerr.UnsupportedForMessageFormatError,
    kerr.KafkaConfigurationError,
    kerr.InvalidTopicError,
    kerr.InvalidGroupIdError,
    kerr.SecurityDisabledError,
)
_REBALANCED = (kerr.CommitFailedError, kerr.RebalanceInProgressError)


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes, and exceptions kafka-python tucks into ``args`` (a producer in an
    error state raises ``KafkaError(message, last_error)``)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def is_fatal(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a Kafka error that retrying cannot fix."""
    return any(isinstance(e, (KafkaFatalError, FATAL_KAFKA_ERRORS)) for e in error_chain(exc))


def fatal_reason(exc: BaseException) -> str:
    """The name of the fatal Kafka error in ``exc``'s chain (for the exit message)."""
    for e in error_chain(exc):
        if isinstance(e, FATAL_KAFKA_ERRORS):
            return type(e).__name__
    return type(exc).__name__


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
        return new_consumer(
            **kafka.client_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            isolation_level=isolation_level,
            max_poll_records=max_poll_records,
            **extra,
        )
    except KafkaError as exc:
        raise _connect_error(
            kafka, f"cannot create consumer for {kafka.bootstrap_servers} group={group_id}", exc
        ) from exc


def new_consumer(**config: Any) -> KafkaConsumer:
    """``KafkaConsumer(**config)`` that leaves nothing behind when its constructor fails."""
    return construct(KafkaConsumer, **config)


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
        producer = construct(KafkaProducer, **config)
    except KafkaError as exc:
        raise _connect_error(
            kafka, f"cannot create producer for {kafka.bootstrap_servers}", exc
        ) from exc
    if transactional_id is not None:
        try:
            producer.init_transactions()
        except KafkaError as exc:
            _close_quietly(producer)
            raise _connect_error(
                kafka, f"cannot initialise transactions as {transactional_id!r}", exc
            ) from exc
    return producer


def _connect_error(kafka: KafkaSettings, what: str, exc: KafkaError) -> KafkaIOError:
    """Wrap a client construction error; with kafka-python 3.0 a wrong SASL password looks
    like an unreachable broker ("Unable to bootstrap" after the request timeout), so say so."""
    cls = KafkaFatalError if is_fatal(exc) else KafkaIOError
    return cls(f"{what}: {exc!r}{credentials_hint(kafka, exc)}")


def credentials_hint(kafka: KafkaSettings, exc: BaseException, prefix: str = "PIPELINE_") -> str:
    """kafka-python 3.0 reports a refused SASL login as a bootstrap timeout; say so."""
    if isinstance(exc, kerr.KafkaTimeoutError) and kafka.security_protocol.startswith("SASL"):
        return (
            " (with SASL this is also what wrong credentials look like: check"
            f" {prefix}KAFKA__SASL_USERNAME / _PASSWORD / _MECHANISM)"
        )
    return ""


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
    ) -> None:
        self._make = make
        self.mode = mode
        self.flush_timeout_s = flush_timeout_s
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
        (kafka-python waits for a transaction commit without a timeout, a flush for up to
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
                raise DeliveryError(f"begin_transaction failed: {exc!r}") from exc
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
        """Make the batch's output durable, then (atomically, in EOS mode) its offsets.

        Raises CommitRejected when the group rebalanced meanwhile (at-least-once: the output
        is durable and the new owner replays), DeliveryError / KafkaIOError otherwise."""
        if self.mode == "exactly-once":
            with self._waiting():
                self._commit_transaction(consumer, offsets)
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
        """Drop the batch's output: abort the transaction (EOS) or forget the futures."""
        self._pending.clear()
        if self._in_txn:
            self._in_txn = False
            try:
                with self._waiting():
                    self.producer.abort_transaction()
            except KafkaError as exc:
                log.warning("abort_transaction failed", extra={"error": repr(exc)})

    def reset(self) -> None:
        """Close the producer (after a failure); the next batch creates a new one."""
        self._pending.clear()
        self._in_txn = False
        producer, self._producer = self._producer, None
        if producer is not None:
            with self._waiting():
                _close_quietly(producer)

    def close(self) -> None:
        self.reset()

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


def _close_quietly(producer: KafkaProducer) -> None:
    """Close a producer that may have failed; never raises, never leaves its thread behind.

    kafka-python 3.0.12's close() flushes first, and that flush can fail for good (e.g.
    ``UnknownError('Future not done')`` once a batch was split after MessageSizeTooLarge),
    which aborts close() with the sender thread and its sockets still alive. Then the
    sender is force-closed: pending records are failed, the network client closed."""
    try:
        producer.close(timeout=5)
        return
    except (KafkaError, OSError, ValueError) as exc:
        log.warning("producer close failed, forcing it", extra={"error": repr(exc)})
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5)


def _fmt(offsets: dict[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}] offset={om.offset}" for tp, om in offsets.items())
