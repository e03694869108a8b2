"""Which partitions this worker holds, and which ones a rebalance took away.

With the eager protocol (kafka-python's default assignors) every rebalance first revokes *all*
partitions and then assigns the new set; kafka-python keeps the fetch position of a partition
assigned again. So a partition is only lost when it is revoked and not assigned back: those
are reported to ``on_lost`` (at assignment time), the others keep their place in the batch
being collected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import TopicPartition

log = logging.getLogger(__name__)


class Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tracks assigned partitions (readiness, lag) and tells the worker which ones it lost."""

    def __init__(
        self,
        on_lost: Callable[[set[TopicPartition]], None],
        on_assigned: Callable[[set[TopicPartition]], None] | None = None,
        on_revoked: Callable[[set[TopicPartition]], None] | None = None,
    ) -> None:
        self.partitions: set[TopicPartition] = set()
        self._revoked: set[TopicPartition] = set()
        self._on_lost = on_lost
        self._on_assigned = on_assigned  # e.g. hold new partitions until their start is known
        self._on_revoked = on_revoked

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.partitions -= set(revoked)
        self._revoked |= set(revoked)
        log.info("partitions revoked", extra={"partitions": fmt_partitions(revoked)})
        if self._on_revoked is not None:
            self._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.partitions |= set(assigned)
        lost, self._revoked = self._revoked - set(assigned), set()
        log.info("partitions assigned", extra={"partitions": fmt_partitions(assigned)})
        if self._on_assigned is not None:
            self._on_assigned(set(assigned))
        if lost:
            self._on_lost(lost)


def fmt_partitions(tps: Iterable[TopicPartition]) -> str:
    return ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))
