"""Keep a consumer's rebalance pending until it has finished.

kafka-python 3.0.x (``kafka.coordinator.consumer.ConsumerCoordinator.need_rejoin``) asks for a
rebalance in two ways: the member's rejoin flag, or the group leader noticing that the topics'
metadata differs from what it assigned last (partitions added, or a first join made before
the topic's metadata arrived). The second way never raises the flag, and it stops asking as
soon as the leader has computed the new assignment, which happens in the middle of the
JoinGroup/SyncGroup round trip. A ``poll`` whose timeout runs out at that moment leaves the
join in flight, and the next ``poll`` sees "no rejoin needed": the join's result is never
applied, the revoked partitions stay paused, heartbeats stay off, nothing is read, for good.
A worker stalled like this after "partitions revoked" in about one start in twenty on the
shared test machine (Java's client asks ``rejoinNeededOrPending()``, which a join in
progress keeps true).

``keep_rejoins_pending`` makes ``need_rejoin`` also answer True while a rebalance the
coordinator prepared for has not completed (its ``rejoining`` flag, raised before the
JoinGroup and lowered when the assignment is applied), so the next poll finishes it.
Installed once per process by ``pipeline.kafka.construct``; it relies on the pinned
kafka-python 3.0 series, and tests/unit/kafka/test_rejoin_pending.py fails if a release
changes the pieces it wraps. The stall itself is reproduced against a real broker in
tests/integration/kafka/test_rejoin_pending.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_MARK = "_pipeline_keeps_rejoins_pending"


def keep_rejoins_pending() -> None:
    """Make a consumer keep asking for its rebalance until the rebalance completed
    (idempotent)."""
    from kafka.coordinator.consumer import ConsumerCoordinator

    original = ConsumerCoordinator.need_rejoin
    if getattr(original, _MARK, False):
        return
    ConsumerCoordinator.need_rejoin = _pending_too(original)


def _pending_too(need_rejoin: Callable[[Any], bool]) -> Callable[[Any], bool]:
    @functools.wraps(need_rejoin)
    def wrapped(self: Any) -> bool:
        if need_rejoin(self):
            return True
        return bool(self.rejoining) and self._subscription.partitions_auto_assigned()

    setattr(wrapped, _MARK, True)
    return wrapped
