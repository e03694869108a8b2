"""Which partitions this worker holds, which ones a rebalance took away, and the membership
under which the current assignment was received.

With the eager protocol (kafka-python's default assignors) every rebalance first revokes *all*
partitions and then assigns the new set; kafka-python keeps the fetch position of a partition
assigned again. So a partition is only lost when it is revoked and not assigned back: those
are reported to ``on_lost`` (at assignment time), the others keep their place in the batch
being collected. A member removed from the group (its session expired) loses every partition
(``on_partitions_lost``, or a new member id at the next assignment), even the ones it is
assigned back: another member may have held them in between.

``membership`` is the group metadata (generation, member id) the assignment in force came with,
the only one a batch polled under it may commit its offsets under (exactly-once, KIP-447).
Not ``consumer.group_metadata()``: kafka-python 3.0.12 runs JoinGroup/SyncGroup on its network
thread, and the JoinGroup answer replaces the member's generation at once, while the new
assignment is applied (this listener called, moved partitions dropped from the batch) only by
a later poll. Committing in that gap under the new generation, which the broker accepts, wrote
offsets of partitions the new generation gives to another member.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import ConsumerGroupMetadata, TopicPartition

log = logging.getLogger(__name__)

# no assignment in force: generation -1, which the sink refuses to commit under
NO_MEMBERSHIP = ConsumerGroupMetadata()


class Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tracks assigned partitions (readiness, lag) and tells the worker which ones it lost."""

    def __init__(
        self,
        on_lost: Callable[[set[TopicPartition]], None],
        on_assigned: Callable[[set[TopicPartition]], None] | None = None,
        on_revoked: Callable[[set[TopicPartition]], None] | None = None,
    ) -> None:
        self.partitions: set[TopicPartition] = set()
        self.membership: Any = NO_MEMBERSHIP
        self._revoked: set[TopicPartition] = set()
        self._on_lost = on_lost
        self._on_assigned = on_assigned  # e.g. hold new partitions until their start is known
        self._on_revoked = on_revoked
        self._group_metadata: Callable[[], Any] | None = None

    def bind(self, group_metadata: Callable[[], Any]) -> None:
        """Where to read the membership when an assignment arrives (the consumer's
        ``group_metadata``); bound after subscribing, before the first poll."""
        self._group_metadata = group_metadata

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.partitions -= set(revoked)
        self._revoked |= set(revoked)
        log.info("partitions revoked", extra={"partitions": fmt_partitions(revoked)})
        if self._on_revoked is not None:
            self._on_revoked(set(revoked))

    def on_partitions_lost(self, lost: Any) -> None:
        """The member was removed from the group: whatever it collected from these partitions
        may be another member's work by now, whether or not they are assigned back."""
        gone = set(lost)
        self.partitions -= gone
        self._revoked -= gone  # reported here, not again at the next assignment
        self.membership = NO_MEMBERSHIP
        # the same message as a revocation (log readers track ownership by it), marked lost
        log.info("partitions revoked", extra={"partitions": fmt_partitions(gone), "lost": True})
        if self._on_revoked is not None:
            self._on_revoked(gone)
        if gone:
            self._on_lost(gone)

    def on_partitions_assigned(self, assigned: Any) -> None:
        previous = self.membership
        if self._group_metadata is not None:  # the join that brought this assignment just ended
            self.membership = self._group_metadata()
        self.partitions |= set(assigned)
        kept = set(assigned)
        if previous.member_id and self.membership.member_id != previous.member_id:
            kept = set()  # rejoined as a new member: removed meanwhile, even if not told so
        lost, self._revoked = self._revoked - kept, set()
        log.info(
            "partitions assigned",
            extra={
                "partitions": fmt_partitions(assigned),
                "generation": self.membership.generation_id,
            },
        )
        if self._on_assigned is not None:
            self._on_assigned(set(assigned))
        if lost:
            self._on_lost(lost)


def fmt_partitions(tps: Iterable[TopicPartition]) -> str:
    return ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))
