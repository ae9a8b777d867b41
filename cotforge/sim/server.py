"""`cotforge teacher-sim`: an OpenAI-compatible stand-in for the vLLM teacher, for tests, demos and load tests.

It refuses what vLLM refuses (`sim_request`), answers DC JSON from a noise model around the gold
label that cotforge sends in `X-Cotforge-*` headers (`sim_answer`), and behaves like a GPU server
under load: at most `capacity` requests in service, the rest queued, with vLLM's queue metrics.
Faults (429, 500, dropped connections, timeouts, malformed and truncated answers) are drawn per
request, so clients' retry paths can be tested. It is never presented as a model: every name it
serves starts with `sim/`.

Determinism: an answer depends on the seed, the request body and the clip headers. Like vLLM's
sampling, it repeats exactly when the body has a `seed`; without one, each attempt of the same body
is a new draw. Faults always depend on the attempt number, so a retry may succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError

from cotforge.sim.answers import CLIP_HEADERS, KEY_HEADER, Choice, Clip, Fault, NoiseModel, answer, draw_fault
from cotforge.sim.config import SimConfig
from cotforge.sim.requests import CheckedRequest, SimError, check_request, completion_budget, invalid

__all__ = ["SimConfig", "SimProcess", "build_arg_parser", "create_app", "main", "parse_config", "serve"]

RETRY_AFTER_S = "0.2"
DISCONNECT_POLL_S = 0.05
GRACEFUL_SHUTDOWN_S = 2
"""Held (timeout-fault) requests must not keep a stopping server alive for `timeout_hold_s`."""
_DROP_KEY = "cotforge.sim.drop"


class _Stats:
    """Gauges with their peaks, and counters, for `/metrics` and `/sim/stats`."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @contextmanager
    def gauge(self, name: str) -> Iterator[None]:
        self.now[name] += 1
        self.peak[name] = max(self.peak[name], self.now[name])
        try:
            yield
        finally:
            self.now[name] -= 1

    def snapshot(self) -> dict[str, Any]:
        gauges = ("running", "waiting", "in_flight")
        return {
            "requests": dict(self.requests),
            "faults": dict(self.faults),
            **{name: self.now[name] for name in gauges},
            **{f"max_{name}": self.peak[name] for name in gauges},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    def prometheus(self, model: str) -> str:
        label = f'{{model_name="{model}"}}'
        rows = (
            ("vllm:num_requests_running", "gauge", "Requests in service (the model's running batch).", self.now["running"]),
            ("vllm:num_requests_waiting", "gauge", "Requests waiting for a free slot.", self.now["waiting"]),
            ("vllm:prompt_tokens_total", "counter", "Prompt tokens of answered requests.", self.prompt_tokens),
            ("vllm:generation_tokens_total", "counter", "Completion tokens of answered requests.", self.completion_tokens),
        )
        lines = []
        for name, kind, text, value in rows:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{label} {float(value)}"]
        return "\n".join(lines) + "\n"


class _RequestLog:
    """The JSONL request log: one line per chat request, flushed at once so that tests can read it live."""

    def __init__(self, path: Path | None, bodies: bool) -> None:
        self.bodies = bodies
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Simulator:
    """The state behind the routes: the capacity model, attempt counts, statistics and the log."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.noise = NoiseModel.from_config(cfg)
        self.slots = asyncio.Semaphore(cfg.capacity)
        self.stats = _Stats()
        self.attempts: Counter[str] = Counter()
        self.log = _RequestLog(cfg.log_path, cfg.log_bodies)

    async def chat(self, request: Request) -> Response:
        started = time.perf_counter()
        # Every line has every field, so the log loads as one table; refused requests keep the defaults.
        record: dict[str, Any] = {
            "time": round(time.time(), 3), "key": request.headers.get(KEY_HEADER),
            "parts": [], "media": [], "flags": [], "fault": None, "error": None,
        }
        with self.stats.gauge("in_flight"):
            response = await self._chat(request, record)
        record["status"] = None if response is None else response.status_code
        record["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        self.stats.requests["dropped" if response is None else str(response.status_code)] += 1
        self.log.write(record)
        # After a dropped connection the server discards whatever is sent; FastAPI still needs a response.
        return Response() if response is None else response

    async def _chat(self, request: Request, record: dict[str, Any]) -> Response | None:
        """The response to send, or None when the client is left without one."""
        raw = await request.body()
        digest = _digest(raw, request)
        attempt = self.attempts[digest]
        self.attempts[digest] += 1
        record["attempt"] = attempt
        try:
            body = _json_body(raw)
            record.update(_describe(body, self.log.bodies))
            checked = await asyncio.to_thread(check_request, body, self.cfg)
            clip = Clip.from_headers(request.headers)
        except SimError as exc:
            record["error"] = exc.message
            return _error_response(exc)
        record.update(_describe_checked(checked))
        return await self._answer(request, record, checked, clip, digest, attempt)

    async def _answer(
        self, request: Request, record: dict[str, Any], checked: CheckedRequest, clip: Clip, digest: str, attempt: int
    ) -> Response | None:
        fault = draw_fault(self.cfg, digest, attempt)
        record["fault"] = fault
        if fault is not None:
            self.stats.faults[fault] += 1
        if fault is Fault.RATE_LIMIT:
            exc = SimError(429, "Simulated rate limit (rate_429): too many requests, retry shortly.")
            return _error_response(exc, {"Retry-After": RETRY_AFTER_S})
        budget = completion_budget(checked.max_tokens, checked.prompt_tokens, self.cfg.max_model_len)
        salt = digest if checked.seeded else f"{digest}:{attempt}"
        choices = answer(self.noise, clip, checked, budget, fault, salt)
        async with self._slot():
            if fault is Fault.TIMEOUT and await _client_left(request, self.cfg.timeout_hold_s):
                return None
            await asyncio.sleep(self._service_s(choices))
        if fault is Fault.SERVER_ERROR:
            return _error_response(SimError(500, "Simulated engine failure (rate_500)."))
        if fault is Fault.RESET:
            await request.scope[_DROP_KEY]()
            return None
        completion = sum(choice.tokens for choice in choices)
        self.stats.prompt_tokens += checked.prompt_tokens
        self.stats.completion_tokens += completion
        record.update(prompt_tokens=checked.prompt_tokens, completion_tokens=completion)
        request_id = f"chatcmpl-sim-{digest[:16]}-{attempt}"
        return JSONResponse(_completion(self.cfg.model, request_id, checked.prompt_tokens, choices))

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of `capacity` service slots; a request that finds none free counts as waiting, like vLLM's queue."""
        with self.stats.gauge("waiting") if self.slots.locked() else nullcontext():
            await self.slots.acquire()
        try:
            with self.stats.gauge("running"):
                yield
        finally:
            self.slots.release()

    def _service_s(self, choices: list[Choice]) -> float:
        # The n sequences of one request decode side by side, so the longest one sets the time.
        tokens = max(choice.tokens for choice in choices)
        return (self.cfg.latency_ms + self.cfg.per_token_ms * tokens) / 1000

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        entry = {"id": self.cfg.model, "object": "model", "created": created, "owned_by": "cotforge-sim", "root": self.cfg.model,
                 "parent": None, "max_model_len": self.cfg.max_model_len}
        return {"object": "list", "data": [entry]}


def _digest(raw: bytes, request: Request) -> str:
    """A request's identity: its body and its clip headers (a hinted re-ask differs in the header alone)."""
    headers = {name: request.headers[name] for name in CLIP_HEADERS if name in request.headers}
    return hashlib.sha256(raw + json.dumps(headers, sort_keys=True).encode()).hexdigest()


def _json_body(raw: bytes) -> Any:
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


def _error_response(exc: SimError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _completion(model: str, request_id: str, prompt_tokens: int, choices: list[Choice]) -> dict[str, Any]:
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
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


async def _client_left(request: Request, seconds: float) -> bool:
    """Hold a request for `seconds`; True as soon as its client disconnects (vLLM then aborts the request)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return True
        await asyncio.sleep(min(DISCONNECT_POLL_S, max(0.0, deadline - time.monotonic())))
    return False


async def _drop_connection(send: Callable[..., Awaitable[None]]) -> None:
    """Close the TCP connection under a request without writing a byte, so the client sees a connection error.

    ASGI has no message for this, so it uses the transport of uvicorn's connection, whose `send` is
    a bound method of the request cycle. One loop turn then lets uvicorn see the connection lost,
    after which it ignores the response the route returns.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("rate_reset needs uvicorn's connection; run the simulator with serve() or SimProcess")
    transport.abort()
    await asyncio.sleep(0)


class _SimApp(FastAPI):
    """FastAPI that hands each request a way to drop its connection (the rate_reset fault).

    The hook is set here, before Starlette's middleware wraps `send`, because only the server's own
    `send` leads to the connection.
    """

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http":
            scope[_DROP_KEY] = partial(_drop_connection, send)
        await super().__call__(scope, receive, send)


def create_app(cfg: SimConfig) -> FastAPI:
    """The simulator as an ASGI app; `serve` runs it, and tests may mount it in their own uvicorn."""
    sim = _Simulator(cfg)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        sim.log.close()

    app = _SimApp(title="cotforge teacher-sim", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/health", lambda: Response(status_code=200), methods=["GET"])
    app.add_api_route("/v1/models", sim.models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", sim.chat, methods=["POST"])
    app.add_api_route("/metrics", lambda: PlainTextResponse(sim.stats.prometheus(cfg.model)), methods=["GET"])
    app.add_api_route("/sim/stats", sim.stats.snapshot, methods=["GET"])
    return app


def serve(cfg: SimConfig) -> None:
    """Run the simulator until interrupted (blocking)."""
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def build_arg_parser() -> argparse.ArgumentParser:
    """`--json-config` plus one flag per SimConfig field (`latency_ms` is `--latency-ms`); flags override the JSON."""
    parser = argparse.ArgumentParser(
        prog="cotforge teacher-sim",
        description="OpenAI-compatible teacher simulator (answers are simulated, never a model's).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--json-config", type=_json_object, metavar="JSON", help="a whole SimConfig as a JSON object")
    for name, field in SimConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        text = f"{field.description} [default: {field.get_default(call_default_factory=True)}]".replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif name == "limit_mm_per_prompt":
            parser.add_argument(flag, type=_json_object, metavar="JSON", help=text)
        else:
            parser.add_argument(flag, metavar=name.upper(), help=text)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> SimConfig:
    """The SimConfig that the command line asks for; exits with a usage error when it is invalid."""
    parser = build_arg_parser()
    args = vars(parser.parse_args(argv))
    data = {**args.pop("json_config", {}), **args}
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    serve(parse_config(argv))


class SimProcess:
    """The simulator in a child process on a loopback port: a real server for tests and demos.

    Starting blocks until `/health` answers; a start that fails stops the child before raising.
    Use it as a context manager so the child is stopped even when a test fails.
    """

    def __init__(self, cfg: SimConfig, startup_timeout_s: float = 10.0) -> None:
        self.cfg = cfg if cfg.port else cfg.model_copy(update={"port": _free_port(cfg.host)})
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.root = f"http://{host}:{self.cfg.port}"
        self.url = f"{self.root}/v1"
        self._output: IO[bytes] | None = tempfile.TemporaryFile()
        self._final_output = ""
        command = [sys.executable, "-m", "cotforge.sim.server", "--json-config", self.cfg.model_dump_json()]
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._output, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"teacher-sim exited with code {self._process.returncode} before it was ready:\n{self.output()[-4000:]}")
            try:
                if httpx.get(f"{self.root}/health", timeout=0.5, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"teacher-sim did not answer {self.root}/health within {timeout_s} s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        """What the server printed (uvicorn's log), for debugging and for checks that nothing secret is in it."""
        if self._output is None:
            return self._final_output
        self._output.seek(0)
        return self._output.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """Terminate the child by PID, kill it if it is still there after 5 s; safe to call twice."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._output is not None:
            self._final_output = self.output()
            self._output.close()
            self._output = None

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _free_port(host: str) -> int:
    """A port that is free now; the child binds it a moment later (a race only another local binder can lose us)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
