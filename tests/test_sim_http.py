"""The simulator's HTTP/1.1 server over real sockets: framing, keep-alive and pipelining, bad requests,
answers withheld on purpose, clients that hang up, and a listener that stops and starts again."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from cotforge.sim.http11 import HttpServer, Request, Response


async def _echo(request: Request) -> Response | None:
    if request.path == "/drop":
        return None
    return Response.json({"method": request.method, "path": request.path, "bytes": len(request.body),
                          "head": request.body[:16].decode("latin-1"), "x": request.headers.get("x-clip")})


async def _serving(handler=_echo) -> HttpServer:
    server = HttpServer(handler, "127.0.0.1", 0)
    await server.listen()
    return server


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def test_pipelined_requests_on_one_connection_are_answered_in_order() -> None:
    async def go() -> list[dict]:
        server = await _serving()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            big = b"x" * 3_000_000  # more than one socket read
            writer.write(b"POST /a?q=1 HTTP/1.1\r\nHost: t\r\nX-Clip: one\r\nContent-Length: %d\r\n\r\n" % len(big) + big
                         + b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            answers = [await _read_response(reader) for _ in range(2)]
            writer.close()
            return [json.loads(body) for _, _, body in answers]
        finally:
            server.close()

    first, second = asyncio.run(go())
    assert first == {"method": "POST", "path": "/a", "bytes": 3_000_000, "head": "x" * 16, "x": "one"}
    assert second["method"] == "GET" and second["path"] == "/b" and second["bytes"] == 0


def test_a_chunked_body_sent_in_pieces_arrives_whole() -> None:
    async def go() -> dict:
        server = await _serving()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"abc", b"defgh", b"0123456789abcdef"):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            status, headers, body = await _read_response(reader)
            writer.close()
            assert status == 200 and headers["content-type"] == "application/json"
            return json.loads(body)
        finally:
            server.close()

    assert asyncio.run(go())["head"] == "abcdefgh01234567"


def test_a_request_the_parser_cannot_read_gets_400_and_the_connection_closes() -> None:
    async def go() -> tuple[int, bytes, bytes]:
        server = await _serving()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            status, _, body = await _read_response(reader)
            rest = await reader.read()
            writer.close()
            return status, body, rest
        finally:
            server.close()

    status, body, rest = asyncio.run(go())
    assert status == 400 and body.startswith(b"bad request: ") and rest == b""


def test_no_answer_closes_the_connection_and_the_client_sees_a_connection_error() -> None:
    async def go() -> None:
        server = await _serving()
        try:
            async with httpx.AsyncClient(trust_env=False) as client:
                with pytest.raises(httpx.TransportError):
                    await client.get(f"http://127.0.0.1:{server.port}/drop")
                answer = await client.get(f"http://127.0.0.1:{server.port}/after")  # a new connection
                assert answer.json()["path"] == "/after"
        finally:
            server.close()

    asyncio.run(go())


def test_a_client_that_hangs_up_gets_its_request_cancelled() -> None:
    events: list[str] = []

    async def go() -> None:
        started = asyncio.Event()

        async def slow(request: Request) -> Response:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                events.append("cancelled")
                raise
            return Response(200)

        server = await _serving(slow)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(started.wait(), 5)
            writer.close()
            for _ in range(100):
                if events:
                    break
                await asyncio.sleep(0.02)
        finally:
            server.close()

    asyncio.run(go())
    assert events == ["cancelled"]


def test_a_server_that_stops_listening_refuses_and_listens_again_on_its_port() -> None:
    async def go() -> None:
        server = await _serving()
        port = server.port
        try:
            async with httpx.AsyncClient(trust_env=False) as client:
                server.stop_listening()
                server.drop_connections()
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://127.0.0.1:{port}/x")
                await server.listen()
                assert server.port == port
                assert (await client.get(f"http://127.0.0.1:{port}/x")).status_code == 200
        finally:
            server.close()

    asyncio.run(go())
