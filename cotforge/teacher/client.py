"""Async OpenAI-compatible teacher client: bounded concurrency, retries with backoff, usage accounting.

The openai package does the HTTP; retries are ours (the client's own are turned off) so that
Retry-After is honoured, every retry is counted for the progress display, and a dead server stops
the run with one clear message instead of failing every clip.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from cotforge.config import TeacherConfig
from cotforge.store.cache import TeacherResponse
from cotforge.teacher.request import split_body

PREFLIGHT_TIMEOUT_S = 8.0
MAX_BACKOFF_S = 30.0
# Server-wide use_audio_in_video (--mm-processor-kwargs) does not work: vLLM 0.32 then fails every
# video (StopIteration in Qwen2_5OmniProcessor, and its start-up profiling the same way), so the
# way round a server without the trust flag is video and audio as separate parts.
MM_KWARGS_FIX = (
    "start vLLM with --trust-request-mm-kwargs, or set teacher.mm_kwargs=server and teacher.media_mode=separate "
    "and start it with --media-io-kwargs '{\"video\": {\"fps\": 2}}'"
)


class TeacherUnavailable(Exception):
    """The run cannot go on: server unreachable, model not served, or a request shape it refuses for every clip."""


class TeacherCallError(Exception):
    """One request failed for good (after retries, or refused); the clip fails with this reason."""


@dataclass
class ClientStats:
    requests: int = 0
    succeeded: int = 0
    retries: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


def _retry_kind(err: Exception) -> str | None:
    if isinstance(err, openai.RateLimitError):
        return "429"
    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection"
    if isinstance(err, openai.APIStatusError) and (err.status_code >= 500 or err.status_code in (408, 409)):
        return str(err.status_code)
    return None


def _retry_after(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _message(err: Exception) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
    return str(err)


class TeacherClient:
    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        self.stats = ClientStats()
        self._last_success = time.monotonic()
        self._client: openai.AsyncOpenAI | None = None

    async def __aenter__(self) -> TeacherClient:
        limits = httpx.Limits(max_connections=self.cfg.concurrency + 8, max_keepalive_connections=self.cfg.concurrency + 8)
        self._client = openai.AsyncOpenAI(
            base_url=self.cfg.url,
            api_key=self.cfg.resolved_api_key(),
            timeout=httpx.Timeout(self.cfg.timeout_s, connect=min(10.0, self.cfg.timeout_s)),
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()

    async def preflight(self) -> list[str]:
        """Check the server answers and serves the model; raise TeacherUnavailable within seconds otherwise."""
        assert self._client is not None
        try:
            models = await self._client.with_options(timeout=PREFLIGHT_TIMEOUT_S, max_retries=0).models.list()
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise TeacherUnavailable(
                f"cannot reach the teacher at {self.cfg.url} ({type(err).__name__}: {_message(err)}); is the server "
                "running, and is teacher.url right?"
            ) from None
        except openai.AuthenticationError:
            raise TeacherUnavailable(
                f"the teacher at {self.cfg.url} refused the API key (401); set COTFORGE_TEACHER_API_KEY"
            ) from None
        except openai.APIStatusError as err:
            raise TeacherUnavailable(f"the teacher at {self.cfg.url} answered {err.status_code} to GET /models: {_message(err)}") from None
        names = [m.id for m in models.data]
        if self.cfg.model not in names:
            raise TeacherUnavailable(
                f"model {self.cfg.model!r} is not served at {self.cfg.url}; it serves: {', '.join(names) or '(none)'}. "
                "Set teacher.model to one of these."
            )
        return names

    async def ask(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> TeacherResponse:
        """Send one materialized request, retrying transient failures; TeacherCallError when it gives up."""
        assert self._client is not None
        typed, extra = split_body(body)
        attempt = 0
        self.stats.requests += 1
        while True:
            began = time.perf_counter()
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                completion = await self._client.chat.completions.create(**typed, extra_body=extra or None, extra_headers=headers or None)
            except openai.BadRequestError as err:
                message = _message(err)
                if "mm_processor_kwargs" in message or "media_io_kwargs" in message:
                    raise TeacherUnavailable(f"the teacher at {self.cfg.url} refuses per-request media options ({message}); {MM_KWARGS_FIX}") from None
                self._check_media_dir(message)
                self.stats.failures["400"] += 1
                raise TeacherCallError(f"teacher refused the request (400): {message}") from None
            except openai.NotFoundError as err:
                raise TeacherUnavailable(f"the teacher at {self.cfg.url} answered 404: {_message(err)}") from None
            except openai.APIError as err:
                self._check_media_dir(_message(err))  # a server without the flag at all answers 500, not 400
                kind = _retry_kind(err)
                if kind is None:
                    self.stats.failures[type(err).__name__] += 1
                    raise TeacherCallError(f"teacher error: {type(err).__name__}: {_message(err)}") from None
                if attempt >= self.cfg.max_retries:
                    self.stats.failures[kind] += 1
                    self._check_alive(kind)
                    raise TeacherCallError(f"teacher error after {attempt + 1} tries: {kind}: {_message(err)}") from None
                self.stats.retries[kind] += 1
                delay = _retry_after(err)
                if delay is None:
                    delay = min(MAX_BACKOFF_S, self.cfg.backoff_s * 2**attempt) * random.uniform(0.5, 1.5)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            finally:
                self.stats.in_flight -= 1
            return self._response(completion, time.perf_counter() - began)

    def _check_media_dir(self, message: str) -> None:
        if "allowed-local-media-path" in message:
            raise TeacherUnavailable(
                f"the teacher at {self.cfg.url} cannot read teacher.media_dir={self.cfg.media_dir} ({message}); start "
                "vLLM with --allowed-local-media-path covering that folder on a filesystem it shares, or unset teacher.media_dir"
            ) from None

    def _check_alive(self, kind: str) -> None:
        if kind in ("connection", "timeout") and time.monotonic() - self._last_success > max(60.0, 2 * self.cfg.timeout_s):
            raise TeacherUnavailable(
                f"the teacher at {self.cfg.url} has not answered for {time.monotonic() - self._last_success:.0f} s; "
                "stopping (re-run to resume where it stopped)"
            )

    def _response(self, completion: Any, latency: float) -> TeacherResponse:
        self._last_success = time.monotonic()
        self.stats.succeeded += 1
        usage = completion.usage
        if usage is not None:
            self.stats.prompt_tokens += usage.prompt_tokens or 0
            self.stats.completion_tokens += usage.completion_tokens or 0
        return TeacherResponse(
            contents=[choice.message.content or "" for choice in completion.choices],
            finish_reasons=[choice.finish_reason or "" for choice in completion.choices],
            model=completion.model or self.cfg.model,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_s=latency,
        )
