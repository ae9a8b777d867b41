"""The HTTP transport under the OpenAI SDK: aiohttp's connection pool and C parser instead of httpcore's.

A re-asking run keeps dozens of requests of most of a megabyte each in flight on a few cores, and
the client's own CPU per request decides how full the teacher stays. httpcore (the SDK's default)
walks every connection of its pool in Python whenever a request starts or ends and parses HTTP in
pure Python; aiohttp does neither (bench/pipeline.py: the synth process's CPU per request fell by
about a fifth). The SDK's own aiohttp client (`openai.DefaultAioHttpClient`) reports every broken
connection as a connect timeout, so a server that drops requests would read as one that is slow to
accept them; this transport keeps the distinction the retry and outage logic report (`client.py`):
timeouts become httpx timeouts, everything else a connection error, each with aiohttp's message.

Only what the teacher client uses: HTTP/1.1, whole (not streamed) responses, no proxy (httpx routes a
proxied URL to its own transport before this one is asked).
"""

from __future__ import annotations

import ssl

import aiohttp
import httpx2


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """At most `limit` connections to any host; TLS with `tls`. The session is made on first use, in the
    event loop that uses it (aiohttp binds a session to its loop), and closed by `aclose`."""

    def __init__(self, limit: int, tls: ssl.SSLContext) -> None:
        self.limit = limit
        self.tls = tls
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.limit, ssl=self.tls)
            # Compressed answers are decoded by httpx from the headers, as with its own transport.
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)
        return self._session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout = request.extensions.get("timeout", {})
        # httpx's timeouts are per phase (a read may take `read` seconds), never for the whole request.
        limits = aiohttp.ClientTimeout(
            total=None, connect=timeout.get("pool"), sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
        )
        try:
            async with self._client().request(
                request.method,
                str(request.url),
                headers=list(request.headers.multi_items()),
                data=request.content or None,
                allow_redirects=False,
                timeout=limits,
            ) as answer:
                body = await answer.read()
        except aiohttp.ConnectionTimeoutError as err:
            raise httpx2.ConnectTimeout(str(err) or "timed out connecting", request=request) from err
        except TimeoutError as err:  # aiohttp's read timeouts are TimeoutErrors too
            raise httpx2.ReadTimeout(str(err) or "timed out waiting for the answer", request=request) from err
        except aiohttp.ClientConnectorError as err:
            raise httpx2.ConnectError(str(err), request=request) from err
        except aiohttp.ServerDisconnectedError as err:
            raise httpx2.RemoteProtocolError(f"the server closed the connection without an answer ({err})", request=request) from err
        except (aiohttp.ClientError, OSError) as err:
            raise httpx2.ReadError(f"{type(err).__name__}: {err}", request=request) from err
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1"}
        if answer.reason:
            extensions["reason_phrase"] = answer.reason.encode()
        return httpx2.Response(answer.status, headers=answer.raw_headers, content=body, request=request, extensions=extensions)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
