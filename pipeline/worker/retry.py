"""The retry policy of a failed batch: stop at once, or back off and try again, a bounded
number of times.

A fatal Kafka error (authentication, authorization, a fenced producer, ...) stops the worker at
once (``KafkaFatalError``, exit 4) with the batch uncommitted. Anything else is retried after an
exponential backoff (``retry_backoff_s`` doubling per attempt, capped at ``MAX_BACKOFF_S``);
after ``max_retries`` consecutive failures the worker exits with the offsets uncommitted, so a
restart (or another group member) replays the batch and nothing is lost.
"""

from __future__ import annotations

import logging

from pipeline.contract.exceptions import KafkaFatalError
from pipeline.kafka.errors import fatal_reason, is_fatal
from pipeline.worker.failures import giving_up

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class RetryPolicy:
    """Counts consecutive failed attempts and says how long to wait before the next one."""

    def __init__(self, max_retries: int, backoff_s: float) -> None:
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.failures = 0

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, exc: BaseException, stage: str, where: str) -> float:
        """Count a failed attempt at ``where``; returns the delay before the next attempt.

        Raises KafkaFatalError for errors retrying cannot fix, and the batch's error once
        ``max_retries`` consecutive attempts failed."""
        if is_fatal(exc):
            log.error(
                "fatal Kafka error, stopping without retry",
                extra={"stage": stage, "batch": where, "error": repr(exc)},
            )
            raise KafkaFatalError(
                f"{where}: fatal Kafka error {fatal_reason(exc)} (not retried): {exc}"
            ) from exc
        self.failures += 1
        log.warning(
            "batch failed, will retry",
            extra={"stage": stage, "attempt": self.failures, "error": repr(exc), "batch": where},
        )
        if self.failures > self.max_retries:
            raise giving_up(exc, where, self.failures) from exc
        return self.delay()

    def delay(self) -> float:
        """Backoff before the next attempt: doubles per consecutive failure, capped."""
        return min(MAX_BACKOFF_S, self.backoff_s * 2.0 ** (self.failures - 1))
