"""Async OpenAI-compatible teacher client over one or many servers: slots per server, retries, outages, budgets.

The openai package does the HTTP; retries are ours (its own are off) so that Retry-After is honoured
and every retry is counted by kind. Requests go to the endpoint with the fewest outstanding, each
with `teacher.concurrency` slots. A clip fails for a teacher reason only when a server answered and
the request itself was at fault: when a server stops answering (a circuit breaker per endpoint, see
`endpoints.py`), its requests wait and go elsewhere; when every endpoint has been down for the
grace period, the run stops with one message and its clips stay resumable. A run-level budget
(`teacher.max_requests`, `teacher.max_tokens_total`) stops the run the same clean way.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import openai

from cotforge.config import TeacherConfig
from cotforge.stats import Stats
from cotforge.teacher.endpoints import Endpoint
from cotforge.teacher.headers import SIMULATOR_OWNER
from cotforge.teacher.request import body_json
from cotforge.types import TeacherResponse

PREFLIGHT_TIMEOUT_S = 8.0
MAX_BACKOFF_S = 30.0
# Server-wide use_audio_in_video (--mm-processor-kwargs) does not work: vLLM 0.32 then fails every
# video (StopIteration in Qwen2_5OmniProcessor, and its start-up profiling the same way), so the
# way round a server without the trust flag is video and audio as separate parts.
MM_KWARGS_FIX = (
    "start vLLM with --trust-request-mm-kwargs, or set teacher.mm_kwargs=server and teacher.media_mode=separate "
    "and start it with --media-io-kwargs '{\"video\": {\"num_frames\": -1}}'"
)


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What the server says about the model it serves (vLLM reports `max_model_len` in /v1/models)."""

    name: str
    max_model_len: int | None
    simulated: bool


class TeacherUnavailable(Exception):
    """The run cannot go on: server unreachable, model not served, or a request shape it refuses for every clip."""


class TeacherBudgetReached(Exception):
    """The run spent what teacher.max_requests / teacher.max_tokens_total allow; it stops, resumable."""


class TeacherCallError(Exception):
    """One request failed for good (after retries, or refused); the clip fails with this reason."""


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


def _reasoning(message: dict[str, Any]) -> str | None:
    """The thinking a reasoning-parser server returns beside the answer (vLLM: `reasoning_content`, newer `reasoning`)."""
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) and value else None


