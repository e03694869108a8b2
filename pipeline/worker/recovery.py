"""When an exactly-once worker replaces its transactional producer instead of stopping, and
when it must stop after all.

A transaction left open past the transaction timeout (a long broker outage, the worker
frozen) is aborted by its coordinator, which bumps the producer epoch: the producer's next
transactional call fails with ProducerFencedError, InvalidProducerEpochError or
InvalidTxnStateError. Those are fatal to that producer, not to the worker: a new producer
with the same transactional id (``init_transactions`` fences the old epoch) and a consumer
rewound to the group's committed offsets go on with nothing lost (the aborted output is
invisible to ``read_committed`` readers) and nothing twice. The same holds after a
transactional call that did not finish within its deadline (``TransactionStalled``).

But a fence also means another live producer may own the id (two replicas configured with
the same ``PIPELINE_TRANSACTIONAL_ID``): then each new producer fences the other, forever.
``ProducerRecovery`` therefore allows ``max_rebuilds`` rebuilds within ``window_s`` and then
stops the worker with KafkaFatalError (exit 4) saying why.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import kafka.errors as kerr

from pipeline.contract.exceptions import KafkaFatalError, TransactionStalled
from pipeline.kafka.errors import error_chain

log = logging.getLogger(__name__)

RebuildReason = Literal["fenced", "stalled"]
MAX_REBUILDS = 5
WINDOW_S = 600.0
# what the coordinator answers a producer whose epoch it bumped (transaction timed out, or a
# newer producer with the same id called init_transactions)
FENCED_ERRORS: tuple[type[kerr.KafkaError], ...] = (
    kerr.ProducerFencedError,
    kerr.InvalidProducerEpochError,
    kerr.InvalidTxnStateError,
    kerr.TransactionCoordinatorFencedError,
)


def rebuild_reason(exc: BaseException) -> RebuildReason | None:
    """Why ``exc`` calls for a new transactional producer, or None when it does not."""
    chain = list(error_chain(exc))
    if any(isinstance(e, FENCED_ERRORS) for e in chain):
        return "fenced"
    if any(isinstance(e, TransactionStalled) for e in chain):
        return "stalled"
    return None


class ProducerRecovery:
    """Counts rebuilds of the transactional producer in a sliding window; too many is fatal."""

    def __init__(
        self,
        transactional_id: Callable[[], str | None],
        max_rebuilds: int = MAX_REBUILDS,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transactional_id = transactional_id
        self.max_rebuilds = max_rebuilds
        self.window_s = window_s
        self._clock = clock
        self._recent: deque[float] = deque()

    def allow(self, reason: RebuildReason, exc: BaseException, where: str) -> None:
        """Record one rebuild for ``reason``; raises KafkaFatalError when it would be more
        than ``max_rebuilds`` within ``window_s`` (recovery is not working: most likely
        another live producer uses the same transactional id)."""
        now = self._clock()
        while self._recent and now - self._recent[0] > self.window_s:
            self._recent.popleft()
        txn_id = self._transactional_id()
        if len(self._recent) >= self.max_rebuilds:
            log.error(
                "transactional producer keeps failing, stopping",
                extra={"reason": reason, "rebuilds": len(self._recent), "window_s": self.window_s,
                       "transactional_id": txn_id, "batch": where, "error": repr(exc)},
            )  # fmt: skip
            raise KafkaFatalError(
                f"{where}: transactional producer {txn_id!r} {reason} again after"
                f" {len(self._recent)} rebuilds within {self.window_s:.0f} s; another live"
                " worker probably uses the same transactional id (PIPELINE_TRANSACTIONAL_ID"
                f" must be unique per replica): {exc}"
            ) from exc
        self._recent.append(now)
        log.warning(
            "transactional producer replaced; the batch is read again from the committed offsets",
            extra={"reason": reason, "rebuilds": len(self._recent), "window_s": self.window_s,
                   "transactional_id": txn_id, "batch": where, "error": repr(exc)},
        )  # fmt: skip
