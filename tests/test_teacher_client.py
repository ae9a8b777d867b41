"""The teacher client against the simulator: retries per fault kind, refusals, the offline backend's guard."""

from __future__ import annotations

import asyncio
import http.server
import importlib.util
import json
import re
import threading

import httpx
import pytest

from cotforge.config import MediaConfig, SourceConfig, TeacherConfig
from cotforge.media.decode import decode_clip
from cotforge.sources import open_source
from cotforge.store.bundles import bundle_row
from cotforge.teacher.client import TeacherCallError, TeacherClient, TeacherUnavailable
from cotforge.teacher.offline import OfflineTeacher
from cotforge.teacher.request import ClipMedia, build_request, materialize
from cotforge.sim.server import SimConfig, SimProcess
from cotforge.types import MOSI_SCALE


@pytest.fixture(scope="module")
def request_parts(demo_factory) -> tuple[dict, dict]:
    demo = demo_factory("mosi", clips=8)
    ref = next(iter(open_source(SourceConfig(dataset="mosi", root=demo.root))))
    row = bundle_row(decode_clip(ref, MediaConfig(size=96)), "t")
    cfg = TeacherConfig(simulated=True, model="sim/qwen3-omni")
    request = build_request(row, cfg, MOSI_SCALE)
    return materialize(request.body, ClipMedia(row["frames"], row["frame_fps"], row["audio"]), "h264"), request.headers


def ask_many(cfg: TeacherConfig, body: dict, headers: dict, n: int) -> TeacherClient:
    async def go() -> TeacherClient:
        async with TeacherClient(cfg) as client:
            await client.preflight()
            for seed in range(n):
                response = await client.ask({**body, "seed": seed}, headers)
                assert response.contents and response.prompt_tokens
            return client

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("fault", "kind"),
    [("rate_429", "429"), ("rate_500", "500"), ("rate_reset", "connection"), ("rate_timeout", "timeout")],
)
def test_each_fault_kind_is_retried_until_it_succeeds(request_parts, fault: str, kind: str) -> None:
    body, headers = request_parts
    sim_cfg = SimConfig(port=0, seed=2, latency_ms=5, timeout_hold_s=2.0, **{fault: 0.5})
    with SimProcess(sim_cfg) as sim:
        cfg = TeacherConfig(url=sim.url, model=sim_cfg.model, max_retries=12, backoff_s=0.01, timeout_s=0.5)
        client = ask_many(cfg, body, headers, 6)
    assert client.stats["succeeded"] == 6
    assert client.stats["retries/" + kind] > 0 and set(client.stats.group("retries")) == {kind}


def test_giving_up_after_max_retries_fails_the_request_not_the_run(request_parts) -> None:
    body, headers = request_parts
    with SimProcess(SimConfig(port=0, latency_ms=5, rate_500=1.0)) as sim:
        cfg = TeacherConfig(url=sim.url, model="sim/qwen3-omni", max_retries=2, backoff_s=0.01)
        with pytest.raises(TeacherCallError, match="after 3 tries: 500"):
            ask_many(cfg, body, headers, 1)


def test_a_refused_request_is_not_retried(request_parts) -> None:
    body, headers = request_parts
    with SimProcess(SimConfig(port=0, latency_ms=5, max_model_len=64)) as sim:
        cfg = TeacherConfig(url=sim.url, model="sim/qwen3-omni", max_retries=5)

        async def go() -> TeacherClient:
            async with TeacherClient(cfg) as client:
                with pytest.raises(TeacherCallError, match="400"):
                    await client.ask(body, headers)
                return client

        client = asyncio.run(go())
    assert client.stats["requests"] == 1 and not client.stats.group("retries")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"detail": "upstream timed out"}, "without a list of choices: not a chat completion (keys ['detail'])"),
        ([1, 2], "without a list of choices: not a chat completion (list)"),
        ({"choices": [{"finish_reason": "stop"}]}, "choice 0 holding no message text"),
        ({"choices": [{"message": {"content": 3}}]}, "choice 0 holding no message text"),
    ],
)
def test_a_200_that_is_not_a_chat_completion_fails_the_request_naming_it(answer: object, reason: str) -> None:
    """A proxy or a server that is not OpenAI-compatible can answer 200 with any JSON: the request fails with
    what is missing, the endpoint stays up (it answered) and nothing is retried."""
    served = json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 4096}]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - the handler's API
            self._send(served)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            self._send(json.dumps(answer).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = TeacherConfig(url=f"http://127.0.0.1:{server.server_address[1]}/v1", model="m", max_retries=3)

        async def go() -> TeacherClient:
            async with TeacherClient(cfg) as client:
                with pytest.raises(TeacherCallError, match=re.escape(reason)):
                    await client.ask({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
                assert not client.endpoints[0].down
                return client

        client = asyncio.run(go())
    finally:
        server.shutdown()
        server.server_close()
    assert client.stats["requests"] == 1 and not client.stats.group("retries") and not client.stats["succeeded"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_offline_backend_without_vllm_says_what_to_install() -> None:
    async def go() -> None:
        async with OfflineTeacher(TeacherConfig(backend="vllm-offline")):
            pass

    with pytest.raises(TeacherUnavailable, match=r"\[teacher-vllm\]"):
        asyncio.run(go())


def test_every_request_within_the_concurrency_is_in_service_at_once(request_parts) -> None:
    """None of the `concurrency` requests may wait for a connection: the transport's pool holds them all."""
    body, headers = request_parts
    with SimProcess(SimConfig(port=0, latency_ms=2000, capacity=64)) as sim:
        cfg = TeacherConfig(url=sim.url, model="sim/qwen3-omni", concurrency=40)

        async def go() -> None:
            async with TeacherClient(cfg) as client:
                await asyncio.gather(*(client.ask({**body, "seed": seed}, headers) for seed in range(40)))

        asyncio.run(go())
        stats = httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()
    assert stats["max_in_flight"] == 40