def _choices(completion: Any) -> list[tuple[dict[str, Any], str]]:
    """(message, finish reason) of each choice of a chat completion's JSON; TeacherCallError naming what is
    wrong when the body is not one (a proxy's error page, a server that is not OpenAI-compatible)."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list):  # an empty list is an answer: no samples this time
        shape = f"keys {sorted(completion)[:8]}" if isinstance(completion, dict) else type(completion).__name__
        raise TeacherCallError(f"the teacher answered 200 without a list of choices: not a chat completion ({shape})")
    out = []
    for index, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str | None):
            raise TeacherCallError(f"the teacher answered 200 with choice {index} holding no message text: not a chat completion")
        out.append((message, choice.get("finish_reason") or ""))
    return out


def _count(usage: Any, name: str) -> int | None:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) else None


class TeacherClient:
    def __init__(self, cfg: TeacherConfig, spent_requests: int = 0, spent_tokens: int = 0) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.urls = list(cfg.endpoints or [cfg.url])
        self.endpoints: list[Endpoint] = []
        self.served: ServedModel | None = None
        self.spent_requests = spent_requests
        self.spent_tokens = spent_tokens
        """What earlier attempts of this run spent: the budget is the run's, not one command's."""
        self.log: list[str] = []
        """Endpoints taken out, outages begun and ended: shown to the user and kept in the stats."""
        self._watchdog: asyncio.Task | None = None

    async def __aenter__(self) -> TeacherClient:
        self.endpoints = [Endpoint(url, self.cfg) for url in self.urls]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        for endpoint in self.endpoints:
            await endpoint.close()

    def note(self, line: str) -> None:
        self.log.append(line)
        self.stats.inc("events")

    # --- preflight --------------------------------------------------------------------------------

    async def _models(self, endpoint: Endpoint) -> list[Any]:
        try:
            models = await endpoint.client.with_options(timeout=PREFLIGHT_TIMEOUT_S, max_retries=0).models.list()
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise TeacherUnavailable(
                f"cannot reach the teacher at {endpoint.url} ({type(err).__name__}: {_message(err)}); is the server "
                "running, and is teacher.url right?"
            ) from None
        except openai.AuthenticationError:
            raise TeacherUnavailable(
                f"the teacher at {endpoint.url} refused the API key (401); set COTFORGE_TEACHER_API_KEY"
            ) from None
        except openai.APIStatusError as err:
            raise TeacherUnavailable(f"the teacher at {endpoint.url} answered {err.status_code} to GET /models: {_message(err)}") from None
        names = [m.id for m in models.data]
        if self.cfg.model not in names:
            raise TeacherUnavailable(
                f"model {self.cfg.model!r} is not served at {endpoint.url}; it serves: {', '.join(names) or '(none)'}. "
                "Set teacher.model to one of these (every endpoint must serve the same model)."
            )
        return models.data

    async def preflight(self) -> list[str]:
        """Check every endpoint answers and serves the model; one that does not is taken out with a log line.

        Raises TeacherUnavailable within seconds when none can be used.
        """
        results = await asyncio.gather(*(self._models(e) for e in self.endpoints), return_exceptions=True)
        usable: list[tuple[Endpoint, list[Any]]] = []
        for endpoint, result in zip(self.endpoints, results, strict=True):
            if isinstance(result, TeacherUnavailable):
                if len(self.endpoints) == 1:
                    raise result
                endpoint.out = True
                self.note(f"endpoint {endpoint.url} taken out at preflight: {result}")
            elif isinstance(result, BaseException):
                raise result
            else:
                usable.append((endpoint, result))
        if not usable:
            raise TeacherUnavailable(f"no teacher endpoint can be used: {'; '.join(self.log)}")
        served = []
        for _, data in usable:
            entry = next(m for m in data if m.id == self.cfg.model)
            length = (entry.model_extra or {}).get("max_model_len")
            served.append(ServedModel(entry.id, int(length) if isinstance(length, int | float) else None, entry.owned_by == SIMULATOR_OWNER))
        if len({s.simulated for s in served}) > 1:
            raise TeacherUnavailable("the teacher endpoints serve different things: some are cotforge's simulator, some are not")
        lengths = [s.max_model_len for s in served if s.max_model_len]
        self.served = ServedModel(self.cfg.model, min(lengths) if lengths else None, served[0].simulated)
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        return [self.cfg.model]

    async def _watch(self) -> None:
        """Probe endpoints that hold requests but have not answered anything for teacher.stall_s."""
        while True:
            await asyncio.sleep(min(5.0, max(0.5, self.cfg.stall_s / 4)))
            for endpoint in self.endpoints:
                if endpoint.stalled() and not await endpoint.alive():
                    endpoint.last_error = f"stalled: no answer for {self.cfg.stall_s:g} s and the server does not answer a probe"
                    endpoint.trip()
                    self.note(f"endpoint {endpoint.url} stopped answering (a hung server?); its requests wait")
                    self.stats.inc("outages")

    # --- choosing a server ------------------------------------------------------------------------

    async def _pick(self) -> Endpoint:
        """The usable endpoint with the fewest outstanding requests; waits out an outage up to the grace period."""
        while True:
            live = [e for e in self.endpoints if not e.out and not e.down]
            if live:
                return min(live, key=lambda e: e.outstanding / self.cfg.concurrency)
            waiting = [e for e in self.endpoints if not e.out]
            for endpoint in waiting:
                if endpoint.down_for() > self.cfg.outage_grace_s:
                    if len(waiting) > 1:
                        self._take_out(endpoint)
                        break
                    raise TeacherUnavailable(
                        f"the teacher at {endpoint.url} has not answered for {endpoint.down_for():.0f} s "
                        f"(teacher.outage_grace_s={self.cfg.outage_grace_s:g}; last error {endpoint.last_error}); stopping. "
                        "No clip was failed for it"
                    )
            else:
                ups = [asyncio.ensure_future(e.up.wait()) for e in waiting]
                try:
                    await asyncio.wait(ups, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in ups:
                        task.cancel()

    def _take_out(self, endpoint: Endpoint) -> None:
        endpoint.out = True
        self.note(f"endpoint {endpoint.url} taken out: down for {endpoint.down_for():.0f} s ({endpoint.last_error})")

    def _take_out_dead(self) -> None:
        """An endpoint down past the grace period while others work is taken out for good."""
        for endpoint in self.endpoints:
            if endpoint.down and not endpoint.out and endpoint.down_for() > self.cfg.outage_grace_s:
                if any(not e.out and not e.down for e in self.endpoints):
                    self._take_out(endpoint)

    def _check_budget(self) -> None:
        spent = self.spent_requests + self.stats["requests"]
        if self.cfg.max_requests is not None and spent >= self.cfg.max_requests:
            raise TeacherBudgetReached(f"teacher.max_requests={self.cfg.max_requests} reached ({spent} requests sent in this run)")
        tokens = self.spent_tokens + self.stats["prompt_tokens"] + self.stats["completion_tokens"]
        if self.cfg.max_tokens_total is not None and tokens >= self.cfg.max_tokens_total:
            raise TeacherBudgetReached(f"teacher.max_tokens_total={self.cfg.max_tokens_total:,} reached ({tokens:,} tokens in this run)")

    # --- asking -----------------------------------------------------------------------------------

    async def ask(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> TeacherResponse:
        """Send one materialized request; TeacherCallError when the request itself is at fault."""
        attempt = 0
        self._check_budget()
        self.stats.inc("requests")
        content = body_json(body)  # once, whatever the tries
        while True:
            self._take_out_dead()
            endpoint = await self._pick()
            async with endpoint.slots:
                if endpoint.down or endpoint.out:
                    continue
                began = time.perf_counter()
                endpoint.outstanding += 1
                try:
                    with self.stats.gauge("in_flight"):
                        completion = await self._send(endpoint, content, headers)
                except openai.BadRequestError as err:
                    endpoint.answered()
                    raise self._refused(endpoint, err) from None
                except openai.NotFoundError as err:
                    raise TeacherUnavailable(f"the teacher at {endpoint.url} answered 404: {_message(err)}") from None
                except openai.APIError as err:
                    if "allowed-local-media-path" in _message(err):  # a server without the flag at all answers 500, not 400
                        raise self._refused(endpoint, err) from None
                    kind = _retry_kind(err)
                    if kind is None:
                        endpoint.answered()
                        self.stats.inc(f"failures/{type(err).__name__}")
                        raise TeacherCallError(f"teacher error: {type(err).__name__}: {_message(err)}") from None
                    outage = endpoint.failed(kind, _message(err)) if kind != "429" else ""
                    if kind == "429":
                        endpoint.answered()
                    if outage:
                        # the server is down, not this request: it waits for it (or another endpoint) without losing a try
                        self.stats.inc(f"outage_waits/{kind}")
                        if outage == "tripped":
                            self.stats.inc("outages")
                            self.note(f"endpoint {endpoint.url} down after {endpoint.failures} failures in a row ({kind}); requests wait")
                        continue
                    if attempt >= self.cfg.max_retries:
                        self.stats.inc(f"failures/{kind}")
                        raise TeacherCallError(f"teacher error after {attempt + 1} tries: {kind}: {_message(err)}") from None
                    self.stats.inc(f"retries/{kind}")
                    delay = _retry_after(err)
                    if delay is None:
                        delay = min(MAX_BACKOFF_S, self.cfg.backoff_s * 2**attempt) * random.uniform(0.5, 1.5)
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                except _Stalled:
                    self.stats.inc("outage_waits/stalled")
                    continue
                finally:
                    endpoint.outstanding -= 1
                endpoint.succeeded()
                return self._response(completion, time.perf_counter() - began)

    async def _send(self, endpoint: Endpoint, content: bytes, headers: dict[str, str] | None) -> Any:
        """The HTTP call, abandoned (to be sent again) if its endpoint goes down while it waits.

        The body's JSON (`request.body_json`) is posted as it is (the SDK's documented way to a route
        with its own fields): `chat.completions.create` would send the same JSON, but first walks every
        message part against its typed parameters, which cost more CPU than all the rest of a request.
        The answer comes back as its parsed JSON (`cast_to=object`), read by `_response`: the SDK's
        ChatCompletion model would be built field by field for the few fields read."""
        options = {"headers": headers} if headers else {}
        call = asyncio.ensure_future(endpoint.client.post("/chat/completions", cast_to=object, content=content, options=options))
        tripped = asyncio.ensure_future(endpoint.tripped.wait())
        try:
            await asyncio.wait([call, tripped], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            call.cancel()  # this request was cancelled (the run is stopping): so is its HTTP call
            await asyncio.gather(call, return_exceptions=True)
            raise
        finally:
            tripped.cancel()
        if call.done():
            return call.result()
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        raise _Stalled

    def _refused(self, endpoint: Endpoint, err: openai.APIStatusError) -> Exception:
        message = _message(err)
        if "mm_processor_kwargs" in message or "media_io_kwargs" in message:
            return TeacherUnavailable(f"the teacher at {endpoint.url} refuses per-request media options ({message}); {MM_KWARGS_FIX}")
        if "allowed-local-media-path" in message:
            return TeacherUnavailable(
                f"the teacher at {endpoint.url} cannot read teacher.media_dir={self.cfg.media_dir} ({message}); start "
                "vLLM with --allowed-local-media-path covering that folder on a filesystem it shares, or unset teacher.media_dir"
            )
        self.stats.inc("failures/400")
        return TeacherCallError(f"teacher refused the request (400): {message}")

    def _response(self, completion: Any, latency: float) -> TeacherResponse:
        """The answer, read from the completion's JSON as it came (see `_send`)."""
        choices = _choices(completion)
        self.stats.inc("succeeded")
        usage = completion.get("usage")
        prompt_tokens, completion_tokens = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
        self.stats.inc("prompt_tokens", prompt_tokens or 0)
        self.stats.inc("completion_tokens", completion_tokens or 0)
        model = completion.get("model")
        return TeacherResponse(
            reasonings=[_reasoning(message) for message, _ in choices],
            contents=[message.get("content") or "" for message, _ in choices],
            finish_reasons=[str(finish) for _, finish in choices],
            model=model if isinstance(model, str) and model else self.cfg.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency,
        )


class _Stalled(Exception):
    """The request's endpoint went down while the request waited for an answer: send it again elsewhere or later."""
