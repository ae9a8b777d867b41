"""How long a request takes: the GPU server as a queue in front of a batch that slows as it grows.

vLLM runs at most `max_num_seqs` sequences at once (here `capacity`) and queues the rest in arrival
order. A request in service costs a fixed part (`latency_ms`: scheduling, the first token), a
prefill part proportional to its prompt (`prefill_tps`), and one decode step per completion token.
A decode step serves the whole running batch, so it lengthens as the batch grows (memory
bandwidth and attention over more sequences): `per_token_ms x (1 + batch_slowdown x (running - 1))`.
Each request's work is scaled by a log-normal factor of mean 1 (`spread`), a long right tail like
the service times of real servers. With every term but `latency_ms` at 0, each request takes
exactly `latency_ms` once it has a slot, so throughput is `min(concurrency, capacity) / latency`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext

from cotforge.sim.config import SimConfig
from cotforge.sim.draws import seeded
from cotforge.sim.stats import Stats

DECODE_TICK_S = 0.05
"""How often a decoding request looks at the batch size again; finer costs CPU, coarser lags behind it."""


class Engine:
    """Service slots, the waiting queue and the batch-dependent decode pace, with vLLM's running/waiting gauges."""

    def __init__(self, cfg: SimConfig, stats: Stats) -> None:
        self.cfg = cfg
        self.stats = stats
        self.slots = asyncio.Semaphore(cfg.capacity)

    def factor(self, *draw: object) -> float:
        """The request's log-normal work factor, with mean 1; `draw` names the request for the seeded draw."""
        sigma = self.cfg.spread
        if sigma == 0:
            return 1.0
        return math.exp(sigma * seeded("service", self.cfg.seed, *draw).gauss(0.0, 1.0) - sigma * sigma / 2)

    def fixed_s(self, prompt_tokens: int) -> float:
        """The part of a request's service that does not depend on the batch: latency and prefill."""
        prefill = prompt_tokens / self.cfg.prefill_tps if self.cfg.prefill_tps else 0.0
        return self.cfg.latency_ms / 1000 + prefill

    def step_s(self, running: int) -> float:
        """One decode step with `running` requests in the batch."""
        return self.cfg.per_token_ms / 1000 * (1 + self.cfg.batch_slowdown * max(0, running - 1))

    async def serve(self, prompt_tokens: int, completion_tokens: int, factor: float, hold_s: float = 0.0) -> None:
        """Wait for a slot, then take the request's service time; `hold_s` first keeps the slot busy (a stuck request)."""
        async with self._slot():
            if hold_s:
                await asyncio.sleep(hold_s)
            await asyncio.sleep(factor * self.fixed_s(prompt_tokens))
            await self._decode(factor * completion_tokens)

    async def _decode(self, tokens: float) -> None:
        # The batch may change while a request decodes, so the step is looked up again every tick.
        while tokens > 0:
            step = self.step_s(self.stats.now["running"])
            if step <= 0:
                return
            chunk = min(tokens, max(1.0, DECODE_TICK_S / step))
            await asyncio.sleep(chunk * step)
            tokens -= chunk

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
