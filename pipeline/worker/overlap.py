"""Overlapping Kafka fetching with model compute, on one consumer, safely.

The worker's work per batch is Python that holds the GIL (kafka-python fetch parsing,
decoding, building events) plus model compute that releases it (torch ops). Done one after
the other, one of the two cores idles during each phase. Here the model runs in a helper
thread while the loop thread keeps polling the consumer for the *next* batch; the records it
gets are buffered and handed to the next ``collect()``.

KafkaConsumer is not thread-safe, so the consumer is still used by the loop thread only:
only the scoring moves to the helper thread. ``PrefetchingSource`` wraps the consumer as the
collector's record source. Buffered records are never committed before they are processed
(offsets are committed per processed batch); on a failed batch the caller rewinds to the
first offsets of the failed batch *and* of the buffer (``drain``), so nothing is skipped.
Records of partitions revoked in a rebalance are dropped from the buffer (their new owner
reads them from the last commit).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from kafka.structs import TopicPartition


class Consumer(Protocol):
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        """Records grouped by partition."""
        ...

    def assignment(self) -> set[TopicPartition]:
        """Partitions assigned now."""
        ...


class PrefetchingSource:
    """A record source for ``BatchCollector`` that can poll ahead while the model runs."""

    def __init__(self, consumer: Consumer, max_buffered: int, poll_timeout_ms: int = 2) -> None:
        self.consumer = consumer
        self.max_buffered = max_buffered
        self.poll_timeout_ms = poll_timeout_ms
        self.prefetched = 0  # records fetched during compute (metrics, tests)
        self._buffer: list[Any] = []

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        """Buffered records first (without waiting), else the consumer's own poll."""
        if self._buffer:
            self._drop_revoked()
        if self._buffer:
            n = len(self._buffer) if max_records is None else max_records
            out, self._buffer = self._buffer[:n], self._buffer[n:]
            return {None: out}
        return self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)

    def prefetch(self, done: Callable[[], bool]) -> None:
        """Poll into the buffer until ``done()`` (the model finished) or the buffer is full.

        Each poll waits at most ``poll_timeout_ms``, so the batch being scored is delayed by
        no more than that after its compute ends.
        """
        while not done() and len(self._buffer) < self.max_buffered:
            polled = self.consumer.poll(
                timeout_ms=self.poll_timeout_ms, max_records=self.max_buffered - len(self._buffer)
            )
            for records in polled.values():
                self._buffer.extend(records)
                self.prefetched += len(records)

    def drain(self) -> list[Any]:
        """Remove and return the buffered records (to rewind over them after a failure)."""
        out, self._buffer = self._buffer, []
        return out

    def __len__(self) -> int:
        return len(self._buffer)

    def _drop_revoked(self) -> None:
        assigned = self.consumer.assignment()  # TopicPartition is a namedtuple: tuples match
        self._buffer = [r for r in self._buffer if (r.topic, r.partition) in assigned]


def timed(fn: Callable[[], Any]) -> Callable[[], tuple[Any, float]]:
    """``fn`` returning (result, seconds it ran), to time work done in another thread."""

    def run() -> tuple[Any, float]:
        started = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - started

    return run
