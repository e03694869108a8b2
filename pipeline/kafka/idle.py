"""When a consumer run with ``--idle-timeout`` has been idle long enough to end.

Joining a group takes several round trips, and seconds on a loaded host or while another member
holds up the rebalance. A clock that ran during the join ended runs that had records waiting,
having consumed nothing. So the clock counts only while the consumer has partitions: it starts
again whenever partitions are (re)assigned. Without any partitions after ``assignment_wait_s``
it runs anyway, so a topic that does not exist cannot keep the run from ending.
"""

from __future__ import annotations

import time
from collections.abc import Callable

ASSIGNMENT_WAIT_S = 60.0  # longest wait for a group join before --idle-timeout counts


class IdleClock:
    """``expired(has_partitions)`` after each empty poll; ``activity()`` after records."""

    def __init__(
        self,
        timeout_s: float | None,
        assignment_wait_s: float = ASSIGNMENT_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.assignment_wait_s = assignment_wait_s
        self._clock = clock
        self._started = self._last = clock()
        self._assigned = False

    def activity(self) -> None:
        self._last = self._clock()

    def expired(self, has_partitions: bool) -> bool:
        """True when nothing arrived for ``timeout_s`` counted since the last records or the
        last (re)assignment of partitions, whichever came later."""
        now = self._clock()
        if has_partitions and not self._assigned:
            self._last = now  # partitions just arrived: their records have not had a chance
        self._assigned = has_partitions
        if not has_partitions and now - self._started < self.assignment_wait_s:
            self._last = now
        return self.timeout_s is not None and now - self._last > self.timeout_s
