"""The simulator's HTTP/1.1 server: an asyncio Protocol per connection and httptools (llhttp, the parser
uvicorn serves vLLM with), so that every fault is a public API call.

A simulator must fail the ways a real server does, and some of those are below HTTP: a connection
closed without an answer, connections refused while the server is down. ASGI has no message for
either, and reaching into uvicorn's transport for them is reaching into its private state. Owning
the connection instead makes both one documented call: `transport.abort()` closes a connection
unanswered (the client sees a connection error, never a status), and closing the listening
`asyncio.Server` makes new connections refused until it listens again on the same port.

Kept small on purpose: keep-alive, Content-Length and chunked request bodies (the parser does the
framing), one request at a time per connection (a pipelined request waits its turn). A client that
hangs up while its request is being handled gets that handler cancelled, as vLLM aborts the request
of a client that went away. Requests carry whole clips (most of a megabyte); the parser hands their
bytes over as they arrive and they are joined once, so a body costs the event loop little besides
the kernel's copies (the h11 and StreamReader server this replaced copied each body four times and
parsed in Python: a third of the simulator's event loop in the load benchmark).
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    """The target without its query string."""
    headers: dict[str, str]
    """Lower-cased names; a repeated header keeps its last value."""
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        body = json.dumps(value, ensure_ascii=False).encode()
        return cls(status, body, (("content-type", "application/json"), *headers))

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode(), (("content-type", "text/plain; charset=utf-8"),))


Handler = Callable[[Request], Awaitable["Response | None"]]
"""Answers a request; None closes the connection without an answer."""


class HttpServer:
    """Serves `handler` on host:port; can stop listening and listen again, and drop every open connection."""

    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._listener: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def listen(self) -> None:
        """Accept connections; port 0 binds a free port, which `port` then holds (and a later listen reuses)."""
        # SO_REUSEADDR (asyncio's default on POSIX) lets a server that stopped listening bind its port again.
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(lambda: _Connection(self), self.host, self.port, reuse_address=True)
        self.port = self._listener.sockets[0].getsockname()[1]

    def stop_listening(self) -> None:
        """New connections are refused from now on (the socket is closed, not merely ignored)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def drop_connections(self) -> None:
        """Close every open connection without a word; their handlers are cancelled."""
        for connection in list(self._connections):
            connection.abort()

    def close(self) -> None:
        self.stop_listening()
        self.drop_connections()

    async def call(self, request: Request) -> Response | None:
        try:
            return await self.handler(request)
        except Exception:  # a bug in a handler is a 500 with the traceback on stderr, not a dead server
            traceback.print_exc(file=sys.stderr)
            return Response.json({"error": {"message": "internal error of the simulator", "code": 500}}, status=500)


class _Connection(asyncio.Protocol):
    """One client connection: the parser's callbacks collect each request; requests are answered in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.waiting: deque[tuple[Request, bool]] = deque()
        self.task: asyncio.Task | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []

    # --- the connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(HTTPStatus.BAD_REQUEST, "bad request: protocol upgrades are not served")
        except httptools.HttpParserError as exc:
            self._refuse(HTTPStatus.BAD_REQUEST, f"bad request: {exc}")

    def eof_received(self) -> bool:
        """The client hung up (or half-closed, which no HTTP/1.1 client does mid-request): close, and any
        request in progress is cancelled by `connection_lost`."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        self.waiting.clear()
        if self.task is not None:
            self.task.cancel()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- the parser's callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii")
        target = self.url.decode("latin-1").split("?", 1)[0]
        request = Request(method, target, self.headers, b"".join(self.body))
        self.body = []
        self.waiting.append((request, self.parser.should_keep_alive()))
        if self.task is None:
            self._next()

    # --- answering -------------------------------------------------------------------------------

    def _next(self) -> None:
        request, keep_alive = self.waiting.popleft()
        self.task = asyncio.ensure_future(self._answer(request, keep_alive))

    async def _answer(self, request: Request, keep_alive: bool) -> None:
        response = await self.server.call(request)
        self.task = None
        if self.transport is None or self.transport.is_closing():
            return
        if response is None:
            self.transport.abort()
            return
        self.transport.write(_encode(response, keep_alive))
        if not keep_alive:
            self.transport.close()
        elif self.waiting:
            self._next()

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        """A request the parser cannot read: answered with `status` (unless one is being handled) and closed."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.task is None:
            self.transport.write(_encode(Response.text(message, status), keep_alive=False))
        self.transport.close()


def _encode(response: Response, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    lines.append(f"content-length: {len(response.body)}")
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body
