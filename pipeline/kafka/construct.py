"""Construct kafka-python clients without leaking threads when the constructor fails.

kafka-python 3.0.12 starts a client's IO thread before it bootstraps; when bootstrapping fails
(broker down, wrong SASL password) the constructor raises with that thread and its sockets
still alive, one more per retry while a broker is down. Every consumer, producer and admin
client this project builds goes through ``construct``, which captures the network client
through the ``kafka_client`` factory hook and shuts it down in that case. It also installs the
project's kafka-python fixes (``socket_leak``, ``txn_requeue``, ``rejoin_pending``) before the
first client.

kafka-python is imported lazily so the modules that use this (the local-Kafka CLI among them)
keep a fast start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pipeline.kafka.rejoin_pending import keep_rejoins_pending
from pipeline.kafka.socket_leak import close_leaked_sockets
from pipeline.kafka.txn_requeue import requeue_unreachable_coordinator_requests

log = logging.getLogger(__name__)

T = TypeVar("T")


def construct(client_class: Callable[..., T], **config: Any) -> T:
    """``client_class(**config)`` that leaves nothing behind when it raises."""
    from kafka.net.compat import KafkaNetClient

    close_leaked_sockets()
    requeue_unreachable_coordinator_requests()
    keep_rejoins_pending()
    created: list[Any] = []

    def factory(**kwargs: Any) -> Any:
        client = KafkaNetClient(**kwargs)
        created.append(client)
        return client

    try:
        return client_class(kafka_client=factory, **config)
    except BaseException:
        for client in created:
            shutdown_net_client(client)
        raise


def shutdown_net_client(client: Any) -> None:
    """What the clients' own close() does to their network client (there is no public handle
    on the IO loop), for a client whose owner never finished constructing."""
    for step in (client.close, lambda: client._net.stop(timeout_ms=5000)):
        try:
            step()
        except Exception as exc:  # already half torn down: nothing more to free
            log.debug("network client shutdown step failed", extra={"error": repr(exc)})
