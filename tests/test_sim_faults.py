"""The simulator's faults as the `openai` package's async client sees them: each must look like the real thing.

Real shapes (research notes `vllm-serving.md`, `vllm-omni-cpu.md`, vLLM's `launcher.py` and `health.py`):
a dead process refuses connections; a dropped connection is a connection error, never a status; vLLM
after `EngineDeadError` answers a bare 500 and its `/health` says 503; a hung engine accepts and never
answers while `/health` stays 200; xgrammar lets raw control characters into JSON strings and lets a
model loop on whitespace until `max_tokens`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from cotforge.dc import Rationale
from cotforge.sim.server import SimConfig, SimProcess

MODEL = "sim/qwen3-omni"
GOLD = {"X-Cotforge-Key": "clip-1", "X-Cotforge-Gold": "2.0", "X-Cotforge-Range": "-3,3"}
FORMAT = {"type": "json_schema", "json_schema": {"name": "dc_rationale", "schema": {"type": "object"}}}


def _config(**changes: Any) -> SimConfig:
    return SimConfig(**{"port": 0, "latency_ms": 5, **changes})


async def _ask(sim: SimProcess, timeout: float = 5.0, max_tokens: int = 400, key: str = "clip-1") -> Any:
    """One chat request through the async openai client with its own retries off; the completion or the exception."""
    async with openai.AsyncOpenAI(base_url=sim.url, api_key="EMPTY", max_retries=0, timeout=timeout) as client:
        try:
            return await client.chat.completions.create(
                model=MODEL, max_tokens=max_tokens, response_format=FORMAT,
                messages=[{"role": "user", "content": 'Transcript: "that went better than I expected"'}],
                extra_headers={**GOLD, "X-Cotforge-Key": key},
            )
        except openai.APIError as exc:
            return exc


def ask(sim: SimProcess, **options: Any) -> Any:
    return asyncio.run(_ask(sim, **options))


def _get(sim: SimProcess, path: str) -> httpx.Response | httpx.TransportError:
    try:
        return httpx.get(sim.root + path, timeout=2.0, trust_env=False)
    except httpx.TransportError as exc:
        return exc


def wait_until(condition: Callable[[], bool], what: str, limit_s: float = 10.0) -> None:
    """Wait on a condition (never assert a duration); fail with `what` if it is not met within the limit."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {limit_s} s: {what}")
        time.sleep(0.05)


def _healthy(sim: SimProcess) -> bool:
    response = _get(sim, "/health")
    return isinstance(response, httpx.Response) and response.status_code == 200


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- broken answers --------------------------------------------------------------------------------


def test_control_characters_break_strict_json_only() -> None:
    with SimProcess(_config(rate_control_chars=1.0)) as sim:
        choice = ask(sim).choices[0]
    content = choice.message.content or ""
    assert choice.finish_reason == "stop"
    assert any(char in content for char in "\x07\x0b\x0c\x1c\t")
    # The error a real xgrammar answer gave: Python's default json.loads refuses raw control characters.
    with pytest.raises(json.JSONDecodeError, match="Invalid control character"):
        json.loads(content)
    Rationale.model_validate(json.loads(content, strict=False))


def test_whitespace_runs_until_max_tokens() -> None:
    with SimProcess(_config(rate_whitespace=1.0)) as sim:
        completion = ask(sim, max_tokens=300)
    choice = completion.choices[0]
    content = choice.message.content or ""
    assert choice.finish_reason == "length" and completion.usage.completion_tokens == 300
    head = content.rstrip()
    assert head.startswith("{") and len(content) - len(head) > 600
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


def test_empty_choices_is_a_200_with_usage() -> None:
    with SimProcess(_config(rate_empty=1.0)) as sim:
        completion = ask(sim)
        stats = httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()
    assert completion.choices == [] and completion.model == MODEL
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens == 0
    assert stats["requests"] == {"200": 1} and stats["faults"] == {"empty": 1}


def test_a_dropped_connection_is_a_connection_error_not_a_status() -> None:
    with SimProcess(_config(rate_reset=1.0)) as sim:
        error = ask(sim)
        stats = httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()
    assert type(error) is openai.APIConnectionError
    assert stats["requests"] == {"dropped": 1}


# --- outages ---------------------------------------------------------------------------------------


