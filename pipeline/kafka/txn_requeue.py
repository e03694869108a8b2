"""Keep a transactional request when its coordinator's node cannot be reached.

kafka-python 3.0.x's producer sender (``kafka.producer.sender.Sender
._maybe_send_pending_request``) checks the transaction coordinator with
``if not client.await_ready(node): look the coordinator up again``, and re-queues the request
afterwards only when it got no node at all. But the 3.0 network client's ``await_ready``
(``kafka.net.compat.KafkaNetClient``) never returns False: it raises KafkaConnectionError (or
UnknownBrokerIdError once the dead broker left the metadata). The sender catches that, looks
the coordinator up again and breaks out with the node still chosen, so the request
(AddPartitionsToTxn, AddOffsetsToTxn, EndTxn) is never re-queued and the call waiting for it
(``commit_transaction``, ``send_offsets_to_transaction``) waits forever, although a new
coordinator takes over within seconds. An exactly-once worker stalled this way in rolling
restarts and when the coordinator's broker died
(tests/integration/cluster/test_cluster_transactions.py reproduces it).

``requeue_unreachable_coordinator_requests`` gives every producer's sender a view of its
network client whose ``await_ready`` answers False instead of raising a Kafka error,
which is the contract the sender was written against; nothing else in kafka-python calls
``await_ready`` on the producer's client. Installed once per process by
``pipeline.kafka.construct``; it relies on the pinned kafka-python 3.0 series, and
tests/unit/kafka/test_txn_requeue.py fails if a release changes the pieces it wraps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_MARK = "_pipeline_requeues_txn_requests"


class ReadyAsBool:
    """A network client whose ``await_ready`` returns False where the client raises a Kafka
    error (the node cannot be reached or is no longer known); every other attribute is the
    client's own."""

    def __init__(self, client: Any) -> None:
        self._pipeline_client = client

    def await_ready(self, node_id: int, timeout_ms: int = 30_000) -> bool:
        from kafka.errors import KafkaError

        try:
            return bool(self._pipeline_client.await_ready(node_id, timeout_ms=timeout_ms))
        except KafkaError:
            return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline_client, name)


def requeue_unreachable_coordinator_requests() -> None:
    """Make every producer's sender re-queue a transactional request whose coordinator cannot
    be reached, instead of dropping it (idempotent)."""
    from kafka.producer.sender import Sender

    original = Sender.__init__
    if getattr(original, _MARK, False):
        return
    Sender.__init__ = _with_bool_ready(original)


def _with_bool_ready(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def wrapped(self: Any, client: Any, *args: Any, **kw: Any) -> None:
        init(self, client, *args, **kw)
        self._client = ReadyAsBool(client)

    setattr(wrapped, _MARK, True)
    return wrapped
