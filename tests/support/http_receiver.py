"""A real HTTP server on loopback that plays a webhook receiver: it records every request it
gets (method, path, headers, body) and answers what the test's ``respond`` function says.

Each receiver listens on its own port, so two receivers are two different origins (what a
redirect "to another host" looks like on one machine).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Respond = Callable[[Received], Reply]


@dataclass
class Receiver:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    requests: list[Received]


def _handler(respond: Respond, requests: list[Received]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            got = Received(self.command, self.path, dict(self.headers), self.rfile.read(length))
            requests.append(got)
            reply = respond(got)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = do_PUT = do_HEAD = _serve  # noqa: N815 (http.server's names)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reads ``requests``."""

    return Handler


@contextmanager
def receiver(respond: Respond = lambda _: Reply()) -> Iterator[Receiver]:
    """Serve on 127.0.0.1 (a free port) in a thread until the block ends."""
    requests: list[Received] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(respond, requests))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()
