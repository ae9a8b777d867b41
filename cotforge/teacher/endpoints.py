"""One teacher server as the client sees it: its HTTP client, its slots, and a circuit breaker.

A breaker is what tells an outage from a bad request. It counts consecutive server-side failures
(connection errors, 5xx, timeouts) across every request in flight on the endpoint, not per clip;
at `teacher.breaker_failures` in a row the endpoint is *down*: no new request is sent to it, the
requests that failed wait instead of failing their clips, and a probe asks the server until it
answers again. A server that stops answering altogether (a hung engine) is found by a stall
watchdog: requests in flight and no answer of any kind for `teacher.stall_s`, then a probe.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai

from cotforge.config import TeacherConfig
from cotforge.teacher.transport import AiohttpTransport

PROBE_TIMEOUT_S = 10.0
PROBE_EVERY_S = (0.5, 5.0)
"""The first probe of a down endpoint comes quickly; later ones back off to the upper bound."""


class Endpoint:
    def __init__(self, url: str, cfg: TeacherConfig) -> None:
        self.url = url
        self.cfg = cfg
        self.slots = asyncio.Semaphore(cfg.concurrency)
        self.outstanding = 0
        self.failures = 0
        self.down_since: float | None = None
        self.out = False
        """Taken out for good: down past the grace period while other endpoints carry on."""
        self.last_error = ""
        self.last_answer = time.monotonic()
        self.tripped = asyncio.Event()
        """Set when the endpoint goes down: requests in flight on it stop waiting for an answer."""
        self.up = asyncio.Event()
        self.up.set()
        self._probe: asyncio.Task | None = None
        # The requests' connections plus a few for probes; requests never wait for one (see transport.py).
        transport = AiohttpTransport(limit=cfg.concurrency + 8, tls=httpx.create_ssl_context())
        self.client = openai.AsyncOpenAI(
            base_url=url,
            api_key=cfg.resolved_api_key(),
            timeout=httpx.Timeout(cfg.timeout_s, connect=min(10.0, cfg.timeout_s)),
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(transport=transport),
        )

    @property
    def down(self) -> bool:
        return self.down_since is not None

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self.client.close()

    # --- what requests report ---------------------------------------------------------------------

    def answered(self) -> None:
        """Any answer from the server, even a refusal: it is alive."""
        self.last_answer = time.monotonic()

    def succeeded(self) -> None:
        self.answered()
        self.failures = 0

    def failed(self, kind: str, message: str) -> str:
        """A server-side failure: "tripped" when it takes the endpoint down now, "down" when it already was
        (either way an outage, not this request's fault), "" when the endpoint is still up."""
        self.last_error = f"{kind}: {message}"
        if kind not in ("connection", "timeout", "stalled"):
            self.answered()
        self.failures += 1
        if self.down:
            return "down"
        if self.failures >= self.cfg.breaker_failures:
            self.trip()
            return "tripped"
        return ""

    def trip(self) -> None:
        if self.down:
            return
        self.down_since = time.monotonic()
        self.up.clear()
        self.tripped.set()
        self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    def stalled(self) -> bool:
        """Requests in flight and no answer of any kind for `stall_s`: time to probe the server."""
        return self.outstanding > 0 and not self.down and time.monotonic() - self.last_answer > self.cfg.stall_s

    # --- probing ----------------------------------------------------------------------------------

    async def alive(self) -> bool:
        """The server answers a health check and a one-token request (a hung engine answers neither in time)."""
        root = str(self.client.base_url).rstrip("/").removesuffix("/v1")
        try:
            async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, trust_env=False) as http:
                health = await http.get(f"{root}/health")
            if health.status_code >= 500:
                return False
            await self.client.with_options(timeout=PROBE_TIMEOUT_S).chat.completions.create(
                model=self.cfg.model, messages=[{"role": "user", "content": "ok"}], max_tokens=1
            )
        except (httpx.HTTPError, openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError):
            return False
        except openai.APIStatusError as err:
            return err.status_code < 500  # a 4xx to the probe itself still means the server answers
        return True

    async def _probe_until_up(self) -> None:
        wait = PROBE_EVERY_S[0]
        while True:
            await asyncio.sleep(wait)
            if await self.alive():
                self.down_since = None
                # half-open: the next server-side failure takes it down again at once
                self.failures = max(0, self.cfg.breaker_failures - 1)
                self.last_answer = time.monotonic()
                self.tripped = asyncio.Event()
                self.up.set()
                return
            wait = min(PROBE_EVERY_S[1], wait * 2)

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "down": self.down, "out": self.out, "outstanding": self.outstanding, "last_error": self.last_error}
