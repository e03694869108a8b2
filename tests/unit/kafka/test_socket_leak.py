"""kafka-python must not leave sockets behind: not for connect attempts refused while no
broker listens (real clients against a loopback port nobody listens on), nor for connections
closed while a request was still queued (the real transport and IO loop on a loopback pair)."""

import gc
import os
import socket
import time
import warnings
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

from pipeline.devstack.localkafka import free_ports
from pipeline.kafka.clients import new_consumer


def open_sockets() -> int:
    fds = os.listdir("/proc/self/fd")
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in fds if _alive(fd))


def _alive(fd: str) -> bool:
    return os.path.exists(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_refused_connects_close_their_sockets() -> None:
    (port,) = free_ports(1)
    gc.collect()
    before = open_sockets()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            with pytest.raises(KafkaTimeoutError):
                new_consumer(bootstrap_servers=f"127.0.0.1:{port}", bootstrap_timeout_ms=500)
        leaked_before_gc = open_sockets() - before
        gc.collect()
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert (leaked_before_gc, [str(w.message) for w in unclosed]) == (0, [])


class _Protocol:
    """What a transport calls back on its connection (``KafkaConnection``): only the end."""

    _sensors = None

    def __init__(self) -> None:
        self.lost: list[BaseException | None] = []

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def _transport_on_loopback() -> tuple[Any, socket.socket, socket.socket, Any]:
    """A network loop, a transport on a connected loopback socket (as the connection manager
    builds it), that socket and its peer."""
    from kafka.net.selector import NetworkSelector
    from kafka.net.transport import KafkaTCPTransport

    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    sock.setblocking(False)
    peer.settimeout(5)
    net = NetworkSelector()
    transport = KafkaTCPTransport(net, sock, host="127.0.0.1")
    transport.set_protocol(_Protocol())
    return net, sock, peer, transport


def _received(peer: socket.socket) -> bytes:
    """Everything ``peer`` receives until the other end closes."""
    data = b""
    while chunk := peer.recv(4096):
        data += chunk
    return data


def test_a_connection_closed_with_a_request_still_queued_closes_its_socket_with_the_loop() -> None:
    """The order of ``KafkaNetClient.close()``: every connection is closed first (a transport
    with a request still buffered leaves that to its write task, once flushed), then the IO
    loop, which cancels the write task: the socket is closed then, not left open for the
    garbage collector (a ResourceWarning from whichever test runs when it collects)."""
    net, sock, peer, transport = _transport_on_loopback()
    protocol = transport.get_protocol()
    try:
        transport.write(b"a request the IO thread queued just before close")
        transport.close()
        net.close()
        assert (sock.fileno(), protocol.lost) == (-1, [None])
        assert _received(peer) == b""  # the request is dropped: the loop that sent it is gone
    finally:
        sock.close()
        peer.close()


def test_a_connection_closed_with_a_request_queued_still_sends_it_while_the_loop_runs() -> None:
    """While the loop runs, closing still flushes the buffered request before the socket."""
    net, sock, peer, transport = _transport_on_loopback()
    protocol = transport.get_protocol()
    try:
        transport.write(b"last request")
        transport.close()
        deadline = time.monotonic() + 5
        while sock.fileno() != -1 and time.monotonic() < deadline:
            net.poll(timeout_ms=50)
        assert (sock.fileno(), protocol.lost) == (-1, [None])
        assert _received(peer) == b"last request"
        net.close()
    finally:
        sock.close()
        peer.close()
