"""The simulator's service-time model and its vLLM queue gauges (no test here asserts a duration)."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from cotforge.sim.service import Engine
from cotforge.sim.server import SimConfig, SimProcess
from cotforge.sim.stats import Stats

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _engine(**changes: Any) -> Engine:
    return Engine(SimConfig(**changes), Stats())


def test_only_latency_means_a_fixed_service_time() -> None:
    engine = _engine(latency_ms=250)
    assert engine.fixed_s(prompt_tokens=5000) == 0.25
    assert engine.step_s(running=64) == 0.0
    assert {engine.factor("request", attempt) for attempt in range(50)} == {1.0}


def test_prefill_grows_with_the_prompt_and_decode_with_the_batch() -> None:
    engine = _engine(latency_ms=100, prefill_tps=10000, per_token_ms=10, batch_slowdown=0.02)
    assert engine.fixed_s(prompt_tokens=3000) == pytest.approx(0.1 + 0.3)
    assert engine.fixed_s(prompt_tokens=6000) - engine.fixed_s(prompt_tokens=3000) == pytest.approx(0.3)
    steps = [engine.step_s(running) for running in (1, 2, 33, 64)]
    assert steps[0] == pytest.approx(0.010) and steps[2] == pytest.approx(0.010 * 1.64)
    assert steps == sorted(steps) and steps[0] < steps[1]


def test_spread_has_mean_one_and_a_long_right_tail() -> None:
    engine = _engine(spread=0.6, seed=3)
    factors = sorted(engine.factor("digest", attempt) for attempt in range(4000))
    assert all(factor > 0 for factor in factors)
    assert statistics.fmean(factors) == pytest.approx(1.0, abs=0.05)
    median, p99 = factors[len(factors) // 2], factors[int(0.99 * len(factors))]
    assert p99 / median > 3  # log-normal with sigma 0.6: p99 / median = exp(2.33 x 0.6) = 4.0
    assert engine.factor("digest", 7) == _engine(spread=0.6, seed=3).factor("digest", 7)


async def _burst(sim: SimProcess, concurrency: int) -> None:
    async with openai.AsyncOpenAI(base_url=sim.url, api_key="EMPTY", max_retries=0) as client:
        await asyncio.gather(*(
            client.chat.completions.create(
                model=sim.cfg.model, max_tokens=64, messages=[{"role": "user", "content": f"clip {i}"}],
                extra_headers={"X-Cotforge-Key": f"load-{i}"},
            )
            for i in range(concurrency)
        ))


@pytest.mark.parametrize("concurrency", [2, 4, 8])
def test_running_is_capped_at_capacity_and_the_rest_wait(concurrency: int) -> None:
    capacity = 4
    with SimProcess(SimConfig(port=0, capacity=capacity, latency_ms=1000)) as sim:
        asyncio.run(_burst(sim, concurrency))
        stats = httpx.get(f"{sim.root}/sim/stats", trust_env=False).json()
        metrics = httpx.get(f"{sim.root}/metrics", trust_env=False).text
    assert stats["max_running"] == min(concurrency, capacity)
    assert stats["max_waiting"] == max(0, concurrency - capacity)
    assert stats["requests"] == {"200": concurrency}
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert f"# TYPE {gauge} gauge" in metrics and f'{gauge}{{model_name="sim/qwen3-omni"}} 0.0' in metrics


@pytest.mark.slow
def test_concurrency_bench_prints_its_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "sim_concurrency.py"), "--capacity", "2", "--latency-ms", "50",
         "--requests", "12", "--concurrency", "1", "2", "4"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "/ (C/L)" in done.stdout and "waiting" in done.stdout
    assert len([line for line in done.stdout.splitlines() if line.startswith("client concurrency")]) == 3
