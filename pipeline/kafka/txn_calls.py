"""Transactional producer calls that give up after a deadline.

kafka-python 3.0.x's ``commit_transaction``, ``abort_transaction`` and
``send_offsets_to_transaction`` wait for the coordinator's answer without any timeout (only
``init_transactions`` is bounded, by ``max_block_ms``; the Java client bounds all of them).
A request that is never answered (a defect like the one ``pipeline.kafka.txn_requeue``
works around, a network task stopped mid-run) therefore blocks the caller for ever, and a
worker waiting there commits nothing until it is restarted by hand.

These functions do what the producer's own methods do (start the request in the transaction
manager, wake the sender) and then wait at most ``timeout_s``, raising KafkaTimeoutError.
After a timeout the producer is in an unknown transactional state and must be replaced; the
exactly-once worker does that and reads on from the committed offsets
(``pipeline.worker.recovery``). They rely on the producer's ``_transaction_manager`` and
``_sender`` of the pinned kafka-python 3.0 series; tests/unit/kafka/test_txn_calls.py fails
if a release moves them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kafka import KafkaProducer
from kafka.errors import IllegalStateError, KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition


def commit_transaction(producer: KafkaProducer, timeout_s: float) -> None:
    """``producer.commit_transaction()`` waiting at most ``timeout_s``."""
    _bounded(producer, "commit_transaction", lambda tm: tm.begin_commit(), timeout_s)


def abort_transaction(producer: KafkaProducer, timeout_s: float) -> None:
    """``producer.abort_transaction()`` waiting at most ``timeout_s``."""
    _bounded(producer, "abort_transaction", lambda tm: tm.begin_abort(), timeout_s)


def send_offsets_to_transaction(
    producer: KafkaProducer,
    offsets: dict[TopicPartition, OffsetAndMetadata],
    group: Any,
    timeout_s: float,
) -> None:
    """``producer.send_offsets_to_transaction(offsets, group)`` waiting at most ``timeout_s``."""
    _bounded(
        producer,
        "send_offsets_to_transaction",
        lambda tm: tm.send_offsets_to_transaction(offsets, group),
        timeout_s,
    )


def _bounded(
    producer: KafkaProducer, what: str, start: Callable[[Any], Any], timeout_s: float
) -> None:
    manager = getattr(producer, "_transaction_manager", None)
    if manager is None or not manager.is_transactional():
        raise IllegalStateError(f"{what} needs a transactional producer")
    result = start(manager)
    producer._sender.wakeup()
    if not result.wait(timeout_ms=max(0.0, timeout_s) * 1000):
        raise KafkaTimeoutError(
            f"{what} not answered within {timeout_s:.1f} s (transactional id"
            f" {manager.transactional_id!r})"
        )


def with_last_error(producer: KafkaProducer | None, exc: KafkaError) -> KafkaError:
    """``exc`` carrying the producer's last transactional error, so ``error_chain`` finds it.

    Once a response failed the producer (a fence seen by the sender's AddPartitionsToTxn),
    kafka-python 3.0.12 refuses the next transactional call with a bare ``KafkaError`` that
    names that error only in its message ("... in an error state: ProducerFencedError"),
    where its send path passes it as an argument. The returned error passes it as an
    argument too (with ``exc`` as its cause); ``exc`` itself when there is none.
    """
    manager = getattr(producer, "_transaction_manager", None)
    last = getattr(manager, "last_error", None)
    if not isinstance(last, BaseException) or last is exc or last in exc.args:
        return exc
    carried = KafkaError(str(exc), last)
    carried.__cause__ = exc
    return carried
