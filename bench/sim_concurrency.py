"""How throughput follows client concurrency against `cotforge teacher-sim` (the README's advice on
`teacher.concurrency`, tried without a GPU).

For each client concurrency c (a closed loop: c requests always in flight), prints
  * requests/s, from the simulator's own request log (first arrival to last answer), its ratio to the best
    level measured, and (when only --latency-ms is set) to C/L, the limit of capacity C at service time L;
  * the mean of vLLM's gauges `vllm:num_requests_running` and `vllm:num_requests_waiting`, sampled from
    the simulator's /metrics while the phase runs.
Expected: requests/s rises with c up to the capacity and stays flat beyond, while waiting grows.
Add --prefill-tps/--per-token-ms/--batch-slowdown/--spread for a GPU-like service time (then the rise is
sublinear: a bigger batch decodes each token more slowly).

Usage: python bench/sim_concurrency.py [--capacity 8] [--latency-ms 200] [--requests 160]
       [--concurrency 1 2 4 8 12 16 32] [--prefill-tps 0 --per-token-ms 0 --batch-slowdown 0 --spread 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
from pathlib import Path

import httpx
import openai

from cotforge.sim.server import SimConfig, SimProcess
from table import print_table  # bench/table.py, beside this script

GAUGE = re.compile(r"^vllm:num_requests_(running|waiting)\{[^}]*\} (\S+)$", re.MULTILINE)


async def phase(sim: SimProcess, concurrency: int, requests: int, prompt: str) -> tuple[float, float]:
    """Run `requests` requests with `concurrency` in flight; the mean running and waiting gauges meanwhile."""
    samples: list[dict[str, float]] = []
    async with openai.AsyncOpenAI(base_url=sim.url, api_key="EMPTY", max_retries=0, timeout=600) as client, \
            httpx.AsyncClient(trust_env=False) as http:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for number in range(requests):
            queue.put_nowait(number)

        async def worker() -> None:
            while not queue.empty():
                number = queue.get_nowait()
                await client.chat.completions.create(
                    model=sim.cfg.model, max_tokens=512, messages=[{"role": "user", "content": prompt}],
                    extra_headers={"X-Cotforge-Key": f"c{concurrency}-{number}", "X-Cotforge-Gold": "1.0"},
                )

        async def sample() -> None:
            while True:
                text = (await http.get(f"{sim.root}/metrics")).text
                samples.append({name: float(value) for name, value in GAUGE.findall(text)})
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sample())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        sampler.cancel()
    steady = samples[1:-1] or samples
    return (sum(s["running"] for s in steady) / len(steady), sum(s["waiting"] for s in steady) / len(steady))


def served_rate(log: Path, concurrency: int) -> float:
    """Requests/s of the phase by the simulator's own clock: answered requests over first arrival to last answer."""
    records = [record for record in map(json.loads, log.read_text().splitlines())
               if record["key"].startswith(f"c{concurrency}-") and record["status"] == 200]
    last = max(record["time"] + record["latency_ms"] / 1000 for record in records)
    return len(records) / (last - min(record["time"] for record in records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--requests", type=int, default=160, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 32])
    parser.add_argument("--prefill-tps", type=float, default=0.0)
    parser.add_argument("--per-token-ms", type=float, default=0.0)
    parser.add_argument("--batch-slowdown", type=float, default=0.0)
    parser.add_argument("--spread", type=float, default=0.0)
    parser.add_argument("--prompt-tokens", type=int, default=40, help="about this many prompt tokens per request")
    args = parser.parse_args()
    log = Path(tempfile.mkdtemp(prefix="cotforge-bench-sim-")) / "requests.jsonl"
    cfg = SimConfig(port=0, seed=1, capacity=args.capacity, latency_ms=args.latency_ms, prefill_tps=args.prefill_tps,
                    per_token_ms=args.per_token_ms, batch_slowdown=args.batch_slowdown, spread=args.spread, log_path=log)
    prompt = 'Transcript: "' + "word " * max(1, round(args.prompt_tokens * 4 / 5)) + '"'
    ideal = args.capacity / (args.latency_ms / 1000)
    fixed = not (args.prefill_tps or args.per_token_ms or args.spread)
    measured = []
    with SimProcess(cfg) as sim:
        for concurrency in args.concurrency:
            running, waiting = asyncio.run(phase(sim, concurrency, args.requests, prompt))
            measured.append((concurrency, served_rate(log, concurrency), running, waiting))
    peak = max(rate for _, rate, _, _ in measured)
    rows = [
        (f"client concurrency {concurrency:3d}",
         f"{rate:7.1f}  {f'{rate / ideal:.2f}x' if fixed else '-':>7}  {rate / peak:5.2f}x  {running:7.1f}  {waiting:7.1f}")
        for concurrency, rate, running, waiting in measured
    ]
    print(f"simulator: capacity C={args.capacity}, L={args.latency_ms:g} ms (C/L = {ideal:.1f} req/s), "
          f"prefill {args.prefill_tps:g} tok/s, {args.per_token_ms:g} ms/token, "
          f"batch slowdown {args.batch_slowdown:g}, spread {args.spread:g}")
    print_table(rows, "  req/s  / (C/L)  / peak  running  waiting  (gauges: means)")


if __name__ == "__main__":
    main()
