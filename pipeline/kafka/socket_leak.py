"""Close the sockets kafka-python 3.0.x leaves to the garbage collector.

Two paths leave a socket open in kafka-python 3.0.x; the garbage collector closes it later
with a ResourceWarning (an error in the test suite, reported on whichever test runs then):

- A failed connect. ``kafka.net.inet.KafkaNetSocket.sock_connect`` raises when a connect is
  refused or times out without closing the socket it was handed. Every reconnect attempt
  while a broker is down or restarting therefore leaves one file descriptor: a worker
  retrying once a second through a long outage accumulates them. ``close_failed_connects``
  wraps that one method so a failed attempt closes its socket before the error propagates.
- A connection closed with a request still queued. ``KafkaNetClient.close()`` closes every
  connection, then its IO loop. A transport (``kafka.net.transport.KafkaTCPTransport``) whose
  write buffer is not empty leaves closing its socket to its write task once the buffer is
  flushed, but closing the loop cancels that task first, so the connected socket stays open.
  Any client closed within a loop iteration of its IO thread queuing a request (a fetch, a
  heartbeat, a metadata refresh) hits this: rare, but a flake in a suite that closes hundreds
  of clients. ``close_unflushed_on_cancel`` wraps the write task so a transport already closed
  finishes closing (drops the unsent bytes, closes the socket, tells its connection) when the
  task ends without having flushed.

``close_leaked_sockets`` installs both, once per process: ``pipeline.kafka.construct`` does
(every client this project builds) and so does the test suite's configuration. They rely on
private methods of the pinned kafka-python 3.0 series; tests/unit/kafka/test_socket_leak.py
fails if a release moves them.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

_MARK = "_pipeline_closes_failed_sockets"
_FLUSH_MARK = "_pipeline_closes_unflushed_sockets"


def close_leaked_sockets() -> None:
    """Install both fixes of this module (idempotent)."""
    close_failed_connects()
    close_unflushed_on_cancel()


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


def close_unflushed_on_cancel() -> None:
    """Make a closed kafka-python transport close its socket when its write task is cancelled
    before the buffered data was flushed (idempotent)."""
    from kafka.net.transport import KafkaTCPTransport

    original = KafkaTCPTransport._write_to_sock
    if getattr(original, _FLUSH_MARK, False):
        return
    KafkaTCPTransport._write_to_sock = _finishing_close(original)


def _finishing_close(
    write_to_sock: Callable[[Any], Awaitable[None]],
) -> Callable[[Any], Awaitable[None]]:
    @functools.wraps(write_to_sock)
    async def wrapped(self: Any) -> None:
        try:
            await write_to_sock(self)
        finally:
            # flushed, failed or aborted: _close() already ran and dropped the socket. Still
            # there on a closed transport: the task ended early (cancelled with its loop).
            if self._closed and self._sock is not None:
                self._write_task = None  # this task is ending: _close() must not cancel it
                self._close()

    setattr(wrapped, _FLUSH_MARK, True)
    return wrapped
