"""Where a new consumer group starts reading (``PIPELINE_START_FROM``), pinned by a commit.

Why not just kafka's ``auto_offset_reset``: a group with no committed offset resets again on
every restart, so with ``latest`` a worker that crashed before its first batch commit would
silently skip what arrived meanwhile; and ``timestamp`` has no reset policy at all. So every
newly assigned partition is paused (in the rebalance callback, before any fetch), and once the
group is stable the partitions without a committed offset get their start offset (latest,
earliest, or the first at/after the timestamp) sought *and committed*; then all resume. From
then on the group has a commit and restarts continue from it. The consumer's own reset policy
stays ``earliest``: it now only applies when a committed offset fell off the retention.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.kafka.group import group_is_stable
from pipeline.worker.assignment import fmt_partitions

log = logging.getLogger(__name__)


class StartPositions:
    """Pauses newly assigned partitions and settles their start once the group is stable."""

    def __init__(self, start_from: str, timestamp_ms: int | None = None) -> None:
        self.start_from = start_from
        self.timestamp_ms = timestamp_ms
        self._consumer: Any = None
        self._unsettled: set[TopicPartition] = set()

    def bind(self, consumer: Any) -> None:
        """The consumer to pause; bound after subscribing, before the first poll."""
        self._consumer = consumer

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """Rebalance callback: hold the partitions until ``settle`` knows where they start."""
        if self._consumer is not None and partitions:
            self._consumer.pause(*partitions)
            self._unsettled |= partitions

    def revoked(self, partitions: set[TopicPartition]) -> None:
        self._unsettled -= partitions

    def settle(self) -> None:
        """Commit start offsets of partitions the group never committed, then resume all held
        ones; a no-op until the group is stable, retried on the next call after an error."""
        consumer = self._consumer
        if consumer is None or not self._unsettled or not group_is_stable(consumer):
            return
        held = sorted(self._unsettled & consumer.assignment())
        try:
            fresh = [tp for tp in held if consumer.committed(tp) is None]
            if fresh:
                self._commit_starts(consumer, fresh)
        except KafkaError as exc:
            log.warning(
                "cannot settle start positions yet, will retry",
                extra={"partitions": fmt_partitions(held), "error": repr(exc)},
            )
            return
        consumer.resume(*held)
        self._unsettled.clear()

    def _commit_starts(self, consumer: Any, fresh: list[TopicPartition]) -> None:
        starts = self._start_offsets(consumer, fresh)
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        consumer.commit(offsets={tp: OffsetAndMetadata(o, "", -1) for tp, o in starts.items()})
        log.info(
            "new group: start positions committed",
            extra={
                "start_from": self.start_from,
                "positions": ",".join(
                    f"{tp.topic}[{tp.partition}]={o}" for tp, o in starts.items()
                ),
            },
        )

    def _start_offsets(
        self, consumer: Any, fresh: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        if self.start_from == "earliest":
            return dict(consumer.beginning_offsets(fresh))
        ends: dict[TopicPartition, int] = dict(consumer.end_offsets(fresh))
        if self.start_from == "latest" or self.timestamp_ms is None:
            return ends
        found = consumer.offsets_for_times(dict.fromkeys(fresh, self.timestamp_ms))
        # no record at or after the timestamp: start at the end, like "latest"
        return {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in fresh}