def test_refuse_outage_refuses_connections_then_comes_back(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    with SimProcess(_config(outage_at=3, outage_s=3.0, outage_mode="refuse", log_path=log)) as sim:
        before = [ask(sim) for _ in range(2)]
        during = [ask(sim) for _ in range(2)]
        refused = _get(sim, "/health")
        wait_until(lambda: _healthy(sim), "the server listens again after outage_s")
        after = ask(sim)
    assert all(completion.choices for completion in before)
    assert all(type(error) is openai.APIConnectionError for error in during)
    assert isinstance(refused, httpx.ConnectError)  # refused at connect, not closed after
    assert after.choices
    # The request that began the outage was read, then lost with its connection; the next ones never arrived.
    assert [record["status"] for record in _log(log)] == [200, 200, None, 200]
    assert "outage (refuse) from chat request 3 for 3 s has begun" in sim.output()


def test_drop_outage_reads_requests_and_closes_every_connection(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    with SimProcess(_config(outage_at=2, outage_s=3.0, outage_mode="drop", log_path=log)) as sim:
        before, first, second = ask(sim), ask(sim), ask(sim)
        health = _get(sim, "/health")
        wait_until(lambda: _healthy(sim), "the outage ends")
        after = ask(sim)
    assert before.choices and after.choices
    assert type(first) is openai.APIConnectionError and type(second) is openai.APIConnectionError
    assert isinstance(health, httpx.RemoteProtocolError)  # accepted, then closed without a response
    assert [(record["status"], record["fault"]) for record in _log(log)] == [
        (200, None), (None, "outage"), (None, "outage"), (200, None)
    ]


def test_engine_dead_outage_answers_a_bare_500_and_health_503() -> None:
    with SimProcess(_config(outage_at=1, outage_s=3.0, outage_mode="engine-dead")) as sim:
        errors = [ask(sim) for _ in range(3)]
        health = _get(sim, "/health")
        models = _get(sim, "/v1/models")
        wait_until(lambda: _healthy(sim), "/health says 200 again")
        after = ask(sim)
    assert all(type(error) is openai.InternalServerError and error.status_code == 500 for error in errors)
    assert all(error.response.content == b"" for error in errors)
    assert health.status_code == 503 and models.status_code == 200
    assert after.choices


def test_engine_dead_for_good_never_recovers() -> None:
    with SimProcess(_config(outage_at=2, outage_mode="engine-dead")) as sim:
        outcomes = [ask(sim) for _ in range(4)]
        health = _get(sim, "/health")
    assert outcomes[0].choices
    assert all(type(error) is openai.InternalServerError for error in outcomes[1:])
    assert health.status_code == 503


def test_a_request_in_flight_when_the_engine_dies_gets_a_500_too() -> None:
    async def scenario(sim: SimProcess) -> tuple[Any, Any]:
        slow = asyncio.ensure_future(_ask(sim, key="in-flight"))
        while httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()["in_flight"] < 1:
            await asyncio.sleep(0.02)
        second = await _ask(sim, key="second")
        return await slow, second

    with SimProcess(_config(latency_ms=30000, outage_at=2, outage_mode="engine-dead")) as sim:
        in_flight, second = asyncio.run(scenario(sim))
    assert type(in_flight) is openai.InternalServerError and type(second) is openai.InternalServerError


def test_hang_outage_accepts_and_never_answers_until_it_ends(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    with SimProcess(_config(outage_at=2, outage_s=3.0, outage_mode="hang", log_path=log)) as sim:
        before = ask(sim)
        hung = ask(sim, timeout=0.5)
        health = _get(sim, "/health")
        during = httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()["outage"]
        late = ask(sim, timeout=30.0)  # sent during the outage: answered once it is over
        after = httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()["outage"]
    assert before.choices and late.choices
    assert (during, after) == ("active", "over")
    assert type(hung) is openai.APITimeoutError
    assert health.status_code == 200
    statuses = [(record["status"], record["fault"]) for record in _log(log)]
    assert statuses == [(200, None), (None, "outage"), (200, None)]


def test_outage_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="outage_s needs outage_at"):
        SimConfig(outage_s=5)
    with pytest.raises(ValueError, match="outage_mode"):
        SimConfig(outage_at=1, outage_mode="explode")
