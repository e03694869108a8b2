"""Micro-batch collection: close a batch at max_size records or max_wait after its first record.

The deadline is measured from the first record of the batch, not from the poll call, so an
isolated record waits at most ``max_wait`` before it is scored. A record that already queued
in Kafka while the previous batch was being processed counts that time (from its Kafka
timestamp, capped at ``max_wait``): otherwise it would wait the processing time *plus* a full
``max_wait``. An overdue batch closes with what its first poll returned (up to ``max_size``).
The collector never polls with a zero timeout: kafka-python 3.0.12 then does not advance a
consumer-group rejoin, and the worker stalls without partitions. Records of one partition keep
their order; partitions are concatenated as the consumer returns them.

A consumer-group rebalance runs inside ``poll``; when it takes partitions away, the records of
those partitions already gathered into the batch being collected are dropped
(``drop_partitions``, called from the rebalance listener). Processing and committing them would
duplicate the work of their new owner, which starts from the last committed offset. If a poll
raises mid-batch, what was gathered is left in ``abandoned`` for the caller to rewind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol


class RecordSource(Protocol):
    """What the collector needs of a consumer (KafkaConsumer satisfies it)."""

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        """Return up to max_records records grouped by partition."""
        ...


@dataclass
class Batch:
    records: list[Any]
    first_record_at: float  # monotonic time the first record arrived

    def __len__(self) -> int:
        return len(self.records)


class BatchCollector:
    """Polls a source into batches bounded by size and by wait time."""

    def __init__(
        self,
        source: RecordSource,
        max_size: int,
        max_wait_s: float,
        idle_poll_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.source = source
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.idle_poll_s = idle_poll_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.should_stop = should_stop
        self.dropped = 0  # records dropped from batches because their partition was revoked
        self.abandoned: list[Any] = []  # what a collect() that raised had gathered
        self._current: Batch | None = None

    def collect(self) -> Batch | None:
        """One batch, or None when nothing arrived within ``idle_poll_s`` (lets callers
        check their stop flag between polls). A stop request closes the batch early: what
        was gathered is returned, to be processed and committed before the worker leaves."""
        batch = Batch(records=[], first_record_at=self.clock())
        self._current = batch
        self.abandoned = []
        try:
            first = self._poll(self.idle_poll_s, self.max_size)
            if not first:
                return None
            batch.records.extend(first)
            batch.first_record_at = self.clock() - self._waited(first)
            deadline = batch.first_record_at + self.max_wait_s
            while len(batch.records) < self.max_size and not self.should_stop():
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                wait = min(remaining, self.idle_poll_s)  # so a stop request is seen promptly
                batch.records.extend(self._poll(wait, self.max_size - len(batch.records)))
        except BaseException:
            self.abandoned = batch.records  # the caller must rewind: positions moved past them
            raise
        finally:
            self._current = None
        return batch if batch.records else None

    def drop_partitions(self, partitions: Iterable[Any]) -> int:
        """Remove the records of ``partitions`` (objects with topic and partition) from the
        batch being collected; returns how many were removed (0 outside ``collect``)."""
        batch = self._current
        if batch is None or not batch.records:
            return 0
        gone = {(tp.topic, tp.partition) for tp in partitions}
        kept = [r for r in batch.records if (r.topic, r.partition) not in gone]
        removed = len(batch.records) - len(kept)
        batch.records[:] = kept
        self.dropped += removed
        return removed

    def _waited(self, records: list[Any]) -> float:
        """How long the oldest record has been in Kafka, from 0 to max_wait (clock skew and
        records without a timestamp count as 0)."""
        stamps = [t for t in (getattr(r, "timestamp", None) for r in records) if t and t > 0]
        if not stamps:
            return 0.0
        return min(self.max_wait_s, max(0.0, self.wall_clock() - float(min(stamps)) / 1000))

    def _poll(self, timeout_s: float, max_records: int) -> list[Any]:
        timeout_ms = max(0, math.ceil(timeout_s * 1000))
        polled = self.source.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Any] = []
        for records in polled.values():
            out.extend(records)
        return out
