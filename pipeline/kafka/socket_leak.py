"""Close the socket of a failed Kafka connection attempt.

kafka-python 3.0.x (``kafka.net.inet.KafkaNetSocket.sock_connect``) raises when a connect is
refused or times out without closing the socket it was handed. Every reconnect attempt while
a broker is down or restarting therefore leaves one file descriptor to the garbage collector,
which closes it later with a ResourceWarning: a worker retrying once a second through a long
outage accumulates them, and the test suite had to ignore the warning. ``close_failed_connects``
wraps that one method so a failed attempt closes its socket before the error propagates.

The wrap is installed once per process, by ``pipeline.kafka.construct`` (every client this
project builds) and by the test suite's configuration. It relies on a private method of the
pinned kafka-python 3.0 series; tests/unit/kafka/test_socket_leak.py fails if a release moves it.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

_MARK = "_pipeline_closes_failed_sockets"


def close_failed_connects() -> None:
    """Make kafka-python close the socket of every connect attempt that fails (idempotent)."""
    from kafka.net.inet import KafkaNetSocket

    original = KafkaNetSocket.sock_connect
    if getattr(original, _MARK, False):
        return
    KafkaNetSocket.sock_connect = _closing(original)


def _closing(
    sock_connect: Callable[..., Awaitable[socket.socket]],
) -> Callable[..., Awaitable[socket.socket]]:
    @functools.wraps(sock_connect)
    async def wrapped(self: Any, net: Any, sock: socket.socket, *args: Any, **kw: Any) -> Any:
        try:
            return await sock_connect(self, net, sock, *args, **kw)
        except BaseException:
            sock.close()
            raise

    setattr(wrapped, _MARK, True)
    return wrapped
