"""End-to-end benchmark of `cotforge run` against the teacher simulator at a fixed capacity.

Prints, measured side by side in one run:
  * clips/s of the whole pipeline (decode -> teacher -> validate -> shards) / the simulator's capacity
    C/L in requests/s; every clip needs exactly one request here (no noise), so the ratio says whether
    cotforge keeps the server saturated (target >= 0.90: the pipeline is never the bottleneck);
  * the wall time of a warm re-run of the finished run / the first run (target <= 0.05): resume reads
    the ledger and cache and rewrites nothing.

The default server (C=16 requests at once, L=2 s each: 8 clips/s) is several times faster than a
real Qwen3-Omni-30B on one H100 (about 1 request/s at concurrency 10), so the bound is generous.

Usage: python bench/pipeline.py [--clips 320] [--capacity 16] [--latency-ms 2000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cotforge.config import PipelineConfig
from cotforge.executors.local import run_pipeline
from cotforge.report import write_report
from cotforge.store.ledger import Ledger
from cotforge.demo.writer import make_demo_dataset
from cotforge.sim.server import SimConfig, SimProcess
from table import print_table  # bench/table.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=320)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=2000.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cotforge-bench-pipeline-"))
    data = workdir / "data"
    if not (data / "demo.json").exists():
        make_demo_dataset(data, "mosi", args.clips, seed=21, min_seconds=2.0, max_seconds=8.0)
    run = workdir / f"run-{time.time_ns()}"

    sim_cfg = SimConfig(port=0, seed=1, capacity=args.capacity, latency_ms=args.latency_ms, noise=0.0, flip_rate=0.0)
    with SimProcess(sim_cfg) as sim:
        cfg = PipelineConfig.model_validate({
            "name": "bench",
            "source": {"dataset": "mosi", "root": str(data)},
            "exec": {"workers": 2},
            "teacher": {"url": sim.url, "model": sim_cfg.model, "simulated": True,
                        "concurrency": args.capacity * 2, "media_workers": 1},
            "reask": {"samples": 1, "hint": False},
        })
        began = time.perf_counter()
        first = run_pipeline(cfg, run, quiet=True)
        first_wall = time.perf_counter() - began
        write_report(cfg, run)  # `cotforge run` writes the report too; timed separately below
        report_wall = time.perf_counter() - began - first_wall
        began = time.perf_counter()
        warm = run_pipeline(cfg, run, quiet=True)
        write_report(cfg, run)
        warm_wall = time.perf_counter() - began
    judged = first.synth["clips"]
    capacity = args.capacity / (args.latency_ms / 1000)
    rate = judged / first_wall
    manifest = json.loads((run / "manifest.json").read_text())
    with Ledger(run / "ledger.sqlite") as ledger:
        judged_at = sorted(t for (t,) in ledger.db.execute("SELECT judged_at FROM clips WHERE judged_at IS NOT NULL"))
    steady = (len(judged_at) - 1) / (judged_at[-1] - judged_at[0])
    rows = [
        ("clips judged / requests sent (first run)", f"{judged} / {first.synth['requests']}"),
        ("simulator capacity C/L", f"{capacity:.1f} req/s (C={args.capacity}, L={args.latency_ms:g} ms)"),
        ("pipeline clips/s / capacity", f"{rate / capacity:.3f}x  (target >= 0.90)"),
        ("  steady state (first to last judged clip) / capacity", f"{steady / capacity:.3f}x"),
        ("  start-up + first answer + export", f"{first_wall - judged / capacity:.1f} s over the ideal {judged / capacity:.0f} s"),
        ("warm re-run wall / first run wall (both with report)", f"{warm_wall / (first_wall + report_wall):.3f}x  (target <= 0.05)"),
        ("warm re-run: teacher requests, clips decoded", f"{warm.synth['requests']}, {warm.bundle['bundled']}"),
        ("warm re-run rewrote shards", str(bool(warm.export["rewritten"]))),
        ("accepted rows in shards", str(sum(manifest["shards"]["rows"].values()))),
    ]
    print_table(rows, "value")


if __name__ == "__main__":
    main()
