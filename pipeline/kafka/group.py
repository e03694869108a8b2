"""What kafka-python's consumer knows about its group membership, read in one place.

kafka-python 3.0.x (pinned below 3.1) has no public call for "is this member in a stable
generation"; the coordinator object has it. A commit sent while the group is still joining or
about to rejoin competes with the JoinGroup and, on a three-node cluster, stalled the join for
most of a session timeout, so callers commit out-of-band offsets only when this says so.
"""

from __future__ import annotations

from typing import Any


def group_is_stable(consumer: Any) -> bool:
    """True when the coordinator is known, no rejoin is pending and the generation is valid."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        return False
    if coordinator.coordinator_unknown() or coordinator.need_rejoin():
        return False
    return coordinator.generation_if_stable() is not None
