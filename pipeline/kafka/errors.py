"""Sorting Kafka errors: which ones no retry can fix, and what to tell the operator.

Authentication and authorization failures, a fenced transactional producer, an unsupported
broker or a bad client configuration cannot be fixed by retrying, so the worker stops at once
(``is_fatal``; an exactly-once worker first replaces a fenced producer a bounded number of
times, ``pipeline.worker.recovery``); everything else (timeouts, lost connections, leader
changes, a record a topic refuses) is retried batch-wise with backoff, a bounded number of times.
"""

from __future__ import annotations

from collections.abc import Iterator

import kafka.errors as kerr
from kafka.errors import KafkaError

from pipeline.contract.exceptions import KafkaFatalError
from pipeline.kafka.settings import KafkaSettings

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


def credentials_hint(kafka: KafkaSettings, exc: BaseException, prefix: str = "PIPELINE_") -> str:
    """kafka-python 3.0 reports a refused SASL login as a bootstrap timeout; say so."""
    if isinstance(exc, kerr.KafkaTimeoutError) and kafka.security_protocol.startswith("SASL"):
        return (
            " (with SASL this is also what wrong credentials look like: check"
            f" {prefix}KAFKA__SASL_USERNAME / _PASSWORD / _MECHANISM)"
        )
    return ""
