"""`cotforge teacher-sim`: an OpenAI-compatible stand-in for the vLLM teacher, for tests, demos and load tests.

It refuses what vLLM refuses (`requests`), answers DC JSON from a noise model around the gold label
that cotforge sends in `X-Cotforge-*` headers (`answers`), takes the time a GPU server would
(`service`), and fails the ways real servers fail (`faults`): per-request faults drawn by rate, and
one outage. It is never presented as a model: every name it serves starts with `sim/`, and
`/v1/models` marks it (`owned_by` = `teacher.headers.SIMULATOR_OWNER`).

Routes: `POST /v1/chat/completions`; `GET /v1/models` (with vLLM's `max_model_len`), `/health`,
`/metrics` (vLLM's gauge names) and `/sim/stats` (counters and peaks as JSON).

Determinism: an answer depends on the seed, the request body and the clip headers. Like vLLM's
sampling, it repeats exactly when the body has a `seed`; without one, each attempt of the same body
is a new draw. Faults and service times always depend on the attempt number, so a retry may succeed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import xxhash

from cotforge.sim.answers import Choice, Clip, NoiseModel, answer
from cotforge.sim.config import Fault, OutageMode, SimConfig
from cotforge.sim.faults import Outage, draw_fault
from cotforge.sim.http11 import HttpServer, Request, Response
from cotforge.sim.process import SimProcess
from cotforge.sim.requests import CheckedRequest, ProbeNeeded, SimError, check_request, completion_budget, invalid
from cotforge.sim.service import Engine
from cotforge.sim.stats import RequestLog, Stats
from cotforge.teacher.headers import CLIP_HEADERS, KEY_HEADER, SIMULATOR_OWNER

__all__ = ["SimConfig", "SimProcess", "Simulator", "serve"]

RETRY_AFTER_S = "0.2"
CHAT_PATH = "/v1/chat/completions"


class Simulator:
    """The state behind the routes: the engine, the outage, attempt counts, statistics and the log."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.noise = NoiseModel.from_config(cfg)
        self.stats = Stats()
        self.engine = Engine(cfg, self.stats)
        self.outage = Outage(cfg)
        self.attempts: Counter[str] = Counter()
        self.arrivals = 0
        self.log = RequestLog(cfg.log_path, cfg.log_bodies)
        self.http = HttpServer(self.route, cfg.host, cfg.port)
        self.created = int(time.time())
        self._outage_end: asyncio.Task[None] | None = None
        self._routes: dict[str, Callable[[], Response]] = {
            "/health": self.health,
            "/v1/models": lambda: Response.json(self.models()),
            "/metrics": lambda: Response.text(self.stats.prometheus(cfg.model)),
            "/sim/stats": lambda: Response.json({**self.stats.snapshot(), "outage": self.outage.state()}),
        }

    async def route(self, request: Request) -> Response | None:
        if request.path == CHAT_PATH:
            return await self.chat(request) if request.method == "POST" else _method_not_allowed()
        if self.outage.active(OutageMode.DROP):
            return None
        page = self._routes.get(request.path)
        if page is None:
            return Response.json({"detail": "Not Found"}, status=404)
        return page() if request.method == "GET" else _method_not_allowed()

    def health(self) -> Response:
        # vLLM's /health asks the engine: 503 once it is dead, 200 even while it hangs.
        return Response(503 if self.outage.active(OutageMode.ENGINE_DEAD) else 200)

    def models(self) -> dict[str, Any]:
        """vLLM's model list: the served name with its context length (`max_model_len`), owned by the simulator."""
        entry = {
            "id": self.cfg.model, "object": "model", "created": self.created, "owned_by": SIMULATOR_OWNER,
            "root": self.cfg.model, "parent": None, "max_model_len": self.cfg.max_model_len,
        }
        return {"object": "list", "data": [entry]}

    async def chat(self, request: Request) -> Response | None:
        started = time.perf_counter()
        self.arrivals += 1
        # Every line has every field, so the log loads as one table; refused requests keep the defaults.
        record: dict[str, Any] = {
            "time": round(time.time(), 3), "key": request.headers.get(KEY_HEADER.lower()),
            "parts": [], "media": [], "flags": [], "fault": None, "error": None,
        }
        if self.outage.due(self.arrivals):
            self._begin_outage()
        response: Response | None = None
        try:
            with self.stats.gauge("in_flight"):
                response = await self._chat(request, record)
            return response
        except asyncio.CancelledError:
            record["error"] = "the connection closed before the answer"
            raise
        finally:
            record["status"] = None if response is None else response.status
            record["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
            self.stats.requests["dropped" if response is None else str(response.status)] += 1
            self.log.write(record)

    async def _chat(self, request: Request, record: dict[str, Any]) -> Response | None:
        """The response to send, or None when the client is left without one."""
        digest = _digest(request)
        attempt = self.attempts[digest]
        self.attempts[digest] += 1
        record["attempt"] = attempt

        def work() -> Awaitable[Response | None]:
            return self._answer(request, record, digest, attempt)

        if self.outage.active():
            return await self._in_outage(record, work)
        if not self.outage.pending():
            return await work()
        # In flight when an outage begins, a request shares the fate of those that come after it.
        task = asyncio.ensure_future(work())
        begun = asyncio.ensure_future(self.outage.begun.wait())
        try:
            await asyncio.wait((task, begun), return_when=asyncio.FIRST_COMPLETED)
        finally:
            begun.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
        if not task.cancelled():
            return task.result()
        return await self._in_outage(record, work)

    async def _in_outage(self, record: dict[str, Any], work: Callable[[], Awaitable[Response | None]]) -> Response | None:
        record["fault"] = "outage"
        self.stats.faults["outage"] += 1
        if self.outage.mode is OutageMode.HANG:
            await self.outage.ended.wait()
            return await work()
        if self.outage.mode is OutageMode.ENGINE_DEAD:
            # vLLM's handler for EngineDeadError: a bare 500, no body.
            return Response(500)
        return None

    async def _answer(self, request: Request, record: dict[str, Any], digest: str, attempt: int) -> Response | None:
        try:
            body = _json_body(request.body)
            record.update(_describe(body, self.log.bodies))
            try:
                checked = check_request(body, self.cfg, probe=False)  # media seen before: checked here, at once
            except ProbeNeeded:
                checked = await asyncio.to_thread(check_request, body, self.cfg)  # decoding: off the event loop
            clip = Clip.from_headers(request.headers)
        except SimError as exc:
            record["error"] = exc.message
            return _error_response(exc)
        record.update(_describe_checked(checked))
        fault = draw_fault(self.cfg, digest, attempt)
        record["fault"] = fault
        if fault is not None:
            self.stats.faults[fault] += 1
        if fault is Fault.RATE_LIMIT:
            exc = SimError(429, "Simulated rate limit (rate_429): too many requests, retry shortly.")
            return _error_response(exc, (("retry-after", RETRY_AFTER_S),))
        budget = completion_budget(checked.max_tokens, checked.prompt_tokens, self.cfg.max_model_len)
        choices = answer(self.noise, clip, checked, budget, fault, digest if checked.seeded else f"{digest}:{attempt}")
        # The n sequences of one request decode side by side, so the longest one sets the time.
        decoded = max((choice.tokens for choice in choices), default=0)
        hold_s = self.cfg.timeout_hold_s if fault is Fault.TIMEOUT else 0.0
        await self.engine.serve(checked.prompt_tokens, decoded, self.engine.factor(digest, attempt), hold_s)
        if fault is Fault.SERVER_ERROR:
            return _error_response(SimError(500, "Simulated engine failure (rate_500)."))
        if fault is Fault.RESET:
            return None
        completion = sum(choice.tokens for choice in choices)
        self.stats.prompt_tokens += checked.prompt_tokens
        self.stats.completion_tokens += completion
        record.update(prompt_tokens=checked.prompt_tokens, completion_tokens=completion)
        request_id = f"chatcmpl-sim-{digest[:16]}-{attempt}"
        return Response.json(_completion(self.cfg.model, request_id, checked, choices))

    def _begin_outage(self) -> None:
        self.outage.begun.set()
        print(f"teacher-sim: {self.outage.describe()} has begun", flush=True)
        if self.outage.mode in (OutageMode.REFUSE, OutageMode.DROP):
            self.http.drop_connections()
        if self.outage.mode is OutageMode.REFUSE:
            self.http.stop_listening()
        if self.outage.seconds is not None:
            self._outage_end = asyncio.ensure_future(self._end_outage(self.outage.seconds))

    async def _end_outage(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.outage.mode is OutageMode.REFUSE:
            await self.http.listen()
        self.outage.ended.set()
        print("teacher-sim: the outage is over", flush=True)

    def close(self) -> None:
        if self._outage_end is not None:
            self._outage_end.cancel()
        self.http.close()
        self.log.close()


def _digest(request: Request) -> str:
    """A request's identity: its body and its clip headers (a hinted re-ask differs in the header alone).

    xxh3, not sha256: the body carries the clip's media (most of a megabyte), and on the two-core machines
    the load tests share with the client, sha256 of it cost a sixth of the simulator's CPU per request.
    The digest names requests for the seeded draws and the attempt count; nothing forges one."""
    names = (name.lower() for name in CLIP_HEADERS)
    headers = {name: request.headers[name] for name in names if name in request.headers}
    digest = xxhash.xxh3_128(request.body)
    digest.update(json.dumps(headers, sort_keys=True).encode())
    return digest.hexdigest()


def _json_body(raw: bytes) -> Any:
    """The parsed body. orjson first: the body is most of a megabyte of media, and the standard parser
    took a sixth of the simulator's CPU. What orjson refuses goes to `json`, vLLM's own parser, which
    decides (it also takes NaN and integers past 64 bits) and words the error."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}") from None


def _describe(body: Any, with_body: bool) -> dict[str, Any]:
    """What the log keeps of any body: its top-level keys and `n`, and the body itself only when asked."""
    described: dict[str, Any] = {"body_keys": sorted(body) if isinstance(body, dict) else None}
    if isinstance(body, dict):
        described["n"] = body.get("n", 1)
    if with_body:
        described["body"] = body
    return described


def _describe_checked(checked: CheckedRequest) -> dict[str, Any]:
    # Media are logged by type and size only: payloads would make the log as large as the dataset.
    return {
        "parts": list(checked.part_types),
        "media": [item.summary() for item in checked.media],
        "flags": list(checked.flags),
        "structured": checked.structured,
    }


def _error_response(exc: SimError, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response.json(exc.body(), status=exc.status, headers=headers)


def _method_not_allowed() -> Response:
    return Response.json({"detail": "Method Not Allowed"}, status=405)


def _completion(model: str, request_id: str, checked: CheckedRequest, choices: list[Choice]) -> dict[str, Any]:
    completion_tokens = sum(choice.tokens for choice in choices)
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": choice.content, "tool_calls": []},
                "logprobs": None,
                "finish_reason": choice.finish_reason,
                "stop_reason": None,
            }
            for index, choice in enumerate(choices)
        ],
        "usage": {
            "prompt_tokens": checked.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": checked.prompt_tokens + completion_tokens,
        },
    }


async def _serve(cfg: SimConfig) -> None:
    sim = Simulator(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await sim.http.listen()
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"teacher-sim: serving {cfg.model} (simulated answers, not a model) on http://{host}:{sim.http.port}/v1", flush=True)
    try:
        await stop.wait()
    finally:
        sim.close()


def serve(cfg: SimConfig) -> None:
    """Run the simulator until SIGINT or SIGTERM (blocking); a stop drops the connections still open."""
    asyncio.run(_serve(cfg))
