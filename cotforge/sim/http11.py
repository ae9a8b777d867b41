"""The simulator's HTTP/1.1 server: asyncio streams and h11, so that every fault is a public API call.

A simulator must fail the ways a real server does, and some of those are below HTTP: a connection
closed without an answer, connections refused while the server is down. ASGI has no message for
either, and reaching into uvicorn's transport for them is reaching into its private state. Owning
the connection instead makes both one documented call: `StreamWriter.transport.abort()` closes a
connection unanswered (the client sees a connection error, never a status), and closing the
listening `asyncio.Server` makes new connections refused until it listens again on the same port.

Kept small on purpose: keep-alive, Content-Length and chunked request bodies (h11 does the framing),
one request at a time per connection. A client that hangs up while its request is being handled
gets that handler cancelled, as vLLM aborts the request of a client that went away.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

READ_CHUNK = 1 << 20
"""Bytes asked of a connection at a time. Request bodies carry whole clips (hundreds of KB to MB): read in
asyncio's 64 KiB default, each body took a dozen trips through the event loop, each pausing and resuming
the socket's reader, which on a small machine took CPU from the client under test."""
STREAM_LIMIT = 4 * READ_CHUNK


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
        self._connections: set[asyncio.StreamWriter] = set()

    async def listen(self) -> None:
        """Accept connections; port 0 binds a free port, which `port` then holds (and a later listen reuses)."""
        # SO_REUSEADDR (asyncio's default on POSIX) lets a server that stopped listening bind its port again.
        self._listener = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True, limit=STREAM_LIMIT)
        self.port = self._listener.sockets[0].getsockname()[1]

    def stop_listening(self) -> None:
        """New connections are refused from now on (the socket is closed, not merely ignored)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def drop_connections(self) -> None:
        """Close every open connection without a word; their handlers are cancelled."""
        for writer in list(self._connections):
            writer.transport.abort()

    def close(self) -> None:
        self.stop_listening()
        self.drop_connections()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        self._connections.add(writer)
        try:
            while True:
                request = await _read_request(connection, reader)
                if request is None:
                    return
                response = await self._answer(request, connection, reader)
                if response is None:
                    writer.transport.abort()
                    return
                writer.write(_encode(connection, response))
                await writer.drain()
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                writer.write(_encode(connection, Response.text(f"bad request: {exc}", exc.error_status_hint)))
        except ConnectionError:
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _answer(self, request: Request, connection: h11.Connection, reader: asyncio.StreamReader) -> Response | None:
        """The handler's response, or None when it drops the connection or the client hangs up first."""
        task = asyncio.ensure_future(self._call(request))
        while True:
            watch = asyncio.ensure_future(reader.read(READ_CHUNK))
            await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
            watch.cancel()
            await asyncio.wait((watch,))  # a read must be over before the next one starts
            data = None if watch.cancelled() else _received(watch)
            if data is not None:
                connection.receive_data(data)
            if task.done():
                return task.result()
            if data == b"":
                task.cancel()
                await asyncio.wait((task,))
                return None

    async def _call(self, request: Request) -> Response | None:
        try:
            return await self.handler(request)
        except Exception:  # a bug in a handler is a 500 with the traceback on stderr, not a dead server
            traceback.print_exc(file=sys.stderr)
            return Response.json({"error": {"message": "internal error of the simulator", "code": 500}}, status=500)


async def _read_request(connection: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
    """The next whole request on the connection, or None once the client has closed it."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(READ_CHUNK))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            target = head.target.decode("latin-1")
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
            return Request(head.method.decode("ascii"), target.split("?", 1)[0], headers, bytes(body))
        else:
            return None


def _received(read: asyncio.Future[bytes]) -> bytes:
    """What a finished read brought; a reset connection reads as the end of the stream."""
    try:
        return read.result()
    except ConnectionError:
        return b""


def _encode(connection: h11.Connection, response: Response) -> bytes:
    headers = [*response.headers, ("content-length", str(len(response.body)))]
    events: list[h11.Event] = [h11.Response(status_code=response.status, headers=headers)]
    if response.body:
        events.append(h11.Data(data=response.body))
    events.append(h11.EndOfMessage())
    return b"".join(connection.send(event) or b"" for event in events)
