"""Kafka consumers and producers built from settings, the way every part of the project wants
them: consumers that never auto-commit, idempotent producers waiting for all in-sync replicas,
and construction that leaves no thread behind when a broker cannot be reached
(``pipeline.kafka.construct``).
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from pipeline.contract.exceptions import KafkaFatalError, KafkaIOError
from pipeline.kafka.construct import construct
from pipeline.kafka.errors import credentials_hint, is_fatal
from pipeline.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)


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
            close_quietly(producer)
            raise _connect_error(
                kafka, f"cannot initialise transactions as {transactional_id!r}", exc
            ) from exc
    return producer


def _connect_error(kafka: KafkaSettings, what: str, exc: KafkaError) -> KafkaIOError:
    """Wrap a client construction error; with kafka-python 3.0 a wrong SASL password looks
    like an unreachable broker ("Unable to bootstrap" after the request timeout), so say so."""
    cls = KafkaFatalError if is_fatal(exc) else KafkaIOError
    return cls(f"{what}: {exc!r}{credentials_hint(kafka, exc)}")


def close_quietly(producer: KafkaProducer) -> None:
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
